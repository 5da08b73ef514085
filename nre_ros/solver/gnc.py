"""Pose refinement: GNC over a sigma schedule with damped IRLS (mean-shift) steps
(Germain et al. CVPR 2021, §5.2, App. C).

Smoothed cost of point n at projection w_n (grid coordinates):
``c_n = -sum_q (ln|Omega| - L_n(q)) k_sigma(q - w_n)``, k_sigma the normalised 2D Gaussian,
summed over the cells within ``radius_sigmas * sigma`` of w_n (the kernel is negligible beyond).
IRLS step: ``a_nq = k (ln|Omega| - L_n(q)) / sigma^2``, ``H = sum A_n J_n^T J_n``,
``g = sum J_n^T b_n`` with ``A_n = sum_q a_nq``, ``b_n = sum_q a_nq (q - w_n)``; 6x6 solves in
float64; left SE(3) updates on T_cam_world.

The kernel is separable, so every per-point sum is a moment ``sum_q k_y dy^i G k_x dx^j`` of
the gathered window G = ln|Omega| - L: one matmul with a basis shared by all points gives all of
them (cost, A, b and the second moments), see ``_Windows.moments``. Windows are read from
compact per-point patches (``_Windows``); points with no weight near them are skipped
(``prune_weight``). The per-point 2x2 / 2x6 algebra of the normal equations runs in float64
numpy on the host (N values: dispatch cost, not arithmetic, dominated it in torch).

The IRLS (mean-shift) matrix is a majorizer: on a map whose bump is wider than sigma it
under-steps by ~(spread/sigma)^2 and needs hundreds of iterations. By default the steps use each
point's exact 2x2 curvature of the smoothed cost instead, ``A_n I - S_n`` projected onto PSD
(Gauss-Newton through the projection, Newton in the image), with the same damping and
accept/reject; ``step='irls'`` gives the paper's update.

Termination (unlike the official code, explicit): every stage has its own iteration cap, there
is a global cap, and the cost is recomputed whenever sigma changes. A stage also ends when the
next Newton step is negligible: ``g . delta < newton_tol^2`` (the step is below ``newton_tol``
standard deviations of the smoothed cost's Laplace approximation; ``stage_newton_tol`` for
every stage but the last), when an accepted step decreased the cost by less than ``rel_tol``
(relative), or when the damping exceeds ``lambda_max``.

Points near a map edge are skipped (``border_sigmas``); the skipped set is fixed at the start
of each stage, so the cost stays continuous within a stage (points entering or leaving the
border band made it jump by a whole point's cost and rejected good steps).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from nre_ros import compiled
from nre_ros.geometry import se3_exp
from nre_ros.lossmaps import LossMaps

__all__ = ['GncConfig', 'RefineResult', 'refine', 'smoothed_terms', 'information',
           'warmup_compiled']

KERNELS = 'nre_ros.solver._gnc_kernels'    # numba kernels of the CPU path (nre_ros.compiled)
_NO_CELLS = np.zeros((0, 2), np.float32)   # no patch corners (the maps are their own patches)


@dataclass(frozen=True)
class GncConfig:
    """Refinement settings (sigmas in cells of the grid the maps live on)."""

    # Paper: 2 -> 0.6; below 0.8 a Gaussian sampled on the unit grid ripples and biases the
    # minimum (docs/decisions.md)
    sigmas: tuple[float, ...] = (2.0, 1.0, 0.8)
    max_stage_iterations: int = 8
    max_iterations: int = 60
    rel_tol: float = 1e-4          # a stage ends when the relative cost decrease is below this
    step_tol: float = 1e-7         # ... or the update norm (m, rad) is below this
    newton_tol: float = 0.01       # ... or sqrt(g . delta) is below this (last stage)
    stage_newton_tol: float = 0.1  # ... (earlier stages)
    step: Literal['newton', 'irls'] = 'newton'  # per-point curvature (see module doc) or IRLS
    damping: Literal['levenberg', 'marquardt'] = 'levenberg'
    lambda_init: float = 1e-6      # relative to mean(diag H) (levenberg) or to diag H
    lambda_min: float = 1e-9
    lambda_max: float = 1e3
    radius_sigmas: float = 3.0     # kernel support, in sigmas
    patch_margin: int = 3          # full-grid maps: cells of motion before patches are re-cut
    prune_weight: float = 1e-3     # skip points with no ln|Omega| - L above this near them
    border_sigmas: float = 2.5     # points within this many sigmas of a map edge are skipped
    min_depth: float = 1e-4


@dataclass(frozen=True)
class RefineResult:
    """Outcome of ``refine``.

    Attributes:
        T_cam_world: (4, 4) float64 refined pose.
        cost: smoothed cost at the last sigma (nats, <= 0) over the points kept (points
            with no weight above ``prune_weight`` near them are left out).
        iterations: accepted + rejected steps, all stages.
        stage_costs: smoothed cost at the end of each stage.
        hit_cap: True if the global iteration cap ended the refinement.
        finite: False if the pose became non-finite (diverged).
        information: (6, 6) float64 undamped step matrix at T_cam_world and the last sigma
            (the 'laplace' information for step='newton', 'irls' for step='irls'), or None.
        evaluations: cost evaluations (window gathers), all stages.
    """

    T_cam_world: Tensor
    cost: float
    iterations: int
    stage_costs: list = field(default_factory=list)
    hit_cap: bool = False
    finite: bool = True
    information: Tensor | None = None
    evaluations: int = 0


@dataclass(frozen=True)
class _Window:
    """(2r+1)^2 windows of the weight G around the nearest cells of the projections: gathered
    (torch path), or only their centre cells (compiled path: the moments kernel reads the
    patches in place)."""

    G: Tensor | None               # (M, K, K) float32 weights of the kept points
    inside: Tensor | None          # (M, 2, K) float 1 for rows / columns inside (None: all)
    f: Tensor                      # (M, 2) offsets of the projections from the window centres
    r: int
    cell: Tensor | None = None     # (M, 2) int64 window centre cells in the patches (compiled)


@dataclass(frozen=True)
class _Evaluation:
    """The smoothed cost and its moments at one pose and sigma."""

    T: np.ndarray                  # (4, 4) float64 T_cam_world
    pc: Tensor                     # (M, 3) float64 camera points of the kept points
    win: _Window
    m: Tensor                      # (6, M) float64 kernel moments
    sigma: float
    active: Tensor                 # (M,) bool, points off the border band (fixed per stage)
    cost: float


@dataclass(frozen=True)
class _NormalEquations:
    H: np.ndarray                  # (6, 6) float64 undamped
    g: np.ndarray                  # (6,)


def _radius(sigma: float, radius_sigmas: float) -> int:
    # +0.5: the window is centred on the nearest cell, not on uv; keep >= radius on both sides.
    return max(1, int(math.ceil(radius_sigmas * sigma + 0.5)))


def _border_mask(local: Tensor, size: tuple[int, int], sigma: float,
                 border_sigmas: float) -> Tensor:
    """(N,) True where the projection is at least border_sigmas * sigma from the map edge."""
    w, h = size
    m = border_sigmas * sigma - 0.5
    if m <= -0.5:
        return torch.isfinite(local).all(-1)
    lo = local.new_tensor([m, m])
    hi = local.new_tensor([w - 1 - m, h - 1 - m])
    return ((local >= lo) & (local <= hi)).all(-1)


class _Windows:
    """Kernel moments of (2r+1)^2 windows of N loss maps, read from per-point patches of the
    weight ``G = ln|Omega| - L`` (0 beyond the map).

    Window maps (fine level) and small grids are their own patches. Full-grid maps get a
    (2 half + 1)^2 patch around each point's projection, cut at the first evaluation and
    again only when a window would leave its patch: every evaluation then reads a compact
    array (about 2 MB for 1000 points) instead of scattered rows of the full maps.

    Points whose patch holds no weight above ``prune`` contribute at most that much anywhere
    their windows can reach inside the patch, so they are dropped (``sel`` lists the points
    kept); patches are only re-cut (and the choice redone) at a stage start.
    """

    def __init__(self, maps: LossMaps, half: int, prune: float = 0.0):
        self.maps = maps
        n, h, w = maps.maps.shape
        self.n, self.h, self.w = n, h, w
        self.dev = maps.maps.device
        self.prune = prune
        self.cut = maps.origin is None and (h > 2 * half + 1 or w > 2 * half + 1)
        self.size = 2 * half + 1
        self.sel = None                   # (M,) int64 points kept (None: all)
        self.patch = None                 # (M * ph * pw,) float32 G of the kept points
        self.cut_centre = None            # (N, 2) float32 cells the patches were cut around
        self._basis: dict[int, tuple[Tensor, Tensor]] = {}
        self._grid: dict[int, Tensor] = {}
        self.kernels = compiled.usable(KERNELS, maps.maps)   # None: torch path
        if not self.cut:                  # the maps are their own patches
            G = (maps.ln_omega - maps.maps).reshape(n, h * w)
            if prune > 0:
                self.sel = torch.nonzero(G.amax(dim=1) > prune).reshape(-1)
                G = G.index_select(0, self.sel)
            self.patch = G.reshape(-1)
            self._set_shape(h, w)

    @property
    def m(self) -> int:
        return self.n if self.sel is None else int(self.sel.numel())

    def _set_shape(self, ph: int, pw: int) -> None:
        self.ph, self.pw = ph, pw
        itype = torch.int32 if self.m * ph * pw < 2 ** 31 - 1 else torch.int64
        self.itype = itype
        self.offset = torch.arange(self.m, device=self.dev, dtype=itype) * (ph * pw)
        if self.kernels is not None:
            self.offset64 = self.offset.numpy().astype(np.int64)
        self.lo = torch.zeros(2, 1, device=self.dev)
        self.hi = torch.tensor([[pw - 1.0], [ph - 1.0]], device=self.dev)
        self._grid = {}

    def _gather(self, centre: Tensor, index: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """(M, S, S) patches of G around the (M, 2) float cells ``centre`` of points
        ``index`` (None: all), and their (M,) maxima when computed on the way (compiled)."""
        h, w, s = self.h, self.w, self.size
        half = s // 2
        if self.kernels is not None:
            pts = np.arange(self.n) if index is None else index.numpy().astype(np.int64)
            maps = np.ascontiguousarray(self.maps.maps.numpy(), dtype=np.float32)
            G = np.empty((pts.shape[0], s, s), np.float32)
            peak = np.empty(pts.shape[0], np.float32)
            compiled.threads(G.size)
            self.kernels._gather_patches(maps, pts, centre.to(torch.int64).numpy(), half,
                                         float(self.maps.ln_omega), G, peak)
            return torch.from_numpy(G), torch.from_numpy(peak)
        itype = torch.int32 if self.n * h * w < 2 ** 31 - 1 else torch.int64
        pts = torch.arange(self.n, device=self.dev, dtype=itype) if index is None \
            else index.to(itype)
        d = torch.arange(-half, half + 1, device=self.dev, dtype=itype)
        cells = centre.to(itype)[:, :, None] + d                  # (M, 2, S)
        size = torch.tensor([[w], [h]], device=self.dev, dtype=itype)
        inside = (cells >= 0) & (cells < size)
        ci = torch.minimum(cells.clamp(min=0), size - 1)
        rows = ci[:, 1] * w + (pts * (h * w))[:, None]
        idx = rows[:, :, None] + ci[:, 0, None, :]                # (M, S, S)
        G = self.maps.maps.reshape(-1).index_select(0, idx.reshape(-1)).reshape(-1, s, s)
        G.neg_().add_(self.maps.ln_omega)                          # fresh copy: in place
        if not bool(inside.all()):                                 # cells beyond the map: 0
            G.mul_(inside[:, 1, :, None] & inside[:, 0, None, :])
        return G, None

    def needs_cut(self, centre: Tensor, ok: Tensor, r: int) -> bool:
        """True if a usable point's (2r+1)^2 window around ``centre`` ((N, 2), all points)
        would leave its patch (or nothing is cut yet)."""
        if not self.cut:
            return False
        if self.patch is None:
            return True
        out = ((centre - self.cut_centre).abs() > self.size // 2 - r).any(-1)
        return bool(out.logical_and_(ok).any())

    def cut_all(self, centre: Tensor) -> None:
        """Cut every point's patch around ``centre`` ((N, 2) float cells) and choose the
        points kept."""
        G, peak = self._gather(centre, None)
        self.sel = None
        if self.prune > 0:
            if peak is None:
                peak = G.reshape(self.n, -1).amax(dim=1)
            self.sel = torch.nonzero(peak > self.prune).reshape(-1)
            G = G.index_select(0, self.sel)
        self.patch = G.reshape(-1)
        self.cut_centre = centre.clone()
        self.patch_origin = (centre if self.sel is None else centre[self.sel]) - self.size // 2
        self._set_shape(self.size, self.size)

    def _recut_kept(self, centre: Tensor) -> None:
        """Re-cut the kept points' patches around their (M, 2) cells ``centre``."""
        self.patch = self._gather(centre, self.sel)[0].reshape(-1)
        if self.sel is None:
            self.cut_centre = centre.clone()
        else:
            self.cut_centre[self.sel] = centre
        self.patch_origin = centre - self.size // 2

    def _offsets(self, r: int) -> tuple[Tensor, Tensor]:
        """Offsets c = -r..r and the (6, K^2) power basis c_y^i c_x^j of the window cells for
        (i, j) = (0,0), (0,1), (1,0), (0,2), (1,1), (2,0)."""
        if r not in self._basis:
            c = torch.arange(-r, r + 1, device=self.dev, dtype=torch.float32)
            cy, cx = c[:, None].expand(-1, c.numel()), c[None, :].expand(c.numel(), -1)
            one = torch.ones_like(cx)
            B = torch.stack([one, cx, cy, cx * cx, cx * cy, cy * cy]).reshape(6, -1)
            self._basis[r] = (c, B.contiguous())
        return self._basis[r]

    def window(self, local: Tensor, ok: Tensor, r: int) -> _Window:
        """The (2r+1)^2 windows of G of the kept points around the nearest cells of ``local``
        ((M, 2) float32 finite map-frame coordinates)."""
        if self.kernels is not None:
            return self._window_compiled(local, ok, r)
        c, _ = self._offsets(r)
        K = c.numel()
        centre = local.round()
        f = local - centre
        if self.cut:
            s = self.size
            off = centre - self.patch_origin                      # (M, 2) window centre
            if bool(((off < r) | (off > s - 1 - r)).any(-1).logical_and_(ok).any()):
                self._recut_kept(centre)
                off = centre - self.patch_origin
            # Windows of usable points lie inside their patches; others are clamped there
            # (their kernel is zero).
            off = off.clamp_(r, s - 1 - r)
            off = off.to(self.itype) - r
            base = self.offset + off[:, 1] * s + off[:, 0]
            if r not in self._grid:
                d = torch.arange(K, device=self.dev, dtype=self.itype)
                self._grid[r] = d[:, None] * s + d[None, :]
            idx = base[:, None, None] + self._grid[r]             # (M, K, K)
            inside = None
        else:
            coords = centre.unsqueeze(-1) + c                     # (M, 2, K) patch cells
            ci = coords.clamp(self.lo, self.hi)
            inside = (ci == coords).to(torch.float32)             # cells beyond the map: 0
            ci = ci.to(self.itype)
            idx = (ci[:, 1] * self.pw + self.offset[:, None])[:, :, None] + ci[:, 0, None, :]
        G = self.patch.index_select(0, idx.reshape(-1)).reshape(-1, K, K)
        return _Window(G, inside, f, r)

    def _window_compiled(self, local: Tensor, ok: Tensor, r: int) -> _Window:
        """``window`` on the compiled path: window centre cells and offsets in one kernel
        (the patches are re-cut first when a usable point's window would leave its patch)."""
        n = local.shape[0]
        f, cell = np.empty((n, 2), np.float32), np.empty((n, 2), np.int64)
        x, use = local.numpy(), ok.numpy()
        corner = self.patch_origin.numpy() if self.cut else _NO_CELLS
        if self.kernels._window_cells(x, use, corner, self.size, r, f, cell):
            self._recut_kept(local.round())
            if self.kernels._window_cells(x, use, self.patch_origin.numpy(), self.size, r, f,
                                          cell):      # re-cut patches are centred on the cells
                raise RuntimeError('a window left its freshly cut patch')
        return _Window(None, None, torch.from_numpy(f), r, torch.from_numpy(cell))

    def moments(self, win: _Window, ok: Tensor, sigma: float, r: int) -> Tensor:
        """(6, N) float64 moments ``sum_q k(q - w) G(q) m(d)`` with m(d) = 1, dx, dy, dx^2,
        dx dy, dy^2 (d = q - w) of the weight ``G = ln|Omega| - L`` under the normalised
        Gaussian kernel, over the (2r+1)^2 window (r <= the window's radius) around each
        projection; zero for points with ``ok`` False.

        The window sits on the nearest cell, so with c the shared integer offsets (-r..r) and
        f = w - round(w), d = c - f: the power moments in c are one matmul with a (6, K^2)
        basis shared by all points, and a binomial shift gives those in d."""
        if win.G is None:                                          # compiled path
            m = np.empty((6, win.f.shape[0]))
            compiled.threads(win.f.shape[0] * (2 * r + 1) ** 2)
            self.kernels._moments(self.patch.numpy(), self.offset64,
                                  win.cell.numpy(), self.pw, self.ph, win.f.numpy(),
                                  ok.numpy(), float(sigma), r, m)
            return torch.from_numpy(m)
        c, B = self._offsets(r)
        K = c.numel()
        G, inside, f = win.G, win.inside, win.f
        n = G.shape[0]
        if r < win.r:
            s = slice(win.r - r, win.r + r + 1)
            G = G[:, s, s]
            inside = None if inside is None else inside[:, :, s]
        delta = c - f.unsqueeze(-1)
        k = torch.exp(delta.square_().mul_(-0.5 / (sigma * sigma)))
        if inside is not None:
            k = k.mul_(inside)
        k[:, 1] *= ok[:, None] * (1.0 / (2 * math.pi * sigma * sigma))
        W = (G * k[:, 1, :, None]).mul_(k[:, 0, None, :])       # G k_y k_x
        m = (B @ W.reshape(n, K * K).T).double()                  # (6, N) power moments in c
        m00, mx, my, mxx, mxy, myy = m.unbind(0)
        fd = f.double().T
        fx, fy = fd[0], fd[1]
        # d = c - f (binomial shift)
        sx = mx - fx * m00
        sy = my - fy * m00
        return torch.stack([m00, sx, sy, mxx - fx * (mx + sx), mxy - fx * my - fy * sx,
                            myy - fy * (my + sy)])


def smoothed_terms(maps: LossMaps, uv: Tensor, valid: Tensor, sigma: float,
                   radius_sigmas: float = 3.0, second_moments: bool = False,
                   border_sigmas: float = 0.0) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Per-point smoothed cost and IRLS terms at projections ``uv``.

    A map holds no mass beyond its edge, so near an edge the smoothed bump is cut on one side
    and its minimum is pulled inwards (a pose bias, docs/decisions.md). Points whose
    projection lies within ``border_sigmas * sigma`` of the map edge are therefore skipped
    (PixLoc's border margin).

    Args:
        maps: N loss maps (full grid or windows).
        uv: (N, 2) grid coordinates of the projections.
        valid: (N,) bool (in front of the camera); invalid points contribute nothing.
        sigma: kernel std in cells.

    Returns:
        cost: (N,) c_n; A: (N,) sum_q a_nq; b: (N, 2) sum_q a_nq (q - w_n);
        S: (N, 3) sum_q a_nq (dx^2, dx dy, dy^2) / sigma^2 when ``second_moments`` else None.
    """
    r = _radius(sigma, radius_sigmas)
    local, ok = _local(maps, uv, valid, r)
    size = (maps.maps.shape[2], maps.maps.shape[1])
    if border_sigmas > 0:
        ok = ok & _border_mask(local, size, sigma, border_sigmas)
    windows = _Windows(maps, r)
    if windows.cut:
        windows.cut_all(local.round())
    m = windows.moments(windows.window(local, ok, r), ok, sigma, r)
    cost, A, b, S = (x.float() for x in _terms(m, sigma))
    return cost, A, b, (S if second_moments else None)


def _local(maps: LossMaps, uv: Tensor, valid: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """float32 map-frame coordinates (0 where unusable) and the usable mask: valid and the
    (2r+1)^2 window around the nearest cell overlaps the map (others contribute nothing)."""
    local = maps.to_local(uv).to(torch.float32)
    h, w = maps.maps.shape[1:]
    lo = local.new_tensor([-r - 0.5, -r - 0.5])
    hi = local.new_tensor([w - 0.5 + r, h - 0.5 + r])
    ok = valid & ((local > lo) & (local < hi)).all(-1)             # False for NaN / inf too
    return torch.where(ok[:, None], local, torch.zeros_like(local)), ok


def _terms(m: Tensor, sigma: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """cost (N,), A (N,), b (N, 2), S (N, 3) = (xx, xy, yy) from the (6, N) moments."""
    s2 = sigma * sigma
    return -m[0], m[0] / s2, m[1:3].T / s2, m[3:6].T / (s2 * s2)


def _point_curvature(m: np.ndarray, sigma: float, newton: bool
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-point PSD curvature (a, c, e) of [[a, c], [c, e]] (float64 numpy): A I - S
    projected onto PSD (Newton) or A I (IRLS), from the (6, N) moments."""
    s2 = sigma * sigma
    A = m[0] / s2
    if not newton:
        return A, np.zeros_like(A), A
    s4 = s2 * s2
    a = A - m[3] / s4
    c = m[4] / -s4
    e = A - m[5] / s4
    # Closed-form 2x2 PSD projection: keep the matrix if l2 >= 0, 0 if l1 <= 0, else
    # l1 v1 v1^T = l1 (M - l2 I) / (l1 - l2).
    mean = 0.5 * (a + e)
    rad = np.sqrt((0.5 * (a - e)) ** 2 + c * c)
    l1, l2 = mean + rad, mean - rad
    mixed = (l2 < 0) & (l1 > 0)
    scale = np.where(mixed, l1 / np.maximum(2 * rad, 1e-300), (l2 >= 0).astype(np.float64))
    shift = np.where(mixed, l2, 0.0)
    return (a - shift) * scale, c * scale, (e - shift) * scale


def _jacobian(points_cam: np.ndarray, fx: float, fy: float, min_depth: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """(6, N) float64 d u / d xi and d v / d xi (left increment, xi = (rho, phi): camera
    points move by ``p <- p + rho + phi x p``)."""
    x, y, z = points_cam.T
    iz = 1 / np.maximum(z, min_depth)
    u, v = x * iz, y * iz
    uv = u * v
    Ju = np.empty((6, u.size))
    Jv = np.empty((6, u.size))
    Ju[0], Ju[1], Ju[2], Ju[3], Ju[4], Ju[5] = iz, 0.0, -u * iz, -uv, 1 + u * u, -v
    Jv[0], Jv[1], Jv[2], Jv[3], Jv[4], Jv[5] = 0.0, iz, -v * iz, -1 - v * v, uv, u
    Ju *= fx
    Jv *= fy
    return Ju, Jv


class _Problem:
    """Points, maps and intrinsics of one refinement; evaluates the smoothed cost at a pose."""

    def __init__(self, points_world: Tensor, maps: LossMaps, K: Tensor, config: GncConfig,
                 newton: bool | None = None):
        """``newton``: per-point curvature (True) or the IRLS matrix (False) in the normal
        equations; None = as ``config.step``."""
        self.pts = points_world.to(torch.float64)
        self.maps = maps
        self.K = K.to(torch.float64)
        self.config = config
        self.size = (maps.maps.shape[2], maps.maps.shape[1])
        self.f = torch.stack([self.K[0, 0], self.K[1, 1]])
        self.fx, self.fy = float(self.K[0, 0]), float(self.K[1, 1])
        self.cx, self.cy = float(self.K[0, 2]), float(self.K[1, 2])
        self._no_origin = np.zeros((0, 2), np.float32)
        self.c = torch.stack([self.K[0, 2], self.K[1, 2]])
        self.newton = config.step == 'newton' if newton is None else newton
        self.windows = _Windows(maps, _radius(max(config.sigmas), config.radius_sigmas)
                                + config.patch_margin, config.prune_weight)
        self._bounds: dict[int, tuple[Tensor, Tensor]] = {}
        self._subset()
        self.evaluations = 0
        self._normal: tuple[_Evaluation, _NormalEquations] | None = None

    def _subset(self) -> None:
        """Points and window origins of the points the windows keep."""
        sel = self.windows.sel
        self.pts_sel = self.pts if sel is None else self.pts.index_select(0, sel)
        origin = self.maps.origin
        if origin is not None and sel is not None:
            origin = origin.index_select(0, sel)
        self.origin_sel = None if origin is None else origin.to(torch.float32)

    def _project(self, pts: Tensor, T: np.ndarray, origin: Tensor | None, r: int
                 ) -> tuple[Tensor, Tensor, Tensor]:
        """Camera points, float32 map-frame coordinates (0 where unusable) and the usable
        mask: in front of the camera and the (2r+1)^2 window around the nearest cell overlaps
        the map (others contribute nothing)."""
        cfg = self.config
        if r not in self._bounds:
            w, h = self.size
            self._bounds[r] = (torch.tensor([-r - 0.5, -r - 0.5], device=pts.device),
                               torch.tensor([w - 0.5 + r, h - 0.5 + r], device=pts.device))
        lo, hi = self._bounds[r]
        if self.windows.kernels is not None:
            n = pts.shape[0]
            pc, local, ok = np.empty((n, 3)), np.empty((n, 2), np.float32), np.empty(n, bool)
            o = self._no_origin if origin is None else origin.numpy()
            self.windows.kernels._project(pts.numpy(), T, self.fx, self.fy, self.cx, self.cy,
                                          o, lo.numpy(), hi.numpy(), float(cfg.min_depth),
                                          pc, local, ok)
            return torch.from_numpy(pc), torch.from_numpy(local), torch.from_numpy(ok)
        R = torch.from_numpy(T[:3, :3]).to(pts.device)
        t = torch.from_numpy(T[:3, 3]).to(pts.device)
        pc = torch.addmm(t, pts, R.T)
        z = pc[:, 2]
        uv = torch.addcmul(self.c, pc[:, :2] / z.clamp(min=cfg.min_depth)[:, None], self.f)
        local = uv.to(torch.float32)
        if origin is not None:
            local = local - origin
        ok = (z > cfg.min_depth) & ((local > lo) & (local < hi)).all(-1)  # False for NaN
        return pc, torch.where(ok[:, None], local, 0.0), ok

    def evaluate(self, T: np.ndarray, sigma: float, active: Tensor | None = None,
                 reuse: _Evaluation | None = None) -> _Evaluation:
        """Cost and moments at pose T over the kept points. ``active`` None: a stage start
        (patches are re-cut and points re-chosen if needed, the border mask is set at T).
        ``reuse``: an evaluation at this same T with windows at least as wide (the previous
        stage's last): its projections and windows are reused when the points are unchanged."""
        cfg = self.config
        r = _radius(sigma, cfg.radius_sigmas)
        win = None
        if active is None and self.windows.cut:
            pc, local, ok = self._project(self.pts, T, None, r)
            if self.windows.needs_cut(local.round(), ok, r):
                self.windows.cut_all(local.round())
                self._subset()
                reuse = None
            sel = self.windows.sel
            if sel is not None:
                pc, local, ok = pc.index_select(0, sel), local.index_select(0, sel), ok[sel]
        else:
            pc, local, ok = self._project(self.pts_sel, T, self.origin_sel, r)
        if reuse is not None and reuse.T is T and reuse.win.r >= r:
            win = reuse.win
        if win is None:
            win = self.windows.window(local, ok, r)
        if active is None:
            active = _border_mask(local, self.size, sigma, cfg.border_sigmas) \
                if cfg.border_sigmas > 0 else torch.ones_like(ok)
        m = self.windows.moments(win, ok & active, sigma, r)
        self.evaluations += 1
        return _Evaluation(T, pc, win, m, sigma, active, -float(m[0].sum()))

    def normal_equations(self, ev: _Evaluation) -> _NormalEquations:
        """Undamped H and g at an evaluation (the last one's are kept: a rejected step
        re-solves at the same evaluation). Per-point algebra on N values runs in numpy on the
        host (a copy of (6, N) moments and (N, 3) points)."""
        if self._normal is not None and self._normal[0] is ev:
            return self._normal[1]
        m = ev.m.cpu().numpy()
        if self.windows.kernels is not None:
            H, g = np.empty((6, 6)), np.empty(6)
            self.windows.kernels._normal_equations(
                np.ascontiguousarray(m), ev.pc.numpy(), self.fx, self.fy,
                float(self.config.min_depth), float(ev.sigma), self.newton, H, g)
            self._normal = (ev, _NormalEquations(H, g))
            return self._normal[1]
        a, c, e = _point_curvature(m, ev.sigma, self.newton)
        Ju, Jv = _jacobian(ev.pc.cpu().numpy(), self.fx, self.fy, self.config.min_depth)
        ne = _NormalEquations(Ju @ (a * Ju + c * Jv).T + Jv @ (c * Ju + e * Jv).T,
                              (Ju @ m[1] + Jv @ m[2]) / (ev.sigma * ev.sigma))
        self._normal = (ev, ne)
        return ne


def refine(points_world: Tensor, maps: LossMaps, K: Tensor, T_init: Tensor,
           config: GncConfig = GncConfig()) -> RefineResult:
    """Refine a pose on loss maps by GNC over ``config.sigmas``.

    Args:
        points_world: (N, 3) float64 world points (same order as the maps).
        maps: N loss maps on the grid K refers to.
        K: (3, 3) float64 intrinsics of that grid.
        T_init: (4, 4) float64 initial T_cam_world.

    Returns:
        RefineResult; the pose is finite unless ``finite`` is False.
    """
    dev = T_init.device
    prob = _Problem(points_world, maps, K, config)
    T = T_init.detach().to(torch.float64).cpu().numpy().copy()
    total = 0
    stage_costs = []
    hit_cap = False
    ev = None
    last = len(config.sigmas) - 1
    for si, sigma in enumerate(config.sigmas):
        if not np.isfinite(T).all():
            break
        ev = prob.evaluate(T, sigma, reuse=ev)
        tol2 = (config.newton_tol if si == last else config.stage_newton_tol) ** 2
        lam = config.lambda_init
        rejected = False
        for _ in range(config.max_stage_iterations):
            if total >= config.max_iterations:
                hit_cap = True
                break
            ne = prob.normal_equations(ev)
            H, g = ne.H, ne.g
            dH = np.diagonal(H)
            if config.damping == 'marquardt':
                D = np.diag(np.maximum(dH, 1e-12))
            else:
                D = np.eye(6) * max(float(dH.mean()), 1e-12)
            try:
                delta = np.linalg.solve(H + lam * D, g)
            except np.linalg.LinAlgError:  # singular even with damping
                lam *= 10
                total += 1
                if lam > config.lambda_max:
                    break
                continue
            total += 1
            if not np.isfinite(delta).all():
                lam *= 10
                if lam > config.lambda_max:
                    break
                continue
            step = float(np.linalg.norm(delta))
            if not rejected and float(g @ delta) < tol2:
                # Converged: the step is a small fraction of a standard deviation. Earlier
                # stages take it unverified (the next stage re-evaluates); the last stage
                # stops where cost and information were evaluated.
                if si != last:
                    T = se3_exp(delta) @ T
                break
            T_new = se3_exp(delta) @ T
            if not np.isfinite(T_new).all():
                lam *= 10
                rejected = True
                if lam > config.lambda_max:
                    break
                continue
            ev_new = prob.evaluate(T_new, sigma, ev.active)
            if ev_new.cost < ev.cost:
                rel = (ev.cost - ev_new.cost) / max(abs(ev.cost), 1e-12)
                T, ev = T_new, ev_new
                lam = max(lam / 10, config.lambda_min)
                rejected = False
                if rel < config.rel_tol or step < config.step_tol:
                    break
            else:
                lam *= 10
                rejected = True
                if lam > config.lambda_max or step < config.step_tol:
                    break
        stage_costs.append(ev.cost)
        if hit_cap:
            break
    finite = bool(np.isfinite(T).all())
    info = None
    cost = float('nan')
    if ev is not None and finite:
        cost = ev.cost
        if ev.T is T:
            info = torch.from_numpy(prob.normal_equations(ev).H.copy()).to(dev)
    return RefineResult(torch.from_numpy(T).to(dev), cost, total, stage_costs, hit_cap, finite,
                        info, prob.evaluations)


def information(points_world: Tensor, maps: LossMaps, K: Tensor, T: Tensor, sigma: float,
                config: GncConfig = GncConfig(), kind: str = 'laplace') -> Tensor:
    """(6, 6) float64 undamped information of the smoothed cost at pose T (left increment).

    kind 'irls': the IRLS matrix ``sum A_n J^T J``.
    kind 'laplace': Gauss-Newton through the projection with each point's exact 2x2 curvature
    of the smoothed cost, ``A_n I - S_n`` projected onto PSD: for a map that is locally a
    quadratic of spread s this is ``I / s^2`` whatever sigma, i.e. the Laplace approximation.
    """
    prob = _Problem(points_world, maps, K, config, newton=kind != 'irls')
    ev = prob.evaluate(T.detach().to(torch.float64).cpu().numpy(), sigma)
    return torch.from_numpy(prob.normal_equations(ev).H.copy()).to(T.device)


def warmup_compiled() -> bool:
    """Compile (or load from the disk cache) the kernels of the CPU path on a tiny problem, a
    cut full-grid map and a window map; False when they are unavailable."""
    if compiled.kernels(KERNELS) is None:
        return False
    g = torch.Generator().manual_seed(0)
    full = LossMaps(torch.rand(2, 30, 40, generator=g) * 8, 8.0, (40, 30))
    window = LossMaps(torch.rand(2, 8, 8, generator=g) * 8, 8.0, (40, 30),
                      torch.tensor([[3, 4], [20, 10]]))
    pts = torch.tensor([[-0.5, -0.1, 5.0], [0.2, 0.0, 4.0]], dtype=torch.float64)
    K = torch.tensor([[10.0, 0, 20], [0, 10, 15], [0, 0, 1]], dtype=torch.float64)
    for maps in (full, window):
        for kind in ('laplace', 'irls'):
            information(pts, maps, K, torch.eye(4, dtype=torch.float64), 1.0, kind=kind)
    return True
