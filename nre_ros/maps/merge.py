"""Joining maps built in the same frame (several recordings of a site, or shards of a large one).

``merge_maps(a, b)`` keeps every keyframe of ``a`` and the keyframes of ``b`` that do not
duplicate one of ``a`` (camera centres closer than ``min_translation_m`` and views closer than
``min_rotation_deg``); points seen only by dropped keyframes go too. Points are not fused across
maps (each keyframe keeps the points it was built with). ``concat_maps`` joins without
deduplication, ``transformed`` moves a map rigidly (used to make large test maps).
"""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
from scipy.spatial import cKDTree

from nre_ros.errors import InputError
from nre_ros.geometry import invert, rotation_angle_deg
from nre_ros.maps.format import Map

logger = logging.getLogger(__name__)

_KF_ARRAYS = ('kf_T_cam_world', 'kf_K', 'kf_dist', 'kf_image_size', 'kf_global')


def check_compatible(maps: list[Map], names: list[str]) -> None:
    """InputError unless the maps share model, frame, units, map_T_model and global method."""
    ref, rname = maps[0], names[0]
    for m, name in zip(maps[1:], names[1:]):
        diff = ref.spec.mismatch(m.spec)
        if diff:
            raise InputError(f'{name} was built with another model than {rname} ({diff})')
        for what, x, y in (('map frame', ref.metadata.map_frame, m.metadata.map_frame),
                           ('units', ref.metadata.units, m.metadata.units),
                           ('global descriptor', ref.metadata.global_descriptor,
                            m.metadata.global_descriptor)):
            if x != y:
                raise InputError(f'{name} and {rname} differ in {what} ({y!r} vs {x!r}); maps '
                                 'must be built in the same frame to be merged')
        sa, sb = ref.metadata.map_T_model, m.metadata.map_T_model
        if (sa is None) != (sb is None) or (sa is not None and not np.allclose(
                sa.matrix(), sb.matrix(), atol=1e-9)):
            raise InputError(f'{name} and {rname} have different map_T_model alignments')


def select_keyframes(m: Map, keep: np.ndarray) -> Map:
    """The map restricted to keyframes ``keep`` (bool (K,) or indices), unobserved points
    dropped."""
    idx = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep, int)
    off = np.asarray(m.kf_offsets)
    obs = np.concatenate([np.arange(off[i], off[i + 1]) for i in idx]) if len(idx) else \
        np.zeros(0, np.int64)
    pts = np.asarray(m.obs_point)[obs]
    used = np.zeros(m.num_points, bool)
    used[pts] = True
    remap = np.cumsum(used) - 1
    counts = np.diff(off)[idx]
    return replace(
        m, keyframe_names=tuple(m.keyframe_names[i] for i in idx),
        **{k: np.asarray(getattr(m, k))[idx] for k in _KF_ARRAYS},
        kf_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        kf_fisheye=None if m.kf_fisheye is None else np.asarray(m.kf_fisheye)[idx],
        kf_brightness=None if m.kf_brightness is None else np.asarray(m.kf_brightness)[idx],
        points_world=np.asarray(m.points_world)[used], points_rgb=np.asarray(m.points_rgb)[used],
        obs_point=remap[pts].astype(np.int32), obs_uv=np.asarray(m.obs_uv)[obs],
        obs_coarse=np.asarray(m.obs_coarse)[obs],
        obs_fine=None if m.obs_fine is None else np.asarray(m.obs_fine)[obs],
        obs_fine_tracking=None if m.obs_fine_tracking is None
        else np.asarray(m.obs_fine_tracking)[obs])


def concat_maps(maps: list[Map], provenance: dict | None = None) -> Map:
    """All keyframes and points of ``maps`` (compatible, see ``check_compatible``) in one map;
    a repeated keyframe name gets ``#2``, ``#3``... appended."""
    check_compatible(maps, [f'map {i}' for i in range(len(maps))])
    point_base = np.cumsum([0] + [m.num_points for m in maps[:-1]])
    obs_base = np.cumsum([0] + [m.num_observations for m in maps[:-1]])
    names, seen = [], {}
    for m in maps:
        for n in m.keyframe_names:
            seen[n] = seen.get(n, 0) + 1
            names.append(n if seen[n] == 1 else f'{n}#{seen[n]}')

    def cat(field):
        return np.concatenate([np.asarray(getattr(m, field)) for m in maps])
    fisheye = None
    if any(m.kf_fisheye is not None for m in maps):
        fisheye = np.concatenate([np.zeros(m.num_keyframes, np.uint8) if m.kf_fisheye is None
                                  else np.asarray(m.kf_fisheye) for m in maps])
    # a merged map has a brightness reference only when every part has one
    brightness = None if any(m.kf_brightness is None for m in maps) else cat('kf_brightness')
    # the tracking level only when every part has it, from the same model
    specs = [m.tracking_spec for m in maps]
    tracking = specs[0] if all(t == specs[0] for t in specs) else None
    if tracking is None and any(t is not None for t in specs):
        logger.warning('not every map has the same tracking level: the joined map has none '
                       '(tracking runs the fine network; rebuild the parts to keep it)')
    meta = maps[0].metadata
    if provenance is not None:
        meta = replace(meta, provenance=provenance)
    return replace(
        maps[0], keyframe_names=tuple(names), **{k: cat(k) for k in _KF_ARRAYS},
        kf_offsets=np.concatenate([[0]] + [np.asarray(m.kf_offsets[1:]) + b
                                           for m, b in zip(maps, obs_base)]).astype(np.int64),
        kf_fisheye=fisheye, kf_brightness=brightness, points_world=cat('points_world'),
        points_rgb=cat('points_rgb'),
        obs_point=np.concatenate([np.asarray(m.obs_point) + b for m, b in zip(maps, point_base)]
                                 ).astype(np.int32),
        obs_uv=cat('obs_uv'), obs_coarse=cat('obs_coarse'),
        obs_fine=None if maps[0].obs_fine is None else cat('obs_fine'), metadata=meta,
        tracking_spec=tracking,
        obs_fine_tracking=None if tracking is None else cat('obs_fine_tracking'))


def duplicate_keyframes(a: Map, b: Map, min_translation_m: float, min_rotation_deg: float
                        ) -> np.ndarray:
    """(K_b,) bool: keyframe of ``b`` within both thresholds of some keyframe of ``a``."""
    Ta, Tb = np.asarray(a.kf_T_cam_world), np.asarray(b.kf_T_cam_world)
    ca, cb = invert(Ta)[:, :3, 3], invert(Tb)[:, :3, 3]
    dup = np.zeros(len(Tb), bool)
    near = cKDTree(ca).query_ball_point(cb, r=min_translation_m)
    for j, cand in enumerate(near):              # few candidates each, by construction
        if cand:
            ang = rotation_angle_deg(Ta[cand, :3, :3], Tb[j, :3, :3])
            dup[j] = bool(np.any(ang < min_rotation_deg))
    return dup


def merge_maps(a: Map, b: Map, min_translation_m: float = 0.05, min_rotation_deg: float = 5.0,
               names: tuple[str, str] = ('A', 'B')) -> tuple[Map, dict]:
    """``a`` plus the keyframes of ``b`` that ``a`` does not already have (see the module
    docstring); returns the map and counts."""
    check_compatible([a, b], list(names))
    dup = duplicate_keyframes(a, b, min_translation_m, min_rotation_deg)
    if dup.all():
        raise InputError(f'every keyframe of {names[1]} duplicates one of {names[0]}: '
                         'nothing to merge')
    kept = select_keyframes(b, ~dup)
    prov = {'builder': 'merge', 'sources': {names[0]: a.metadata.provenance,
                                            names[1]: b.metadata.provenance},
            'dedup': {'min_translation_m': min_translation_m,
                      'min_rotation_deg': min_rotation_deg, 'dropped': int(dup.sum())}}
    stats = {'keyframes_a': a.num_keyframes, 'keyframes_b': b.num_keyframes,
             'duplicates_dropped': int(dup.sum()), 'keyframes': a.num_keyframes + kept.num_keyframes}
    return concat_maps([a, kept], prov), stats


def transformed(m: Map, T_new_old: np.ndarray) -> Map:
    """The map moved rigidly: points and keyframe poses expressed in frame ``new``."""
    T = np.asarray(T_new_old, np.float64)
    pts = np.asarray(m.points_world, np.float64) @ T[:3, :3].T + T[:3, 3]
    return replace(m, points_world=pts.astype(np.float32),
                   kf_T_cam_world=np.asarray(m.kf_T_cam_world) @ invert(T))
