"""Synthetic scenes with loss maps built from ground truth (tests and benchmarks).

A point's correspondence map is a Gaussian bump of spread ``spread`` cells in logit space,
``logit(p) = -|p - peak|^2 / (2 spread^2)``, so ``-ln C`` is locally the NLL of a Gaussian
likelihood of the projection. Inliers peak at the true projection plus N(0, noise^2) per axis;
outliers at a uniformly random cell of the grid.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from torch import Tensor

from nre_ros.lossmaps import LossMaps, fine_loss_maps_from_logits, loss_maps_from_logits
from nre_ros.lossmaps import window_origins
from nre_ros.solver import se3
from nre_ros.solver.core import FineLevel

__all__ = ['SyntheticScene', 'gaussian_logits', 'random_scene', 'scene_from_points',
           'fine_builder', 'grid_intrinsics']


@dataclass(frozen=True)
class SyntheticScene:
    """points_world (N, 3), T_cam_world (4, 4), K (3, 3) of the grid (float64 tensors);
    uv_true / peaks (N, 2) grid coordinates; inlier (N,) bool; maps: LossMaps."""

    points_world: Tensor
    T_cam_world: Tensor
    K: Tensor
    uv_true: Tensor
    peaks: Tensor
    inlier: Tensor
    maps: LossMaps
    noise: float


def grid_intrinsics(width: int = 640, height: int = 480, stride: int = 8,
                    fov_deg: float = 60.0) -> tuple[Tensor, tuple[int, int]]:
    """K (3, 3) of a stride-``stride`` grid of a width x height pinhole image, and (W, H)."""
    f = 0.5 * width / np.tan(np.radians(fov_deg) / 2)
    s = 1.0 / stride
    K = torch.tensor([[f * s, 0, s * ((width - 1) / 2 + 0.5) - 0.5],
                      [0, f * s, s * ((height - 1) / 2 + 0.5) - 0.5], [0, 0, 1]],
                     dtype=torch.float64)
    return K, (width // stride, height // stride)


def gaussian_logits(peaks: Tensor, grid_size: tuple[int, int], spread: float) -> Tensor:
    """(N, H, W) float32 logits of Gaussian bumps at (N, 2) grid coordinates."""
    w, h = grid_size
    x = torch.arange(w, dtype=torch.float32)
    y = torch.arange(h, dtype=torch.float32)
    p = peaks.float()
    lx = -(x[None] - p[:, 0, None]) ** 2 / (2 * spread ** 2)
    ly = -(y[None] - p[:, 1, None]) ** 2 / (2 * spread ** 2)
    return ly[:, :, None] + lx[:, None, :]


def random_scene(n: int, outlier_ratio: float = 0.0, noise: float = 0.0, spread: float = 1.0,
                 seed: int = 0, width: int = 640, height: int = 480, stride: int = 8,
                 depth_range: tuple[float, float] = (2.0, 6.0)) -> SyntheticScene:
    """Random pose and N points visible in a 640x480 camera, maps on its stride-8 grid."""
    rng = np.random.default_rng(seed)
    K, grid = grid_intrinsics(width, height, stride)
    uv = rng.uniform([0, 0], [grid[0] - 1, grid[1] - 1], size=(n, 2))
    z = rng.uniform(*depth_range, size=n)
    Kn = K.numpy()
    pc = np.stack([(uv[:, 0] - Kn[0, 2]) / Kn[0, 0] * z, (uv[:, 1] - Kn[1, 2]) / Kn[1, 1] * z,
                   z], 1)
    R = Rotation.random(random_state=seed).as_matrix()
    t = rng.normal(size=3)
    pw = (pc - t) @ R  # R^T (pc - t)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return scene_from_points(torch.tensor(pw), torch.tensor(T), K, grid, outlier_ratio, noise,
                             spread, seed)


def scene_from_points(points_world: Tensor, T_cam_world: Tensor, K: Tensor,
                      grid_size: tuple[int, int], outlier_ratio: float = 0.0,
                      noise: float = 0.0, spread: float = 1.0, seed: int = 0) -> SyntheticScene:
    """Loss maps for given points and true pose (points should project inside the grid)."""
    rng = np.random.default_rng(seed + 1)
    n = points_world.shape[0]
    pc = se3.transform(points_world, T_cam_world[:3, :3], T_cam_world[:3, 3])
    uv, _ = se3.project(pc, K)
    inlier = torch.ones(n, dtype=torch.bool)
    inlier[torch.tensor(rng.permutation(n)[:int(round(outlier_ratio * n))], dtype=torch.long)
           ] = False
    peaks = uv + torch.tensor(rng.normal(size=(n, 2)) * noise)
    rand = torch.tensor(rng.uniform([0, 0], [grid_size[0] - 1, grid_size[1] - 1], size=(n, 2)))
    peaks = torch.where(inlier[:, None], peaks, rand)
    maps = loss_maps_from_logits(gaussian_logits(peaks, grid_size, spread))
    return SyntheticScene(points_world, T_cam_world, K, uv, peaks, inlier, maps, noise)


def fine_builder(scene: SyntheticScene, ratio: int = 4, window: int = 16,
                 spread: float = 1.0, noise: float = 0.0, seed: int = 0):
    """Callable(T_coarse) -> FineLevel: Gaussian windows on a grid ``ratio`` x finer.

    Inliers peak at the true fine projection + N(0, noise^2); outliers at a random cell of
    their window. Windows are centred on the reprojection under the given coarse pose.
    """
    rng = np.random.default_rng(seed + 2)
    wc, hc = scene.maps.grid_size
    grid = (wc * ratio, hc * ratio)
    s = 1.0 / ratio
    K = scene.K.clone()
    K[0, 0] /= s
    K[1, 1] /= s
    K[0, 2] = (scene.K[0, 2] + 0.5) * ratio - 0.5
    K[1, 2] = (scene.K[1, 2] + 0.5) * ratio - 0.5
    pc = se3.transform(scene.points_world, scene.T_cam_world[:3, :3], scene.T_cam_world[:3, 3])
    uv_true, _ = se3.project(pc, K)
    n = uv_true.shape[0]
    jitter = torch.tensor(rng.normal(size=(n, 2)) * noise)
    rand = torch.tensor(rng.uniform(0, window - 1, size=(n, 2)))

    def build(T: Tensor) -> FineLevel:
        pcc = se3.transform(scene.points_world, T[:3, :3], T[:3, 3])
        centres, _ = se3.project(pcc, K)
        origin = window_origins(centres, window)
        peaks = torch.where(scene.inlier[:, None], uv_true + jitter, origin + rand)
        local = peaks - origin
        logits = gaussian_logits(local, (window, window), spread)
        maps = fine_loss_maps_from_logits(logits, origin, scene.maps, ratio, grid)
        return FineLevel(maps, K)

    return build
