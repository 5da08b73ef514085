"""Pinhole camera with OpenCV (plumb_bob / rational) distortion.

Pixel-centre convention (everywhere in nre_ros): OpenCV / ROS. The centre of the top-left
pixel is (0, 0); pixel (u, v) covers [u - 0.5, u + 0.5] x [v - 0.5, v + 0.5]. An image of
width W spans x in [-0.5, W - 0.5]. COLMAP's convention (top-left centre at (0.5, 0.5)) is
converted once, where COLMAP models are read.

Resizing by a factor s maps a continuous pixel coordinate x to ``s * (x + 0.5) - 0.5``, so
``fx' = s * fx`` and ``cx' = s * (cx + 0.5) - 0.5``. A feature grid of stride k is the image
"resized" by s = 1 / k: feature cell i is centred on pixel ``k * i + (k - 1) / 2``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

from nre_ros.errors import InputError

_DIST_SIZES = (0, 4, 5, 8)


@dataclass(frozen=True)
class Camera:
    """Intrinsics of one image.

    Attributes:
        width, height: image size in pixels.
        K: (3, 3) float64 intrinsic matrix, no skew.
        dist: (0|4|5|8,) OpenCV distortion (k1, k2, p1, p2[, k3[, k4, k5, k6]]).
    """

    width: int
    height: int
    K: np.ndarray
    dist: np.ndarray = field(default_factory=lambda: np.zeros(0))

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
    def from_yaml(cls, path: str | Path) -> 'Camera':
        """Read ``width height fx fy cx cy [distortion]`` from a YAML file (TUM layout)."""
        try:
            data = yaml.safe_load(Path(path).read_text())
            return cls.from_params(data['width'], data['height'], data['fx'], data['fy'],
                                   data['cx'], data['cy'], data.get('distortion'))
        except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
            raise InputError(f'cannot read camera file {path}: {exc!r}') from exc

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
        if dist.size not in _DIST_SIZES or not np.all(np.isfinite(dist)):
            raise InputError(f'distortion must be 0, 4, 5 or 8 finite values, got {dist!r}')

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
        return bool(np.any(self.dist != 0))

    # ------------------------------------------------------------------ resizing / cropping
    def scaled(self, sx: float, sy: float | None = None) -> 'Camera':
        """Camera of the same image resized by (sx, sy); distortion is unchanged (normalized)."""
        sy = sx if sy is None else sy
        K = self.K.copy()
        K[0, 0] *= sx
        K[1, 1] *= sy
        K[0, 2] = sx * (K[0, 2] + 0.5) - 0.5
        K[1, 2] = sy * (K[1, 2] + 0.5) - 0.5
        return Camera(max(1, round(self.width * sx)), max(1, round(self.height * sy)), K, self.dist)

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
        return Camera(int(width), int(height), K, self.dist)

    def feature_grid(self, stride: int) -> 'Camera':
        """Camera of a stride-``stride`` feature map of this image (floor division of the size).

        The intrinsics follow the resize rule with s = 1/stride; the grid size is
        ``W // stride x H // stride`` as produced by strided convolutions on a padded image.
        """
        cam = self.scaled(1.0 / stride)
        return Camera(self.width // stride, self.height // stride, cam.K, cam.dist)

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
        """Apply the OpenCV distortion model to (N, 2) normalized coordinates."""
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
        return cv2.undistortPoints(uv, self.K, self.dist, None, None, None, criteria).reshape(-1, 2)

    def unproject(self, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Lift (N, 2) pixels with (N,) z-depths to (N, 3) camera-frame points."""
        xy = self.undistort_pixels(uv)
        depth = np.asarray(depth, dtype=np.float64).reshape(-1, 1)
        return np.concatenate([xy * depth, depth], axis=1)

    def to_dict(self) -> dict:
        return {'width': self.width, 'height': self.height, 'fx': self.fx, 'fy': self.fy,
                'cx': self.cx, 'cy': self.cy, 'distortion': self.dist.tolist()}
