"""Intrinsics self-check: can the given K explain where the map points are seen?

After refinement, the minima of the most peaked loss maps are 2-D observations of known 3-D
points. A robust fit of the pose together with a focal scale ``s`` (K's fx, fy multiplied by
``s``) and a principal-point offset ``(dx, dy)`` to those observations estimates the intrinsics
the image actually has. The pose found with the given K is not trusted (reason
``intrinsics_inconsistent``) when the estimate departs from K by more than a minimal amount
and significantly: by more than ``min_sigmas`` formal sigmas of the fit and more than
``min_jackknife_sigmas`` sigmas of a block jackknife over image regions. The formal sigmas
assume independent errors and are several times too small on real images (rolling shutter,
blur, map depth errors move whole regions); the jackknife sees that, e.g. a narrow crop whose
estimate hangs on a few regions.

A principal-point shift is nearly a rotation of the camera: what tells them apart is the
perspective across the image, a few pixels at its edges for a shift of a few percent of the
focal length. It is fitted only on the fine level's observations (window minima, a fraction of
a fine cell); on coarse cells the estimate is too noisy and biased, and only the focal scale is
fitted there. Frames: points in the world frame, ``T_cam_world`` of the grid the maps live on,
pixels in grid coordinates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nre_ros import compiled
from nre_ros.geometry import so3_exp
from nre_ros.solver.intrinsics_stream import IntrinsicsStreamConfig

KERNELS = 'nre_ros.solver._intrinsics_kernels'   # numba kernels of the CPU path (nre_ros.compiled)


@dataclass(frozen=True)
class IntrinsicsCheckConfig:
    enabled: bool = True
    max_focal_change: float = 0.1      # |s - 1| must exceed this (s = estimated / given f) ...
    max_principal_shift: float = 0.13  # ... or |offset| / f this (principal point), ...
    min_sigmas: float = 8.0            # ... the change this many formal sigmas of the fit ...
    min_jackknife_sigmas: float = 2.5  # ... and this many block-jackknife sigmas
    # gross-error guard on the full-grid coarse maps: |s - 1| above -> inconsistent, whatever
    # the sigmas (fine windows around the given K's reprojections miss a grossly wrong K)
    coarse_max_focal_change: float = 0.2
    jackknife_blocks: int = 4          # image split into blocks x blocks regions
    min_points: int = 30               # fewer usable maps: no check (too little evidence)
    max_points: int = 500              # most peaked maps used (speed)
    robust_scale_px: float = 4.0       # Cauchy scale of the fit, image pixels
    peak_margin: float = 3.0           # maps used: minimum below ln|Omega| - margin
    iterations: int = 20               # robust Gauss-Newton iterations (at most)
    # the frames of one camera combined (nre_ros.solver.intrinsics_stream)
    stream: IntrinsicsStreamConfig = IntrinsicsStreamConfig()


@dataclass(frozen=True)
class IntrinsicsEstimate:
    """Focal scale ``s`` (estimated f / given f) and the principal-point offset (dx, dy) in grid
    pixels, the pose ``T_cam_world`` (4, 4) of the joint fit and the number of observations.

    Uncertainty of ``theta = (log s, dx, dy)`` (``(log s,)`` without the principal point):
    ``formal_cov`` from the fit's curvature and residuals (independent errors) and
    ``jackknife_cov`` from refits leaving out one image block at a time (errors of
    neighbouring points are correlated: rolling shutter, blur, map depth errors); inf when
    there were too few blocks."""

    focal_scale: float
    principal_offset: tuple[float, float]
    formal_cov: np.ndarray
    jackknife_cov: np.ndarray
    T_cam_world: np.ndarray
    num_points: int
    fit_principal_point: bool

    @property
    def focal_scale_sigma(self) -> float:
        """Formal 1-sigma of log(focal_scale)."""
        return float(math.sqrt(max(self.formal_cov[0, 0], 0.0)))

    @property
    def theta(self) -> np.ndarray:
        t = [math.log(self.focal_scale)]
        return np.array(t + list(self.principal_offset) if self.fit_principal_point else t)


def _jacobian(pc: np.ndarray, K: np.ndarray, s: np.ndarray | float, with_pp: bool
              ) -> np.ndarray:
    """(..., 2, P) derivatives of the projections of camera points pc (..., 3) by a left
    increment (translation, rotation) of T_cam_world, log s and, with ``with_pp``, (dx, dy);
    ``s`` broadcasts against pc's leading shape."""
    x, y, z = pc[..., 0] / pc[..., 2], pc[..., 1] / pc[..., 2], 1.0 / pc[..., 2]
    s = np.asarray(s, np.float64)
    fx, fy = s * K[0, 0], s * K[1, 1]
    zero, one = np.zeros_like(x), np.ones_like(x)
    du = [z, zero, -x * z, -x * y, 1.0 + x * x, -y, x]
    dv = [zero, z, -y * z, -1.0 - y * y, x * y, x, y]
    if with_pp:
        du, dv = du + [one / fx, zero], dv + [zero, one / fy]
    return np.stack([np.asarray(fx)[..., None] * np.stack(du, -1),
                     np.asarray(fy)[..., None] * np.stack(dv, -1)], -2)


def _fit_many(X: np.ndarray, uv: np.ndarray, K: np.ndarray, T: np.ndarray, theta: np.ndarray,
              robust_scale: float, iterations: int, keep: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cauchy-weighted Gauss-Newton fits of the observations ``keep`` (B, N) bool selects,
    all from pose T (4, 4) and theta = (log s[, dx, dy]), side by side; each stops on its own
    once its step is negligible. Returns (B, 4, 4) poses, (B, P) thetas, (B, 6 + P, 6 + P)
    normal matrices and (B,) residual variances of the last iteration. Compiled kernel
    (``_intrinsics_kernels``) when numba is available, else ``_gauss_newton``."""
    B, n_par = len(keep), 6 + len(theta)
    R = np.repeat(T[None, :3, :3], B, 0)
    t = np.repeat(T[None, :3, 3], B, 0)
    theta = np.repeat(np.asarray(theta, np.float64)[None], B, 0)
    H, sigma2 = np.repeat(np.eye(n_par)[None], B, 0), np.full(B, math.inf)
    k = compiled.kernels(KERNELS)
    fit = _gauss_newton if k is None else k._fit_many
    fit(np.ascontiguousarray(X), np.ascontiguousarray(uv), np.ascontiguousarray(K),
        np.ascontiguousarray(keep), float(robust_scale), int(iterations), R, t, theta, H, sigma2)
    T_fit = np.repeat(np.eye(4)[None], B, 0)
    T_fit[:, :3, :3], T_fit[:, :3, 3] = R, t
    return T_fit, theta, H, sigma2


def _gauss_newton(X: np.ndarray, uv: np.ndarray, K: np.ndarray, keep: np.ndarray,
                  robust_scale: float, iterations: int, R: np.ndarray, t: np.ndarray,
                  theta: np.ndarray, H: np.ndarray, sigma2: np.ndarray) -> None:
    """The iterations of ``_fit_many`` in numpy, batched over the B fits: R (B, 3, 3),
    t (B, 3), theta (B, P), the last normal matrices H (B, 6 + P, 6 + P) and residual
    variances sigma2 (B,) updated in place."""
    B, n_th = theta.shape
    with_pp = n_th == 3
    n_par = 6 + n_th
    active = np.ones(B, bool)
    for _ in range(iterations):
        a = np.flatnonzero(active)
        pc = X @ R[a].transpose(0, 2, 1) + t[a, None]
        front = (pc[..., 2] > 1e-6) & keep[a]
        pc = np.where(front[..., None], pc, 1.0)
        s = np.exp(theta[a, :1])                                   # (b, 1)
        pp = theta[a, 1:] if with_pp else np.zeros((len(a), 2))
        proj = np.stack([s * K[0, 0] * pc[..., 0] / pc[..., 2] + K[0, 2] + pp[:, :1],
                         s * K[1, 1] * pc[..., 1] / pc[..., 2] + K[1, 2] + pp[:, 1:]], axis=-1)
        r = np.where(front[..., None], proj - uv, 0.0)
        r2 = (r ** 2).sum(-1)
        w = front / (1.0 + r2 / robust_scale ** 2)                 # Cauchy IRLS weights
        J = _jacobian(pc, K, s, with_pp).reshape(len(a), -1, n_par)    # (b, 2 N, P)
        Jw = J * np.repeat(w, 2, axis=1)[..., None]
        H[a] = Jw.transpose(0, 2, 1) @ J
        g = (Jw.transpose(0, 2, 1) @ r.reshape(len(a), -1, 1))[..., 0]
        sigma2[a] = (w * r2).sum(-1) / np.maximum(1, 2 * front.sum(-1) - n_par)
        Ha = H[a] + 1e-9 * np.eye(n_par) * np.diagonal(H[a], axis1=1, axis2=2)[:, None, :]
        step, ok = np.zeros((len(a), n_par)), np.ones(len(a), bool)
        try:
            step = -np.linalg.solve(Ha, g[..., None])[..., 0]
        except np.linalg.LinAlgError:
            for i in range(len(a)):
                try:
                    step[i] = -np.linalg.solve(Ha[i], g[i])
                except np.linalg.LinAlgError:
                    ok[i] = False
        step[~ok] = 0.0
        dR = so3_exp(step[:, 3:6])
        R[a], t[a] = dR @ R[a], np.einsum('bij,bj->bi', dR, t[a]) + step[:, :3]
        theta[a] = theta[a] + step[:, 6:]
        done = (np.abs(step[:, :7]).max(1) < 1e-7) & (np.abs(step[:, 7:]).max(1, initial=0.0)
                                                      < 1e-4)
        active[a[done | ~ok]] = False
        if not active.any():
            break


def _fit(X: np.ndarray, uv: np.ndarray, K: np.ndarray, T: np.ndarray, theta: np.ndarray,
         robust_scale: float, iterations: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cauchy-weighted Gauss-Newton from pose T (4, 4) and theta = (log s[, dx, dy]):
    (T, theta, formal covariance of theta)."""
    T_fit, theta, H, sigma2 = _fit_many(X, uv, K, T, theta, robust_scale, iterations,
                                        np.ones((1, len(X)), bool))
    try:
        cov = np.linalg.inv(H[0])[6:, 6:] * sigma2[0]
    except np.linalg.LinAlgError:
        cov = np.full((theta.shape[1], theta.shape[1]), np.inf)
    return T_fit[0], theta[0], cov


def _jackknife_cov(X: np.ndarray, uv: np.ndarray, K: np.ndarray, T: np.ndarray,
                   theta: np.ndarray, robust_scale: float, blocks: int, min_points: int
                   ) -> np.ndarray:
    """Block-jackknife covariance of theta: refits (a few iterations from the full fit)
    leaving out the observations of one of blocks x blocks image regions at a time."""
    lo, hi = uv.min(0), uv.max(0)
    cell = np.clip(((uv - lo) / np.maximum(hi - lo, 1e-9) * blocks).astype(int), 0, blocks - 1)
    label = cell[:, 1] * blocks + cell[:, 0]
    keep = label[None] != np.unique(label)[:, None]
    keep = keep[keep.sum(1) >= min_points]
    m = len(keep)
    if m < 4:
        return np.full((len(theta), len(theta)), np.inf)
    thetas = _fit_many(X, uv, K, T, theta, robust_scale, 4, keep)[1]
    d = thetas - thetas.mean(0)
    return (m - 1) / m * (d.T @ d)


def estimate_intrinsics(points_world: np.ndarray, uv: np.ndarray, K: np.ndarray,
                        T_cam_world: np.ndarray, robust_scale: float = 1.0,
                        fit_principal_point: bool = True, iterations: int = 20,
                        jackknife_blocks: int = 4) -> IntrinsicsEstimate:
    """Robust (Cauchy-weighted Gauss-Newton) joint fit of the pose, the focal scale and, with
    ``fit_principal_point``, the principal-point offset, with its formal and block-jackknife
    covariances.

    Args:
        points_world: (N, 3) world points.
        uv: (N, 2) observed pixels of those points (grid coordinates of K).
        K: (3, 3) the given intrinsics of the grid.
        T_cam_world: (4, 4) the pose found with the given K (the fit's start).
        robust_scale: Cauchy scale, grid pixels.
        jackknife_blocks: blocks per image side of the jackknife (0: none, inf covariance).
    """
    X = np.asarray(points_world, np.float64)
    uv = np.asarray(uv, np.float64)
    K = np.asarray(K, np.float64)
    theta0 = np.zeros(3 if fit_principal_point else 1)
    T, theta, cov = _fit(X, uv, K, np.asarray(T_cam_world, np.float64), theta0, robust_scale,
                         iterations)
    jack = np.full_like(cov, np.inf)
    if jackknife_blocks > 1:
        jack = _jackknife_cov(X, uv, K, T, theta, robust_scale, jackknife_blocks,
                              max(len(theta) + 6, len(X) // 2))
    pp = (float(theta[1]), float(theta[2])) if fit_principal_point else (0.0, 0.0)
    return IntrinsicsEstimate(math.exp(theta[0]), pp, cov, jack, T, len(X), fit_principal_point)


def _sigmas(d: np.ndarray, cov: np.ndarray) -> float:
    """Mahalanobis length of d under cov (0 when cov is not usable)."""
    try:
        q = float(d @ np.linalg.solve(cov, d))
    except np.linalg.LinAlgError:
        return 0.0
    return math.sqrt(q) if math.isfinite(q) and q > 0 else 0.0


def _view_under_estimate(view_scale: float, focal_scale: float) -> float:
    """The query's view size relative to the map keyframes' under the estimated focal length
    (``view_scale / s``, in [1e-3, 1]) when the estimate says the given focal is not too long
    (s >= 1); 1 otherwise, since a too-long given focal also makes the view look narrow."""
    return min(1.0, max(view_scale / focal_scale, 1e-3)) if focal_scale >= 1.0 else 1.0


def inconsistency(est: IntrinsicsEstimate, K: np.ndarray,
                  cfg: IntrinsicsCheckConfig = IntrinsicsCheckConfig(),
                  view_scale: float = 1.0) -> str | None:
    """A sentence saying how the estimate contradicts K, or None when it is consistent: a
    change over the minimal amount, over ``min_sigmas`` formal sigmas and over
    ``min_jackknife_sigmas`` jackknife sigmas (focal scale and principal point separately).

    ``view_scale``: the query's view size under the given K relative to the one the minimal
    amounts are set for (the map's keyframes'). A narrower view measures K less well: the same
    projection errors move the focal estimate as 1 / view size and the principal point as
    1 / view size^2, so the minimal amounts grow accordingly. A given focal length that is too
    long also makes the view look narrow: the tolerances are widened only when the estimate
    does not say so (s >= 1), for the view under the estimated focal length (view_scale / s)."""
    theta = est.theta
    v = _view_under_estimate(view_scale, est.focal_scale)
    max_focal_change, max_principal_shift = cfg.max_focal_change / v, cfg.max_principal_shift / v ** 2

    def significant(idx: slice) -> tuple[bool, float]:
        z = _sigmas(theta[idx], est.formal_cov[idx, idx])
        zj = _sigmas(theta[idx], est.jackknife_cov[idx, idx])
        return z > cfg.min_sigmas and zj > cfg.min_jackknife_sigmas, zj

    ok, zj = significant(slice(0, 1))
    if abs(est.focal_scale - 1.0) > max_focal_change and ok:
        return (f'the image fits a focal length {est.focal_scale:.2f} x the given one '
                f'({zj:.1f} jackknife sigmas; tolerance {max_focal_change:.2f})')
    if not est.fit_principal_point:
        return None
    f = float(math.sqrt(K[0, 0] * K[1, 1]))
    d = np.asarray(est.principal_offset)
    ok, zj = significant(slice(1, 3))
    if float(np.hypot(*d)) > max_principal_shift * f and ok:
        return (f'the image fits a principal point ({d[0]:+.1f}, {d[1]:+.1f}) grid px from the '
                f'given one ({zj:.1f} jackknife sigmas; tolerance {max_principal_shift * f:.1f})')
    return None


def peaked_observations(points_world, maps, max_points: int, margin: float = 3.0
                        ) -> tuple[np.ndarray, np.ndarray]:
    """World points (M, 3) and the subcell minima (M, 2) of their loss maps, for the maps whose
    minimum is peaked (below ln|Omega| - margin), the ``max_points`` most peaked, whatever the
    current pose: points a wrong K pushes away from their reprojection are kept. Window maps
    whose minimum lies on the window's border are left out (the true minimum may be outside)."""
    import torch
    depth = (maps.ln_omega - maps.map_min).cpu().numpy()
    keep = depth > margin
    if keep.sum() > max_points:
        keep &= depth >= np.sort(depth)[-max_points]
    index = torch.as_tensor(np.flatnonzero(keep), dtype=torch.int64, device=maps.maps.device)
    uv = maps.argmin_uv(True, index)
    X = np.asarray(points_world[index].cpu().numpy(), np.float64)
    uv_np = uv.cpu().numpy().astype(np.float64)
    if maps.origin is not None:
        local = uv_np - maps.origin[index].cpu().numpy()
        s = maps.maps.shape[-1]
        inner = ((local > 0.5) & (local < s - 1.5)).all(1)
        X, uv_np = X[inner], uv_np[inner]
    return X, uv_np


def _fit_level(points_world, maps, K, T_cam_world, cfg: IntrinsicsCheckConfig,
               pixels_per_cell: float, fit_principal_point: bool, jackknife_blocks: int
               ) -> tuple[IntrinsicsEstimate, np.ndarray] | None:
    """The joint fit on one level's peaked observations and K as float64, or None when too
    few maps are peaked (arguments as ``check``)."""
    X, uv = peaked_observations(points_world, maps, cfg.max_points, cfg.peak_margin)
    if len(X) < cfg.min_points:
        return None
    K = np.asarray(K.cpu().numpy() if hasattr(K, 'cpu') else K, np.float64)
    T = np.asarray(T_cam_world.cpu().numpy() if hasattr(T_cam_world, 'cpu') else T_cam_world,
                   np.float64)
    scale = max(1.0, cfg.robust_scale_px / pixels_per_cell)    # minima are cell-quantised
    return estimate_intrinsics(X, uv, K, T, scale, fit_principal_point, cfg.iterations,
                               jackknife_blocks), K


def check(points_world, maps, K, T_cam_world, cfg: IntrinsicsCheckConfig = IntrinsicsCheckConfig(),
          pixels_per_cell: float = 1.0, fit_principal_point: bool = True,
          view_scale: float = 1.0) -> tuple[str | None, IntrinsicsEstimate | None]:
    """(problem or None, estimate or None when too few peaked maps) for one level:
    points_world (N, 3) tensor, its LossMaps (full grid or windows), K (3, 3) and T_cam_world
    (4, 4) of that grid; ``pixels_per_cell`` image pixels per grid cell (the level's stride);
    ``view_scale`` as in ``inconsistency``."""
    fit = _fit_level(points_world, maps, K, T_cam_world, cfg, pixels_per_cell,
                     fit_principal_point, cfg.jackknife_blocks)
    if fit is None:
        return None, None
    est, K = fit
    return inconsistency(est, K, cfg, view_scale), est


def check_gross(points_world, maps, K, T_cam_world,
                cfg: IntrinsicsCheckConfig = IntrinsicsCheckConfig(), pixels_per_cell: float = 8.0,
                view_scale: float = 1.0) -> tuple[str | None, IntrinsicsEstimate | None]:
    """Gross-error guard on full-grid (coarse) maps, whose minima do not depend on the pose:
    the focal scale alone (no jackknife), refused beyond ``coarse_max_focal_change``, widened
    for a view narrower than the map keyframes' (``view_scale`` < 1) as in ``inconsistency``
    (a full view keeps the fixed tolerance). Arguments as ``check``."""
    fit = _fit_level(points_world, maps, K, T_cam_world, cfg, pixels_per_cell, False, 0)
    if fit is None:
        return None, None
    est, _ = fit
    return gross_inconsistency(est.focal_scale, cfg, view_scale), est


def gross_inconsistency(focal_scale: float, cfg: IntrinsicsCheckConfig = IntrinsicsCheckConfig(),
                        view_scale: float = 1.0) -> str | None:
    """The gross-error guard's sentence for a coarse focal scale estimate, or None: beyond
    ``coarse_max_focal_change``, divided for a narrow view (``view_scale`` < 1) by the view
    under the estimated focal length as in ``inconsistency`` (only when s >= 1)."""
    v = _view_under_estimate(view_scale, focal_scale) if view_scale < 1.0 else 1.0
    tolerance = cfg.coarse_max_focal_change / v
    if abs(focal_scale - 1.0) > tolerance:
        return (f'the image fits a focal length {focal_scale:.2f} x the given one on the '
                f'coarse level (tolerance {tolerance:.2f})')
    return None


def warmup_compiled() -> bool:
    """Compile (or load from the disk cache) the fit kernel on a tiny problem, with and without
    the principal point; False when it is unavailable."""
    if compiled.kernels(KERNELS) is None:
        return False
    X = np.array([[0.1, 0.2, 2.0], [-0.3, 0.1, 3.0], [0.2, -0.2, 2.5], [0.0, 0.3, 4.0]])
    K = np.array([[100.0, 0.0, 50.0], [0.0, 100.0, 40.0], [0.0, 0.0, 1.0]])
    uv = X[:, :2] / X[:, 2:] * 100.0 + [50.0, 40.0]
    for theta in (np.zeros(1), np.zeros(3)):
        _fit_many(X, uv, K, np.eye(4), theta, 1.0, 2, np.ones((2, len(X)), bool))
    return True
