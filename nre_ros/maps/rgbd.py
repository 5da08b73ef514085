"""Builder (a): posed RGB-D images (TUM layout) -> map.

Per keyframe: dense features, keypoints from the detector scores (NMS or grid) where the
depth is valid and locally smooth, lifted to 3D with the depth and the ground-truth pose.
Fusion: the known points are projected into the keyframe; a keypoint within
``fuse_radius_px`` of a projection whose depth agrees (5 %) re-observes that point, otherwise it
starts a new one. Descriptors are sampled at the point's projection (with distortion) into
each observing keyframe. A point keeps the position of its first observation.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from nre_ros.datasets import TumSequence
from nre_ros.errors import InputError
from nre_ros.geometry import invert, transform_points
from nre_ros.maps.build_common import (BuildOptions, PosedImage, assemble_map,
                                       observation_descriptors, prepare_image, provenance,
                                       select_frames, sequence_images)
from nre_ros.maps.features import global_descriptor, select_keypoints
from nre_ros.maps.format import Map
from nre_ros.models.base import FeatureModel
from nre_ros.preprocess import grey_mean

logger = logging.getLogger(__name__)

DEPTH_AGREEMENT = 0.05     # relative depth difference for fusion and for smooth depth


def build_rgbd_map(root: str | Path, model: FeatureModel, opts: BuildOptions = BuildOptions(),
                   progress: bool = False) -> Map:
    """Build a map from a posed RGB-D sequence in the TUM layout (depth/ required)."""
    seq = TumSequence(root)
    images = sequence_images(seq, select_frames(seq, opts), depth=True)
    return rgbd_map_from_images(images, model, opts, provenance('rgbd', root, opts), progress)


def rgbd_map_from_images(images: Iterable[PosedImage], model: FeatureModel,
                         opts: BuildOptions, prov: dict, progress: bool = False,
                         total: int | None = None, map_frame: str = 'map') -> Map:
    """Build a map from posed RGB-D images (each with ``load_depth``), one image at a time."""
    t0 = time.perf_counter()
    state = _FusionState()
    names, cams, poses, globals_, brightness = [], [], [], [], []
    bar = tqdm(images, desc='rgbd map', unit='kf', disable=not progress,
               total=total if total is not None else _len(images))
    for kf, im in enumerate(bar):
        if im.load_depth is None:
            raise InputError(f'image {im.name} has no depth; the RGB-D builder needs depth')
        rgb, cam = prepare_image(im.load_rgb(), im.camera, opts.image_max_size)
        depth = im.load_depth()
        if depth.shape != (cam.height, cam.width):
            depth = cv2.resize(depth, (cam.width, cam.height), interpolation=cv2.INTER_NEAREST)
        feats = model.extract(rgb)
        T_cam_world = invert(im.T_world_cam)
        uv, z = _keypoints_with_depth(feats.keypoint_scores, depth, opts)
        point_idx = state.associate(cam, T_cam_world, uv, z, opts.fuse_radius_px)
        new = point_idx < 0
        pts_world = transform_points(im.T_world_cam, cam.unproject(uv[new], z[new]))
        point_idx[new] = state.add(pts_world, rgb[uv[new, 1].astype(int), uv[new, 0].astype(int)])
        uv_proj, _ = cam.project(transform_points(T_cam_world, state.points[point_idx]))
        descs = observation_descriptors(feats, model, uv_proj, opts.descriptor_dtype)
        state.observe(kf, point_idx, uv, *descs)
        names.append(im.name)
        cams.append(cam)
        poses.append(T_cam_world)
        globals_.append(global_descriptor(feats))
        brightness.append(grey_mean(rgb))
        bar.set_postfix(points=len(state.points), refresh=False)
    if not names:
        raise InputError('no image to map')
    *o, track = state.observations()
    m = assemble_map(model, names, cams, np.stack(poses), np.stack(globals_), state.points,
                     state.colors, *o, prov=prov, map_frame=map_frame, brightness=brightness,
                     obs_fine_tracking=track)
    logger.info('rgbd map: %d keyframes, %d points, %d observations in %.1f s',
                m.num_keyframes, m.num_points, m.num_observations, time.perf_counter() - t0)
    return m


def _len(items) -> int | None:
    try:
        return len(items)
    except TypeError:
        return None


def _keypoints_with_depth(scores, depth: np.ndarray, opts: BuildOptions
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) keypoints where depth is valid and locally smooth, and their (N,) depths."""
    ok = (depth > opts.min_depth_m) & (depth < opts.max_depth_m)
    kernel = np.ones((3, 3), np.uint8)
    d_max = cv2.dilate(depth, kernel)
    d_min = cv2.erode(np.where(ok, depth, np.inf).astype(np.float32), kernel)
    ok &= (d_max - d_min) < DEPTH_AGREEMENT * depth
    uv, _ = select_keypoints(scores, opts.max_points_per_keyframe, valid=ok,
                             mode=opts.keypoint_mode)
    return uv, depth[uv[:, 1].astype(int), uv[:, 0].astype(int)].astype(np.float64)


class _FusionState:
    """Growing point cloud and observation lists of the RGB-D builder."""

    def __init__(self) -> None:
        self.points = np.zeros((0, 3))
        self.colors = np.zeros((0, 3), np.uint8)
        self._obs: list[tuple] = []

    def associate(self, cam, T_cam_world: np.ndarray, uv: np.ndarray, z: np.ndarray,
                  radius_px: float) -> np.ndarray:
        """(N,) index of the known point each keypoint re-observes, -1 for none."""
        out = np.full(len(uv), -1, np.int64)
        if not len(self.points) or not len(uv):
            return out
        p_cam = transform_points(T_cam_world, self.points)
        uvp, vis = cam.project(p_cam)
        idx = np.flatnonzero(vis)
        cell = max(1, int(np.ceil(radius_px)))
        wc, hc = cam.width // cell + 3, cam.height // cell + 3     # +1 cell margin each side
        table = np.full(wc * hc, -1, np.int64)                     # one point per cell
        table[(np.floor(uvp[idx, 1] / cell).astype(np.int64) + 1) * wc
              + np.floor(uvp[idx, 0] / cell).astype(np.int64) + 1] = idx
        ku = np.floor(uv[:, 0] / cell).astype(np.int64) + 1
        kv = np.floor(uv[:, 1] / cell).astype(np.int64) + 1
        for dv in (-1, 0, 1):                                      # 3x3 neighbouring cells
            for du in (-1, 0, 1):
                cand = table[(kv + dv) * wc + ku + du]
                has = (cand >= 0) & (out < 0)
                c = cand[has]
                close = np.linalg.norm(uvp[c] - uv[has], axis=1) <= radius_px
                agree = np.abs(p_cam[c, 2] - z[has]) < DEPTH_AGREEMENT * z[has]
                out[np.flatnonzero(has)[close & agree]] = c[close & agree]
        _, first = np.unique(out, return_index=True)               # each point once per kf
        dup = np.ones(len(out), bool)
        dup[first] = False
        out[dup & (out >= 0)] = -1
        return out

    def add(self, points_world: np.ndarray, colors: np.ndarray) -> np.ndarray:
        start = len(self.points)
        self.points = np.concatenate([self.points, points_world])
        self.colors = np.concatenate([self.colors, colors.astype(np.uint8)])
        return np.arange(start, len(self.points))

    def observe(self, kf: int, point_idx, uv, coarse, fine, track) -> None:
        self._obs.append((np.full(len(point_idx), kf), point_idx, uv, coarse, fine, track))

    def observations(self) -> tuple:
        """(O,) keyframes, points, (O, 2) pixels, then coarse, fine|None, tracking|None."""
        kf, pt, uv, coarse, fine, track = zip(*self._obs)
        return (np.concatenate(kf), np.concatenate(pt), np.concatenate(uv),
                np.concatenate(coarse), None if fine[0] is None else np.concatenate(fine),
                None if track[0] is None else np.concatenate(track))
