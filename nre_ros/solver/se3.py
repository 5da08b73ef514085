"""Torch SE(3) / pinhole helpers for the solver (batched, any device; float64 for poses).

Twists are ordered (rho, phi): translation first, then rotation, as in nre_ros.results. Pose
updates are left increments on T_cam_world: ``T <- exp(xi) T``.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ['skew', 'so3_exp', 'se3_exp', 'left_update', 'transform', 'project',
           'project_jacobian', 'make_T', 'rotation_angle_deg']


def skew(v: Tensor) -> Tensor:
    """(..., 3) -> (..., 3, 3) cross-product matrices [v]x."""
    z = torch.zeros_like(v[..., 0])
    x, y, w = v[..., 0], v[..., 1], v[..., 2]
    return torch.stack([z, -w, y, w, z, -x, -y, x, z], dim=-1).reshape(v.shape[:-1] + (3, 3))


def so3_exp(phi: Tensor) -> Tensor:
    """(..., 3) rotation vectors -> (..., 3, 3) rotation matrices (Rodrigues, stable near 0)."""
    theta2 = (phi * phi).sum(-1, keepdim=True)[..., None]
    theta = theta2.sqrt()
    small = theta2 < 1e-12
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta.clamp(min=1e-12))
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp(min=1e-24))
    W = skew(phi)
    eye = torch.eye(3, dtype=phi.dtype, device=phi.device).expand_as(W)
    return eye + a * W + b * (W @ W)


def se3_exp(xi: Tensor) -> Tensor:
    """(..., 6) twists (rho, phi) -> (..., 4, 4) transforms (exact SE(3) exponential)."""
    rho, phi = xi[..., :3], xi[..., 3:]
    R = so3_exp(phi)
    theta2 = (phi * phi).sum(-1, keepdim=True)[..., None]
    theta = theta2.sqrt()
    small = theta2 < 1e-12
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp(min=1e-24))
    c = torch.where(small, 1.0 / 6 - theta2 / 120,
                    (theta - torch.sin(theta)) / (theta2 * theta).clamp(min=1e-36))
    W = skew(phi)
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device).expand_as(W)
    V = eye + b * W + c * (W @ W)
    return make_T(R, (V @ rho[..., None])[..., 0])


def make_T(R: Tensor, t: Tensor) -> Tensor:
    """(..., 3, 3), (..., 3) -> (..., 4, 4)."""
    T = torch.zeros(R.shape[:-2] + (4, 4), dtype=R.dtype, device=R.device)
    T[..., :3, :3] = R
    T[..., :3, 3] = t
    T[..., 3, 3] = 1
    return T


def left_update(T: Tensor, xi: Tensor) -> Tensor:
    """``exp(xi) @ T`` for (4, 4) T and (6,) xi, re-orthonormalised."""
    T_new = se3_exp(xi) @ T
    U, _, Vh = torch.linalg.svd(T_new[:3, :3])
    T_new[:3, :3] = U @ Vh
    return T_new


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


def project_jacobian(points_cam: Tensor, K: Tensor, min_depth: float = 1e-4) -> Tensor:
    """(N, 2, 6) d uv / d xi for a left increment xi = (rho, phi) on T_cam_world.

    A left increment moves camera-frame points by ``p <- p + rho + phi x p``, so
    ``dp/dxi = [I | -[p]x]``.
    """
    x, y, z = points_cam.unbind(-1)
    z = z.clamp(min=min_depth)
    iz = 1 / z
    fx, fy = K[0, 0], K[1, 1]
    zero = torch.zeros_like(z)
    # d uv / d p  (N, 2, 3)
    Jp = torch.stack([fx * iz, zero, -fx * x * iz * iz,
                      zero, fy * iz, -fy * y * iz * iz], dim=-1).reshape(-1, 2, 3)
    Jxi = torch.cat([torch.eye(3, dtype=points_cam.dtype, device=points_cam.device
                               ).expand(points_cam.shape[0], 3, 3), -skew(points_cam)], dim=-1)
    return Jp @ Jxi


def rotation_angle_deg(R_a: Tensor, R_b: Tensor) -> Tensor:
    """(..., 3, 3) x2 -> (...) angle of R_a R_b^T in degrees."""
    tr = (R_a * R_b).sum(dim=(-1, -2))
    return torch.rad2deg(torch.arccos(((tr - 1) / 2).clamp(-1, 1)))
