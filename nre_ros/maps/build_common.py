"""Shared pieces of the map builders: options, frame selection, image preparation, assembly."""
from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from nre_ros import __version__
from nre_ros.camera import Camera
from nre_ros.datasets import Frame, TumSequence
from nre_ros.errors import ConfigError, InputError
from nre_ros.maps.features import GLOBAL_METHOD, sample_descriptors
from nre_ros.maps.format import Map, MapMetadata
from nre_ros.models.base import DenseFeatures, FeatureModel
from nre_ros.preprocess import grey_mean

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildOptions:
    """Options shared by every builder.

    Attributes:
        split: use the frames of ``split_<split>.txt`` (e.g. 'map'); None = all frames.
        keyframe_step: keep every n-th frame (after the split).
        max_keyframes: cap on the number of keyframes (evenly spaced), None = no cap.
        max_points_per_keyframe: keypoints (observations) per keyframe.
        keypoint_mode: 'score' (NMS + best scores) or 'grid' (best per grid cell).
        image_max_size: resize images so the longer side is at most this (None = as is).
        descriptor_dtype: 'float16' (half the size) or 'float32'.
        min_depth_m, max_depth_m: depth range accepted by the RGB-D builder.
        fuse_radius_px: a keypoint within this of a known point's projection re-observes it.
    """

    split: str | None = None
    keyframe_step: int = 1
    max_keyframes: int | None = None
    max_points_per_keyframe: int = 600   # measured best of 600 / 1024 (docs/decisions.md)
    keypoint_mode: str = 'score'
    image_max_size: int | None = None
    descriptor_dtype: str = 'float16'
    min_depth_m: float = 0.1
    max_depth_m: float = 8.0
    fuse_radius_px: float = 4.0

    def __post_init__(self) -> None:
        if self.keyframe_step < 1 or self.max_points_per_keyframe < 1:
            raise ConfigError('keyframe_step and max_points_per_keyframe must be >= 1, got '
                              f'{self.keyframe_step}, {self.max_points_per_keyframe}')
        if self.keypoint_mode not in ('score', 'grid'):
            raise ConfigError(f'keypoint_mode must be "score" or "grid", got '
                              f'{self.keypoint_mode!r}')
        if self.descriptor_dtype not in ('float16', 'float32'):
            raise ConfigError(f'descriptor_dtype must be float16 or float32, got '
                              f'{self.descriptor_dtype!r}')


@dataclass(frozen=True)
class PosedImage:
    """One image to map, whatever it was read from (TUM folder, bag).

    ``camera`` describes the image ``load_rgb()`` returns ((H, W, 3) uint8 RGB);
    ``load_depth()`` gives (H, W) float32 metres registered to it (0 = invalid) or is None.
    """

    name: str
    camera: Camera
    T_world_cam: np.ndarray
    load_rgb: Callable[[], np.ndarray]
    load_depth: Callable[[], np.ndarray] | None = None


def sequence_images(seq: TumSequence, frames: list[Frame], depth: bool) -> list[PosedImage]:
    """The frames of a TUM sequence as PosedImages (loaded lazily)."""
    return [PosedImage(f.name, seq.camera, f.T_world_cam, lambda f=f: seq.load_rgb(f),
                       (lambda f=f: seq.load_depth(f)) if depth else None) for f in frames]


def select_frames(seq: TumSequence, opts: BuildOptions) -> list[Frame]:
    """Frames of the split, every ``keyframe_step``-th, at most ``max_keyframes``."""
    frames = seq.split(opts.split) if opts.split else list(seq.frames)
    frames = frames[::opts.keyframe_step]
    if opts.max_keyframes and len(frames) > opts.max_keyframes:
        keep = np.round(np.linspace(0, len(frames) - 1, opts.max_keyframes)).astype(int)
        frames = [frames[i] for i in keep]
    if not frames:
        raise InputError(f'{seq.root}: no frames selected (split={opts.split!r})')
    return frames


def prepare_image(rgb: np.ndarray, cam: Camera, max_size: int | None
                  ) -> tuple[np.ndarray, Camera]:
    """Resize so the longer side is <= max_size; returns the image and its camera."""
    if not max_size or max(rgb.shape[:2]) <= max_size:
        return rgb, cam
    new = cam.resized_max_side(max_size)
    return cv2.resize(rgb, (new.width, new.height), interpolation=cv2.INTER_AREA), new


def observation_descriptors(feats: DenseFeatures, model: FeatureModel, uv: np.ndarray,
                            dtype: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Coarse (N, C), fine (N, Cf)|None and tracking-level (N, Ct)|None descriptors at pixels
    uv (N, 2)."""
    coarse = sample_descriptors(feats.coarse, uv, model.spec.coarse_stride).astype(dtype)
    fine = track = None
    if feats.fine is not None:
        fine = sample_descriptors(feats.fine, uv, model.spec.fine_stride).astype(dtype)
    if feats.fine_tracking is not None:
        track = sample_descriptors(feats.fine_tracking, uv,
                                   model.tracking_spec.fine_stride).astype(dtype)
    return coarse, fine, track


def provenance(builder: str, source: str | Path, opts: BuildOptions, **extra) -> dict:
    return {'builder': builder, 'source': str(source), 'options': asdict(opts),
            'nre_ros_version': __version__,
            'created_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec='seconds'), **extra}


def assemble_map(model: FeatureModel, names: list[str], cams: list[Camera],
                 T_cam_world: np.ndarray, global_desc: np.ndarray, points_world: np.ndarray,
                 points_rgb: np.ndarray, obs_kf: np.ndarray, obs_point: np.ndarray,
                 obs_uv: np.ndarray, obs_coarse: np.ndarray, obs_fine: np.ndarray | None,
                 prov: dict, units: str = 'm', map_frame: str = 'map',
                 brightness: list[float] | None = None,
                 obs_fine_tracking: np.ndarray | None = None) -> Map:
    """Sort observations by keyframe, drop unobserved points, build the Map (arrays (O, ...));
    ``brightness``: the K keyframe images' ``preprocess.grey_mean``; ``obs_fine_tracking``:
    the tracking level (``model`` a ``WithTrackingLevel``)."""
    order = np.argsort(obs_kf, kind='stable')
    obs_kf, obs_point, obs_uv = obs_kf[order], obs_point[order], obs_uv[order]
    obs_coarse = obs_coarse[order]
    obs_fine = None if obs_fine is None else obs_fine[order]
    track = None if obs_fine_tracking is None else obs_fine_tracking[order]
    used = np.zeros(len(points_world), bool)
    used[obs_point] = True
    remap = np.cumsum(used) - 1
    dist = np.zeros((len(cams), 8))
    for i, c in enumerate(cams):
        dist[i, :c.dist.size] = c.dist
    K = len(names)
    fisheye = np.array([c.fisheye for c in cams], np.uint8)
    return Map(
        spec=model.spec, keyframe_names=tuple(names),
        kf_T_cam_world=np.asarray(T_cam_world, np.float64),
        kf_K=np.stack([c.K for c in cams]).astype(np.float64), kf_dist=dist,
        kf_image_size=np.array([[c.width, c.height] for c in cams], np.int32),
        kf_global=np.asarray(global_desc, np.float32),
        kf_offsets=np.concatenate([[0], np.cumsum(np.bincount(obs_kf, minlength=K))]
                                  ).astype(np.int64),
        points_world=np.asarray(points_world[used], np.float32),
        points_rgb=np.asarray(points_rgb[used], np.uint8),
        obs_point=remap[obs_point].astype(np.int32), obs_uv=obs_uv.astype(np.float32),
        obs_coarse=obs_coarse, obs_fine=obs_fine,
        tracking_spec=None if track is None else model.tracking_spec, obs_fine_tracking=track,
        metadata=MapMetadata(map_frame=map_frame, units=units,
                             global_descriptor=dict(GLOBAL_METHOD), provenance=prov),
        kf_fisheye=fisheye if fisheye.any() else None,
        kf_brightness=None if brightness is None else np.asarray(brightness, np.float32))


def describe_observations(images: list, cams: list[Camera], T_cam_world: np.ndarray,
                          points_world: np.ndarray, obs_kf: np.ndarray, obs_point: np.ndarray,
                          model: FeatureModel, dtype: str, progress: bool = False, desc: str = ''
                          ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, list[float],
                                     np.ndarray | None]:
    """Second pass of the builders without depth: features of every keyframe, descriptors at
    the projections of its points.

    Args:
        images: K callables returning the (H, W, 3) uint8 image the camera refers to.
        cams, T_cam_world: K cameras and (K, 4, 4) poses.
        points_world: (P, 3); obs_kf, obs_point: (O,) observations.

    Returns:
        coarse (O, C), fine (O, Cf) | None, global descriptors (K, G), K grey means,
        tracking level (O, Ct) | None.
    """
    from tqdm import tqdm

    from nre_ros.maps.features import global_descriptor
    coarse = np.zeros((len(obs_kf), model.spec.coarse_dim), dtype)
    fine = track = None
    globals_, brightness = [], []
    for i in tqdm(range(len(cams)), desc=desc or 'descriptors', unit='kf', disable=not progress):
        rgb = images[i]()
        feats = model.extract(rgb)
        globals_.append(global_descriptor(feats))
        brightness.append(grey_mean(rgb))
        sel = np.flatnonzero(obs_kf == i)
        T = T_cam_world[i]
        uv, _ = cams[i].project(points_world[obs_point[sel]] @ T[:3, :3].T + T[:3, 3])
        c, f, t = observation_descriptors(feats, model, uv, dtype)
        coarse[sel] = c
        if f is not None:
            if fine is None:
                fine = np.zeros((len(obs_kf), f.shape[1]), dtype)
            fine[sel] = f
        if t is not None:
            if track is None:
                track = np.zeros((len(obs_kf), t.shape[1]), dtype)
            track[sel] = t
    return coarse, fine, np.stack(globals_), brightness, track
