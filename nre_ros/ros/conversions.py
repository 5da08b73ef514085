"""Pure conversions between ROS messages and numpy / nre_ros types (no cv_bridge, no spinning).

Images: ``image_to_numpy`` / ``numpy_to_image`` honour ``step`` (row padding) and
``is_bigendian``; ``image_to_rgb`` gives the (H, W, 3) uint8 RGB array the pipeline wants.
Intrinsics: ``camera_info_to_camera`` validates K, D, size, binning and ROI.
Poses: ``pose_to_matrix`` & co. map messages to (4, 4) ``T_a_b`` (see nre_ros.geometry).
Covariance: ``covariance_to_ros`` implements ros-interface.md §4 and ``covariance_from_ros``
its inverse (for priors from /initialpose).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Pose, Quaternion, Transform, Vector3
from sensor_msgs.msg import CameraInfo, Image

from nre_ros.camera import Camera
from nre_ros.errors import InputError
from nre_ros.geometry import adjoint, make_transform, matrix_to_quat, quat_to_matrix

# encoding -> (dtype, channels)
ENCODINGS: dict[str, tuple[type, int]] = {
    'rgb8': (np.uint8, 3), 'bgr8': (np.uint8, 3), 'rgba8': (np.uint8, 4), 'bgra8': (np.uint8, 4),
    'mono8': (np.uint8, 1), '8UC1': (np.uint8, 1), 'mono16': (np.uint16, 1),
    '16UC1': (np.uint16, 1), '32FC1': (np.float32, 1),
}
COLOR_ENCODINGS = ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', '8UC1', 'mono16')
DEPTH_ENCODINGS = ('16UC1', '32FC1')
DISTORTION_MODELS = ('plumb_bob', 'rational_polynomial')


# ----------------------------------------------------------------------------- time
def stamp_to_ns(stamp: Time) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    """Integer nanoseconds (>= 0) -> builtin_interfaces/Time."""
    ns = int(ns)
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


# ----------------------------------------------------------------------------- images
def image_to_numpy(msg: Image) -> np.ndarray:
    """sensor_msgs/Image -> (H, W) or (H, W, C) array in native byte order (a copy).

    Raises:
        InputError: unsupported encoding, zero size, ``step`` too small or data too short.
    """
    if msg.encoding not in ENCODINGS:
        raise InputError(f'unsupported image encoding {msg.encoding!r}; '
                         f'supported: {sorted(ENCODINGS)}')
    dtype, channels = ENCODINGS[msg.encoding]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise InputError(f'image has zero size ({w}x{h})')
    dt = np.dtype(dtype).newbyteorder('>' if msg.is_bigendian else '<')
    row_bytes = w * channels * dt.itemsize
    if step < row_bytes:
        raise InputError(f'image step {step} < width*channels*bytes = {row_bytes} '
                         f'({msg.encoding}, {w}x{h})')
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size < h * step:
        raise InputError(f'image data has {data.size} bytes, expected height*step = {h * step}')
    rows = data[:h * step].reshape(h, step)[:, :row_bytes]
    arr = np.ascontiguousarray(rows).view(dt).reshape(h, w, channels)
    arr = arr.astype(dt.newbyteorder('='), copy=False)
    return arr[:, :, 0] if channels == 1 else arr


def numpy_to_image(arr: np.ndarray, encoding: str, header=None, *, padding: int = 0,
                   bigendian: bool | None = None) -> Image:
    """(H, W[, C]) array -> sensor_msgs/Image (``padding`` extra bytes per row, for tests).

    The array dtype must match the encoding; ``bigendian`` defaults to the host order.
    """
    if encoding not in ENCODINGS:
        raise InputError(f'unsupported image encoding {encoding!r}')
    dtype, channels = ENCODINGS[encoding]
    arr = np.asarray(arr)
    if arr.dtype != np.dtype(dtype) or arr.ndim not in (2, 3) or \
            (arr.shape[2] if arr.ndim == 3 else 1) != channels:
        raise InputError(f'{encoding} needs dtype {np.dtype(dtype)} with {channels} channel(s), '
                         f'got {arr.dtype} {arr.shape}')
    big = (sys.byteorder == 'big') if bigendian is None else bool(bigendian)
    arr = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder('>' if big else '<')))
    h, w = arr.shape[:2]
    raw = arr.reshape(h, -1).view(np.uint8)
    if padding:
        raw = np.concatenate([raw, np.full((h, padding), 0xAB, np.uint8)], axis=1)
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width, msg.encoding = int(h), int(w), encoding
    msg.is_bigendian = int(big)
    msg.step = int(raw.shape[1])
    msg.data.frombytes(np.ascontiguousarray(raw).tobytes())
    return msg


def image_to_rgb(msg: Image) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB (mono is replicated, mono16 keeps the high byte).

    Raises:
        InputError: depth encodings (16UC1, 32FC1) or anything ``image_to_numpy`` rejects.
    """
    if msg.encoding in DEPTH_ENCODINGS:
        raise InputError(f'image encoding {msg.encoding!r} is a depth encoding; the image topic '
                         f'needs one of {list(COLOR_ENCODINGS)}')
    arr = image_to_numpy(msg)
    enc = msg.encoding
    if enc == 'mono16':
        arr = (arr >> 8).astype(np.uint8)
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if enc in ('bgr8', 'bgra8'):
        return np.ascontiguousarray(arr[:, :, 2::-1])
    return np.ascontiguousarray(arr[:, :, :3])


COMPRESSED_FORMATS = ('jpeg', 'jpg', 'png')


def compressed_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg / png, as image_transport's ``compressed`` plugin
    sends it) -> (H, W, 3) uint8 RGB, decoded with ``cv2.imdecode``.

    ``format`` is e.g. ``"jpeg"`` or ``"rgb8; jpeg compressed bgr8"``; an empty format is
    decoded by content. Raises InputError for other formats (``compressedDepth``, …) and for
    data that does not decode.
    """
    import cv2
    fmt = (msg.format or '').lower()
    if fmt and ('compresseddepth' in fmt or not any(f in fmt for f in COMPRESSED_FORMATS)):
        raise InputError(f'compressed image format {msg.format!r} is not supported '
                         f'(expected one of {list(COMPRESSED_FORMATS)})')
    data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if data.size == 0:
        raise InputError('compressed image has no data')
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None or bgr.ndim != 3 or bgr.size == 0:
        raise InputError(f'compressed image ({data.size} bytes, format {msg.format!r}) '
                         'could not be decoded')
    return np.ascontiguousarray(bgr[:, :, ::-1])


def depth_to_metres(msg: Image) -> np.ndarray:
    """Depth image (16UC1 millimetres or 32FC1 metres) -> (H, W) float32 metres, 0 = invalid."""
    if msg.encoding not in DEPTH_ENCODINGS:
        raise InputError(f'depth encoding must be one of {list(DEPTH_ENCODINGS)}, '
                         f'got {msg.encoding!r}')
    arr = image_to_numpy(msg)
    depth = arr.astype(np.float32) * (1e-3 if msg.encoding == '16UC1' else 1.0)
    depth[~np.isfinite(depth)] = 0.0
    return depth


# ----------------------------------------------------------------------------- camera info
def camera_info_to_camera(msg: CameraInfo) -> Camera:
    """sensor_msgs/CameraInfo -> Camera of the published (binned, ROI-cropped) image.

    Raises:
        InputError: zero size, K with zeros/NaN or skew, unsupported distortion model,
            wrong number of distortion coefficients.
    """
    w, h = int(msg.width), int(msg.height)
    if w <= 0 or h <= 0:
        raise InputError(f'camera_info has zero size ({w}x{h})')
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0 or K[2, 2] != 1.0:
        raise InputError(f'camera_info K is not a valid intrinsic matrix (zeros/NaN?): '
                         f'{K.reshape(-1).tolist()}')
    d = np.asarray(msg.d, dtype=np.float64).reshape(-1)
    model = msg.distortion_model
    if model not in DISTORTION_MODELS and not (model in ('', 'none') and not np.any(d)):
        raise InputError(f'unsupported distortion model {model!r} with D={d.tolist()}; '
                         f'supported: {list(DISTORTION_MODELS)}')
    if not np.any(d):
        d = np.zeros(0)
    elif model == 'plumb_bob' and d.size not in (4, 5):
        raise InputError(f'plumb_bob needs 5 distortion coefficients, got {d.size}')
    elif model == 'rational_polynomial' and d.size != 8:
        raise InputError(f'rational_polynomial needs 8 distortion coefficients, got {d.size}')
    try:
        cam = Camera(w, h, K, d)
        roi = msg.roi
        if roi.width > 0 and roi.height > 0 and (roi.width, roi.height) != (w, h):
            cam = cam.cropped(int(roi.x_offset), int(roi.y_offset), int(roi.width),
                              int(roi.height))
        bx, by = max(1, int(msg.binning_x)), max(1, int(msg.binning_y))
        if bx > 1 or by > 1:
            cam = cam.scaled(1.0 / bx, 1.0 / by)
    except InputError as exc:
        raise InputError(f'camera_info rejected: {exc}') from exc
    return cam


def check_image_matches_camera(image_hw: tuple[int, int], camera: Camera) -> None:
    """Raise InputError unless the image size equals the camera size."""
    h, w = image_hw
    if (w, h) != (camera.width, camera.height):
        raise InputError(f'image is {w}x{h} but camera_info describes {camera.width}x'
                         f'{camera.height}')


# ----------------------------------------------------------------------------- poses
def _rt_to_matrix(t, q) -> np.ndarray:
    q_xyzw = np.array([q.x, q.y, q.z, q.w], dtype=np.float64)
    try:
        R = quat_to_matrix(q_xyzw)
    except Exception as exc:  # noqa: BLE001 - ShapeError for zero / NaN quaternions
        raise InputError(f'invalid quaternion {q_xyzw.tolist()}: {exc}') from exc
    t_vec = np.array([t.x, t.y, t.z], dtype=np.float64)
    if not np.all(np.isfinite(t_vec)):
        raise InputError(f'non-finite translation {t_vec.tolist()}')
    return make_transform(R, t_vec)


def pose_to_matrix(pose: Pose) -> np.ndarray:
    """geometry_msgs/Pose of frame b in frame a -> (4, 4) T_a_b."""
    return _rt_to_matrix(pose.position, pose.orientation)


def transform_to_matrix(tf: Transform) -> np.ndarray:
    """geometry_msgs/Transform (child in parent) -> (4, 4) T_parent_child."""
    return _rt_to_matrix(tf.translation, tf.rotation)


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
    """Post-processing of the published covariance (ros-interface.md §4, §5)."""

    position_scale: float = 1.0
    rotation_scale: float = 1.0
    min_position_std: float = 0.02
    min_rotation_std: float = 0.005
    inflation: float = 1.0          # extra factor on every variance (few supporting points)


def covariance_jacobian(T_map_base: np.ndarray, T_base_cam: np.ndarray,
                        scale: float = 1.0) -> np.ndarray:
    """(6, 6) A with Σ_ros = A Σ_ξ Aᵀ (ros-interface.md §4).

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
