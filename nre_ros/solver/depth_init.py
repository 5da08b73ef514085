"""RGB-D initialization: MSAC over batched 3-point Kabsch hypotheses (metric, one pose each).

With a depth image the loss-map minima of the most peaked maps are lifted to 3D camera points;
triplets of (world point, lifted camera point) give one rigid pose each (Kabsch/Umeyama without
scale, weighted equally), triplets whose pairwise distances disagree between the two frames are
dropped before solving (a rigid motion keeps distances), and every surviving pose is scored by
the same summed truncated NRE as the P3P MSAC. Cheaper than P3P (no quartic, one pose per
triplet, most wrong triplets rejected by the distance test) and metric from the start.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from nre_ros.lossmaps import LossMaps
from nre_ros.solver.msac import MsacConfig, MsacResult, msac

__all__ = ['DepthInitConfig', 'KabschSolver', 'kabsch', 'lift_minima', 'depth_msac']


@dataclass(frozen=True)
class DepthInitConfig:
    """RGB-D initialization settings (sampling and scoring reuse ``MsacConfig``)."""

    enabled: bool = True
    num_triplets: int = 512        # sampled triplets (most fail the distance test)
    min_depth_m: float = 0.1       # valid depth range of the sensor
    max_depth_m: float = 10.0
    distance_tolerance: float = 0.05   # |d_world - d_cam| <= tol_abs + tol_rel * d (metres)
    distance_tolerance_rel: float = 0.05
    min_edge_m: float = 0.05       # shortest triplet edge (metres)


def kabsch(P: Tensor, Q: Tensor) -> tuple[Tensor, Tensor]:
    """Rigid fits ``Q ~ R P + t`` for a batch of point sets.

    Args:
        P: (M, K, 3) source points (world frame), K >= 3.
        Q: (M, K, 3) target points (camera frame).

    Returns:
        R: (M, 3, 3) proper rotations; t: (M, 3).
    """
    cp, cq = P.mean(dim=1, keepdim=True), Q.mean(dim=1, keepdim=True)
    H = (P - cp).transpose(1, 2) @ (Q - cq)            # (M, 3, 3)
    U, _, Vt = torch.linalg.svd(H)
    d = torch.sign(torch.linalg.det(Vt.transpose(1, 2) @ U.transpose(1, 2)))
    d = torch.where(d == 0, torch.ones_like(d), d)
    D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], dim=-1))
    R = Vt.transpose(1, 2) @ D @ U.transpose(1, 2)
    t = cq[:, 0] - (R @ cp[:, 0, :, None])[..., 0]
    return R, t


def lift_minima(uv_grid: Tensor, K_grid: Tensor, depth: Tensor, K_image: Tensor,
                min_depth: float, max_depth: float) -> tuple[Tensor, Tensor]:
    """Camera-frame 3D points of grid positions, with depth read at the matching image pixel.

    Args:
        uv_grid: (N, 2) float64 grid coordinates (x, y).
        K_grid: (3, 3) float64 intrinsics of the grid.
        depth: (H, W) float32 depth of the image in the map's units (<= 0 or non-finite: none).
        K_image: (3, 3) float64 intrinsics of the image ``depth`` belongs to.
        min_depth, max_depth: accepted depth range (map units).

    Returns:
        X_cam: (N, 3) float64 points (camera frame); valid: (N,) bool.
    """
    ones = torch.ones_like(uv_grid[:, :1])
    rays = torch.cat([uv_grid, ones], dim=1) @ torch.linalg.inv(K_grid).T   # z = 1
    pix = rays @ K_image.T
    H, W = depth.shape
    x = pix[:, 0].round().long()
    y = pix[:, 1].round().long()
    inside = (x >= 0) & (x < W) & (y >= 0) & (y < H)
    z = depth[y.clamp(0, H - 1), x.clamp(0, W - 1)].to(torch.float64)
    valid = inside & torch.isfinite(z) & (z >= min_depth) & (z <= max_depth)
    return rays * torch.where(valid, z, torch.zeros_like(z))[:, None], valid


class KabschSolver:
    """Minimal solver for ``msac``: lifts the grid minima with the depth image and fits one
    rigid pose per triplet whose pairwise distances agree between map and camera frames."""

    name = 'Kabsch on depth'

    def __init__(self, K: Tensor, depth: Tensor, K_image: Tensor, metres_per_unit: float,
                 config: DepthInitConfig) -> None:
        unit = 1.0 / metres_per_unit
        self.K, self.K_image, self.config, self.unit = K, K_image, config, unit
        self.depth = depth.to(K.device) * unit
        self.range = (config.min_depth_m * unit, config.max_depth_m * unit)

    def _lift(self, uv: Tensor) -> tuple[Tensor, Tensor]:
        return lift_minima(uv.reshape(-1, 2), self.K, self.depth, self.K_image, *self.range)

    def usable(self, uv: Tensor) -> Tensor:
        return self._lift(uv)[1]

    def solve(self, X: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        Q = self._lift(q)[0].reshape(X.shape)                          # (M, 3, 3) camera
        pairs = ([0, 1], [0, 2], [1, 2])
        d_world = torch.stack([(X[:, i] - X[:, j]).norm(dim=-1) for i, j in pairs], 1)
        d_cam = torch.stack([(Q[:, i] - Q[:, j]).norm(dim=-1) for i, j in pairs], 1)
        cfg = self.config
        tol = cfg.distance_tolerance * self.unit + cfg.distance_tolerance_rel * d_world
        rigid = ((d_world - d_cam).abs() <= tol).all(1) & (
            d_world.amin(1) >= cfg.min_edge_m * self.unit) & (Q[..., 2] > 0).all(1)
        return kabsch(X[rigid], Q[rigid])


def depth_msac(points_world: Tensor, maps: LossMaps, K: Tensor, depth: Tensor, K_image: Tensor,
               metres_per_unit: float = 1.0, config: DepthInitConfig = DepthInitConfig(),
               msac_config: MsacConfig = MsacConfig()) -> MsacResult:
    """``msac`` with the ``KabschSolver``: same sampling, scoring, result and failure codes.

    Args:
        points_world: (N, 3) float64 world points, in the maps' order (map units).
        maps: N full-grid loss maps.
        K: (3, 3) float64 intrinsics of the grid.
        depth: (H, W) float32 depth in metres of the image the grid was computed on.
        K_image: (3, 3) float64 intrinsics of that image.
        metres_per_unit: size of one map unit in metres.
    """
    solver = KabschSolver(K, depth, K_image, metres_per_unit, config)
    return msac(points_world, maps, K, replace(msac_config, num_triplets=config.num_triplets),
                solver)
