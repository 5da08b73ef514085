"""nre_ros.ros.conversions: rclpy messages built in memory, no spinning (Nav2 style).

The ROS-free field conversions are tested in test_messages.py."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip('rclpy', reason='rclpy not installed (scripts/install_ros.sh)')
pytestmark = pytest.mark.ros

from geometry_msgs.msg import Pose, Transform  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from nre_ros import messages as msgs  # noqa: E402
from nre_ros.errors import InputError  # noqa: E402
from nre_ros.geometry import Sim3, invert, make_transform, so3_exp, so3_log  # noqa: E402
from nre_ros.ros import conversions as conv  # noqa: E402

RNG = np.random.default_rng(0)


@pytest.mark.parametrize('encoding', sorted(msgs.ENCODINGS))
@pytest.mark.parametrize('bigendian', [False, True])
def test_rclpy_image_round_trip(encoding, bigendian):
    """rclpy Image (array.array data) built by numpy_to_image decodes with nre_ros.messages."""
    dtype, c = msgs.ENCODINGS[encoding]
    arr = (RNG.normal(size=(5, 7, c)) * 100).astype(dtype)
    arr = arr[:, :, 0] if c == 1 else arr
    msg = conv.numpy_to_image(arr, encoding, padding=3, bigendian=bigendian)
    assert isinstance(msg, Image) and msg.is_bigendian == int(bigendian)
    np.testing.assert_array_equal(msgs.image_to_numpy(msg), arr)


def test_rclpy_camera_info_is_checked():
    info = CameraInfo(width=640, height=480, k=[500.0, 0.0, 320.0, 0.0, 505.0, 240.0, 0, 0, 1],
                      distortion_model='plumb_bob', d=[0.1, -0.05, 0.001, 0.002, 0.01])
    assert msgs.camera_info_to_camera(info).fx == 500
    info.k = [0.0] * 9
    with pytest.raises(InputError, match='K is not a valid'):
        msgs.camera_info_to_camera(info)


def _random_T():
    return make_transform(so3_exp(RNG.normal(size=3)), RNG.normal(size=3))


def test_pose_and_transform_round_trip():
    T = _random_T()
    np.testing.assert_allclose(msgs.pose_to_matrix(conv.matrix_to_pose(T)), T, atol=1e-12)
    np.testing.assert_allclose(msgs.transform_to_matrix(conv.matrix_to_transform(T)), T,
                               atol=1e-12)
    p = Pose()
    p.orientation.w = 0.0
    with pytest.raises(InputError, match='invalid quaternion'):
        msgs.pose_to_matrix(p)
    assert isinstance(conv.matrix_to_transform(T), Transform)


def test_stamps():
    assert msgs.stamp_to_ns(conv.ns_to_stamp(1_305_031_229_729_064_000)) == \
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
