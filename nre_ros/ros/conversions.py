"""rclpy message constructors (the node publishes with them; tests build inputs).

Reading message fields (images, CameraInfo, poses, stamps) is ROS-free and lives in
nre_ros.messages; this module builds rclpy messages: ``numpy_to_image``, ``ns_to_stamp``,
``matrix_to_pose`` / ``matrix_to_transform``.
The published covariance is nre_ros.stream.covariance.
"""
from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Pose, Quaternion, Transform, Vector3
from sensor_msgs.msg import Image

from nre_ros.geometry import matrix_to_quat
from nre_ros.messages import encode_image, ns_to_sec_nanosec


# ----------------------------------------------------------------------------- time
def ns_to_stamp(ns: int) -> Time:
    """Integer nanoseconds (>= 0) -> builtin_interfaces/Time."""
    sec, nanosec = ns_to_sec_nanosec(ns)
    return Time(sec=sec, nanosec=nanosec)


# ----------------------------------------------------------------------------- images
def numpy_to_image(arr: np.ndarray, encoding: str, header=None, *, padding: int = 0,
                   bigendian: bool | None = None) -> Image:
    """(H, W[, C]) array -> sensor_msgs/Image (see nre_ros.messages.encode_image)."""
    f = encode_image(arr, encoding, padding=padding, bigendian=bigendian)
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width, msg.encoding = f.height, f.width, f.encoding
    msg.is_bigendian, msg.step = f.is_bigendian, f.step
    msg.data.frombytes(f.data.tobytes())
    return msg


# ----------------------------------------------------------------------------- poses
def _quat_msg(R: np.ndarray) -> Quaternion:
    q = matrix_to_quat(R)
    return Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))


def matrix_to_pose(T: np.ndarray) -> Pose:
    """(4, 4) T_a_b -> geometry_msgs/Pose of b in a."""
    t = T[:3, 3]
    return Pose(position=Point(x=float(t[0]), y=float(t[1]), z=float(t[2])),
                orientation=_quat_msg(T[:3, :3]))


def matrix_to_transform(T: np.ndarray) -> Transform:
    """(4, 4) T_parent_child -> geometry_msgs/Transform."""
    t = T[:3, 3]
    return Transform(translation=Vector3(x=float(t[0]), y=float(t[1]), z=float(t[2])),
                     rotation=_quat_msg(T[:3, :3]))
