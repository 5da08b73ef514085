"""Query image preparation: undistort, resize and in-plane rotation, with consistent cameras.

Every function returns the new image together with the camera that describes it, so the solver
always works on a pinhole camera of exactly the image it sees. Rotations are quarter turns:
``np.rot90(image, k)`` turns the image counter-clockwise; the matching camera frame ``rcam``
is the original optical frame rotated about its z axis, ``p_rcam = R_rcam_cam @ p_cam``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from nre_ros.camera import Camera
from nre_ros.errors import InputError

# One counter-clockwise quarter turn of the image: (u, v) -> (v, W - 1 - u), i.e. in camera
# coordinates (x, y, z) -> (y, -x, z).
_R_QUARTER = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class PreparedImage:
    """An image ready for the network and the pinhole camera that describes it.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        camera: pinhole Camera of ``image`` (no distortion).
        R_img_cam: (3, 3) rotation from the caller's camera frame to this image's camera frame
            (identity unless the image was rotated).
        quarter_turns: number of counter-clockwise quarter turns applied.
        depth: (H, W) float32 metric depth aligned with ``image`` (0 = none), or None.
    """

    image: np.ndarray
    camera: Camera
    R_img_cam: np.ndarray
    quarter_turns: int = 0
    depth: np.ndarray | None = None


def check_image_matches_camera(image: np.ndarray, camera: Camera) -> None:
    """InputError unless ``image`` is (H, W, 3) uint8 with the camera's size."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f'image must be an HxWx3 array, got {getattr(image, "shape", image)}')
    if image.dtype != np.uint8:
        raise InputError(f'image must be uint8, got {image.dtype}')
    if image.shape[0] != camera.height or image.shape[1] != camera.width:
        raise InputError(f'image is {image.shape[1]}x{image.shape[0]} but the camera is '
                         f'{camera.width}x{camera.height}')


@lru_cache(maxsize=8)
def _undistort_maps(key: bytes, width: int, height: int, fisheye: bool
                    ) -> tuple[np.ndarray, np.ndarray]:
    values = np.frombuffer(key, dtype=np.float64)
    K, dist = values[:9].reshape(3, 3), values[9:]
    if fisheye:
        return cv2.fisheye.initUndistortRectifyMap(K, dist, np.eye(3), K, (width, height),
                                                   cv2.CV_32FC1)
    return cv2.initUndistortRectifyMap(K, dist, None, K, (width, height), cv2.CV_32FC1)


def undistort(image: np.ndarray, camera: Camera, nearest: bool = False
              ) -> tuple[np.ndarray, Camera]:
    """Remove lens distortion (OpenCV or fisheye model); the result is a pinhole image with the
    same K and size (a fisheye image keeps the field of view that K covers as a pinhole).
    ``nearest`` samples without interpolation (depth images: no mixed depths at edges)."""
    if not camera.has_distortion:
        return image, camera
    key = np.concatenate([camera.K.ravel(), camera.dist]).tobytes()
    map_x, map_y = _undistort_maps(key, camera.width, camera.height, camera.fisheye)
    if nearest:
        out = cv2.remap(image, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                        borderValue=0)
    else:
        out = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out, Camera(camera.width, camera.height, camera.K)


def resize_max_side(image: np.ndarray, camera: Camera, max_side: int, nearest: bool = False
                    ) -> tuple[np.ndarray, Camera]:
    """Shrink so the longer side is at most ``max_side`` (never enlarges)."""
    if max(camera.width, camera.height) <= max_side:
        return image, camera
    new_cam = camera.resized_max_side(max_side)
    out = cv2.resize(image, (new_cam.width, new_cam.height),
                     interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)
    return out, new_cam


def check_depth(depth: np.ndarray, camera: Camera) -> np.ndarray:
    """(H, W) metric depth as float32 with invalid pixels (non-finite, <= 0) set to 0.

    Raises InputError unless ``depth`` is a 2-D float array of the camera's size (integer depth
    images must be converted to metres by the caller, who knows the scale)."""
    if not isinstance(depth, np.ndarray) or depth.ndim != 2:
        raise InputError(f'depth must be an HxW array, got {getattr(depth, "shape", depth)}')
    if not np.issubdtype(depth.dtype, np.floating):
        raise InputError(f'depth must be float metres, got {depth.dtype} (convert raw sensor '
                         'units first, e.g. uint16 mm / 1000)')
    if depth.shape != (camera.height, camera.width):
        raise InputError(f'depth is {depth.shape[1]}x{depth.shape[0]} but the camera is '
                         f'{camera.width}x{camera.height}')
    d = depth.astype(np.float32, copy=True)
    d[~np.isfinite(d) | (d <= 0)] = 0.0
    return d


def rotate_quarter_turns(image: np.ndarray, camera: Camera, k: int
                         ) -> tuple[np.ndarray, Camera, np.ndarray]:
    """Rotate image and pinhole camera by k counter-clockwise quarter turns.

    Returns:
        image: rotated (H', W', 3) image.
        camera: its pinhole camera.
        R_rcam_cam: (3, 3) rotation mapping original camera coordinates to rotated ones.
    """
    k = k % 4
    R = np.eye(3)
    cam = camera
    for _ in range(k):
        fx, fy, cx, cy, W = cam.fx, cam.fy, cam.cx, cam.cy, cam.width
        cam = Camera.from_params(cam.height, cam.width, fy, fx, cy, W - 1 - cx)
        R = _R_QUARTER @ R
    return np.ascontiguousarray(np.rot90(image, k)), cam, R


def prepare(image: np.ndarray, camera: Camera, max_side: int, quarter_turns: int = 0,
            depth: np.ndarray | None = None) -> PreparedImage:
    """Validate, undistort, resize and rotate a query image (and its registered depth, in
    metres, with nearest-neighbour sampling so no depth is interpolated across edges)."""
    check_image_matches_camera(image, camera)
    img, cam = undistort(image, camera)
    img, cam = resize_max_side(img, cam, max_side)
    d = None
    if depth is not None:
        d, _ = undistort(check_depth(depth, camera), camera, nearest=True)
        d, _ = resize_max_side(d, camera, max_side, nearest=True)
    return rotated(PreparedImage(img, cam, np.eye(3), 0, d), quarter_turns)


def rotated(prep: PreparedImage, quarter_turns: int) -> PreparedImage:
    """``prep`` (image, camera, depth) turned by a further k counter-clockwise quarter turns."""
    if quarter_turns % 4 == 0:
        return prep
    img, cam, R = rotate_quarter_turns(prep.image, prep.camera, quarter_turns)
    d = None
    if prep.depth is not None:
        d = np.ascontiguousarray(np.rot90(prep.depth, quarter_turns % 4))
    return PreparedImage(img, cam, R @ prep.R_img_cam, (prep.quarter_turns + quarter_turns) % 4,
                         d)
