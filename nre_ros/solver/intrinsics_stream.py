"""Intrinsics evidence of a camera stream: one camera's per-frame estimates combined.

A frame's estimate (``intrinsics_check``) hardly tells a principal point 0.15 f off from a view
whose map points happen to read 0.1 f: the shift is nearly a rotation, and what tells them apart
(the perspective across the image) is also bent by the map's depth errors, rolling shutter and
blur of that view. The intrinsics, however, are the same for every frame of one CameraInfo, and
those errors change from view to view. So the estimates of the frames of one camera are
combined: frames whose cameras look the same way from about the same place form one *view*
(they share that view's errors, so a robot standing still adds no evidence however many frames
it sends), the views' estimates are combined by a robust inverse-variance weighted mean, and
the camera's K is judged inconsistent once at least ``min_views`` views say so, beyond minimal
amounts (smaller than one frame's) and significantly (sigmas of the combined estimate, widened
when the views disagree more than their covariances say).

Units: ``theta = (log s, dx / fx, dy / fy)`` with ``s`` the estimated over the given focal
length and ``(dx, dy)`` the principal-point offset, in the caller's camera frame; camera centres
in the map's world frame.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class IntrinsicsStreamConfig:
    enabled: bool = True
    min_views: int = 3                 # views (see below) needed before any verdict
    max_focal_change: float = 0.05     # |s - 1| must exceed this (combined estimate) ...
    max_principal_shift: float = 0.08  # ... or |offset| / f this, ...
    min_sigmas: float = 4.0            # ... by this many sigmas of the combined estimate
    # frames are one view while their optical axes are within view_angle_deg and their centres
    # within view_distance x the median depth of their points
    view_angle_deg: float = 10.0
    view_distance: float = 0.25
    max_views: int = 30                # most recently seen views kept
    frames_per_view: int = 5           # latest frames kept per view
    # 1-sigma added to each view's covariance (log s, offset / f): what a frame's block
    # jackknife cannot see (errors shared by the whole view)
    view_sigma: tuple[float, float] = (0.02, 0.02)
    robust_sigmas: float = 3.0         # Cauchy scale of the views' Mahalanobis residuals


@dataclass(frozen=True)
class FrameIntrinsics:
    """One frame's estimate: ``theta`` (3,) and its covariance ``cov`` (3, 3) (block jackknife),
    the camera ``centre`` (3,) and optical ``axis`` (3,, unit) in the world frame, ``depth`` the
    median depth of the fitted points (world units) and ``view_scale`` (the view's size
    relative to the map keyframes', as in ``intrinsics_check.inconsistency``)."""

    theta: np.ndarray
    cov: np.ndarray
    centre: np.ndarray
    axis: np.ndarray
    depth: float
    view_scale: float = 1.0


@dataclass(frozen=True)
class StreamEstimate:
    """The combined estimate: ``theta`` (3,) and its covariance (3, 3), over ``frames`` frames
    in ``views`` views."""

    theta: np.ndarray
    cov: np.ndarray
    frames: int
    views: int

    @property
    def focal_scale(self) -> float:
        return float(math.exp(self.theta[0]))

    @property
    def principal_offset_rel(self) -> tuple[float, float]:
        """Principal-point offset / focal length (x, y), caller's camera frame."""
        return float(self.theta[1]), float(self.theta[2])


class _View:
    """Frames of one view (the latest ``frames_per_view``) around the first one's pose."""

    def __init__(self, frame: FrameIntrinsics, max_frames: int):
        self.centre, self.axis, self.depth = frame.centre, frame.axis, frame.depth
        self.frames: deque[FrameIntrinsics] = deque([frame], maxlen=max_frames)

    def contains(self, frame: FrameIntrinsics, cos_angle: float, distance: float) -> bool:
        scale = distance * min(self.depth, frame.depth)
        return (float(self.axis @ frame.axis) >= cos_angle
                and float(np.linalg.norm(frame.centre - self.centre)) <= scale)

    def estimate(self, floor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(theta (3,), cov (3, 3)) of the view: its frames' inverse-variance weighted mean,
        with the covariance of one typical frame (the inverse mean information; its frames
        share the view's errors, so averaging them does not shrink it) plus ``floor``."""
        info = np.array([_inverse(f.cov + floor) for f in self.frames])
        theta = np.linalg.solve(info.sum(0), np.einsum('nij,nj->i', info,
                                                       np.array([f.theta for f in self.frames])))
        return theta, _inverse(info.mean(0))


def _inverse(C: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.inv(C)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(C)


def combine(thetas: np.ndarray, covs: np.ndarray, robust_sigmas: float = 3.0,
            iterations: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Robust inverse-variance weighted mean of estimates ``thetas`` (V, P) with covariances
    ``covs`` (V, P, P): Cauchy weights on each estimate's Mahalanobis residual (scale
    ``robust_sigmas``). Returns (mean (P,), its covariance (P, P)), the covariance scaled up by
    the weighted residuals' chi-square per degree of freedom when above 1 (the estimates
    disagree more than their covariances say)."""
    info = np.array([_inverse(C) for C in covs])
    w = np.ones(len(thetas))
    for _ in range(iterations):
        H = np.einsum('n,nij->ij', w, info)
        mean = np.linalg.solve(H, np.einsum('n,nij,nj->i', w, info, thetas))
        r = thetas - mean
        d2 = np.einsum('ni,nij,nj->n', r, info, r)
        w_new = 1.0 / (1.0 + d2 / (robust_sigmas ** 2 * thetas.shape[1]))
        if np.allclose(w_new, w, atol=1e-4):
            w = w_new
            break
        w = w_new
    H = np.einsum('n,nij->ij', w, info)
    mean = np.linalg.solve(H, np.einsum('n,nij,nj->i', w, info, thetas))
    r = thetas - mean
    d2 = np.einsum('ni,nij,nj->n', r, info, r)
    dof = max(1, thetas.shape[1] * (len(thetas) - 1))
    over = max(1.0, float((w * d2).sum()) / dof) if len(thetas) > 1 else 1.0
    return mean, _inverse(H) * over


def _sigmas(d: np.ndarray, cov: np.ndarray) -> float:
    q = float(d @ np.linalg.solve(cov, d))
    return math.sqrt(q) if math.isfinite(q) and q > 0 else 0.0


class IntrinsicsEvidence:
    """The evidence about one camera's intrinsics, frame after frame (``add``); ``verdict``
    says whether the combined estimate contradicts the given K."""

    def __init__(self, cfg: IntrinsicsStreamConfig = IntrinsicsStreamConfig()):
        self.cfg = cfg
        self.views: deque[_View] = deque(maxlen=cfg.max_views)
        self.frames = 0
        self.inconsistent = False      # the last verdict (the caller logs its changes)

    def add(self, frame: FrameIntrinsics) -> None:
        """Add one frame's estimate (frames with an unusable covariance are ignored)."""
        if not (np.all(np.isfinite(frame.theta)) and np.all(np.isfinite(frame.cov))
                and math.isfinite(frame.depth) and frame.depth > 0):
            return
        cfg = self.cfg
        cos_angle = math.cos(math.radians(cfg.view_angle_deg))
        for v in self.views:
            if v.contains(frame, cos_angle, cfg.view_distance):
                v.frames.append(frame)
                self.views.remove(v)           # most recently seen last
                self.views.append(v)
                break
        else:
            self.views.append(_View(frame, cfg.frames_per_view))
        self.frames += 1

    def estimate(self) -> StreamEstimate | None:
        """The combined estimate over the views kept, None before ``min_views`` views."""
        if len(self.views) < max(1, self.cfg.min_views):
            return None
        sf, sp = self.cfg.view_sigma
        floor = np.diag([sf ** 2, sp ** 2, sp ** 2])
        est = [v.estimate(floor) for v in self.views]
        theta, cov = combine(np.array([e[0] for e in est]), np.array([e[1] for e in est]),
                             self.cfg.robust_sigmas)
        return StreamEstimate(theta, cov, sum(len(v.frames) for v in self.views),
                              len(self.views))

    def verdict(self) -> tuple[str | None, StreamEstimate | None]:
        """(a sentence saying how the combined estimate contradicts K, or None; the estimate,
        or None before ``min_views`` views). Stores the answer in ``inconsistent``."""
        est = self.estimate()
        problem = None if est is None else inconsistency(est, self.cfg, self._view_scale())
        self.inconsistent = problem is not None
        return problem, est

    def _view_scale(self) -> float:
        return float(np.median([f.view_scale for v in self.views for f in v.frames]))


def inconsistency(est: StreamEstimate, cfg: IntrinsicsStreamConfig, view_scale: float = 1.0
                  ) -> str | None:
    """How the combined estimate contradicts K (None when it does not): focal scale or
    principal point beyond the minimal amount and ``min_sigmas``. The minimal amounts widen for
    a narrow view as in ``intrinsics_check.inconsistency`` (focal / v, principal point / v^2)."""
    v = min(1.0, max(view_scale / est.focal_scale, 1e-3)) if est.focal_scale >= 1.0 else 1.0
    max_focal, max_shift = cfg.max_focal_change / v, cfg.max_principal_shift / v ** 2
    z_f = _sigmas(est.theta[:1], est.cov[:1, :1])
    if abs(est.focal_scale - 1.0) > max_focal and z_f > cfg.min_sigmas:
        return (f'focal length {est.focal_scale:.2f} x the given one ({z_f:.1f} sigmas; '
                f'tolerance {max_focal:.2f})')
    d = est.theta[1:]
    z_p = _sigmas(d, est.cov[1:, 1:])
    if float(np.hypot(*d)) > max_shift and z_p > cfg.min_sigmas:
        return (f'principal point ({d[0]:+.3f}, {d[1]:+.3f}) x the focal length from the given '
                f'one ({z_p:.1f} sigmas; tolerance {max_shift:.3f})')
    return None
