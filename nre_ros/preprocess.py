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


def check_prior_pose(T_cam_world: object, covariance: object | None
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """A prior ``T_cam_world`` (4, 4) and its (6, 6) covariance as float64 arrays.

    Raises InputError unless the pose is a finite rigid transform (orthonormal rotation, det +1,
    last row 0 0 0 1: a scaled or sheared matrix is refused, not silently orthonormalized) and
    the covariance, when given, is a finite symmetric positive semi-definite (6, 6) matrix."""
    try:
        T = np.asarray(T_cam_world, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f'prior pose is not a numeric array ({exc})') from exc
    if T.shape != (4, 4):
        raise InputError(f'prior pose must be a 4x4 transform, got shape {T.shape}')
    if not np.all(np.isfinite(T)):
        raise InputError('prior pose has non-finite values')
    R = T[:3, :3]
    if (not np.allclose(R @ R.T, np.eye(3), atol=1e-5) or abs(np.linalg.det(R) - 1.0) > 1e-5
            or not np.allclose(T[3], [0, 0, 0, 1], atol=1e-9)):
        raise InputError('prior pose is not a rigid transform (rotation not orthonormal with '
                         'det +1, or last row not 0 0 0 1)')
    if covariance is None:
        return T, None
    try:
        C = np.asarray(covariance, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f'prior covariance is not a numeric array ({exc})') from exc
    if C.shape != (6, 6) or not np.all(np.isfinite(C)):
        raise InputError(f'prior covariance must be a finite 6x6 matrix, got shape {C.shape}')
    if not np.allclose(C, C.T, rtol=1e-6, atol=1e-12) or np.linalg.eigvalsh(
            0.5 * (C + C.T)).min() < -1e-9 * max(1.0, float(np.abs(C).max())):
        raise InputError('prior covariance must be symmetric positive semi-definite')
    return T, C


def check_prepared_size(prep: PreparedImage, min_side: int) -> None:
    """InputError when the image the network would see is smaller than ``min_side`` pixels
    (e.g. a 2000 x 40 strip shrunk to 640 x 13)."""
    h, w = prep.image.shape[:2]
    if min(h, w) < min_side:
        raise InputError(f'image is {w}x{h} after resizing to at most {max(w, h)} px, smaller '
                         f'than the {min_side} px the networks need')


def match_focal(prep: PreparedImage, focal: float, tolerance: float, max_upscale: float
                ) -> PreparedImage:
    """``prep`` resampled so that its focal length (geometric mean of fx, fy) is ``focal``
    (the map's pixel scale: descriptors are not scale invariant), when it differs by more than
    the relative ``tolerance``; upsampling is capped at ``max_upscale``. Exact: K follows the
    pixel-centre resize rule, the camera frame does not change (R_img_cam is kept)."""
    cam = prep.camera
    s = focal / float(np.sqrt(cam.fx * cam.fy))
    if abs(s - 1.0) <= tolerance:
        return prep
    s = min(s, max_upscale)
    w, h = max(1, round(cam.width * s)), max(1, round(cam.height * s))
    new_cam = cam.resized(w, h)
    img = cv2.resize(prep.image, (w, h), interpolation=cv2.INTER_AREA if s < 1 else
                     cv2.INTER_LINEAR)
    d = None
    if prep.depth is not None:
        d = cv2.resize(prep.depth, (w, h), interpolation=cv2.INTER_NEAREST)
    return PreparedImage(img, new_cam, prep.R_img_cam, prep.quarter_turns, d)


# Immerkaer's noise operator: the difference of two Laplacians, blind to linear gradients
_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)


def noise_sigma(gray: np.ndarray) -> float:
    """Standard deviation of white noise in ``gray`` (H, W) float, in its units (Immerkaer,
    "Fast noise variance estimation", 1996: mean absolute response of a kernel that cancels
    smooth image content; texture adds a little)."""
    r = cv2.filter2D(gray, cv2.CV_32F, _NOISE_KERNEL)[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2.0) / 6.0 * np.abs(r).mean())


def channel_mean(image: np.ndarray) -> np.ndarray:
    """(H, W) float32 mean of the 3 channels of an (H, W, 3) uint8 image; equal to
    ``image.mean(axis=2, dtype=np.float32)`` (integer sums are exact in float32) but without
    numpy's slow strided reduction."""
    return (image[..., 0].astype(np.float32) + image[..., 1] + image[..., 2]) / np.float32(3)


def denoise(image: np.ndarray, noise_threshold: float, sigma: float) -> tuple[np.ndarray, dict]:
    """(H, W, 3) uint8 ``image`` smoothed by a Gaussian of ``sigma`` px when the estimated noise
    sigma of its grey (channel mean, as the networks see it) is over ``noise_threshold`` grey
    levels: the networks' per-image grey normalisation absorbs gain and offset, not noise.
    Returns the image (the input itself when not smoothed) and {'noise_sigma': ..,
    'denoise_sigma': .. (only when smoothed)}."""
    info: dict = {'noise_sigma': noise_sigma(channel_mean(image))}
    if info['noise_sigma'] <= noise_threshold:
        return image, info
    info['denoise_sigma'] = sigma
    return cv2.GaussianBlur(image, (0, 0), sigma), info


def grey_mean(image: np.ndarray) -> float:
    """Mean grey level in [0, 1] of an (H, W, 3) uint8 image (channel mean, as the networks see
    it): the brightness a map records per keyframe (``kf_brightness``)."""
    return float(image.mean(dtype=np.float64) / 255.0)


def match_brightness(image: np.ndarray, reference: float, min_gamma: float
                     ) -> tuple[np.ndarray, dict]:
    """(H, W, 3) uint8 ``image`` darkened by the gamma log(reference) / log(mean) that takes its
    grey mean to the map's ``reference`` (in (0, 1)), when that gamma is over ``min_gamma``: a
    washed-out query (over-exposed, bright gamma) is brought back towards the map's light. The
    networks' per-image grey normalisation absorbs gain and offset but not a gamma; queries
    darker than the reference are left as they are. Returns the image (the input itself when
    unchanged) and {'brightness': grey mean, 'brightness_gamma': .. (only when changed)}."""
    mean = grey_mean(image)
    info: dict = {'brightness': mean}
    if not reference < mean < 1.0:
        return image, info
    gamma = float(np.log(reference) / np.log(mean))
    if gamma <= min_gamma:
        return image, info
    info['brightness_gamma'] = gamma
    lut = np.round(255.0 * (np.arange(256) / 255.0) ** gamma).astype(np.uint8)
    return lut[image], info
