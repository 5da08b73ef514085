"""Compiled CPU path of the fine window loss maps of ``nre_ros.lossmaps`` (numba kernels in
``nre_ros._lossmaps_kernels``; availability, lazy import and warm-up in ``nre_ros.compiled``).

The kernels compute the same quantities as the torch code: the window dot products read the fine
descriptor grid in place (no tiles, no padded copies); the masked log-softmax, the coarse window
mass and the truncation run per window in one pass.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from nre_ros import compiled

__all__ = ['argmin_cells', 'bilinear_cost', 'neg_clamp_', 'neg_clamp_rows_', 'usable', 'warmup',
           'window_logits', 'window_loss_maps']

KERNELS = 'nre_ros._lossmaps_kernels'
_TILE = 48          # windows are visited by 48 x 48 blocks of their origins (cache locality)


def usable(*tensors: Tensor) -> bool:
    """True when the kernels can replace the torch code for these tensors (see
    ``compiled.usable``)."""
    return compiled.usable(KERNELS, *tensors) is not None


def _order(origin: np.ndarray, s: int) -> np.ndarray:
    """Visiting order of the windows: by 48 x 48 block of their origins, row-major."""
    key = (origin[:, 1] + s) // _TILE * 4096 + (origin[:, 0] + s) // _TILE
    return np.argsort(key, kind='stable')


def window_logits(query_desc: Tensor, point_desc: Tensor, origin: Tensor, window: int) -> Tensor:
    """(N, S, S) float32 window dot products, as ``nre_ros.lossmaps.window_logits`` (cells
    outside the grid hold 0). CPU tensors only; ``query_desc`` (C, H, W) contiguous or a view of
    (H, W, C) rows (read in place either way)."""
    rows = query_desc.detach().permute(1, 2, 0)
    hwc = rows.is_contiguous() and query_desc.shape[0] > 1
    q = np.ascontiguousarray((rows if hwc else query_desc.detach()).numpy(), dtype=np.float32)
    p = np.ascontiguousarray(point_desc.detach().numpy(), dtype=np.float32)
    o = np.ascontiguousarray(origin.numpy(), dtype=np.int64)
    out = np.empty((p.shape[0], window, window), np.float32)
    k = compiled.kernels(KERNELS)
    compiled.threads(out.size * p.shape[1])
    (k._window_dots_hwc if hwc else k._window_dots)(q, p, o, _order(o, window), out)
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
    k = compiled.kernels(KERNELS)
    compiled.threads(n * (math.ceil(s / fine_per_coarse) + 2) ** 2)
    k._coarse_log_mass(cm, r, o, s, float(fine_per_coarse), float(wf), float(hf),
                       float(coarse_ln_omega), log_mass)
    # float32, as the torch path: log_mass (float32) - log(divisor)
    lm = (log_mass.astype(np.float32) - np.float32(math.log(divisor))).astype(np.float32)
    lse = torch.logsumexp(torch.from_numpy(x).reshape(n, s * s), dim=1).numpy()
    out = np.empty_like(x)
    compiled.threads(x.size)
    k._window_loss(x, o, wf, hf, lse, lm, float(ln_omega), out)
    return torch.from_numpy(out)


def bilinear_cost(flat: Tensor, offset: Tensor, size: tuple[int, int], ln_omega: float, x: Tensor,
                  y: Tensor, valid: Tensor | None = None) -> Tensor:
    """``nre_ros.lossmaps.bilinear_cost`` for float32 CPU tensors ((M, n) coordinates)."""
    w, h = size
    xs = np.ascontiguousarray(x.detach().numpy())
    ys = np.ascontiguousarray(y.detach().numpy())
    lead = xs.shape
    xs, ys = xs.reshape(-1, lead[-1]), ys.reshape(-1, lead[-1])
    v = np.zeros((0, 0), bool) if valid is None else \
        np.ascontiguousarray(valid.numpy()).reshape(xs.shape)
    out = np.empty(xs.shape, np.float32)
    k = compiled.kernels(KERNELS)
    compiled.threads(4 * out.size)
    k._bilinear_cost(flat.detach().numpy(), offset.numpy(), w, h, float(ln_omega), xs, ys, v,
                     out)
    return torch.from_numpy(out.reshape(lead))


def argmin_cells(maps: Tensor, index: Tensor, minima: Tensor) -> Tensor:
    """(M, 2) int64 cells (x, y) of the minima of ``maps[index]`` ((N, h, w) float32, (M,)
    int64), the first in row-major order as ``nre_ros.lossmaps.argmin_cells``, given every
    map's minimum ``minima`` (N,); the maps are read in place, each up to the row holding its
    minimum. CPU tensors only."""
    m = np.ascontiguousarray(maps.detach().numpy(), dtype=np.float32)
    low = np.ascontiguousarray(minima.detach().numpy(), dtype=np.float32)
    out = np.empty((index.shape[0], 2), np.int64)
    k = compiled.kernels(KERNELS)
    k._argmin_cells(m, np.ascontiguousarray(index.numpy(), dtype=np.int64), low, out)
    return torch.from_numpy(out)


def neg_clamp_(maps: Tensor, ln_omega: float) -> None:
    """``maps <- min(-maps, ln_omega)`` in place, for a contiguous float32 CPU tensor."""
    k = compiled.kernels(KERNELS)
    compiled.threads(maps.numel())
    k._neg_clamp(maps.detach().numpy().reshape(-1), float(ln_omega))


def neg_clamp_rows_(maps: Tensor, ln_omega: float) -> tuple[Tensor, Tensor]:
    """``maps <- min(-maps, ln_omega)`` in place for a contiguous (N, h, w) float32 CPU tensor
    without NaN; returns each map's minimum (N,) float32 and the flat index (N,) int64 of its
    first occurrence in row-major order, found in the same pass."""
    n, h, w = maps.shape
    minima, first = np.empty(n, np.float32), np.empty(n, np.int64)
    k = compiled.kernels(KERNELS)
    compiled.threads(maps.numel())
    k._neg_clamp_rows(maps.detach().numpy().reshape(n, h * w), float(ln_omega), w, minima,
                      first)
    return torch.from_numpy(minima), torch.from_numpy(first)


def warmup() -> bool:
    """Compile (or load from the cache) every kernel on tiny inputs; False without numba."""
    if compiled.kernels(KERNELS) is None:
        return False
    g = torch.Generator().manual_seed(0)
    q = torch.randn(4, 6, 7, generator=g)
    p = torch.randn(3, 4, generator=g)
    origin = torch.tensor([[-2, -1], [1, 1], [9, 9]])
    logits = window_logits(q, p, origin, 4)
    window_logits(q.permute(1, 2, 0).contiguous().permute(2, 0, 1), p, origin, 4)   # (H, W, C)
    coarse = torch.rand(3, 3, 4, generator=g)
    window_loss_maps(logits, origin, coarse, None, math.log(13), 2.0, (7, 6), 1.0, math.log(43))
    neg_clamp_(coarse.clone(), 1.0)
    neg_clamp_rows_(coarse.clone(), 1.0)
    argmin_cells(coarse, torch.tensor([2, 0]), coarse.flatten(1).amin(1))
    xy = torch.rand(2, 3, generator=g) * 5
    bilinear_cost(coarse.reshape(-1), torch.arange(3) * 12, (4, 3), 2.0, xy, xy)
    bilinear_cost(coarse.reshape(-1), torch.arange(3) * 12, (4, 3), 2.0, xy, xy, xy > 1)
    return True
