"""numba kernel of ``nre_ros.models.xfeat_fine_head`` (imported on first use through
``nre_ros.compiled``)."""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, parallel=True, error_model='numpy', fastmath={'contract'})
def _upsampled_base_plus_residual(base, residual_bits, out):
    """out[y, x] = normalize(up4(base)[y, x] + residual[y, x]) over the C channels, float32.

    base: (h, w, C) float32; residual_bits: (4 h, 4 w, C) uint16, the bits of bfloat16 values
    (the upper half of a float32's); out: (4 h, 4 w, C) float32. ``up4`` is bilinear with
    ``align_corners=False`` (torch's ``interpolate``: source coordinate (x + 0.5) / 4 - 0.5,
    clamped at 0, the upper neighbour clamped at the last cell)."""
    h, w, C = base.shape
    H, W = residual_bits.shape[0], residual_bits.shape[1]
    x_lo = np.empty(W, np.int64)
    x_hi = np.empty(W, np.int64)
    x_frac = np.empty(W, np.float32)
    for x in range(W):
        s = max((x + 0.5) / 4.0 - 0.5, 0.0)
        x_lo[x] = int(s)
        x_hi[x] = min(int(s) + 1, w - 1)
        x_frac[x] = np.float32(s - int(s))
    one = np.float32(1.0)
    for y in numba.prange(H):
        s = max((y + 0.5) / 4.0 - 0.5, 0.0)
        y0 = int(s)
        y1 = min(y0 + 1, h - 1)
        ly = np.float32(s - y0)
        bits = np.empty(C, np.uint32)
        res = bits.view(np.float32)
        acc = np.empty(C, np.float32)
        for x in range(W):
            lx = x_frac[x]
            w00 = (one - ly) * (one - lx)
            w01 = (one - ly) * lx
            w10 = ly * (one - lx)
            w11 = ly * lx
            b00 = base[y0, x_lo[x]]
            b01 = base[y0, x_hi[x]]
            b10 = base[y1, x_lo[x]]
            b11 = base[y1, x_hi[x]]
            r = residual_bits[y, x]
            for c in range(C):
                bits[c] = np.uint32(r[c]) << np.uint32(16)
            total = np.float32(0.0)
            for c in range(C):
                v = w00 * b00[c] + w01 * b01[c] + w10 * b10[c] + w11 * b11[c] + res[c]
                acc[c] = v
                total += v * v
            inv = one / max(np.sqrt(total), np.float32(1e-12))
            o = out[y, x]
            for c in range(C):
                o[c] = acc[c] * inv
