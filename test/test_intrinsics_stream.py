"""Intrinsics evidence of a camera stream: per-frame estimates combined over views."""
from __future__ import annotations

import numpy as np
import pytest

from nre_ros.geometry import so3_exp
from nre_ros.solver.intrinsics_stream import (FrameIntrinsics, IntrinsicsEvidence,
                                              IntrinsicsStreamConfig, combine)

SIGMA = np.array([0.015, 0.012, 0.018])     # one frame's jackknife sigmas (log s, dx/f, dy/f)


def _frame(theta, yaw_deg: float, rng, noise: float = 1.0) -> FrameIntrinsics:
    """One frame looking ``yaw_deg`` around the vertical axis from the origin, depth 2 m; its
    estimate = theta + noise x (the frame's own sigmas)."""
    R = so3_exp(np.array([0.0, np.radians(yaw_deg), 0.0]))        # R_cam_world
    theta = np.asarray(theta, np.float64) + noise * rng.normal(0.0, SIGMA)
    return FrameIntrinsics(theta, np.diag(SIGMA ** 2), np.zeros(3), R[2].copy(), 2.0)


def test_a_shifted_principal_point_is_found_once_enough_views_agree():
    """0.155 f (80 px at f = 517): no verdict before min_views views, inconsistent after."""
    rng = np.random.default_rng(0)
    ev = IntrinsicsEvidence()
    for k in range(6):
        ev.add(_frame([0.0, -0.155, 0.0], 20.0 * k, rng))
        problem, est = ev.verdict()
        if k + 1 < IntrinsicsStreamConfig().min_views:
            assert est is None and problem is None
        else:
            assert problem is not None and 'principal point' in problem, (k, est)
            assert est.principal_offset_rel[0] == pytest.approx(-0.155, abs=0.03)
            assert ev.inconsistent


def test_a_wrong_focal_length_is_found():
    rng = np.random.default_rng(1)
    ev = IntrinsicsEvidence()
    for k in range(4):
        ev.add(_frame([np.log(0.82), 0.0, 0.0], 20.0 * k, rng))
    problem, est = ev.verdict()
    assert problem is not None and 'focal length' in problem
    assert est.focal_scale == pytest.approx(0.82, abs=0.03)


def test_right_k_with_view_errors_never_turns_inconsistent():
    """Right K, each view reading up to ~0.1 f off (errors the frame's jackknife does not see,
    as on real maps) and an outlier view: the combined estimate stays consistent over 60
    frames, whatever one view says."""
    rng = np.random.default_rng(2)
    ev = IntrinsicsEvidence()
    view_error = rng.normal(0.0, [0.03, 0.04, 0.04], (12, 3))
    view_error[3] = [0.17, 0.08, -0.11]                            # one view far off
    for k in range(60):
        v = k % 12
        ev.add(_frame(view_error[v], 15.0 * v, rng))
        problem, _ = ev.verdict()
        assert problem is None, (k, problem)
    assert ev.verdict()[1].views == 12


def test_frames_of_one_view_count_once():
    """A camera standing still: many frames of one view reading 0.12 f are one view's
    evidence, not many: no verdict (the per-frame check still applies)."""
    rng = np.random.default_rng(3)
    ev = IntrinsicsEvidence()
    for _ in range(30):
        ev.add(_frame([0.0, 0.12, 0.0], 2.0 * rng.random(), rng))
    problem, est = ev.verdict()
    assert est is None and problem is None
    assert len(ev.views) == 1 and ev.frames == 30
    # the same readings from three distinct views are evidence
    for yaw in (20.0, 40.0):
        ev.add(_frame([0.0, 0.12, 0.0], yaw, rng))
    assert ev.verdict()[0] is not None


def test_unusable_estimates_are_ignored():
    ev = IntrinsicsEvidence()
    f = _frame([0.0, 0.0, 0.0], 0.0, np.random.default_rng(4))
    ev.add(FrameIntrinsics(f.theta, np.full((3, 3), np.inf), f.centre, f.axis, f.depth))
    ev.add(FrameIntrinsics(f.theta * np.nan, f.cov, f.centre, f.axis, f.depth))
    assert ev.frames == 0 and not ev.views


def test_combine_is_robust_and_widens_when_estimates_disagree():
    """An outlier does not drag the mean; estimates scattered more than their covariances
    say get a wider combined covariance than the formula's."""
    covs = np.tile(np.eye(3) * 1e-4, (8, 1, 1))
    thetas = np.zeros((8, 3))
    thetas[0] = [0.5, 0.5, 0.5]
    mean, _ = combine(thetas, covs)
    assert np.abs(mean).max() < 0.02
    rng = np.random.default_rng(5)
    scattered = rng.normal(0.0, 0.05, (8, 3))                     # 5 x the stated 0.01
    _, cov = combine(scattered, covs)
    assert np.sqrt(cov[1, 1]) > 2.0 * np.sqrt(1e-4 / 8)
