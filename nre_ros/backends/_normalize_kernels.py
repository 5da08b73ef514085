"""numba kernel of ``nre_ros.backends.torch_backend.normalized_nchw`` (imported on first use
through ``nre_ros.compiled``)."""
from __future__ import annotations

import numba
import numpy as np

_BLOCK = 64         # cells per work item: a (64 cells x C) tile, written as C runs of 64


@numba.njit(cache=True, nogil=True, parallel=True, error_model='numpy')
def _normalize_bf16_rows(bits, out):
    """out[c, r] = x[r, c] / max(||x[r]||, 1e-12) in float32, x = the bfloat16 values whose
    bit patterns are ``bits`` (M, C) int16 (a bfloat16 is the upper half of a float32)."""
    m, c_dim = bits.shape
    for b in numba.prange((m + _BLOCK - 1) // _BLOCK):
        r0 = b * _BLOCK
        r1 = min(m, r0 + _BLOCK)
        raw = np.empty((r1 - r0) * c_dim, np.uint32)
        vals = raw.view(np.float32)
        for r in range(r0, r1):
            base = (r - r0) * c_dim
            for c in range(c_dim):
                raw[base + c] = np.uint32(np.uint16(bits[r, c])) << np.uint32(16)
            ss = np.float32(0.0)
            for c in range(c_dim):
                v = vals[base + c]
                ss += v * v
            inv = np.float32(1.0) / max(np.sqrt(ss), np.float32(1e-12))
            for c in range(c_dim):
                vals[base + c] *= inv
        for c in range(c_dim):
            for r in range(r0, r1):
                out[c, r] = vals[(r - r0) * c_dim + c]
