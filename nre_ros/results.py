"""What a localization attempt returns: a trusted ``Result`` or a ``Failure`` with a reason.

A ``Failure`` is a normal outcome (not an exception) and never carries a pose to publish.
Shared by the solver, the pipeline, the evaluation tools and the ROS node.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np


@dataclass(frozen=True)
class PointSupport:
    """Per-point evidence behind a Result (for visualization and debugging).

    Attributes:
        nre: (N,) float32 NRE of each point at the verdict's (coarse) level, nats.
        threshold: a point is supported when its NRE is below this (ln|Omega| - margin).
        point_idx: (N,) int64 map point of each entry (set by the pipeline; None from the bare
            solver, whose points are in the order it was given them).
    """

    nre: np.ndarray
    threshold: float
    point_idx: np.ndarray | None = None

    @property
    def supported(self) -> np.ndarray:
        """(N,) bool."""
        return self.nre < self.threshold


@dataclass(frozen=True)
class Result:
    """A pose the verdict trusts.

    Attributes:
        T_cam_world: (4, 4) float64, maps world (map) points into the camera optical frame.
        covariance: (6, 6) float64 covariance of a left increment xi = (rho, phi) on
            T_cam_world (T <- exp(xi) T), translation first, metres / radians. Symmetric PD.
        cost: final NRE cost (sum over points, nats).
        mean_cost: cost / number of points used.
        num_points: points used by the final stage.
        num_supported: points whose final NRE is well below ln|Omega| (the supporting set).
        iterations: total solver iterations (all stages).
        timings_ms: per-stage wall times, e.g. {'lossmaps': .., 'msac': .., 'coarse': ..}.
        info: free-form diagnostics (stage costs, runner-up margin, ...), JSON-serializable.
        support: per-point NRE and support of the points behind the pose, or None.
    """

    T_cam_world: np.ndarray
    covariance: np.ndarray
    cost: float
    mean_cost: float
    num_points: int
    num_supported: int
    iterations: int
    timings_ms: dict[str, float] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    support: PointSupport | None = None

    ok: bool = field(default=True, init=False)

    @property
    def T_world_cam(self) -> np.ndarray:
        R, t = self.T_cam_world[:3, :3], self.T_cam_world[:3, 3]
        T = np.eye(4)
        T[:3, :3] = R.T
        T[:3, 3] = -R.T @ t
        return T


@dataclass(frozen=True)
class Failure:
    """No trustworthy pose. ``reason`` is a short stable code, ``detail`` a sentence for humans.

    Reason codes the relocalizer produces: 'bad_input', 'no_keyframes', 'too_few_points',
    'too_few_peaked_maps', 'no_hypothesis', 'diverged', 'too_few_supported', 'cost_too_high',
    'degenerate_geometry', 'disagrees_with_prior' (tracking, before the global fallback),
    'intrinsics_inconsistent' (the given K cannot explain the image, info 'estimated_focal_px',
    'estimated_principal_point_px'; or its camera's images combined cannot, info
    'camera_intrinsics').
    """

    reason: str
    detail: str = ''
    timings_ms: dict[str, float] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    ok: bool = field(default=False, init=False)


Outcome = Union[Result, Failure]


@dataclass(frozen=True)
class Prior:
    """A pose guess (odometry, last fix, /initialpose): ``T_cam_world`` and its (6, 6)
    covariance in Result's convention (left increment on T_cam_world, translation first), or
    None; with a covariance, tracking results beyond it fall back to global search."""

    T_cam_world: np.ndarray
    covariance: np.ndarray | None = None
