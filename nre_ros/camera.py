"""Pinhole camera with OpenCV distortion: plumb_bob / rational_polynomial, or the fisheye
(ROS ``equidistant``, OpenCV ``cv2.fisheye``) model.

Pixel-centre convention (everywhere in nre_ros): OpenCV / ROS. The centre of the top-left
pixel is (0, 0); pixel (u, v) covers [u - 0.5, u + 0.5] x [v - 0.5, v + 0.5]. An image of
width W spans x in [-0.5, W - 0.5]. COLMAP's convention (top-left centre at (0.5, 0.5)) is
converted once, where COLMAP models are read.

Resizing by a factor s maps a continuous pixel coordinate x to ``s * (x + 0.5) - 0.5``, so
``fx' = s * fx`` and ``cx' = s * (cx + 0.5) - 0.5``. A feature grid of stride k is the image
"resized" by s = 1 / k: feature cell i is centred on pixel ``k * i + (k - 1) / 2``.
"""
from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from nre_ros.errors import InputError

_DIST_SIZES = (0, 4, 5, 8)
# ROS distortion_model -> accepted numbers of coefficients (sensor_msgs/distortion_models.hpp)
ROS_DISTORTION_MODELS = {'plumb_bob': (0, 4, 5), 'rational_polynomial': (8,),
                         'equidistant': (4,)}
CAMERA_FILE_MAX_BYTES = 1 << 20
MAX_IMAGE_SIDE = 1 << 16


@dataclass(frozen=True)
class Camera:
    """Intrinsics of one image.

    Attributes:
        width, height: image size in pixels.
        K: (3, 3) float64 intrinsic matrix, no skew.
        dist: (0|4|5|8,) OpenCV distortion (k1, k2, p1, p2[, k3[, k4, k5, k6]]), or with
            ``fisheye`` the (4,) equidistant coefficients (k1, k2, k3, k4) of ``cv2.fisheye``.
        fisheye: True for the fisheye model (ROS ``equidistant``).
    """

    width: int
    height: int
    K: np.ndarray
    dist: np.ndarray = field(default_factory=lambda: np.zeros(0))
    fisheye: bool = False

    def __post_init__(self) -> None:
        K = np.asarray(self.K, dtype=np.float64)
        dist = np.asarray(self.dist, dtype=np.float64).reshape(-1)
        object.__setattr__(self, 'K', K)
        object.__setattr__(self, 'dist', dist)
        self.validate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_params(cls, width: int, height: int, fx: float, fy: float, cx: float, cy: float,
                    dist: np.ndarray | list[float] | None = None) -> 'Camera':
        K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        return cls(int(width), int(height), K, np.zeros(0) if dist is None else np.asarray(dist))

    @classmethod
    def from_ros(cls, width: int, height: int, k: Any, d: Any, distortion_model: str
                 ) -> 'Camera':
        """Camera from the fields of a sensor_msgs/CameraInfo (or a camera_calibration YAML).

        Args:
            k: 9 values, row-major K. d: the distortion coefficients of ``distortion_model``
            (``plumb_bob``: 5 (or 4, or none), ``rational_polynomial``: 8, ``equidistant``: 4).

        Raises:
            InputError: unknown model, wrong number of coefficients or unusable intrinsics.
        """
        d = np.asarray(d, dtype=np.float64).reshape(-1)
        if distortion_model not in ROS_DISTORTION_MODELS:
            if not d.size or not np.any(d):
                distortion_model = 'plumb_bob'     # no distortion: the model name is moot
            else:
                raise InputError(f'unsupported distortion model {distortion_model!r} with '
                                 f'D={d.tolist()}; supported: {sorted(ROS_DISTORTION_MODELS)}')
        if d.size not in ROS_DISTORTION_MODELS[distortion_model]:
            raise InputError(f'{distortion_model} needs '
                             f'{" or ".join(map(str, ROS_DISTORTION_MODELS[distortion_model]))}'
                             f' distortion coefficients, got {d.size}')
        fisheye = distortion_model == 'equidistant'
        if not fisheye and not np.any(d):
            d = np.zeros(0)
        K = np.asarray(k, dtype=np.float64)
        if K.size != 9:
            raise InputError(f'K must have 9 values, got {K.size}')
        return cls(int(width), int(height), K.reshape(3, 3), d, fisheye)

    @classmethod
    def from_yaml(cls, path: str | Path) -> 'Camera':
        """Read a camera YAML: the TUM layout (``width height fx fy cx cy [distortion]
        [distortion_model]``) or the file ROS's ``camera_calibration`` writes (``image_width
        image_height camera_matrix distortion_model distortion_coefficients``; the
        rectification and projection matrices, for stereo, are not used).

        Raises:
            InputError: the file is missing, not a regular file, over 1 MiB, not UTF-8 YAML, or
                a field is missing, of the wrong type or out of range (the message names it).
        """
        data = read_yaml_file(path, 'camera file')
        try:
            if 'camera_matrix' in data or 'image_width' in data:
                return _from_calibration_yaml(data)
            model = data.get('distortion_model', 'plumb_bob')
            dist = _number_list(data, 'distortion', None) if 'distortion' in data else []
            if model == 'plumb_bob' and len(dist) == 8:
                model = 'rational_polynomial'
            k = [_number(data, 'fx'), 0.0, _number(data, 'cx'),
                 0.0, _number(data, 'fy'), _number(data, 'cy'), 0.0, 0.0, 1.0]
            return cls.from_ros(_size(data, 'width'), _size(data, 'height'), k, dist,
                                _string(data, 'distortion_model', model))
        except InputError as exc:
            raise InputError(f'camera file {path}: {exc}') from None

    def validate(self) -> None:
        """Raise InputError unless the intrinsics are usable."""
        K, dist = self.K, self.dist
        if self.width <= 0 or self.height <= 0:
            raise InputError(f'camera size must be positive, got {self.width}x{self.height}')
        if K.shape != (3, 3) or not np.all(np.isfinite(K)):
            raise InputError(f'K must be a finite 3x3 matrix, got {K!r}')
        if K[0, 0] <= 0 or K[1, 1] <= 0:
            raise InputError(f'focal lengths must be positive, got fx={K[0, 0]}, fy={K[1, 1]}')
        if K[0, 1] != 0 or np.any(K[2] != [0, 0, 1]) or K[1, 0] != 0:
            raise InputError(f'K must be [[fx,0,cx],[0,fy,cy],[0,0,1]], got {K.tolist()}')
        if not np.all(np.isfinite(dist)):
            raise InputError(f'distortion must be finite, got {dist.tolist()}')
        if self.fisheye and dist.size != 4:
            raise InputError(f'the fisheye (equidistant) model needs 4 distortion values, '
                             f'got {dist.size}')
        if dist.size not in _DIST_SIZES:
            raise InputError(f'distortion must be 0, 4, 5 or 8 values, got {dist.size}')

    # ------------------------------------------------------------------ properties
    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    @property
    def cx(self) -> float:
        return float(self.K[0, 2])

    @property
    def cy(self) -> float:
        return float(self.K[1, 2])

    @property
    def has_distortion(self) -> bool:
        """False for a pinhole camera (a fisheye one always distorts, even with k = 0)."""
        return self.fisheye or bool(np.any(self.dist != 0))

    @property
    def distortion_model(self) -> str:
        """The ROS CameraInfo ``distortion_model`` of this camera."""
        if self.fisheye:
            return 'equidistant'
        return 'rational_polynomial' if self.dist.size == 8 else 'plumb_bob'

    def ros_distortion(self) -> np.ndarray:
        """The CameraInfo ``d`` array: 4 (equidistant), 5 (plumb_bob) or 8 values."""
        n = {'equidistant': 4, 'plumb_bob': 5, 'rational_polynomial': 8}[self.distortion_model]
        d = np.zeros(n)
        d[:self.dist.size] = self.dist
        return d

    # ------------------------------------------------------------------ resizing / cropping
    def scaled(self, sx: float, sy: float | None = None) -> 'Camera':
        """Camera of the same image resized by (sx, sy); distortion is unchanged (normalized)."""
        sy = sx if sy is None else sy
        K = self.K.copy()
        K[0, 0] *= sx
        K[1, 1] *= sy
        K[0, 2] = sx * (K[0, 2] + 0.5) - 0.5
        K[1, 2] = sy * (K[1, 2] + 0.5) - 0.5
        return Camera(max(1, round(self.width * sx)), max(1, round(self.height * sy)), K, self.dist,
                      self.fisheye)

    def resized(self, width: int, height: int) -> 'Camera':
        """Camera of the image resized to exactly ``width x height`` pixels."""
        return self.scaled(width / self.width, height / self.height)

    def resized_max_side(self, max_side: int) -> 'Camera':
        """Resize so that the longer side is at most ``max_side`` (never enlarges)."""
        s = min(1.0, max_side / max(self.width, self.height))
        return self.resized(max(1, round(self.width * s)), max(1, round(self.height * s)))

    def cropped(self, x0: int, y0: int, width: int, height: int) -> 'Camera':
        """Camera of the crop whose top-left pixel is (x0, y0) in this image."""
        K = self.K.copy()
        K[0, 2] -= x0
        K[1, 2] -= y0
        return Camera(int(width), int(height), K, self.dist, self.fisheye)

    def feature_grid(self, stride: int) -> 'Camera':
        """Camera of a stride-``stride`` feature map of this image (floor division of the size).

        The intrinsics follow the resize rule with s = 1/stride; the grid size is
        ``W // stride x H // stride`` as produced by strided convolutions on a padded image.
        """
        cam = self.scaled(1.0 / stride)
        return Camera(self.width // stride, self.height // stride, cam.K, cam.dist, cam.fisheye)

    # ------------------------------------------------------------------ projection
    def project(self, points_cam: np.ndarray, min_depth: float = 1e-6
                ) -> tuple[np.ndarray, np.ndarray]:
        """Project (N, 3) camera-frame points to pixels, applying distortion.

        Returns:
            uv: (N, 2) pixel coordinates (OpenCV convention), finite everywhere.
            valid: (N,) bool, True where depth > min_depth and the pixel is inside the image.
        """
        p = np.asarray(points_cam, dtype=np.float64).reshape(-1, 3)
        z = p[:, 2]
        in_front = z > min_depth
        xy = p[:, :2] / np.where(in_front, z, 1.0)[:, None]
        xy = self.distort_normalized(xy)
        uv = xy * [self.fx, self.fy] + [self.cx, self.cy]
        return uv, in_front & self.in_image(uv)

    def in_image(self, uv: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """(N,) bool: pixel (N, 2) lies inside [-0.5, W-0.5] x [-0.5, H-0.5] shrunk by margin."""
        uv = np.asarray(uv, dtype=np.float64)
        lo = -0.5 + margin
        return ((uv[:, 0] >= lo) & (uv[:, 0] <= self.width - 0.5 - margin)
                & (uv[:, 1] >= lo) & (uv[:, 1] <= self.height - 0.5 - margin))

    def distort_normalized(self, xy: np.ndarray) -> np.ndarray:
        """Apply the distortion model to (N, 2) normalized coordinates (x/z, y/z)."""
        if self.fisheye:
            return _distort_equidistant(xy, self.dist)
        d = np.zeros(8)
        d[:self.dist.size] = self.dist
        if not np.any(d):
            return xy
        k1, k2, p1, p2, k3, k4, k5, k6 = d
        x, y = xy[:, 0], xy[:, 1]
        r2 = x * x + y * y
        radial = (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
        xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        return np.stack([xd, yd], axis=1)

    def undistort_pixels(self, uv: np.ndarray) -> np.ndarray:
        """(N, 2) distorted pixels -> (N, 2) normalized image-plane coordinates (x/z, y/z)."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 1, 2)
        if not self.has_distortion:
            return ((uv.reshape(-1, 2) - [self.cx, self.cy]) / [self.fx, self.fy])
        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-12)
        if self.fisheye:
            return cv2.fisheye.undistortPoints(uv, self.K, self.dist, None, None, None,
                                               criteria).reshape(-1, 2)
        if hasattr(cv2, 'undistortPointsIter'):  # OpenCV 4.x: the overload with criteria
            return cv2.undistortPointsIter(uv, self.K, self.dist, None, None,
                                           criteria).reshape(-1, 2)
        return cv2.undistortPoints(uv, self.K, self.dist, None, None, None, criteria).reshape(-1, 2)

    def unproject(self, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Lift (N, 2) pixels with (N,) z-depths to (N, 3) camera-frame points."""
        xy = self.undistort_pixels(uv)
        depth = np.asarray(depth, dtype=np.float64).reshape(-1, 1)
        return np.concatenate([xy * depth, depth], axis=1)

    def to_dict(self) -> dict:
        """The TUM-layout YAML fields (``from_yaml`` reads them back)."""
        out = {'width': self.width, 'height': self.height, 'fx': self.fx, 'fy': self.fy,
               'cx': self.cx, 'cy': self.cy, 'distortion': self.dist.tolist()}
        if self.fisheye:
            out['distortion_model'] = 'equidistant'
        return out


def _distort_equidistant(xy: np.ndarray, k: np.ndarray) -> np.ndarray:
    """OpenCV fisheye model on (N, 2) normalized coordinates: theta = atan(r), xy_d = theta_d / r
    xy with theta_d = theta (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8)."""
    r = np.hypot(xy[:, 0], xy[:, 1])
    th = np.arctan(r)
    th2 = th * th
    th_d = th * (1 + th2 * (k[0] + th2 * (k[1] + th2 * (k[2] + th2 * k[3]))))
    scale = np.where(r > 1e-12, th_d / np.where(r > 1e-12, r, 1.0), 1.0)
    return xy * scale[:, None]


# ---------------------------------------------------------------------- YAML input
def read_yaml_file(path: str | Path, what: str, max_bytes: int = CAMERA_FILE_MAX_BYTES
                   ) -> dict:
    """A YAML mapping from a regular UTF-8 file of at most ``max_bytes`` bytes.

    Raises:
        InputError: missing, not a regular file (FIFO, device, folder), too large, binary,
            invalid YAML or not a mapping.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InputError(f'cannot read {what} {path}: {exc.strerror or exc}') from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f'{what} {path} is not a regular file')
    if st.st_size > max_bytes:
        raise InputError(f'{what} {path} is {st.st_size} bytes, more than the {max_bytes} '
                         'a YAML file of this kind can need')
    try:
        with open(path, 'rb') as f:
            raw = f.read(max_bytes + 1)
        if len(raw) > max_bytes:
            raise InputError(f'{what} {path} is larger than {max_bytes} bytes')
        text = raw.decode('utf-8')
        if '\x00' in text:
            raise UnicodeDecodeError('utf-8', raw, 0, 1, 'NUL byte in a text file')
        data = yaml.safe_load(text)
    except OSError as exc:
        raise InputError(f'cannot read {what} {path}: {exc.strerror or exc}') from None
    except UnicodeDecodeError:
        raise InputError(f'{what} {path} is not a text (UTF-8 YAML) file') from None
    except yaml.YAMLError as exc:
        raise InputError(f'{what} {path} is not valid YAML: {exc}') from None
    if not isinstance(data, dict):
        raise InputError(f'{what} {path} must hold a YAML mapping (key: value lines), got '
                         f'{type(data).__name__}')
    return data


def _from_calibration_yaml(data: dict) -> Camera:
    """The fields of a ROS ``camera_calibration`` / ``camera_info_manager`` YAML."""
    k = _matrix(data, 'camera_matrix', 3, 3)
    model = _string(data, 'distortion_model', 'plumb_bob')
    d = _matrix(data, 'distortion_coefficients', 1, None) \
        if data.get('distortion_coefficients') is not None else []
    return Camera.from_ros(_size(data, 'image_width'), _size(data, 'image_height'), k, d, model)


def _number(data: dict, key: str) -> float:
    if key not in data:
        raise InputError(f'missing field {key!r}')
    v = data[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InputError(f'{key!r} must be a number, got {v!r}')
    if not math.isfinite(v):
        raise InputError(f'{key!r} must be finite, got {v!r}')
    return float(v)


def _size(data: dict, key: str) -> int:
    v = _number(data, key)
    if v != int(v) or not 1 <= v <= MAX_IMAGE_SIDE:
        raise InputError(f'{key!r} must be a whole number of pixels in [1, {MAX_IMAGE_SIDE}], '
                         f'got {data[key]!r}')
    return int(v)


def _string(data: dict, key: str, default: str) -> str:
    v = data.get(key, default)
    if not isinstance(v, str):
        raise InputError(f'{key!r} must be a string, got {v!r}')
    return v


def _number_list(data: dict, key: str, size: int | None) -> list[float]:
    v = data[key]
    if v is None:
        return []
    if not isinstance(v, list) or len(v) > 64:
        raise InputError(f'{key!r} must be a list of numbers, got {str(v)[:80]!r}')
    vals = [_number({f'{key}[{i}]': x}, f'{key}[{i}]') for i, x in enumerate(v)]
    if size is not None and len(vals) != size:
        raise InputError(f'{key!r} must have {size} values, got {len(vals)}')
    return vals


def _matrix(data: dict, key: str, rows: int, cols: int | None) -> list[float]:
    """``{rows, cols, data}`` of the camera_calibration YAML, checked against its shape."""
    m = data.get(key)
    if not isinstance(m, dict) or 'data' not in m:
        raise InputError(f'{key!r} must be a mapping with rows, cols and data, got '
                         f'{str(m)[:80]!r}')
    vals = _number_list(m, 'data', None)
    r = int(_number(m, 'rows')) if 'rows' in m else rows
    c = int(_number(m, 'cols')) if 'cols' in m else len(vals) // max(r, 1)
    if r != rows or (cols is not None and c != cols) or r * c != len(vals):
        raise InputError(f'{key!r} must be {rows}x{cols or "N"} with matching data, got '
                         f'rows={m.get("rows")!r}, cols={m.get("cols")!r}, {len(vals)} values')
    return vals
