"""Tracking pre-alignment: a robust reprojection fit to the loss-map minima, from a prior pose.

A prior a few degrees off puts the projections several coarse cells from their bumps, where the
sigma = 2 GNC stage takes small steps and re-cuts its patches often. Before it, the minima of
the peaked maps (their argmins, sub-cell) are treated as correspondences: points whose minimum
lies within ``gate_cells`` of their projection under the current pose enter a Gauss-Newton fit
with Cauchy weights whose scale shrinks over ``scales`` (graduated, as GNC does). ``solve`` keeps
the result only when its summed NRE is below the prior's, so a bad fit costs nothing but time.
It widens the basin of the coarse refinement and shortens it (docs/decisions.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from nre_ros.geometry import se3_exp
from nre_ros.lossmaps import LossMaps
from nre_ros.solver.gnc import _jacobian

__all__ = ['PrealignConfig', 'prealign']


@dataclass(frozen=True)
class PrealignConfig:
    """Pre-alignment settings (cells of the coarse grid)."""

    enabled: bool = True
    scales: tuple[float, ...] = (4.0, 2.0, 1.0)   # Cauchy scale per round
    steps_per_scale: int = 2
    gate_cells: float = 10.0       # minima farther than this from their projection are ignored
    min_peakedness: float = 3.0    # nats; flatter maps have no usable minimum
    min_points: int = 12           # fewer gated points -> stop (pose unchanged from there)
    min_depth: float = 1e-3


def prealign(points_world: Tensor, maps: LossMaps, K: Tensor, T_init: Tensor,
             config: PrealignConfig = PrealignConfig()) -> Tensor:
    """Pose after a robust reprojection fit to the peaked maps' minima, starting at T_init.

    Args:
        points_world: (N, 3) float64 world points in the maps' order.
        maps: N full-grid loss maps.
        K: (3, 3) intrinsics of the grid.
        T_init: (4, 4) float64 prior T_cam_world.

    Returns:
        (4, 4) float64 T_cam_world on T_init's device (T_init itself when too few points
        are usable).
    """
    sel = torch.nonzero(maps.peakedness() >= config.min_peakedness).reshape(-1)
    if sel.numel() < config.min_points:
        return T_init
    uv_min = maps.argmin_uv(True, sel).double().cpu().numpy()   # the peaked maps, read in place
    X = points_world.index_select(0, sel).double().cpu().numpy()
    fx, fy, cx, cy = (float(v) for v in (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
    T = T_init.detach().double().cpu().numpy().copy()
    gate2 = config.gate_cells ** 2
    for scale in config.scales:
        for _ in range(config.steps_per_scale):
            pc = X @ T[:3, :3].T + T[:3, 3]
            z = np.maximum(pc[:, 2], config.min_depth)
            r = uv_min - np.stack([fx * pc[:, 0] / z + cx, fy * pc[:, 1] / z + cy], 1)
            d2 = np.einsum('ij,ij->i', r, r)
            w = ((pc[:, 2] > config.min_depth) & (d2 < gate2)) / (1.0 + d2 / scale ** 2)
            if int(np.count_nonzero(w)) < config.min_points:
                return torch.from_numpy(T).to(T_init.device)
            Ju, Jv = _jacobian(pc, fx, fy, config.min_depth)
            H = (Ju * w) @ Ju.T + (Jv * w) @ Jv.T
            g = Ju @ (w * r[:, 0]) + Jv @ (w * r[:, 1])
            H[np.diag_indices(6)] += 1e-9 * np.trace(H) + 1e-12
            try:
                delta = np.linalg.solve(H, g)
            except np.linalg.LinAlgError:
                return torch.from_numpy(T).to(T_init.device)
            T_new = se3_exp(delta) @ T
            if not np.isfinite(T_new).all():
                return torch.from_numpy(T).to(T_init.device)
            T = T_new
    return torch.from_numpy(T).to(T_init.device)
