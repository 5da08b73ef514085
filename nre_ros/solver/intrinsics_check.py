"""Intrinsics self-check: can the given K explain where the map points are seen?

After refinement, the supported points' loss-map minima are 2-D observations of known 3-D
points. A robust fit of the pose together with a focal scale ``s`` (K's fx, fy multiplied by
``s``) and a principal-point offset to those observations estimates the intrinsics the image
actually has; when it departs from the given K by more than the configured tolerance, the pose
found with the given K is not trusted (reason ``intrinsics_inconsistent``). Frames: points in
the world frame, ``T_cam_world`` of the grid the maps live on, pixels in grid coordinates.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation


@dataclass(frozen=True)
class IntrinsicsCheckConfig:
    enabled: bool = True
    max_focal_change: float = 0.2      # |s - 1| above -> inconsistent (s = estimated / given f)
    max_principal_shift: float = 0.06  # principal-point offset, in units of the given focal
    min_points: int = 30               # fewer supported points: no check (too little evidence)
    robust_scale_cells: float = 1.0    # Cauchy scale of the fit, in grid cells
    max_points: int = 400              # most peaked maps used (speed)
    fit_principal_point: bool = False  # also fit (cx, cy) (weakly observable: biased estimates)


@dataclass(frozen=True)
class IntrinsicsEstimate:
    """Focal scale ``s`` (estimated f / given f), principal-point offset (dx, dy) in grid cells,
    ``T_cam_world`` (4, 4) of the joint fit and the number of points used."""

    focal_scale: float
    focal_scale_sigma: float           # 1-sigma of log(focal_scale) from the fit's curvature
    principal_offset: tuple[float, float]
    T_cam_world: np.ndarray
    num_points: int


def _project(params: np.ndarray, X: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(N, 2) pixels of world points X (N, 3) under params = (rotvec, t, log s, dx, dy)."""
    R = Rotation.from_rotvec(params[:3]).as_matrix()
    pc = X @ R.T + params[3:6]
    s = np.exp(params[6])
    z = np.where(np.abs(pc[:, 2]) > 1e-9, pc[:, 2], 1e-9)
    u = s * K[0, 0] * pc[:, 0] / z + K[0, 2] + params[7]
    v = s * K[1, 1] * pc[:, 1] / z + K[1, 2] + params[8]
    return np.stack([u, v], axis=1)


def estimate_intrinsics(points_world: np.ndarray, uv: np.ndarray, K: np.ndarray,
                        T_cam_world: np.ndarray, cfg: IntrinsicsCheckConfig = IntrinsicsCheckConfig()
                        ) -> IntrinsicsEstimate:
    """Robust joint fit of pose, focal scale and principal-point offset.

    Args:
        points_world: (N, 3) world points.
        uv: (N, 2) observed pixels of those points (grid coordinates of K).
        K: (3, 3) the given intrinsics of the grid.
        T_cam_world: (4, 4) the pose found with the given K (the fit's start).
    """
    X = np.asarray(points_world, np.float64)
    uv = np.asarray(uv, np.float64)
    T = np.asarray(T_cam_world, np.float64)
    x0 = np.concatenate([Rotation.from_matrix(T[:3, :3]).as_rotvec(), T[:3, 3], np.zeros(3)])

    n_free = 9 if cfg.fit_principal_point else 7

    def residual(q: np.ndarray) -> np.ndarray:
        p = np.concatenate([q, np.zeros(9 - n_free)])
        return (_project(p, X, K) - uv).ravel()

    res = least_squares(residual, x0[:n_free], loss='cauchy', f_scale=cfg.robust_scale_cells,
                        x_scale='jac', max_nfev=40, method='trf')
    p = np.concatenate([res.x, np.zeros(9 - n_free)])
    J = res.jac
    dof = max(1, J.shape[0] - J.shape[1])
    try:
        cov = np.linalg.inv(J.T @ J) * (2.0 * res.cost / dof)
        sigma = float(np.sqrt(max(cov[6, 6], 0.0)))
    except np.linalg.LinAlgError:
        sigma = float('inf')
    T_fit = np.eye(4)
    T_fit[:3, :3] = Rotation.from_rotvec(p[:3]).as_matrix()
    T_fit[:3, 3] = p[3:6]
    return IntrinsicsEstimate(float(np.exp(p[6])), sigma, (float(p[7]), float(p[8])), T_fit,
                              len(X))


def inconsistency(est: IntrinsicsEstimate, K: np.ndarray,
                  cfg: IntrinsicsCheckConfig = IntrinsicsCheckConfig()) -> str | None:
    """A sentence saying how the estimate contradicts K, or None when it is consistent."""
    f = float(np.sqrt(K[0, 0] * K[1, 1]))
    shift = float(np.hypot(*est.principal_offset)) / f
    if abs(est.focal_scale - 1.0) > cfg.max_focal_change:
        return (f'the image fits a focal length {est.focal_scale:.2f} x the given one '
                f'(tolerance {cfg.max_focal_change:.2f})')
    if shift > cfg.max_principal_shift:
        return (f'the image fits a principal point {shift * f:.1f} grid px from the given one '
                f'(tolerance {cfg.max_principal_shift * f:.1f})')
    return None


def peaked_observations(points_world, maps, max_points: int, margin: float = 3.0
                        ) -> tuple[np.ndarray, np.ndarray]:
    """World points (M, 3) and the subcell minima (M, 2) of their full-grid loss maps, for
    the maps whose minimum is peaked (below ln|Omega| - margin), whatever the current pose:
    points a wrong K pushes away from their reprojection are kept (no selection by the pose)."""
    depth = (maps.ln_omega - maps.map_min).cpu().numpy()
    keep = depth > margin
    if keep.sum() > max_points:
        keep &= depth >= np.sort(depth)[-max_points]
    uv = maps.select(torch_index(keep, maps.maps.device)).argmin_uv(True)
    return (np.asarray(points_world.cpu().numpy(), np.float64)[keep],
            uv.cpu().numpy().astype(np.float64))


def torch_index(mask: np.ndarray, device):
    import torch
    return torch.as_tensor(np.flatnonzero(mask), dtype=torch.int64, device=device)


def check(points_world, maps, K, T_cam_world, cfg: IntrinsicsCheckConfig = IntrinsicsCheckConfig()
          ) -> tuple[str | None, IntrinsicsEstimate | None]:
    """(problem or None, estimate or None when too few peaked maps) for a coarse level:
    points_world (N, 3) tensor, full-grid LossMaps, K (3, 3) and T_cam_world (4, 4) tensors."""
    X, uv = peaked_observations(points_world, maps, cfg.max_points)
    if len(X) < cfg.min_points:
        return None, None
    K = np.asarray(K.cpu().numpy() if hasattr(K, 'cpu') else K, np.float64)
    T = np.asarray(T_cam_world.cpu().numpy() if hasattr(T_cam_world, 'cpu') else T_cam_world,
                   np.float64)
    est = estimate_intrinsics(X, uv, K, T, cfg)
    return inconsistency(est, K, cfg), est
