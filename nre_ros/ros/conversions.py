"""rclpy message constructors and the map/solver frame conversions the node publishes with.

Reading message fields (images, CameraInfo, poses, stamps) is ROS-free and lives in
nre_ros.messages; this module builds rclpy messages: ``numpy_to_image``, ``ns_to_stamp``,
``matrix_to_pose`` / ``matrix_to_transform``.
Covariance: ``covariance_to_ros`` implements docs/ros.md "Covariance" and ``covariance_from_ros``
its inverse (for priors from /initialpose).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Pose, Quaternion, Transform, Vector3
from sensor_msgs.msg import Image

from nre_ros.errors import InputError
from nre_ros.geometry import adjoint, matrix_to_quat
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


# ----------------------------------------------------------------------------- covariance
@dataclass(frozen=True)
class CovarianceShaping:
    """Post-processing of the published covariance (docs/ros.md "Covariance")."""

    position_scale: float = 1.0
    rotation_scale: float = 1.0
    min_position_std: float = 0.02
    min_rotation_std: float = 0.005
    inflation: float = 1.0          # extra factor on every variance (few supporting points)


def covariance_jacobian(T_map_base: np.ndarray, T_base_cam: np.ndarray,
                        scale: float = 1.0) -> np.ndarray:
    """(6, 6) A with Σ_ros = A Σ_ξ Aᵀ (docs/ros.md "Covariance").

    ξ = (ρ, φ) is a left increment on the solver's T_cam_model (ρ in model units, ``scale``
    metres per model unit); the result is (x, y, z, rx, ry, rz) of base in map, rotations
    about the fixed map axes. A = −diag(R_map_base, R_map_base) · Ad(T_base_cam) · diag(s, 1).
    """
    R = T_map_base[:3, :3]
    D = np.zeros((6, 6))
    D[:3, :3] = D[3:, 3:] = R
    S = np.diag([scale] * 3 + [1.0] * 3)
    return -D @ adjoint(T_base_cam) @ S


def covariance_to_ros(cov_xi: np.ndarray, T_map_base: np.ndarray, T_base_cam: np.ndarray,
                      scale: float = 1.0, shaping: CovarianceShaping | None = None
                      ) -> np.ndarray:
    """Solver covariance (6, 6) -> symmetric PD (6, 6) covariance of base in map (ROS order)."""
    cov_xi = np.asarray(cov_xi, dtype=np.float64)
    if cov_xi.shape != (6, 6) or not np.all(np.isfinite(cov_xi)):
        raise InputError(f'solver covariance must be a finite (6, 6) array, got {cov_xi.shape}')
    A = covariance_jacobian(T_map_base, T_base_cam, scale)
    return shape_covariance(A @ cov_xi @ A.T, shaping or CovarianceShaping())


def shape_covariance(cov: np.ndarray, shaping: CovarianceShaping) -> np.ndarray:
    """Symmetrize, scale, inflate, apply std floors; the result is SPD."""
    cov = 0.5 * (cov + cov.T)
    d = np.sqrt(np.array([shaping.position_scale] * 3 + [shaping.rotation_scale] * 3)
                * max(shaping.inflation, 1.0))
    cov = cov * d[:, None] * d[None, :]
    # Clip eigenvalues at 0 (numerical noise), then raise the diagonal to the floors: adding a
    # non-negative diagonal to a PSD matrix keeps it PSD, and floors > 0 make it PD.
    w, V = np.linalg.eigh(cov)
    cov = (V * np.clip(w, 0.0, None)) @ V.T
    floors = np.array([shaping.min_position_std ** 2] * 3 + [shaping.min_rotation_std ** 2] * 3)
    floors = np.maximum(floors, 1e-12)
    cov = cov + np.diag(np.maximum(floors - np.diag(cov), 0.0))
    w_min = np.linalg.eigvalsh(cov).min()
    if w_min < 1e-12:  # floors on the diagonal cannot fix a rank-deficient off-diagonal block
        cov = cov + np.eye(6) * (1e-12 - w_min + floors.min() * 1e-3)
    return 0.5 * (cov + cov.T)


def covariance_from_ros(cov_ros: np.ndarray, T_map_base: np.ndarray, T_base_cam: np.ndarray,
                        scale: float = 1.0, min_position_std: float = 0.02,
                        min_rotation_std: float = 0.005) -> np.ndarray:
    """Inverse of ``covariance_to_ros`` (for priors); zero variances are raised to the floors.

    RViz's "2D Pose Estimate" fills only x, y and yaw: z / roll / pitch come as 0 and are
    read as "as certain as the floors".
    """
    cov = np.asarray(cov_ros, dtype=np.float64).reshape(6, 6)
    cov = shape_covariance(cov, CovarianceShaping(min_position_std=min_position_std,
                                                  min_rotation_std=min_rotation_std))
    A_inv = np.linalg.inv(covariance_jacobian(T_map_base, T_base_cam, scale))
    cov_xi = A_inv @ cov @ A_inv.T
    return 0.5 * (cov_xi + cov_xi.T)
