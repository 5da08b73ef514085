import numpy as np
import pytest

from nre_ros.camera import Camera
from nre_ros.errors import InputError
from nre_ros.geometry import transform_points


def fr1_camera():
    return Camera.from_params(640, 480, 517.3, 516.5, 318.6, 255.3,
                              [0.262383, -0.953104, -0.005358, 0.002628, 1.163314])


def test_project_unproject_round_trip_with_distortion():
    cam = fr1_camera()
    rng = np.random.default_rng(0)
    uv = rng.uniform([20, 20], [620, 460], size=(200, 2))
    depth = rng.uniform(0.5, 4.0, size=200)
    points = cam.unproject(uv, depth)
    np.testing.assert_allclose(points[:, 2], depth)
    uv_back, valid = cam.project(points)
    assert valid.all()
    np.testing.assert_allclose(uv_back, uv, atol=1e-6)


def test_distortion_matches_opencv():
    import cv2
    cam = fr1_camera()
    pts = np.random.default_rng(1).uniform([-0.5, -0.4, 1.0], [0.5, 0.4, 3.0], size=(50, 3))
    uv, _ = cam.project(pts)
    uv_cv, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), cam.K, cam.dist)
    np.testing.assert_allclose(uv, uv_cv.reshape(-1, 2), atol=1e-9)


def test_behind_camera_and_outside_are_invalid():
    cam = Camera.from_params(640, 480, 500, 500, 319.5, 239.5)
    uv, valid = cam.project(np.array([[0, 0, -1.0], [0, 0, 1.0], [10, 0, 1.0]]))
    assert valid.tolist() == [False, True, False]
    assert np.all(np.isfinite(uv))


def test_pixel_centre_convention_under_resize():
    """Top-left pixel centre (0, 0) maps to (s-1)/2 when upscaling by s; image edges map to edges."""
    cam = Camera.from_params(64, 48, 50, 50, 31.5, 23.5)
    big = cam.scaled(2.0)
    assert (big.width, big.height) == (128, 96)
    assert big.cx == pytest.approx(63.5) and big.cy == pytest.approx(47.5)
    grid = Camera.from_params(640, 480, 500, 500, 319.5, 239.5).feature_grid(8)
    assert (grid.width, grid.height) == (80, 60)
    # the image centre is the centre of the 80x60 grid: (80-1)/2
    assert grid.cx == pytest.approx(39.5) and grid.fx == pytest.approx(62.5)
    # pixel 3.5 (centre of the first 8-pixel block) is feature cell 0
    x_img = 3.5
    x_feat = (x_img - 319.5) / 500 * grid.fx + grid.cx
    assert x_feat == pytest.approx(0.0)


def test_crop_shifts_principal_point():
    cam = Camera.from_params(640, 480, 500, 500, 319.5, 239.5)
    crop = cam.cropped(100, 50, 200, 100)
    p = np.array([[0.1, 0.05, 2.0]])
    np.testing.assert_allclose(crop.project(p)[0], cam.project(p)[0] - [100, 50])


def test_k_rescaling_on_real_megadepth_points(megadepth_pair):
    """Projecting the 707 real points at full size and at half size agrees up to the resize rule."""
    d = megadepth_pair
    cam = Camera.from_params(604, 907, d['source_K'][0, 0], d['source_K'][1, 1],
                             d['source_K'][0, 2], d['source_K'][1, 2])
    pts_cam = transform_points(d['source_P'].astype(np.float64), d['p3D'])
    uv_full, valid_full = cam.project(pts_cam)
    assert valid_full.all() and len(uv_full) == 707
    small = cam.resized(302, 454)
    sx, sy = 302 / 604, 454 / 907
    uv_small, valid_small = small.project(pts_cam)
    expected = np.stack([sx * (uv_full[:, 0] + 0.5) - 0.5, sy * (uv_full[:, 1] + 0.5) - 0.5], 1)
    np.testing.assert_allclose(uv_small, expected, atol=1e-9)
    assert valid_small.all()
    # the rescaled K keeps the principal point at the image centre, as the data set states
    assert small.cx == pytest.approx((302 - 1) / 2) and small.cy == pytest.approx((454 - 1) / 2)


@pytest.mark.parametrize('kwargs', [
    dict(fx=0.0), dict(fx=float('nan')), dict(width=0), dict(dist=[0.1, 0.2, 0.3])])
def test_bad_intrinsics_rejected(kwargs):
    params = dict(width=640, height=480, fx=500.0, fy=500.0, cx=319.5, cy=239.5, dist=None)
    params.update(kwargs)
    with pytest.raises(InputError):
        Camera.from_params(**params)
