"""Builder (b): posed images without depth -> map, by matching and triangulating with known poses.

Pass 1: keypoints (detector scores, NMS) and their descriptors (bilinear coarse samples) per
keyframe, plus a global descriptor. Pairs: the next ``SEQ_NEIGHBOURS`` keyframes and the
``RETRIEVAL_NEIGHBOURS`` best retrieved ones. Matches: mutual nearest neighbours with a
similarity floor, kept if their Sampson distance to the known epipolar geometry is small.
Tracks: connected components of the match graph (components that hold two keypoints of one
image are dropped). Points: multi-view DLT on undistorted normalized coordinates, then
observations with a reprojection error above ``MAX_REPROJ_PX`` are dropped and points need
>= 2 observations and a triangulation angle >= ``MIN_ANGLE_DEG``. Pass 2 samples the
descriptors at the projections (build_common.describe_observations).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm import tqdm

from nre_ros.camera import Camera
from nre_ros.datasets import TumSequence
from nre_ros.errors import InputError
from nre_ros.geometry import invert, skew
from nre_ros.maps.build_common import (BuildOptions, PosedImage, assemble_map,
                                       describe_observations, prepare_image, provenance,
                                       select_frames, sequence_images)
from nre_ros.maps.features import global_descriptor, sample_descriptors, select_keypoints
from nre_ros.maps.format import Map
from nre_ros.maps.retrieval import RetrievalIndex
from nre_ros.models.base import FeatureModel

logger = logging.getLogger(__name__)

SEQ_NEIGHBOURS = 3
RETRIEVAL_NEIGHBOURS = 3
MIN_SIMILARITY = 0.7
MAX_EPIPOLAR_PX = 3.0
MAX_REPROJ_PX = 3.0
MIN_ANGLE_DEG = 1.5


def build_posed_map(root: str | Path, model: FeatureModel, opts: BuildOptions = BuildOptions(),
                    progress: bool = False) -> Map:
    """Build a map from posed RGB images in the TUM layout (no depth used)."""
    seq = TumSequence(root)
    images = sequence_images(seq, select_frames(seq, opts), depth=False)
    return posed_map_from_images(images, model, opts, provenance('posed', root, opts), progress)


def posed_map_from_images(images: Sequence[PosedImage], model: FeatureModel,
                          opts: BuildOptions, prov: dict, progress: bool = False,
                          map_frame: str = 'map') -> Map:
    """Build a map from posed RGB images by matching and triangulation (two passes)."""
    t0 = time.perf_counter()
    if not images:
        raise InputError('no image to map')
    loaders = [lambda im=im: prepare_image(im.load_rgb(), im.camera, opts.image_max_size)[0]
               for im in images]
    cams = [prepare_image(np.zeros((im.camera.height, im.camera.width, 3), np.uint8),
                          im.camera, opts.image_max_size)[1] for im in images]
    T_cam_world = np.stack([invert(im.T_world_cam) for im in images])
    kps, descs, colors, globals_ = [], [], [], []
    for load in tqdm(loaders, desc='keypoints', unit='kf', disable=not progress):
        rgb = load()
        feats = model.extract(rgb)
        uv, _ = select_keypoints(feats.keypoint_scores, opts.max_points_per_keyframe,
                                 mode=opts.keypoint_mode)
        kps.append(uv)
        descs.append(sample_descriptors(feats.coarse, uv, model.spec.coarse_stride))
        colors.append(rgb[uv[:, 1].astype(int), uv[:, 0].astype(int)])
        globals_.append(global_descriptor(feats))
    pairs = _pairs(np.stack(globals_))
    pts, obs_point, obs_kf, obs_kp = triangulate_tracks(kps, descs, cams, T_cam_world, pairs)
    if not len(pts):
        raise InputError(f'triangulation of {len(images)} posed images found no point')
    offsets = np.concatenate([[0], np.cumsum([len(k) for k in kps])]).astype(np.int64)
    flat = offsets[obs_kf] + obs_kp
    obs_uv = np.concatenate(kps)[flat]
    first = np.unique(obs_point, return_index=True)[1]
    pts_rgb = np.concatenate(colors)[flat[first]]
    coarse, fine, glob, light, track = describe_observations(
        loaders, cams, T_cam_world, pts, obs_kf, obs_point, model, opts.descriptor_dtype,
        progress, 'descriptors')
    m = assemble_map(model, [im.name for im in images], cams, T_cam_world, glob, pts, pts_rgb,
                     obs_kf, obs_point, obs_uv, coarse, fine,
                     prov={**prov, 'pairs': int(len(pairs))}, map_frame=map_frame,
                     brightness=light, obs_fine_tracking=track)
    logger.info('posed map: %d keyframes, %d points, %d observations in %.1f s',
                m.num_keyframes, m.num_points, m.num_observations, time.perf_counter() - t0)
    return m


def triangulate_tracks(kps: list[np.ndarray], descs: list[np.ndarray], cams: list[Camera],
                       T_cam_world: np.ndarray, pairs: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Match the pairs, chain matches into tracks and triangulate them with the known poses.

    Args:
        kps: K arrays (N_k, 2) of keypoints; descs: K arrays (N_k, C) of unit descriptors.
        cams, T_cam_world: K cameras and (K, 4, 4) world-to-camera poses.
        pairs: (E, 2) keyframe pairs to match.

    Returns:
        points_world (P, 3); per observation (O,): point index, keyframe, keypoint index.
    """
    xy = [c.undistort_pixels(k) for c, k in zip(cams, kps)]
    offsets = np.concatenate([[0], np.cumsum([len(k) for k in kps])]).astype(np.int64)
    edges = []
    for i, j in pairs:
        m = match_mutual(descs[i], descs[j])
        f = 0.5 * (cams[i].fx + cams[j].fx)
        ok = sampson_px(xy[i][m[:, 0]], xy[j][m[:, 1]], T_cam_world[i], T_cam_world[j], f)
        m = m[ok < MAX_EPIPOLAR_PX]
        edges.append(np.stack([offsets[i] + m[:, 0], offsets[j] + m[:, 1]], 1))
    edges = np.concatenate(edges) if edges else np.zeros((0, 2), np.int64)
    n = int(offsets[-1])
    _, label = connected_components(coo_matrix((np.ones(len(edges)), edges.T), (n, n)),
                                    directed=False)
    node_kf = np.repeat(np.arange(len(kps)), np.diff(offsets))
    size = np.bincount(label)
    dup = np.unique(label * len(kps) + node_kf, return_counts=True)
    bad = np.zeros(len(size), bool)
    bad[dup[0][dup[1] > 1] // len(kps)] = True
    keep = (size[label] >= 2) & ~bad[label]
    nodes = np.flatnonzero(keep)
    track = np.unique(label[nodes], return_inverse=True)[1]
    obs_kf = node_kf[nodes]
    all_xy = np.concatenate(xy)[nodes]
    X = dlt_triangulate(all_xy, T_cam_world[obs_kf], track)
    return _filter_tracks(X, track, obs_kf, nodes - offsets[obs_kf], kps, cams, T_cam_world)


def match_mutual(d0: np.ndarray, d1: np.ndarray) -> np.ndarray:
    """(M, 2) mutual nearest neighbours of unit descriptors with similarity >= MIN_SIMILARITY."""
    if not len(d0) or not len(d1):
        return np.zeros((0, 2), np.int64)
    sim = d0 @ d1.T
    nn01, nn10 = sim.argmax(1), sim.argmax(0)
    i = np.flatnonzero((nn10[nn01] == np.arange(len(d0))) & (sim.max(1) >= MIN_SIMILARITY))
    return np.stack([i, nn01[i]], 1)


def sampson_px(xy0: np.ndarray, xy1: np.ndarray, T_c0_w: np.ndarray, T_c1_w: np.ndarray,
               focal_px: float) -> np.ndarray:
    """(M,) Sampson distance (approx. pixels) of normalized matches (M, 2) to the known pose."""
    T = T_c1_w @ invert(T_c0_w)
    E = skew(T[:3, 3]) @ T[:3, :3]
    x0 = np.concatenate([xy0, np.ones((len(xy0), 1))], 1)
    x1 = np.concatenate([xy1, np.ones((len(xy1), 1))], 1)
    Ex0, Etx1 = x0 @ E.T, x1 @ E
    num = np.sum(x1 * Ex0, 1)
    den = Ex0[:, 0] ** 2 + Ex0[:, 1] ** 2 + Etx1[:, 0] ** 2 + Etx1[:, 1] ** 2
    return focal_px * np.abs(num) / np.sqrt(np.maximum(den, 1e-18))


def dlt_triangulate(xy: np.ndarray, T_cam_world: np.ndarray, track: np.ndarray) -> np.ndarray:
    """Multi-view DLT, all tracks at once.

    Args:
        xy: (O, 2) normalized image coordinates; T_cam_world: (O, 4, 4) pose of each
            observation's camera; track: (O,) track index in [0, T).

    Returns:
        (T, 4) homogeneous points (unit norm); the last coordinate may be ~0 (at infinity).
    """
    P = T_cam_world[:, :3, :]
    r0 = xy[:, :1] * P[:, 2] - P[:, 0]
    r1 = xy[:, 1:] * P[:, 2] - P[:, 1]
    AtA = np.zeros((track.max() + 1 if len(track) else 0, 4, 4))
    np.add.at(AtA, track, r0[:, :, None] * r0[:, None] + r1[:, :, None] * r1[:, None])
    _, vecs = np.linalg.eigh(AtA)
    return vecs[:, :, 0]


def _filter_tracks(X: np.ndarray, track, obs_kf, obs_kp, kps, cams, T_cam_world):
    """Drop bad observations (behind, reprojection error) and weak tracks (< 2 obs, angle)."""
    w = X[:, 3]
    ok_t = np.abs(w) > 1e-9
    pts = X[:, :3] / np.where(ok_t, w, 1.0)[:, None]
    err = np.full(len(track), np.inf)
    for k in np.unique(obs_kf):                              # loop over keyframes, not points
        sel = np.flatnonzero(obs_kf == k)
        T = T_cam_world[k]
        uv, vis = cams[k].project(pts[track[sel]] @ T[:3, :3].T + T[:3, 3])
        err[sel] = np.where(vis, np.linalg.norm(uv - kps[k][obs_kp[sel]], axis=1), np.inf)
    good = (err < MAX_REPROJ_PX) & ok_t[track]
    centres = np.linalg.inv(T_cam_world)[:, :3, 3]
    rays = pts[track] - centres[obs_kf]
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    ref = np.zeros((len(pts), 3))
    gi = np.flatnonzero(good)
    ref[track[gi[::-1]]] = rays[gi[::-1]]                        # first good ray per track
    cos = np.full(len(pts), 1.0)
    np.minimum.at(cos, track[gi], np.sum(rays[gi] * ref[track[gi]], 1))
    count = np.bincount(track[gi], minlength=len(pts))
    keep_t = (count >= 2) & (cos < np.cos(np.radians(MIN_ANGLE_DEG)))
    keep = good & keep_t[track]
    new_id = np.cumsum(keep_t) - 1
    return pts[keep_t], new_id[track[keep]], obs_kf[keep], obs_kp[keep]


def _pairs(globals_: np.ndarray) -> np.ndarray:
    """(E, 2) unique keyframe pairs i < j: sequence neighbours and retrieval neighbours."""
    K = len(globals_)
    i = np.arange(K)
    seq = [np.stack([i[:-d], i[d:]], 1) for d in range(1, min(SEQ_NEIGHBOURS, K - 1) + 1)]
    idx, _ = RetrievalIndex(globals_).query(globals_, RETRIEVAL_NEIGHBOURS + 1)
    ret = np.stack([np.repeat(i, idx.shape[1]), idx.reshape(-1)], 1)
    allp = np.concatenate(seq + [ret])
    allp = np.sort(allp, axis=1)
    allp = allp[allp[:, 0] != allp[:, 1]]
    return np.unique(allp, axis=0)
