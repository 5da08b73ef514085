"""Intrinsics self-check: a K that cannot explain the image is refused, a right K is not."""
from __future__ import annotations

import numpy as np
import pytest

from nre_ros.camera import Camera
from nre_ros.datasets import TumSequence
from nre_ros.geometry import invert, so3_exp
from nre_ros.paths import shared_file
from nre_ros.pipeline import PipelineConfig, Relocalizer
from nre_ros.solver.intrinsics_check import estimate_intrinsics, inconsistency


def _scene(rng, n=300):
    X = rng.uniform([-2, -1.5, 2], [2, 1.5, 5], (n, 3))          # camera frame = world frame
    K = np.array([[65.0, 0, 39.5], [0, 65.0, 29.5], [0, 0, 1]])   # a stride-8 grid of 640x480
    return X, K


@pytest.mark.parametrize('true_scale', [1.0, 1.25, 0.67, 2.0])
def test_estimate_recovers_the_focal_scale_with_outliers(true_scale):
    rng = np.random.default_rng(1)
    X, K = _scene(rng)
    K_true = K.copy()
    K_true[:2, :2] *= true_scale
    uv = X[:, :2] / X[:, 2:] * K_true[0, 0] + K_true[:2, 2] + rng.normal(0, 0.3, (len(X), 2))
    bad = rng.random(len(X)) < 0.3                                 # 30 % wrong matches
    uv[bad] = rng.uniform([0, 0], [80, 60], (bad.sum(), 2))
    T0 = np.eye(4)
    T0[:3, :3] = so3_exp(np.array([0.02, -0.03, 0.01]))         # start a little off
    est = estimate_intrinsics(X, uv, K, T0)
    assert est.focal_scale == pytest.approx(true_scale, rel=0.03)
    assert (inconsistency(est, K) is None) == (true_scale == 1.0)


@pytest.fixture(scope='module')
def reloc():
    return Relocalizer.from_config(shared_file('maps/demo/fr1_rpy.nremap'), PipelineConfig())


def test_wrong_focal_is_refused_with_the_estimate(reloc):
    seq = TumSequence(shared_file('maps/demo/queries'))
    frame, cam = seq.frames[0], seq.camera
    image = seq.load_rgb(frame)
    right = reloc.localize(image, cam)
    assert right.ok and abs(right.info['focal_ratio'] - 1.0) < 0.1
    K = cam.K.copy()
    K[:2, :2] *= 1.5                  # e.g. a CameraInfo calibrated at another resolution
    out = reloc.localize(image, Camera(cam.width, cam.height, K, cam.dist))
    assert not out.ok and out.reason == 'intrinsics_inconsistent', out
    fx_est = out.info['estimated_focal_px'][0]
    assert abs(fx_est / cam.fx - 1.0) < 0.15      # it recovers the real focal length
