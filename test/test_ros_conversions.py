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
from nre_ros.geometry import make_transform, so3_exp  # noqa: E402
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
