"""ROS message fields <-> numpy / nre_ros types, without ROS.

Every function reads or writes only message *fields* (``msg.encoding``, ``msg.k``,
``pose.position.x`` ...), so the same code serves rclpy messages (the node) and ``rosbags``
messages (bag reading and writing in nre_ros.eval.bags). Constructors of rclpy message objects
live in nre_ros.ros.conversions.

Images: ``image_to_numpy`` / ``encode_image`` honour ``step`` (row padding) and ``is_bigendian``;
``image_to_rgb`` gives the (H, W, 3) uint8 RGB array the pipeline wants; ``depth_to_metres`` the
(H, W) float32 depth. Intrinsics: ``camera_info_to_camera`` validates K, D, size, binning and ROI.
Poses: ``pose_to_matrix`` & co. map messages to (4, 4) ``T_a_b`` (see nre_ros.geometry).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import cv2
import numpy as np

from nre_ros.camera import Camera
from nre_ros.errors import InputError
from nre_ros.geometry import make_transform, quat_to_matrix

# encoding -> (dtype, channels)
ENCODINGS: dict[str, tuple[type, int]] = {
    'rgb8': (np.uint8, 3), 'bgr8': (np.uint8, 3), 'rgba8': (np.uint8, 4), 'bgra8': (np.uint8, 4),
    'mono8': (np.uint8, 1), '8UC1': (np.uint8, 1), 'mono16': (np.uint16, 1),
    '16UC1': (np.uint16, 1), '32FC1': (np.float32, 1),
    'bayer_rggb8': (np.uint8, 1), 'bayer_bggr8': (np.uint8, 1), 'bayer_gbrg8': (np.uint8, 1),
    'bayer_grbg8': (np.uint8, 1), 'bayer_rggb16': (np.uint16, 1),
    'bayer_bggr16': (np.uint16, 1), 'bayer_gbrg16': (np.uint16, 1),
    'bayer_grbg16': (np.uint16, 1), 'yuv422': (np.uint8, 2), 'yuv422_yuy2': (np.uint8, 2),
}
# Bayer pattern (ROS: colours of the top-left 2x2 block, row by row) -> OpenCV demosaicing code
# (OpenCV names the pattern by the second row's middle pair: ROS rggb = OpenCV BayerBG).
_BAYER_TO_RGB = {'rggb': cv2.COLOR_BayerBG2RGB, 'bggr': cv2.COLOR_BayerRG2RGB,
                 'gbrg': cv2.COLOR_BayerGR2RGB, 'grbg': cv2.COLOR_BayerGB2RGB}
# ROS yuv422 is UYVY (U0 Y0 V0 Y1), yuv422_yuy2 is YUYV (Y0 U0 Y1 V0); BT.601, as cv_bridge.
_YUV_TO_RGB = {'yuv422': cv2.COLOR_YUV2RGB_UYVY, 'yuv422_yuy2': cv2.COLOR_YUV2RGB_YUY2}
COLOR_ENCODINGS = ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', '8UC1', 'mono16',
                   *(k for k in ENCODINGS if k.startswith('bayer_')), *_YUV_TO_RGB)
DEPTH_ENCODINGS = ('16UC1', '32FC1')
COMPRESSED_FORMATS = ('jpeg', 'jpg', 'png')


# ----------------------------------------------------------------------------- time
def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time (``sec``, ``nanosec``) -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_sec_nanosec(ns: int) -> tuple[int, int]:
    """Integer nanoseconds (>= 0) -> (sec, nanosec) of a builtin_interfaces/Time."""
    return divmod(int(ns), 1_000_000_000)


# ----------------------------------------------------------------------------- images
@dataclass(frozen=True)
class ImageFields:
    """The fields of a sensor_msgs/Image (``data`` as a flat uint8 array)."""

    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: np.ndarray


def image_to_numpy(msg) -> np.ndarray:
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


def encode_image(arr: np.ndarray, encoding: str, *, padding: int = 0,
                 bigendian: bool | None = None) -> ImageFields:
    """(H, W[, C]) array -> Image fields (``padding`` extra bytes per row, for tests).

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
    return ImageFields(int(h), int(w), encoding, int(big), int(raw.shape[1]),
                       np.ascontiguousarray(raw).reshape(-1))


def image_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB (mono is replicated, 16-bit keeps the high byte,
    Bayer is demosaiced and YUV 4:2:2 converted with OpenCV).

    Raises:
        InputError: depth encodings (16UC1, 32FC1), an odd width for YUV 4:2:2, or anything
            ``image_to_numpy`` rejects.
    """
    if msg.encoding in DEPTH_ENCODINGS:
        raise InputError(f'image encoding {msg.encoding!r} is a depth encoding; the image topic '
                         f'needs one of {list(COLOR_ENCODINGS)}')
    arr = image_to_numpy(msg)
    enc = msg.encoding
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    if enc.startswith('bayer_'):
        return cv2.cvtColor(arr, _BAYER_TO_RGB[enc[6:10]])
    if enc in _YUV_TO_RGB:
        if arr.shape[1] % 2:
            raise InputError(f'{enc} image has an odd width ({arr.shape[1]}); 4:2:2 pixels come '
                             'in pairs')
        return cv2.cvtColor(arr, _YUV_TO_RGB[enc])
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if enc in ('bgr8', 'bgra8'):
        return np.ascontiguousarray(arr[:, :, 2::-1])
    return np.ascontiguousarray(arr[:, :, :3])


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


def depth_to_metres(msg) -> np.ndarray:
    """Depth image (16UC1 millimetres or 32FC1 metres) -> (H, W) float32 metres, 0 = invalid."""
    if msg.encoding not in DEPTH_ENCODINGS:
        raise InputError(f'depth encoding must be one of {list(DEPTH_ENCODINGS)}, '
                         f'got {msg.encoding!r}')
    arr = image_to_numpy(msg)
    depth = arr.astype(np.float32) * (1e-3 if msg.encoding == '16UC1' else 1.0)
    depth[~np.isfinite(depth)] = 0.0
    return depth


# ----------------------------------------------------------------------------- camera info
def camera_info_to_camera(msg) -> Camera:
    """sensor_msgs/CameraInfo -> Camera of the published (binned, ROI-cropped) image.

    Distortion models: see ``nre_ros.camera.ROS_DISTORTION_MODELS``.

    Raises:
        InputError: zero size, K with zeros/NaN or skew, unsupported distortion model,
            wrong number of distortion coefficients.
    """
    w, h = int(msg.width), int(msg.height)
    if w <= 0 or h <= 0:
        raise InputError(f'camera_info has zero size ({w}x{h})')
    K = np.asarray(msg.k, dtype=np.float64).reshape(-1)
    if K.size != 9 or not np.all(np.isfinite(K)) or K[0] <= 0 or K[4] <= 0 or K[8] != 1.0:
        raise InputError(f'camera_info K is not a valid intrinsic matrix (zeros/NaN?): '
                         f'{K.tolist()}')
    try:
        cam = Camera.from_ros(w, h, K, msg.d, msg.distortion_model)
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


def camera_info_fields(camera: Camera) -> dict:
    """Camera -> the CameraInfo fields that describe it (ROS model and D, P = [K | 0])."""
    P = np.zeros((3, 4))
    P[:, :3] = camera.K
    return dict(height=int(camera.height), width=int(camera.width),
                distortion_model=camera.distortion_model, d=camera.ros_distortion(),
                k=camera.K.reshape(-1).astype(np.float64), r=np.eye(3).reshape(-1),
                p=P.reshape(-1))


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


def pose_to_matrix(pose) -> np.ndarray:
    """geometry_msgs/Pose of frame b in frame a -> (4, 4) T_a_b.

    Raises:
        InputError: zero / non-finite quaternion or non-finite position.
    """
    return _rt_to_matrix(pose.position, pose.orientation)


def transform_to_matrix(tf) -> np.ndarray:
    """geometry_msgs/Transform (child in parent) -> (4, 4) T_parent_child."""
    return _rt_to_matrix(tf.translation, tf.rotation)
