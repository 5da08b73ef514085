"""Intrinsics self-check: a K that cannot explain the image is refused, a right K is not."""
from __future__ import annotations

import numpy as np
import pytest

from nre_ros.camera import Camera
from nre_ros.datasets import TumSequence
from nre_ros.geometry import so3_exp
from nre_ros.paths import shared_file
from nre_ros.pipeline import Relocalizer
from nre_ros.preprocess import rotate_quarter_turns, undistort
from nre_ros.solver.intrinsics_check import (IntrinsicsCheckConfig, IntrinsicsEstimate,
                                             estimate_intrinsics, gross_inconsistency,
                                             inconsistency)

F_FINE = 262.0    # focal length of a stride-2 grid of a 640 x 480, f = 525 camera


def _scene(rng, n=400, f=F_FINE, depth=(1.0, 4.0)):
    """World = camera frame; points filling a 640 x 480, f = 525 view (stride-2 grid K)."""
    K = np.array([[f, 0, 159.5], [0, f, 119.5], [0, 0, 1]])
    uv = rng.uniform([0, 0], [320, 240], (n, 2))
    z = rng.uniform(*depth, n)
    X = np.column_stack([(uv - K[:2, 2]) / f * z[:, None], z])
    return X, K


def _observe(X, K_true, rng, noise=0.5, outliers=0.3):
    uv = X[:, :2] / X[:, 2:] * np.diag(K_true)[:2] + K_true[:2, 2]
    uv = uv + rng.normal(0, noise, uv.shape)
    bad = rng.random(len(X)) < outliers                  # wrong matches
    uv[bad] = rng.uniform([0, 0], [320, 240], (bad.sum(), 2))
    return uv


def _start():
    T0 = np.eye(4)
    T0[:3, :3] = so3_exp(np.array([0.02, -0.03, 0.01]))   # start a little off
    return T0


@pytest.mark.parametrize('true_scale', [1.0, 1.25, 0.67, 2.0])
def test_estimate_recovers_the_focal_scale_with_outliers(true_scale):
    rng = np.random.default_rng(1)
    X, K = _scene(rng)
    K_true = K.copy()
    K_true[:2, :2] *= true_scale
    est = estimate_intrinsics(X, _observe(X, K_true, rng), K, _start(), robust_scale=2.0)
    assert est.focal_scale == pytest.approx(true_scale, rel=0.02)
    assert (inconsistency(est, K) is None) == (true_scale == 1.0)


@pytest.mark.parametrize('shift', [(0.0, 0.0), (40.0, 0.0), (0.0, -40.0)])
def test_estimate_recovers_a_principal_point_shift_a_rotation_would_absorb(shift):
    """A shift of 40 grid px (80 image px at stride 2) is nearly a 9 deg rotation; the fit
    still recovers it from the perspective across the image, and the test refuses it."""
    rng = np.random.default_rng(2)
    X, K = _scene(rng)
    K_true = K.copy()
    K_true[:2, 2] += shift
    K_given = K
    est = estimate_intrinsics(X, _observe(X, K_true, rng), K_given, _start(), robust_scale=2.0)
    assert est.principal_offset == pytest.approx(shift, abs=4.0)
    assert est.focal_scale == pytest.approx(1.0, abs=0.02)
    problem = inconsistency(est, K_given)
    assert (problem is None) == (shift == (0.0, 0.0)), problem
    if problem:
        assert 'principal point' in problem


def test_a_fit_with_little_evidence_refuses_nothing():
    """Few, noisy observations: the estimate is far off, but within its own uncertainty (the
    sigma part of the test), so a right K is not refused."""
    rng = np.random.default_rng(3)
    X, K = _scene(rng, n=12)
    est = estimate_intrinsics(X, _observe(X, K, rng, noise=6.0, outliers=0.0), K, _start(),
                              robust_scale=2.0)
    assert abs(est.focal_scale - 1.0) > 0.1 or np.hypot(*est.principal_offset) > 0.08 * K[0, 0]
    assert inconsistency(est, K) is None
    # the same estimate with the sigma part of the test off would be refused
    no_sigmas = IntrinsicsCheckConfig(min_sigmas=0.0, min_jackknife_sigmas=0.0)
    assert inconsistency(est, K, no_sigmas) is not None


def _narrow_view_with_regional_errors(seed: int):
    """Right K, a narrow view (100 x 75 grid px) and errors shared by the points of each of
    4 x 4 image regions (as rolling shutter, blur or map depth errors give on real images)."""
    rng = np.random.default_rng(seed)
    K = np.array([[F_FINE, 0, 49.5], [0, F_FINE, 37.0], [0, 0, 1]])
    uv = rng.uniform([0, 0], [100, 75], (400, 2))
    z = rng.uniform(1.0, 4.0, 400)
    X = np.column_stack([(uv - K[:2, 2]) / F_FINE * z[:, None], z])
    region = np.minimum(uv[:, 0] // 25, 3) + 4 * np.minimum(uv[:, 1] // 18.75, 3)
    obs = uv + rng.normal(0, 0.3, uv.shape) + rng.normal(0, 1.5, (16, 2))[region.astype(int)]
    return estimate_intrinsics(X, obs, K, _start(), robust_scale=2.0), K


def test_the_jackknife_keeps_regional_errors_from_refusing_a_right_k():
    """The formal sigmas assume independent errors: with errors shared by image regions they
    call a narrow view's principal-point error significant; the block jackknife does not."""
    with_jackknife = IntrinsicsCheckConfig(max_principal_shift=0.05)
    formal_only = IntrinsicsCheckConfig(max_principal_shift=0.05, min_jackknife_sigmas=0.0)
    refused, refused_formal = 0, 0
    for seed in range(6):
        est, K = _narrow_view_with_regional_errors(seed)
        refused += inconsistency(est, K, with_jackknife) is not None
        refused_formal += inconsistency(est, K, formal_only) is not None
    assert refused_formal >= 5 and refused <= 2, (refused_formal, refused)


def _estimates_equal(got: IntrinsicsEstimate, ref: IntrinsicsEstimate) -> None:
    """Equal to rounding: the kernel sums the normal equations point by point, numpy by
    matmul."""
    assert got.focal_scale == pytest.approx(ref.focal_scale, rel=1e-9)
    assert got.principal_offset == pytest.approx(ref.principal_offset, abs=1e-7)
    np.testing.assert_allclose(got.T_cam_world, ref.T_cam_world, atol=1e-9)
    for a, b in ((got.formal_cov, ref.formal_cov), (got.jackknife_cov, ref.jackknife_cov)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9 * np.abs(b).max())


@pytest.mark.parametrize('fit_principal_point', [True, False])
@pytest.mark.parametrize('true_scale, shift', [(1.0, 0.0), (1.25, 30.0)])
def test_compiled_fit_equals_numpy(fit_principal_point, true_scale, shift, monkeypatch):
    """The numba kernel (the CPU path) gives the numpy reference's estimate, covariances and
    pose, outliers and points behind the camera included."""
    from nre_ros import compiled
    from nre_ros.solver.intrinsics_check import KERNELS
    if compiled.kernels(KERNELS) is None:
        pytest.skip('compiled kernels unavailable (numba missing or NRE_ROS_NUMBA=0)')
    rng = np.random.default_rng(5)
    X, K = _scene(rng)
    X[:5, 2] *= -1                                          # behind the camera
    K_true = K.copy()
    K_true[:2, :2] *= true_scale
    K_true[0, 2] += shift
    uv = _observe(X, K_true, rng)
    got = estimate_intrinsics(X, uv, K, _start(), 2.0, fit_principal_point)
    monkeypatch.setenv('NRE_ROS_NUMBA', '0')
    assert compiled.kernels(KERNELS) is None
    ref = estimate_intrinsics(X, uv, K, _start(), 2.0, fit_principal_point)
    assert np.isfinite(ref.jackknife_cov).all()
    _estimates_equal(got, ref)


def test_compiled_fit_stops_as_numpy_on_a_singular_system(monkeypatch):
    """Every point behind the camera: no equations, the fit keeps its start on both paths."""
    from nre_ros import compiled
    from nre_ros.solver.intrinsics_check import KERNELS, _fit_many
    if compiled.kernels(KERNELS) is None:
        pytest.skip('compiled kernels unavailable (numba missing or NRE_ROS_NUMBA=0)')
    rng = np.random.default_rng(6)
    X, K = _scene(rng, n=40)
    uv = _observe(X, K, rng)
    keep = np.ones((2, len(X)), bool)
    keep[1] = False                                         # the second fit sees nothing
    X[:20, 2] *= -1
    got = _fit_many(X, uv, K, _start(), np.zeros(3), 2.0, 20, keep)
    monkeypatch.setenv('NRE_ROS_NUMBA', '0')
    ref = _fit_many(X, uv, K, _start(), np.zeros(3), 2.0, 20, keep)
    np.testing.assert_allclose(got[0][1], _start())         # the start, untouched
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


@pytest.fixture(scope='module')
def query():
    # frame 1: on frame 0 an 80 px shift reads 57-68 px, within the tolerance (0.13 f) that
    # right K on the fr1 hard map needs (docs/decisions.md)
    seq = TumSequence(shared_file('maps/demo/queries'))
    return seq.load_rgb(seq.frames[1]), seq.camera


def _with(cam: Camera, scale: float = 1.0, dcx: float = 0.0, dcy: float = 0.0) -> Camera:
    K = cam.K.copy()
    K[:2, :2] *= scale
    K[0, 2] += dcx
    K[1, 2] += dcy
    return Camera(cam.width, cam.height, K, cam.dist)


def test_right_intrinsics_are_published_with_the_estimate(reloc, query):
    image, cam = query
    out = reloc.localize(image, cam)
    assert out.ok, out
    assert out.info['intrinsics_check_level'] == 'fine'
    assert abs(out.info['focal_ratio'] - 1.0) < 0.1
    assert np.hypot(*out.info['principal_offset_px']) < 30.0
    assert out.info['estimated_principal_point_px'] == pytest.approx(
        [cam.cx + out.info['principal_offset_px'][0], cam.cy + out.info['principal_offset_px'][1]])


@pytest.mark.parametrize('wrong', [dict(dcx=80.0), dict(dcy=80.0), dict(scale=1.25),
                                   dict(scale=1.5), dict(scale=0.67)])
def test_wrong_intrinsics_are_refused_with_the_estimate(reloc, query, wrong):
    """e.g. a CameraInfo calibrated at another resolution, or a crop's principal point not
    moved: the estimate in the diagnostics is nearer the real intrinsics than the given ones
    (not equal: the lens distortion was also removed with the wrong K)."""
    image, cam = query
    out = reloc.localize(image, _with(cam, **wrong))
    assert not out.ok and out.reason == 'intrinsics_inconsistent', out
    fx_est = out.info['estimated_focal_px'][0]
    assert abs(fx_est / cam.fx - 1.0) < 0.15
    if 'scale' not in wrong:
        cx_est, cy_est = out.info['estimated_principal_point_px']
        assert abs(cx_est - cam.cx) < 40.0 and abs(cy_est - cam.cy) < 40.0


@pytest.mark.slow
def test_estimate_is_in_the_callers_frame_for_a_turned_image(reloc, query):
    """A camera mounted a quarter turn off (rotation search): the principal-point estimate is
    reported in the caller's image, not in the turned one the solver worked on."""
    image, cam = undistort(*query)
    image, cam, _ = rotate_quarter_turns(image, cam, 1)
    out = reloc.localize(image, _with(cam, dcx=80.0))
    assert not out.ok and out.reason == 'intrinsics_inconsistent', out
    cx_est, cy_est = out.info['estimated_principal_point_px']
    assert abs(cx_est - cam.cx) < 40.0 and abs(cy_est - cam.cy) < 40.0


def _estimate(scale: float, offset=(0.0, 0.0)) -> IntrinsicsEstimate:
    """A confident estimate (tiny formal and jackknife covariances)."""
    return IntrinsicsEstimate(scale, offset, np.eye(3) * 1e-8, np.eye(3) * 1e-8, np.eye(4), 500,
                              True)


def test_a_narrower_view_widens_the_tolerances_unless_the_focal_is_too_long():
    """A crop with 0.62 x the map's view: 1.13 x the focal length and a 35 grid px principal
    point offset are within what such a view measures; the same estimate on a full view, or a
    focal length estimated too short (s < 1: the given one too long, which itself makes the
    view look narrow), is refused."""
    K = np.array([[F_FINE, 0, 159.5], [0, F_FINE, 119.5], [0, 0, 1]])
    assert inconsistency(_estimate(1.13), K, view_scale=0.62) is None
    assert inconsistency(_estimate(1.13), K) is not None
    assert inconsistency(_estimate(1.0, (8.0, -35.0)), K, view_scale=0.62 * 1.0) is None
    assert inconsistency(_estimate(1.0, (8.0, -35.0)), K) is not None
    assert inconsistency(_estimate(0.87), K, view_scale=0.62) is not None


def test_the_gross_guard_widens_for_a_narrow_view_only():
    """A crop with 0.62 x the map's view whose coarse maps read 1.25 x the focal length is
    within what it measures; on a full view, with a focal estimated too short, or far beyond
    (x 1.5 given f x 0.67), it is refused."""
    assert gross_inconsistency(1.25, view_scale=0.62) is None
    assert gross_inconsistency(1.25) is not None
    assert gross_inconsistency(1.25, view_scale=1.0) is not None
    assert gross_inconsistency(0.75, view_scale=0.62) is not None
    assert gross_inconsistency(1.5) is not None


def test_a_stream_with_a_wrong_principal_point_is_refused_once_the_views_agree(reloc, caplog):
    """One CameraInfo with the principal point 80 px off (0.15 f): the frames' estimates are
    combined per camera, so once three views agree every frame is refused, also frame 0,
    whose own estimate (57-68 px) is within the per-frame tolerance and whose pose is
    published without the stream. The same images with the right CameraInfo (another camera:
    no evidence carried over) are published; back to the wrong one, still refused."""
    reloc = Relocalizer(reloc.map, reloc.model, reloc.config)      # no evidence yet
    seq = TumSequence(shared_file('maps/demo/queries'))
    cam = seq.camera
    wrong = _with(cam, dcx=80.0)
    caplog.set_level('WARNING', logger='nre_ros.pipeline')
    outs = [reloc.localize(seq.load_rgb(f), wrong) for f in seq.frames[1:] + seq.frames[:1]]
    latched = [o.info.get('camera_intrinsics', {}).get('consistent') is False for o in outs]
    first = latched.index(True)
    assert first <= 4 and all(latched[first:]), latched
    assert not any(o.ok for o in outs[first:])
    assert all(o.reason == 'intrinsics_inconsistent' for o in outs[first:])
    last = outs[-1].info['camera_intrinsics']
    assert last['estimated_principal_point_px'][0] == pytest.approx(cam.cx, abs=25.0)
    assert last['frames'] >= 3 and last['views'] >= 3
    assert sum('camera K looks wrong' in r.getMessage() for r in caplog.records) == 1
    right = [reloc.localize(seq.load_rgb(f), cam) for f in seq.frames[:2]]
    assert all(o.ok for o in right), right
    assert 'camera_intrinsics' not in right[0].info          # a new camera: no evidence yet
    again = reloc.localize(seq.load_rgb(seq.frames[0]), wrong)
    assert not again.ok and again.info['camera_intrinsics']['consistent'] is False
