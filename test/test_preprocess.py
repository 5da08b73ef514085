import numpy as np
import pytest

from nre_ros.camera import Camera
from nre_ros.errors import InputError
from nre_ros.preprocess import denoise, noise_sigma, prepare, rotate_quarter_turns, undistort


@pytest.mark.parametrize('k', [0, 1, 2, 3])
def test_rotated_camera_sees_the_rotated_image(k):
    """A marked pixel lands where the rotated camera projects the same 3D point."""
    cam = Camera.from_params(64, 48, 60.0, 55.0, 30.2, 22.7)
    p_cam = np.array([[0.1, -0.05, 1.0]])
    uv, _ = cam.project(p_cam)
    u, v = np.round(uv[0]).astype(int)
    img = np.zeros((48, 64, 3), np.uint8)
    img[v, u] = 255
    rimg, rcam, R = rotate_quarter_turns(img, cam, k)
    assert rimg.shape[:2] == (rcam.height, rcam.width)
    ruv, valid = rcam.project(p_cam @ R.T)
    rv, ru = np.argwhere(rimg[..., 0] == 255)[0]
    assert valid[0]
    # the marked pixel is the rounded projection; the rotated projection is within 0.5 px of it
    assert np.all(np.abs(ruv[0] - [ru, rv]) <= 0.5 + 1e-9)
    assert np.allclose(R @ R.T, np.eye(3)) and np.isclose(np.linalg.det(R), 1.0)


def test_undistort_makes_straight_projection(fr1_rpy):
    frame = fr1_rpy[0]
    img = fr1_rpy.load_rgb(frame)
    out, cam = undistort(img, fr1_rpy.camera)
    assert out.shape == img.shape and not cam.has_distortion
    # the undistorted image at the pinhole projection shows what the raw image shows at the
    # distorted projection of the same 3D point
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.uniform(-0.5, 0.5, (40, 2)), np.ones((40, 1))], 1)
    uv_raw, ok_raw = fr1_rpy.camera.project(pts)
    uv_und, ok_und = cam.project(pts)
    ok = ok_raw & ok_und & cam.in_image(uv_und, margin=3) & cam.in_image(uv_raw, margin=3)
    iu, iv = np.round(uv_und[ok]).astype(int).T
    ru, rv = np.round(uv_raw[ok]).astype(int).T
    diff = np.abs(out[iv, iu].astype(int) - img[rv, ru].astype(int)).mean()
    shuffled = np.abs(out[iv, iu].astype(int) - img[np.roll(rv, 7), np.roll(ru, 7)]).mean()
    assert diff < 15 and shuffled > 2 * diff
    assert np.median(np.linalg.norm(uv_raw - uv_und, axis=1)) > 3   # distortion matters


def test_prepare_rejects_size_mismatch():
    cam = Camera.from_params(640, 480, 500, 500, 319.5, 239.5)
    with pytest.raises(InputError, match='camera is 640x480'):
        prepare(np.zeros((240, 320, 3), np.uint8), cam, 640)
    with pytest.raises(InputError, match='uint8'):
        prepare(np.zeros((480, 640, 3), np.float32), cam, 640)


def test_prepare_resizes_longer_side():
    cam = Camera.from_params(1600, 1063, 1789.6, 1790.4, 799.5, 531.0)
    prep = prepare(np.zeros((1063, 1600, 3), np.uint8), cam, 640)
    assert prep.image.shape == (425, 640, 3)
    assert (prep.camera.width, prep.camera.height) == (640, 425)


def test_rotating_a_prepared_image_equals_rotating_the_undistorted_resized_one():
    """The rotation search turns the prepared upright image (and depth) instead of re-preparing:
    same as undistort -> resize -> rotate done step by step."""
    from nre_ros.camera import Camera
    from nre_ros.preprocess import (prepare, resize_max_side, rotate_quarter_turns, rotated,
                                    undistort)
    rng = np.random.default_rng(0)
    cam = Camera.from_params(64, 48, 50.0, 52.0, 30.5, 22.0, dist=[0.05, -0.01, 0.0, 0.0, 0.0])
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 3.0, (48, 64)).astype(np.float32)
    upright = prepare(image, cam, 40, 0, depth)
    img0, cam0 = resize_max_side(*undistort(image, cam), 40)
    d0, _ = resize_max_side(undistort(depth, cam, nearest=True)[0], cam, 40, nearest=True)
    for k in (1, 2, 3):
        a = rotated(upright, k)
        img, K_cam, R = rotate_quarter_turns(img0, cam0, k)
        np.testing.assert_array_equal(a.image, img)
        np.testing.assert_array_equal(a.depth, np.rot90(d0, k))
        np.testing.assert_allclose(a.camera.K, K_cam.K)
        np.testing.assert_allclose(a.R_img_cam, R)
        assert a.quarter_turns == k and a.depth.shape == a.image.shape[:2]


def _gradient(h=240, w=320):
    """(H, W) float32: a smooth ramp plus a bilinear term (the noise kernel cancels both)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return 40.0 + 0.25 * x + 0.2 * y + 0.0008 * x * y


@pytest.mark.parametrize('sigma', [0.0, 4.0, 12.0])
def test_noise_sigma_reads_white_noise_on_a_smooth_image(sigma):
    rng = np.random.default_rng(3)
    gray = _gradient() + rng.normal(0.0, sigma, (240, 320)).astype(np.float32)
    assert noise_sigma(gray) == pytest.approx(sigma, abs=0.03 * sigma + 1e-3)


def test_a_noisy_image_is_smoothed_and_a_clean_one_left_alone():
    """Noise of sigma 15 in each channel is 15 / sqrt(3) in the channel mean the networks see;
    a sigma 1 px Gaussian brings it under a third. A clean (quantized) image is returned as is."""
    rng = np.random.default_rng(4)
    clean = np.round(np.repeat(_gradient()[..., None], 3, axis=2)).astype(np.uint8)
    out, info = denoise(clean, noise_threshold=3.0, sigma=1.0)
    assert out is clean and 'denoise_sigma' not in info and info['noise_sigma'] < 1.0
    noisy = np.clip(clean + rng.normal(0.0, 15.0, clean.shape), 0, 255).astype(np.uint8)
    out, info = denoise(noisy, noise_threshold=3.0, sigma=1.0)
    assert info['noise_sigma'] == pytest.approx(15.0 / np.sqrt(3.0), rel=0.05)
    assert info['denoise_sigma'] == 1.0
    assert noise_sigma(out.mean(axis=2, dtype=np.float32)) < info['noise_sigma'] / 3.0


def test_channel_mean_equals_numpys_float32_mean():
    from nre_ros.preprocess import channel_mean
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    image[0, 0] = (255, 255, 254)                     # sums whose thirds round in float32
    image[0, 1] = (1, 0, 0)
    got = channel_mean(image)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, image.mean(axis=2, dtype=np.float32))
