"""nre_ros.ros.conversions: messages built in memory, no spinning (Nav2 style)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip('rclpy', reason='rclpy not installed (scripts/install_ros.sh)')
pytestmark = pytest.mark.ros

from geometry_msgs.msg import Pose, Transform  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from nre_ros.errors import InputError  # noqa: E402
from nre_ros.geometry import Sim3, invert, make_transform, so3_exp, so3_log  # noqa: E402
from nre_ros.ros import conversions as conv  # noqa: E402

RNG = np.random.default_rng(0)


def _sample(encoding, h=5, w=7):
    dtype, c = conv.ENCODINGS[encoding]
    if dtype is np.float32:
        arr = RNG.normal(size=(h, w, c)).astype(np.float32)
    else:
        arr = RNG.integers(0, np.iinfo(dtype).max, size=(h, w, c), endpoint=True).astype(dtype)
    return arr[:, :, 0] if c == 1 else arr


@pytest.mark.parametrize('encoding', sorted(conv.ENCODINGS))
@pytest.mark.parametrize('padding', [0, 3])
@pytest.mark.parametrize('bigendian', [False, True])
def test_image_round_trip(encoding, padding, bigendian):
    arr = _sample(encoding)
    msg = conv.numpy_to_image(arr, encoding, padding=padding, bigendian=bigendian)
    itemsize = np.dtype(conv.ENCODINGS[encoding][0]).itemsize
    assert msg.step == arr.shape[1] * conv.ENCODINGS[encoding][1] * itemsize + padding
    assert msg.is_bigendian == int(bigendian)
    out = conv.image_to_numpy(msg)
    assert out.dtype.isnative and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


def test_big_endian_bytes_are_decoded():
    msg = Image(height=1, width=2, encoding='16UC1', is_bigendian=1, step=4)
    msg.data.frombytes(bytes([0x01, 0x02, 0x03, 0x04]))
    np.testing.assert_array_equal(conv.image_to_numpy(msg), [[0x0102, 0x0304]])
    msg.is_bigendian = 0
    np.testing.assert_array_equal(conv.image_to_numpy(msg), [[0x0201, 0x0403]])


def test_image_to_rgb_per_encoding():
    rgb = _sample('rgb8')
    np.testing.assert_array_equal(conv.image_to_rgb(conv.numpy_to_image(rgb, 'rgb8')), rgb)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    np.testing.assert_array_equal(conv.image_to_rgb(conv.numpy_to_image(bgr, 'bgr8',
                                                                         padding=5)), rgb)
    mono = _sample('mono8')
    out = conv.image_to_rgb(conv.numpy_to_image(mono, 'mono8'))
    assert out.shape == mono.shape + (3,) and np.all(out == mono[:, :, None])
    mono16 = _sample('mono16')
    out = conv.image_to_rgb(conv.numpy_to_image(mono16, 'mono16', bigendian=True))
    assert out.dtype == np.uint8 and np.all(out[:, :, 1] == (mono16 >> 8))


@pytest.mark.parametrize('encoding', ['16UC1', '32FC1'])
def test_depth_encodings(encoding):
    arr = np.array([[1000, 0], [2500, 65535]], np.uint16) if encoding == '16UC1' else \
        np.array([[1.0, np.nan], [2.5, 65.535]], np.float32)
    msg = conv.numpy_to_image(arr, encoding)
    np.testing.assert_allclose(conv.depth_to_metres(msg), [[1.0, 0.0], [2.5, 65.535]],
                               rtol=1e-6)
    with pytest.raises(InputError, match='depth encoding'):
        conv.image_to_rgb(msg)


def test_bad_images_rejected():
    with pytest.raises(InputError, match="unsupported image encoding 'yuv422'"):
        conv.image_to_numpy(Image(height=2, width=2, encoding='yuv422', step=4))
    with pytest.raises(InputError, match='zero size'):
        conv.image_to_numpy(Image(height=0, width=4, encoding='rgb8', step=12))
    with pytest.raises(InputError, match='step'):
        conv.image_to_numpy(Image(height=2, width=4, encoding='rgb8', step=10))
    msg = Image(height=2, width=2, encoding='mono8', step=2)
    msg.data.frombytes(b'\x00\x01\x02')
    with pytest.raises(InputError, match='expected height\\*step = 4'):
        conv.image_to_numpy(msg)


def _info(w=640, h=480, k=(500.0, 0.0, 320.0, 0.0, 505.0, 240.0, 0.0, 0.0, 1.0),
          model='plumb_bob', d=(0.1, -0.05, 0.001, 0.002, 0.01)):
    return CameraInfo(width=w, height=h, k=list(k), distortion_model=model, d=list(d))


def test_camera_info_to_camera():
    cam = conv.camera_info_to_camera(_info())
    assert (cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy) == (640, 480, 500, 505, 320,
                                                                       240)
    np.testing.assert_allclose(cam.dist, [0.1, -0.05, 0.001, 0.002, 0.01])
    cam = conv.camera_info_to_camera(_info(model='rational_polynomial', d=[0.1] * 8))
    assert cam.dist.size == 8
    cam = conv.camera_info_to_camera(_info(model='', d=[]))
    assert cam.dist.size == 0
    binned = _info()
    binned.binning_x = binned.binning_y = 2
    cam = conv.camera_info_to_camera(binned)
    assert (cam.width, cam.height, cam.fx) == (320, 240, 250)
    assert cam.cx == pytest.approx(0.5 * 320.5 - 0.5)


@pytest.mark.parametrize('info, match', [
    (_info(k=[0.0] * 9), 'K is not a valid'),
    (_info(k=[500, 0, 320, 0, float('nan'), 240, 0, 0, 1]), 'K is not a valid'),
    (_info(w=0), 'zero size'),
    (_info(model='equidistant', d=[0.1, 0.0, 0.0, 0.0]), "unsupported distortion model"),
    (_info(model='plumb_bob', d=[0.1, 0.2]), 'plumb_bob needs 5'),
    (_info(model='rational_polynomial', d=[0.1] * 5), 'rational_polynomial needs 8'),
    (_info(k=[500, 1.0, 320, 0, 500, 240, 0, 0, 1]), 'camera_info rejected'),
])
def test_bad_camera_info_rejected(info, match):
    with pytest.raises(InputError, match=match):
        conv.camera_info_to_camera(info)


def test_image_camera_size_check():
    cam = conv.camera_info_to_camera(_info())
    conv.check_image_matches_camera((480, 640), cam)
    with pytest.raises(InputError, match='image is 320x240 but camera_info describes 640x480'):
        conv.check_image_matches_camera((240, 320), cam)


def _random_T():
    return make_transform(so3_exp(RNG.normal(size=3)), RNG.normal(size=3))


def test_pose_and_transform_round_trip():
    T = _random_T()
    np.testing.assert_allclose(conv.pose_to_matrix(conv.matrix_to_pose(T)), T, atol=1e-12)
    np.testing.assert_allclose(conv.transform_to_matrix(conv.matrix_to_transform(T)), T,
                               atol=1e-12)
    p = Pose()
    p.orientation.w = 0.0
    with pytest.raises(InputError, match='invalid quaternion'):
        conv.pose_to_matrix(p)
    assert isinstance(conv.matrix_to_transform(T), Transform)


def test_stamps():
    assert conv.stamp_to_ns(conv.ns_to_stamp(1_305_031_229_729_064_000)) == \
        1_305_031_229_729_064_000
    assert conv.ns_to_stamp(1_500_000_001).nanosec == 500_000_001


def _similarity(s):
    T = _random_T()
    return Sim3(T[:3, :3], T[:3, 3], s)


def _random_spd(scale=1e-3):
    A = RNG.normal(size=(6, 6)) * np.sqrt(scale)
    return A @ A.T + np.eye(6) * scale * 0.1


def _monte_carlo(cov_xi, T_cam_model, T_base_cam, S, n=40000):
    """Sample left increments on T_cam_model, push them through the node's pose chain."""
    T_map_base0 = S.camera_pose_in_map(T_cam_model) @ invert(T_base_cam)
    xs = RNG.normal(size=(n, 6)) @ np.linalg.cholesky(cov_xi).T
    dT = make_transform(so3_exp(xs[:, 3:]), xs[:, :3])  # first order is all that matters
    T_model_cam = invert(dT @ T_cam_model)              # (n, 4, 4)
    R_map_cam = S.rotation @ T_model_cam[:, :3, :3]
    t_map_cam = S.scale * T_model_cam[:, :3, 3] @ S.rotation.T + S.translation
    T_map_base = make_transform(R_map_cam, t_map_cam) @ invert(T_base_cam)
    out = np.concatenate([T_map_base[:, :3, 3] - T_map_base0[:3, 3],  # rotations: fixed axes
                          so3_log(T_map_base[:, :3, :3] @ T_map_base0[:3, :3].T)], axis=1)
    return T_map_base0, np.cov(out.T)


@pytest.mark.parametrize('scale', [1.0, 0.5])
def test_covariance_matches_monte_carlo(scale):
    cov_xi = _random_spd(1e-5)
    T_cam_model, T_base_cam = _random_T(), _random_T()
    S = Sim3.identity() if scale == 1.0 else _similarity(scale)
    T_map_base, cov_mc = _monte_carlo(cov_xi, T_cam_model, T_base_cam, S)
    none = conv.CovarianceShaping(min_position_std=0.0, min_rotation_std=0.0)
    cov = conv.covariance_to_ros(cov_xi, T_map_base, T_base_cam, scale, none)
    assert np.abs(cov - cov_mc).max() < 0.05 * np.abs(cov).max()
    np.testing.assert_allclose(np.diag(cov), np.diag(cov_mc), rtol=0.05)


def test_covariance_symmetric_pd_floors_scales():
    T_map_base, T_base_cam = _random_T(), _random_T()
    shaping = conv.CovarianceShaping(position_scale=4.0, rotation_scale=9.0,
                                     min_position_std=0.02, min_rotation_std=0.005)
    for cov_xi in (_random_spd(1e-10), np.zeros((6, 6)), _random_spd(1e-2)):
        cov = conv.covariance_to_ros(cov_xi, T_map_base, T_base_cam, 1.0, shaping)
        np.testing.assert_array_equal(cov, cov.T)
        assert np.linalg.eigvalsh(cov).min() > 0
        assert np.all(np.diag(cov)[:3] >= 0.02 ** 2 - 1e-15)
        assert np.all(np.diag(cov)[3:] >= 0.005 ** 2 - 1e-15)
    cov_xi = _random_spd(1e-2)
    base = conv.covariance_to_ros(cov_xi, T_map_base, T_base_cam, 1.0,
                                  conv.CovarianceShaping(min_position_std=0, min_rotation_std=0))
    scaled = conv.covariance_to_ros(cov_xi, T_map_base, T_base_cam, 1.0, shaping)
    np.testing.assert_allclose(np.diag(scaled)[:3], 4 * np.diag(base)[:3], rtol=1e-9)
    np.testing.assert_allclose(np.diag(scaled)[3:], 9 * np.diag(base)[3:], rtol=1e-9)
    inflated = conv.covariance_to_ros(cov_xi, T_map_base, T_base_cam, 1.0, conv.CovarianceShaping(
        min_position_std=0, min_rotation_std=0, inflation=3.0))
    np.testing.assert_allclose(inflated, 3 * base, rtol=1e-9)
    with pytest.raises(InputError):
        conv.covariance_to_ros(np.full((6, 6), np.nan), T_map_base, T_base_cam)


def test_covariance_from_ros_inverts():
    cov_xi = _random_spd(1e-3)
    T_map_base, T_base_cam = _random_T(), _random_T()
    none = conv.CovarianceShaping(min_position_std=0.0, min_rotation_std=0.0)
    cov = conv.covariance_to_ros(cov_xi, T_map_base, T_base_cam, 2.0, none)
    back = conv.covariance_from_ros(cov, T_map_base, T_base_cam, 2.0, 0.0, 0.0)
    np.testing.assert_allclose(back, cov_xi, rtol=1e-6, atol=1e-12)
    rviz = np.zeros(36)
    rviz[0], rviz[7], rviz[35] = 0.25, 0.25, 0.07  # what "2D Pose Estimate" sends
    prior = conv.covariance_from_ros(rviz, T_map_base, T_base_cam)
    assert np.linalg.eigvalsh(prior).min() > 0
