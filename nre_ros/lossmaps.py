"""Dense NRE loss maps (Germain et al. CVPR 2021, §3-5 and App. D.1).

For map point n with descriptor h_n and query descriptors H_q (C x h x w), the correspondence map
is ``C_n = softmax_p(tau * h_n . H_q(p))`` over the h*w cells of the grid; the category "out" has
mass 0, so ``|Omega| = h*w + 1``. The NRE loss map is ``L_n(p) = min(-ln C_n(p), ln|Omega|)``.

Coordinates: a map cell (x, y) is centred on grid coordinate (x, y) (OpenCV convention, centres
at integers, see nre_ros.camera). Local (fine) maps are windows: cell (i, j) of window n lies at
grid coordinate ``origin[n] + (j, i)``; everything outside a window costs ``ln|Omega|``.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from nre_ros import lossmaps_numba
from nre_ros.errors import ShapeError

__all__ = ['LossMaps', 'argmin_cells', 'bilinear_cost', 'coarse_loss_maps', 'loss_maps_from_logits',
           'fine_loss_maps', 'fine_loss_maps_from_logits', 'window_logits', 'window_origins']


@dataclass(frozen=True)
class LossMaps:
    """Truncated NRE loss maps of N points.

    Attributes:
        maps: (N, h, w) float32, values in [0, ln_omega]. Full-grid maps have (h, w) equal to the
            grid size; window maps are (N, S, S) placed at ``origin``.
        ln_omega: ln|Omega| of the grid the maps live on (cap and cost of "out").
        grid_size: (W, H) of the full feature grid.
        origin: (N, 2) int64 grid coordinates (x0, y0) of window cell (0, 0), or None for
            full-grid maps (origin 0).
        minima: (N,) per-map minimum loss, and min_cells (N, 2) int64 map-frame cell (x, y)
            of its first occurrence in row-major order, when the maker found them on the way
            (``coarse_loss_maps``, ``with_minima``); otherwise None and computed on demand.
            Not constructor arguments, so ``dataclasses.replace(maps, maps=...)`` drops them
            instead of carrying stale ones.
    """

    maps: Tensor
    ln_omega: float
    grid_size: tuple[int, int]
    origin: Tensor | None = None
    minima: Tensor | None = field(default=None, init=False, repr=False, compare=False)
    min_cells: Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def with_minima(self, minima: Tensor, min_cells: Tensor) -> 'LossMaps':
        """These maps with their known minima (N,) and first minimum cells (N, 2) int64."""
        out = LossMaps(self.maps, self.ln_omega, self.grid_size, self.origin)
        object.__setattr__(out, 'minima', minima)
        object.__setattr__(out, 'min_cells', min_cells)
        return out

    @property
    def num_points(self) -> int:
        return int(self.maps.shape[0])

    @property
    def nbytes(self) -> int:
        return self.maps.numel() * self.maps.element_size()

    def select(self, index: Tensor) -> 'LossMaps':
        """Maps of a subset of points; ``index`` (M,) long or (N,) bool."""
        origin = None if self.origin is None else self.origin[index]
        out = LossMaps(self.maps[index], self.ln_omega, self.grid_size, origin)
        if self.minima is None or self.min_cells is None:
            return out
        return out.with_minima(self.minima[index], self.min_cells[index])

    def to_local(self, uv: Tensor) -> Tensor:
        """(..., N, 2) grid coordinates -> coordinates in each point's map (window) frame."""
        if self.origin is None:
            return uv
        return uv - self.origin.to(uv.dtype)

    def min_loss(self) -> tuple[Tensor, Tensor]:
        """Per-map minimum loss (N,) and its cell as (N, 2) int64 grid coordinates (x, y)."""
        n, h, w = self.maps.shape
        value, flat = self.maps.reshape(n, h * w).min(dim=1)
        xy = torch.stack([flat % w, flat // w], dim=1)
        if self.origin is not None:
            xy = xy + self.origin
        return value, xy

    @functools.cached_property
    def map_min(self) -> Tensor:
        """(N,) per-map minimum loss, computed once per LossMaps (MSAC's peakedness and the
        verdict's chance bound both read it; the maps are never modified in place)."""
        if self.minima is not None:
            return self.minima
        n = self.maps.shape[0]
        return self.maps.reshape(n, -1).amin(dim=1)

    def peakedness(self) -> Tensor:
        """(N,) ``ln|Omega| - min_p L_n(p)`` = ln(|Omega| max_p C_n(p)): 0 for a flat map."""
        return self.ln_omega - self.map_min

    def argmin_uv(self, subcell: bool = True, index: Tensor | None = None) -> Tensor:
        """(N, 2) float32 grid coordinates of each map's minimum, or (M, 2) of the maps
        ``index`` (M,) int64 selects (see ``argmin_cells``)."""
        uv = argmin_cells(self.maps, subcell, index, None if index is None else self.map_min,
                          self.min_cells)
        if self.origin is not None:
            origin = self.origin if index is None else self.origin[index]
            uv = uv + origin.to(uv.dtype)
        return uv

    def lookup(self, uv: Tensor, valid: Tensor | None = None) -> Tensor:
        """Bilinear lookup of L_n at grid coordinates (the NRE of Eq. 4 with s_n = 1, truncated).

        Each of the 4 neighbouring cells that lies outside the map costs ln|Omega| (the "out"
        category), as does every point with ``valid`` False (e.g. behind the camera).

        Args:
            uv: (..., N, 2) grid coordinates (x, y); leading dims broadcast (e.g. M hypotheses).
            valid: optional (..., N) bool.

        Returns:
            (..., N) float32 NRE values in [0, ln_omega].
        """
        n, h, w = self.maps.shape
        if uv.shape[-2] != n or uv.shape[-1] != 2:
            raise ShapeError(f'uv must have shape (..., {n}, 2), got {tuple(uv.shape)}')
        lead = uv.shape[:-2]
        uv = self.to_local(uv).reshape(-1, n, 2).to(self.maps.dtype)
        if valid is not None:
            valid = valid.reshape(-1, n)
        offset = torch.arange(n, device=uv.device) * (h * w)
        out = bilinear_cost(self.maps.reshape(-1), offset, (w, h), self.ln_omega, uv[..., 0],
                            uv[..., 1], valid)
        return out.reshape(lead + (n,))


def argmin_cells(maps: Tensor, subcell: bool = True, index: Tensor | None = None,
                 minima: Tensor | None = None, cells: Tensor | None = None) -> Tensor:
    """(N, 2) float32 map-frame coordinates (x, y) of the minima of (N, h, w) maps, first
    occurrence in row-major order, found row first, then column (cheaper than one argmin over
    h*w cells). With ``index`` (M,) int64: (M, 2) of the maps it selects; given also the maps'
    minima (N,) (``LossMaps.map_min``), the compiled path (``lossmaps_numba``) reads the
    selected maps in place, each up to the row holding its minimum (torch copies them). Given
    ``cells`` (N, 2) int64, every map's first minimum cell (``LossMaps.min_cells``), no map is
    searched.

    With ``subcell`` the minimum is refined per axis by the vertex of the parabola through the
    loss at the cell and its two neighbours (exact for Gaussian bumps, whose loss is
    quadratic), clamped to half a cell; no shift where a neighbour is missing or the loss is
    not convex there.
    """
    n, h, w = maps.shape
    rows = torch.arange(n, device=maps.device) if index is None else index
    if cells is not None:
        x, y = (cells if index is None else cells.index_select(0, index)).unbind(1)
    elif (index is not None and minima is not None and maps.dtype == torch.float32
            and lossmaps_numba.usable(maps)):
        x, y = lossmaps_numba.argmin_cells(maps, index, minima).unbind(1)
    else:
        sub = maps if index is None else maps[index]
        y = sub.amin(dim=2).argmin(dim=1)
        x = sub[torch.arange(len(rows), device=maps.device), y].argmin(dim=1)
    uv = torch.stack([x, y], dim=1).to(torch.float32)
    if not subcell:
        return uv
    flat = maps.reshape(-1)
    cell = rows * (h * w) + y * w + x
    c = flat[cell]
    coord = torch.stack([x, y], dim=1)
    ok = (coord > 0) & (coord < torch.tensor([w - 1, h - 1], device=maps.device))
    s = torch.tensor([1, w], device=maps.device) * ok
    lo = flat[cell[:, None] - s]
    hi = flat[cell[:, None] + s]
    curv = lo - 2 * c[:, None] + hi
    ok = ok & (curv > 1e-6)
    d = 0.5 * (lo - hi) / torch.where(ok, curv, torch.ones_like(curv))
    return uv + torch.where(ok, d.clamp(-0.5, 0.5), torch.zeros_like(d))


def bilinear_cost(flat: Tensor, offset: Tensor, size: tuple[int, int], ln_omega: float,
                  x: Tensor, y: Tensor, valid: Tensor | None = None) -> Tensor:
    """Bilinear lookup of truncated loss maps stored flat, without padding copies.

    Each of the 4 stencil corners that lies outside its (w x h) map reads ``ln_omega``, as
    does every non-finite or ``valid`` False coordinate: ``ln_omega - sum_c w_c (ln_omega -
    L(c))`` over the corners inside the map.

    Args:
        flat: all maps, flattened (float32).
        offset: (n,) int64 start of each point's map in ``flat``.
        size: (w, h) of every map.
        x, y: (M, n) map-frame coordinates; valid: optional (M, n) bool.

    Returns:
        (M, n) loss values in [0, ln_omega].
    """
    w, h = size
    if flat.dtype == x.dtype == y.dtype == torch.float32 and lossmaps_numba.usable(flat, x, y):
        return lossmaps_numba.bilinear_cost(flat, offset, size, ln_omega, x, y, valid)
    ok = torch.isfinite(x) & torch.isfinite(y)
    if valid is not None:
        ok &= valid
    idx, wts = [], []
    for v, size_v in ((x, w), (y, h)):
        v = torch.where(ok, v, -1.0).clamp_(-1.0, float(size_v))  # in [-1, size]
        base = v.floor()
        f = v.sub_(base)
        b = base.long()
        # corner weights, zero for a corner outside the map
        wts.append(((1 - f) * ((b >= 0) & (b < size_v)), f * (b < size_v - 1)))
        idx.append((b.clamp(0, size_v - 1), (b + 1).clamp_(max=size_v - 1)))
    (x0, x1), (y0, y1) = idx
    (wx0, wx1), (wy0, wy1) = wts
    r0 = y0.mul_(w).add_(offset)
    r1 = y1.mul_(w).add_(offset)
    corners = torch.stack([r0 + x0, r0 + x1, r1 + x0, r1 + x1])
    g = flat.index_select(0, corners.reshape(-1)).reshape(corners.shape)
    g = g.neg_().add_(ln_omega)                            # ln|Omega| - L at the 4 corners
    gain = wy0 * (wx0 * g[0] + wx1 * g[1]) + wy1 * (wx0 * g[2] + wx1 * g[3])
    return (ln_omega - gain * ok).clamp_(0.0, ln_omega)


def loss_maps_from_logits(logits: Tensor, ln_omega: float | None = None) -> LossMaps:
    """Truncated loss maps from full-grid matching logits.

    Args:
        logits: (N, h, w) scores; C_n = softmax over the h*w cells.
        ln_omega: cap; default ln(h*w + 1).

    Returns:
        LossMaps with (N, h, w) float32 maps ``min(-ln C_n, ln|Omega|)``.
    """
    if logits.ndim != 3:
        raise ShapeError(f'logits must have shape (N, h, w), got {tuple(logits.shape)}')
    n, h, w = logits.shape
    if ln_omega is None:
        ln_omega = math.log(h * w + 1)
    log_probs = torch.log_softmax(logits.reshape(n, h * w).float(), dim=1).reshape(n, h, w)
    return _truncated(log_probs, ln_omega, _all_finite(logits))   # L = -ln C, truncated


def _neg_clamp_(maps: Tensor, ln_omega: float) -> Tensor:
    """``maps <- min(-maps, ln_omega)`` in place (one compiled pass on the CPU)."""
    if maps.is_contiguous() and maps.dtype == torch.float32 and lossmaps_numba.usable(maps):
        lossmaps_numba.neg_clamp_(maps, ln_omega)
        return maps
    return maps.neg_().clamp_(max=ln_omega)


def _all_finite(x: Tensor) -> bool:
    """Whether every value of ``x`` is finite, told by their sum (one vectorised reduction; a
    sum overflowing to inf only sends the caller down its slower NaN-safe path)."""
    return math.isfinite(float(x.sum()))


def _truncated(log_probs: Tensor, ln_omega: float, finite: bool) -> LossMaps:
    """Full-grid LossMaps ``min(-log_probs, ln_omega)`` of (N, h, w) float32 log-probabilities
    (negated and truncated in place), with each map's minimum and first minimum cell in
    row-major order found on the way: one compiled pass on the CPU when the log-probabilities
    are known ``finite`` (log-softmax rows of finite logits)."""
    n, h, w = log_probs.shape
    if finite and log_probs.is_contiguous() and log_probs.dtype == torch.float32 \
            and lossmaps_numba.usable(log_probs):
        minima, first = lossmaps_numba.neg_clamp_rows_(log_probs, ln_omega)
    else:
        _neg_clamp_(log_probs, ln_omega)
        minima, first = log_probs.reshape(n, -1).min(dim=1)
    return LossMaps(log_probs, float(ln_omega), (w, h)).with_minima(
        minima, torch.stack([first % w, first // w], dim=1))


def coarse_loss_maps(query_desc: Tensor, point_desc: Tensor, inv_temperature: float,
                     normalize: bool = False, chunk_elements: int = 1 << 23,
                     matmul_dtype: torch.dtype = torch.float32) -> LossMaps:
    """Loss maps of N map points on a dense query descriptor grid (one matmul + logsumexp).

    Args:
        query_desc: (C, h, w) query descriptors.
        point_desc: (N, C) map point descriptors, same device.
        inv_temperature: tau multiplying the dot products (about 20 for XFeat's L2-normalised
            64-d descriptors; 1.0 for NRE's raw descriptors).
        normalize: L2-normalise both descriptor sets first.
        chunk_elements: points x cells computed per matmul; the logits are written straight
            into the output and normalised there, so no transient buffer exists at any size
            (in bf16, one bf16 buffer of a chunk's logits).
        matmul_dtype: torch.float32, or torch.bfloat16 for the dot products in bf16 (for CPUs
            with bf16 units; measured in docs/decisions.md; rounding: ``_shifted_bf16_operands``).
            The log-softmax runs in float32 either way.

    Returns:
        LossMaps with (N, h, w) float32 maps, ln_omega = ln(h*w + 1), grid_size (w, h).
    """
    if query_desc.ndim != 3 or point_desc.ndim != 2 or point_desc.shape[1] != query_desc.shape[0]:
        raise ShapeError(f'expected query_desc (C, h, w) and point_desc (N, C), got '
                         f'{tuple(query_desc.shape)} and {tuple(point_desc.shape)}')
    if matmul_dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f'matmul_dtype must be torch.float32 or torch.bfloat16, got {matmul_dtype}')
    c, h, w = query_desc.shape
    q = query_desc.reshape(c, h * w).float()
    p = point_desc.float()
    if normalize:
        q = torch.nn.functional.normalize(q, dim=0)
        p = torch.nn.functional.normalize(p, dim=1)
    p = p * float(inv_temperature)
    finite = _all_finite(p) and _all_finite(q)
    ln_omega = math.log(h * w + 1)
    n = p.shape[0]
    step = max(1, chunk_elements // (h * w))
    maps = torch.empty(n, h * w, dtype=torch.float32, device=q.device)
    if matmul_dtype == torch.bfloat16:
        p, q = _shifted_bf16_operands(p, q)
        buffer = torch.empty(min(step, n), h * w, dtype=torch.bfloat16, device=q.device)
    for s in range(0, n, step):
        rows = maps[s:s + step]                   # contiguous rows of the output
        if matmul_dtype == torch.bfloat16:
            logits = buffer[:rows.shape[0]]
            torch.mm(p[s:s + step], q, out=logits)
            rows.copy_(logits)
        else:
            torch.mm(p[s:s + step], q, out=rows)
        torch.log_softmax(rows, dim=1, out=rows)  # row-wise, in place
    return _truncated(maps.reshape(n, h, w), ln_omega, finite)


def _shifted_bf16_operands(p: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    """bf16 operands (N, C + 1), (C + 1, h w) whose product is ``p q - b`` with b_n the
    Cauchy-Schwarz bound ``|p_n| max_cells |q|`` of row n's logits.

    A log-softmax row is unchanged by a constant shift, but a bf16 product is rounded to 8
    significant bits: shifted, the largest logits (those the loss map resolves below its cap)
    lie near 0, where that rounding is finest, instead of near tau (0.06-0.125 nats there)."""
    bound = p.norm(dim=1, keepdim=True) * q.norm(dim=0).max()
    pa = torch.cat([p, -bound], dim=1).to(torch.bfloat16)
    qa = torch.cat([q, q.new_ones(1, q.shape[1])], dim=0).to(torch.bfloat16)
    return pa, qa


def window_origins(centres: Tensor, window: int) -> Tensor:
    """(N, 2) int64 top-left cells of S x S windows centred on (N, 2) grid coordinates.

    The window centre ``origin + (S-1)/2`` is within half a cell of the requested centre.
    """
    return torch.round(centres - (window - 1) / 2.0).long()


def fine_loss_maps(query_desc: Tensor, point_desc: Tensor, centres: Tensor, coarse: LossMaps,
                   fine_per_coarse: float, inv_temperature: float, window: int = 16,
                   divisor: float = 1.0, normalize: bool = False,
                   tile: int = 48, coarse_index: Tensor | None = None) -> LossMaps:
    """Local fine loss maps in windows around given fine-grid centres (App. D.1).

    The softmax runs over the window cells that lie inside the fine grid; the window's mass is
    the coarse probability ``exp(-L_coarse)`` integrated over the area the window covers (so a
    window holds what the coarse map believes it should), optionally divided by ``divisor``.

    Args:
        query_desc: (C, Hf, Wf) fine query descriptors.
        point_desc: (N, C) fine map point descriptors.
        centres: (N, 2) fine-grid coordinates the windows are centred on (e.g. reprojections
            under the coarse pose).
        coarse: the same N points' coarse LossMaps (full grid), or with ``coarse_index``
            (N,) int64 the maps holding them at those rows (read in place, not copied).
        fine_per_coarse: fine cells per coarse cell (coarse stride / fine stride, e.g. 4).
        inv_temperature: tau for the fine softmax.
        window: S, window side in fine cells.
        divisor: extra divisor of the window mass (1 = mass preserving; the paper uses 64).
        normalize: L2-normalise descriptors first.
        tile: side (fine cells) of the tiles points are grouped by on the torch path (see
            ``window_logits``; CPU tensors go through ``lossmaps_numba`` when it is usable).

    Returns:
        LossMaps with (N, S, S) maps, ``origin`` (N, 2), grid (Wf, Hf), ln_omega = ln(Hf*Wf + 1).
    """
    c, hf, wf = query_desc.shape
    n = point_desc.shape[0]
    n_coarse = coarse.num_points if coarse_index is None else int(coarse_index.numel())
    if centres.shape != (n, 2) or n_coarse != n:
        raise ShapeError(f'centres must be ({n}, 2) and coarse maps must hold {n} points')
    q = query_desc.float()
    p = point_desc.float()
    if normalize:
        q = torch.nn.functional.normalize(q, dim=0)
        p = torch.nn.functional.normalize(p, dim=1)
    origin = window_origins(centres.float(), window)
    if lossmaps_numba.usable(q, p):
        logits = lossmaps_numba.window_logits(q, p * float(inv_temperature), origin, window)
    else:
        logits = window_logits(q, p * float(inv_temperature), origin, window, tile)
    return fine_loss_maps_from_logits(logits, origin, coarse, fine_per_coarse, (wf, hf), divisor,
                                      coarse_index)


def window_logits(query_desc: Tensor, point_desc: Tensor, origin: Tensor, window: int,
                  tile: int = 48) -> Tensor:
    """(N, S, S) dot products ``point_desc[n] . query_desc[:, y, x]`` over each S x S window
    (cell (i, j) at ``origin[n] + (j, i)``). Cells outside the grid hold 0, except in windows
    wholly outside it (moved inside; fine_loss_maps_from_logits masks every outside cell).

    Points are grouped by the ``tile`` x ``tile`` block of the grid their window starts in; each
    group is one matmul against its block's (tile + S - 1)^2 cells, from which the windows
    are read: more multiply-adds than gathering (N, S^2, C) patches, but the matmul runs from
    cache and the gather from memory, so it is faster (docs/decisions.md).

    Args:
        query_desc: (C, H, W) float32.
        point_desc: (N, C) float32 (any scaling already applied).
        origin: (N, 2) int64 grid coordinates (x0, y0) of each window's cell (0, 0).
    """
    c, h, w = query_desc.shape
    n, s = point_desc.shape[0], window
    if n == 0:
        return query_desc.new_zeros(0, s, s)
    span = tile + s - 1                       # block side: every window starting in the tile
    # Windows wholly outside the grid are clamped just inside its padded border (their cells
    # are masked by the caller); shifted origins are >= 0.
    lo = origin.new_tensor([-(s - 1), -(s - 1)])
    hi = origin.new_tensor([w - 1, h - 1])
    shifted = torch.minimum(torch.maximum(origin, lo), hi) + (s - 1)
    tiles_x = -(-(w + s - 1) // tile)
    tile_id = (shifted[:, 1] // tile) * tiles_x + shifted[:, 0] // tile
    order = torch.argsort(tile_id)
    ids, counts = torch.unique_consecutive(tile_id[order], return_counts=True)
    d = torch.arange(s, device=origin.device)
    cells = (d[:, None] * span + d[None, :]).reshape(-1)            # (S^2,) block offsets
    sorted_out = torch.empty(n, s * s, dtype=torch.float32, device=query_desc.device)
    start = 0
    for tid, count in zip(ids.tolist(), counts.tolist()):
        idx = order[start:start + count]
        bx, by = (tid % tiles_x) * tile - (s - 1), (tid // tiles_x) * tile - (s - 1)
        block = query_desc[:, max(by, 0):by + span, max(bx, 0):bx + span]
        pad = (max(-bx, 0), span - block.shape[2] - max(-bx, 0),
               max(-by, 0), span - block.shape[1] - max(-by, 0))
        if any(pad):
            block = torch.nn.functional.pad(block, pad)
        dense = point_desc.index_select(0, idx) @ block.reshape(c, span * span)
        local = shifted.index_select(0, idx) - (s - 1)
        first = (local[:, 1] - by) * span + (local[:, 0] - bx)
        torch.gather(dense, 1, first[:, None] + cells, out=sorted_out[start:start + count])
        start += count
    return torch.empty_like(sorted_out).index_copy_(0, order, sorted_out).reshape(n, s, s)


def fine_loss_maps_from_logits(logits: Tensor, origin: Tensor, coarse: LossMaps,
                               fine_per_coarse: float, grid_size: tuple[int, int],
                               divisor: float = 1.0, coarse_index: Tensor | None = None
                               ) -> LossMaps:
    """Fine window loss maps from window logits.

    Args:
        logits: (N, S, S) matching scores of the window cells (cells outside the fine grid are
            ignored whatever their value).
        origin: (N, 2) int64 fine-grid coordinates of window cell (0, 0).
        coarse: (N, h, w) full-grid coarse LossMaps of the same points.
        fine_per_coarse: fine cells per coarse cell (r); fine coordinate x_f maps to coarse
            ``(x_f + 0.5) / r - 0.5``.
        grid_size: (Wf, Hf) of the fine grid.
        divisor: extra divisor of the window mass.
        coarse_index: optional (N,) int64 rows of ``coarse`` holding the N points.

    Returns:
        LossMaps (N, S, S) with ``L = min(-ln(softmax_window * mass / divisor), ln|Omega_f|)``.
    """
    n, s, _ = logits.shape
    wf, hf = grid_size
    ln_omega = math.log(wf * hf + 1)
    logits = logits.float()
    if lossmaps_numba.usable(logits, coarse.maps):   # same maps, one compiled pass
        loss = lossmaps_numba.window_loss_maps(logits, origin, coarse.maps, coarse_index,
                                               coarse.ln_omega, fine_per_coarse, grid_size,
                                               divisor, ln_omega)
        return LossMaps(loss, ln_omega, (wf, hf), origin)
    # Usually every window lies inside the fine grid: then no cell needs masking.
    lo, hi = origin.amin(dim=0), origin.amax(dim=0)
    all_inside = bool((lo >= 0).all()) and int(hi[0]) + s <= wf and int(hi[1]) + s <= hf
    inside = None
    if not all_inside:
        d = torch.arange(s, device=logits.device)
        xs = origin[:, 0, None] + d[None, :]
        ys = origin[:, 1, None] + d[None, :]
        inside = (((xs >= 0) & (xs < wf))[:, None, :] & ((ys >= 0) & (ys < hf))[:, :, None])
        logits = logits.masked_fill(~inside, float('-inf'))
    loss = torch.log_softmax(logits.reshape(n, -1), dim=1).reshape(n, s, s)
    log_mass = _coarse_log_mass(coarse, origin, s, fine_per_coarse, grid_size, coarse_index
                                ) - math.log(divisor)
    loss = loss.add_(log_mass[:, None, None]).neg_()   # -(log softmax + log mass / divisor)
    loss = torch.nan_to_num_(loss, nan=ln_omega).clamp_(0.0, ln_omega)
    if inside is not None:
        loss = loss.masked_fill_(~inside, ln_omega)
    return LossMaps(loss.contiguous(), ln_omega, (wf, hf), origin)


def _coarse_log_mass(coarse: LossMaps, origin: Tensor, s: int, r: float,
                     grid_size: tuple[int, int], index: Tensor | None = None) -> Tensor:
    """(N,) log of the coarse mass exp(-L) over the area a fine window covers (exact overlap).

    Cells at the cap (truncated) count as 0. The window covers fine interval [x0 - 0.5, x0 + S - 0.5] (clipped to the fine grid), i.e.
    coarse interval [(x0)/r - 0.5, (x0 + S)/r - 0.5]; coarse cell j covers [j - 0.5, j + 0.5].
    """
    _, h, w = coarse.maps.shape
    n = origin.shape[0]
    rows = torch.arange(n, device=origin.device) if index is None else index
    wf, hf = grid_size
    o = origin.to(torch.float64)
    lo_x = o[:, 0].clamp(0, wf) / r - 0.5
    hi_x = (o[:, 0] + s).clamp(0, wf) / r - 0.5
    lo_y = o[:, 1].clamp(0, hf) / r - 0.5
    hi_y = (o[:, 1] + s).clamp(0, hf) / r - 0.5
    k = int(math.ceil(s / r)) + 2
    j0x = torch.floor(lo_x + 0.5).long()
    j0y = torch.floor(lo_y + 0.5).long()
    dk = torch.arange(k, device=origin.device)
    jx = j0x[:, None] + dk
    jy = j0y[:, None] + dk
    ovx = (torch.minimum(hi_x[:, None], jx + 0.5) - torch.maximum(lo_x[:, None], jx - 0.5)
           ).clamp(min=0) * ((jx >= 0) & (jx < w))
    ovy = (torch.minimum(hi_y[:, None], jy + 0.5) - torch.maximum(lo_y[:, None], jy - 0.5)
           ).clamp(min=0) * ((jy >= 0) & (jy < h))
    idx = jy.clamp(0, h - 1)[:, :, None] * w + jx.clamp(0, w - 1)[:, None, :]
    flat = (rows * (h * w))[:, None] + idx.reshape(n, -1)
    loss = coarse.maps.reshape(-1).index_select(0, flat.reshape(-1)).reshape(n, -1).double()
    # Truncated cells hold an unknown probability below 1/|Omega|: count them as 0.
    prob = torch.exp(-loss) * (loss < coarse.ln_omega - 1e-5)
    mass = (prob.reshape(n, k, k) * ovy[:, :, None] * ovx[:, None, :]).sum(dim=(1, 2))
    return torch.log(mass.clamp(min=1e-30)).to(torch.float32)
