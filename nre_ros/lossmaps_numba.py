"""Compiled CPU kernels (numba) for the fine window loss maps of ``nre_ros.lossmaps``.

The torch code in ``nre_ros.lossmaps`` is the reference and the path for every other device, for
tensors that need gradients, and whenever numba is missing or disabled (``NRE_ROS_NUMBA=0``).
The kernels (``nre_ros._lossmaps_kernels``) compute the same quantities: the window dot products
read the fine descriptor grid in place (no tiles, no padded copies); the masked log-softmax, the
coarse window mass and the truncation run per window in one pass. They are single-threaded (no
second thread pool beside torch's).

Numba compiles on first use (about a second per kernel) and caches the machine code on disk
(``cache=True``: beside this file, or in the user's cache directory when that is read-only);
``warmup()`` runs every kernel once on tiny inputs so that the compilation (or the cache load)
happens when a relocalizer is created, not on its first query.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import os

import numpy as np
import torch
from torch import Tensor

__all__ = ['available', 'usable', 'warmup', 'window_logits', 'window_loss_maps']

logger = logging.getLogger(__name__)

_TILE = 48          # windows are visited by 48 x 48 blocks of their origins (cache locality)
_kernels = None     # the nre_ros._lossmaps_kernels module once imported, False if that failed


def available() -> bool:
    """True when numba is installed (and imports) and ``NRE_ROS_NUMBA`` is not ``0``."""
    if os.environ.get('NRE_ROS_NUMBA', '1') == '0' or _kernels is False:
        return False
    return _kernels is not None or importlib.util.find_spec('numba') is not None


def _load():
    """The kernels module (imports numba on first call)."""
    global _kernels
    if _kernels is None:
        try:
            from nre_ros import _lossmaps_kernels
            _kernels = _lossmaps_kernels
        except Exception as e:  # noqa: BLE001 - any import failure: keep the torch path
            logger.warning('numba kernels unavailable (%s); using torch', e)
            _kernels = False
    return _kernels


def usable(*tensors: Tensor) -> bool:
    """True when the kernels can replace the torch code for these tensors: every tensor on the
    CPU, none needing a gradient, and numba available (imported here on first use)."""
    grad = torch.is_grad_enabled()
    if not all(t.device.type == 'cpu' and not (grad and t.requires_grad) for t in tensors):
        return False
    return available() and bool(_load())


def _order(origin: np.ndarray, s: int) -> np.ndarray:
    """Visiting order of the windows: by 48 x 48 block of their origins, row-major."""
    key = (origin[:, 1] + s) // _TILE * 4096 + (origin[:, 0] + s) // _TILE
    return np.argsort(key, kind='stable')


def window_logits(query_desc: Tensor, point_desc: Tensor, origin: Tensor, window: int) -> Tensor:
    """(N, S, S) float32 window dot products, as ``nre_ros.lossmaps.window_logits`` (cells
    outside the grid hold 0). CPU tensors only."""
    q = np.ascontiguousarray(query_desc.detach().numpy(), dtype=np.float32)
    p = np.ascontiguousarray(point_desc.detach().numpy(), dtype=np.float32)
    o = np.ascontiguousarray(origin.numpy(), dtype=np.int64)
    out = np.empty((p.shape[0], window, window), np.float32)
    _load()._window_dots(q, p, o, _order(o, window), out)
    return torch.from_numpy(out)


def window_loss_maps(logits: Tensor, origin: Tensor, coarse_maps: Tensor, rows: Tensor | None,
                     coarse_ln_omega: float, fine_per_coarse: float, grid_size: tuple[int, int],
                     divisor: float, ln_omega: float) -> Tensor:
    """(N, S, S) float32 fine loss maps from window logits, as
    ``nre_ros.lossmaps.fine_loss_maps_from_logits`` (``rows``: coarse map of each window,
    None = the same index). CPU tensors only; ``logits`` is not modified."""
    n, s, _ = logits.shape
    wf, hf = grid_size
    x = np.ascontiguousarray(logits.detach().numpy(), dtype=np.float32)
    o = np.ascontiguousarray(origin.numpy(), dtype=np.int64)
    cm = coarse_maps.detach().numpy()
    if not cm.flags.c_contiguous or cm.dtype != np.float32:
        cm = np.ascontiguousarray(cm, dtype=np.float32)
    r = np.arange(n, dtype=np.int64) if rows is None else \
        np.ascontiguousarray(rows.numpy(), dtype=np.int64)
    log_mass = np.empty(n, np.float64)
    k = _load()
    k._coarse_log_mass(cm, r, o, s, float(fine_per_coarse), float(wf), float(hf),
                     float(coarse_ln_omega), log_mass)
    # float32, as the torch path: log_mass (float32) - log(divisor)
    lm = (log_mass.astype(np.float32) - np.float32(math.log(divisor))).astype(np.float32)
    lse = torch.logsumexp(torch.from_numpy(x).reshape(n, s * s), dim=1).numpy()
    out = np.empty_like(x)
    k._window_loss(x, o, wf, hf, lse, lm, float(ln_omega), out)
    return torch.from_numpy(out)


def warmup() -> bool:
    """Compile (or load from the cache) every kernel on tiny inputs; False without numba."""
    if not (available() and _load()):
        return False
    g = torch.Generator().manual_seed(0)
    q = torch.randn(4, 6, 7, generator=g)
    p = torch.randn(3, 4, generator=g)
    origin = torch.tensor([[-2, -1], [1, 1], [9, 9]])
    logits = window_logits(q, p, origin, 4)
    coarse = torch.rand(3, 3, 4, generator=g)
    window_loss_maps(logits, origin, coarse, None, math.log(13), 2.0, (7, 6), 1.0, math.log(43))
    return True
