"""Torch rigid-transform / pinhole helpers for the solver (batched, any device; float64 for
poses). Pose algebra on single (4, 4) arrays (exp, log, angles) is in ``nre_ros.geometry``."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ['transform', 'project', 'project_in_grid', 'make_T']


def make_T(R: Tensor, t: Tensor) -> Tensor:
    """(..., 3, 3), (..., 3) -> (..., 4, 4)."""
    T = torch.zeros(R.shape[:-2] + (4, 4), dtype=R.dtype, device=R.device)
    T[..., :3, :3] = R
    T[..., :3, 3] = t
    T[..., 3, 3] = 1
    return T


def transform(points: Tensor, R: Tensor, t: Tensor) -> Tensor:
    """(N, 3) points, (..., 3, 3) R, (..., 3) t -> (..., N, 3) ``R p + t``."""
    return points @ R.transpose(-1, -2) + t[..., None, :]


def project(points_cam: Tensor, K: Tensor, min_depth: float = 1e-4
            ) -> tuple[Tensor, Tensor]:
    """Pinhole projection of (..., N, 3) camera-frame points with a (3, 3) K.

    Returns:
        uv: (..., N, 2) grid coordinates; finite everywhere (depth clamped to min_depth).
        valid: (..., N) bool, depth > min_depth.
    """
    z = points_cam[..., 2]
    valid = z > min_depth
    zc = torch.where(valid, z, torch.full_like(z, min_depth))
    x = points_cam[..., 0] / zc
    y = points_cam[..., 1] / zc
    uv = torch.stack([K[0, 0] * x + K[0, 2], K[1, 1] * y + K[1, 2]], dim=-1)
    return uv, valid


def project_in_grid(points_world: Tensor, T_cam_world: Tensor, K: Tensor,
                    size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Points of a (W, H) grid's view: (N, 2) grid coordinates of all points under T_cam_world
    and the (M,) int64 indices of those in front of the camera with a projection inside
    [0, W - 1] x [0, H - 1] (the cells' centres)."""
    uv, valid = project(transform(points_world, T_cam_world[:3, :3], T_cam_world[:3, 3]), K)
    w, h = size
    inside = valid & (uv[:, 0] >= 0) & (uv[:, 0] <= w - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= h - 1)
    return uv, torch.nonzero(inside).reshape(-1)
