"""Reprojection-error (RE) baselines on argmax correspondences of the same loss maps.

Each map's minimum (optionally sub-cell) becomes a 2D-3D match; OpenCV's USAC MAGSAC and
PoseLib's LO-RANSAC estimate the pose. These are what NRE is compared against (paper Tab. 1).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np
import poselib
from torch import Tensor

from nre_ros.lossmaps import LossMaps

__all__ = ['ReResult', 'argmax_correspondences', 're_opencv_magsac', 're_poselib', 'oracle_pnp']


@dataclass(frozen=True)
class ReResult:
    """T_cam_world (4, 4) float64 or None, inlier count, wall time (ms)."""

    T_cam_world: np.ndarray | None
    num_inliers: int
    elapsed_ms: float


def argmax_correspondences(maps: LossMaps, subcell: bool = False) -> np.ndarray:
    """(N, 2) float64 grid coordinates of each map's minimum loss (= argmax of C_n)."""
    return maps.argmin_uv(subcell).double().cpu().numpy()


def _np(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.float64) if isinstance(x, Tensor) else \
        np.asarray(x, dtype=np.float64)


def re_opencv_magsac(points_world: Tensor | np.ndarray, uv: np.ndarray, K: Tensor | np.ndarray,
                     threshold: float = 2.0, iterations: int = 10000,
                     confidence: float = 0.9999) -> ReResult:
    """OpenCV solvePnPRansac with USAC_MAGSAC on (N, 2) grid matches; threshold in cells."""
    t0 = time.perf_counter()
    X = _np(points_world).reshape(-1, 1, 3)
    x = np.asarray(uv, dtype=np.float64).reshape(-1, 1, 2)
    if X.shape[0] < 4:
        return ReResult(None, 0, 0.0)
    ok, rvec, tvec, inliers = cv2.solvePnPRansac(
        X, x, _np(K), None, iterationsCount=iterations, reprojectionError=threshold,
        confidence=confidence, flags=cv2.USAC_MAGSAC)
    ms = (time.perf_counter() - t0) * 1e3
    if not ok or inliers is None:
        return ReResult(None, 0, ms)
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(rvec)[0]
    T[:3, 3] = tvec.reshape(3)
    return ReResult(T, int(len(inliers)), ms)


def re_poselib(points_world: Tensor | np.ndarray, uv: np.ndarray, K: Tensor | np.ndarray,
               grid_size: tuple[int, int], threshold: float = 2.0,
               max_iterations: int = 10000) -> ReResult:
    """PoseLib estimate_absolute_pose (LO-RANSAC + bundle refinement); threshold in cells."""
    t0 = time.perf_counter()
    Kn = _np(K)
    cam = {'model': 'PINHOLE', 'width': int(grid_size[0]), 'height': int(grid_size[1]),
           'params': [Kn[0, 0], Kn[1, 1], Kn[0, 2], Kn[1, 2]]}
    pose, info = poselib.estimate_absolute_pose(
        np.asarray(uv, dtype=np.float64), _np(points_world), cam,
        {'max_reproj_error': threshold, 'max_iterations': max_iterations}, {})
    ms = (time.perf_counter() - t0) * 1e3
    n_in = int(info.get('num_inliers', 0))
    if n_in < 4:
        return ReResult(None, n_in, ms)
    T = np.eye(4)
    T[:3, :3] = pose.R
    T[:3, 3] = pose.t
    return ReResult(T, n_in, ms)


def oracle_pnp(points_world: Tensor | np.ndarray, uv: np.ndarray,
               K: Tensor | np.ndarray) -> np.ndarray:
    """Least-squares PnP (EPnP + Levenberg-Marquardt) on given inlier matches: the oracle."""
    X = _np(points_world).reshape(-1, 1, 3)
    x = np.asarray(uv, dtype=np.float64).reshape(-1, 1, 2)
    Kn = _np(K)
    _, rvec, tvec = cv2.solvePnP(X, x, Kn, None, flags=cv2.SOLVEPNP_EPNP)
    rvec, tvec = cv2.solvePnPRefineLM(X, x, Kn, None, rvec, tvec,
                                      (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12))
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(rvec)[0]
    T[:3, 3] = tvec.reshape(3)
    return T



