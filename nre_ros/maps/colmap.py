"""Builders (c) COLMAP/pycolmap model + images -> map, (d) images -> pycolmap SfM -> (c).

COLMAP's pixel convention (top-left pixel centre at (0.5, 0.5)) is converted here, once:
``uv_opencv = uv_colmap - 0.5`` and ``c_opencv = c_colmap - 0.5``. The map keeps the model's
gauge and scale (units 'sfm', arbitrary); ``map_T_model`` stays unset.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from nre_ros.camera import Camera
from nre_ros.datasets import load_rgb
from nre_ros.errors import BackendUnavailable, InputError
from nre_ros.maps.build_common import (BuildOptions, assemble_map, describe_observations,
                                       prepare_image, provenance)
from nre_ros.maps.format import Map
from nre_ros.models.base import FeatureModel

logger = logging.getLogger(__name__)

_NO_POINT = 2 ** 64 - 1        # pycolmap's invalid point3D id


def _pycolmap():
    try:
        import pycolmap
    except ImportError as exc:
        raise BackendUnavailable('pycolmap is not installed (pip install pycolmap==4.2.1)') \
            from exc
    return pycolmap


def colmap_camera(cam) -> Camera:
    """OpenCV-convention Camera of a pycolmap camera (pinhole/radial/OpenCV models)."""
    name, p = cam.model.name, np.asarray(cam.params, np.float64)
    if name == 'SIMPLE_PINHOLE':
        f, cx, cy, dist = p[0], p[1], p[2], []
        fx = fy = f
    elif name == 'PINHOLE':
        fx, fy, cx, cy, dist = *p[:4], []
    elif name == 'SIMPLE_RADIAL':
        fx = fy = p[0]
        cx, cy, dist = p[1], p[2], [p[3], 0.0, 0.0, 0.0]
    elif name == 'RADIAL':
        fx = fy = p[0]
        cx, cy, dist = p[1], p[2], [p[3], p[4], 0.0, 0.0]
    elif name == 'OPENCV':
        fx, fy, cx, cy, dist = *p[:4], list(p[4:8])
    else:
        raise InputError(f'COLMAP camera model {name} is not supported (use PINHOLE, '
                         'SIMPLE_RADIAL, RADIAL or OPENCV)')
    return Camera.from_params(cam.width, cam.height, fx, fy, cx - 0.5, cy - 0.5, dist)


def build_colmap_map(model_dir, image_dir: str | Path, model: FeatureModel,
                     opts: BuildOptions = BuildOptions(), exclude: tuple[str, ...] = (),
                     progress: bool = False, builder: str = 'colmap') -> Map:
    """Build a map from a COLMAP model (a folder, or a pycolmap.Reconstruction) and its images."""
    t0 = time.perf_counter()
    pycolmap = _pycolmap()
    rec = model_dir if isinstance(model_dir, pycolmap.Reconstruction) else \
        pycolmap.Reconstruction(str(model_dir))
    images = sorted((im for im in rec.images.values()
                     if im.has_pose and im.name not in set(exclude)), key=lambda im: im.name)
    images = images[::opts.keyframe_step]
    if opts.max_keyframes and len(images) > opts.max_keyframes:
        images = [images[i] for i in np.round(np.linspace(0, len(images) - 1,
                                                          opts.max_keyframes)).astype(int)]
    if not images:
        raise InputError(f'COLMAP model {model_dir}: no registered image left to map')
    cams, poses, loaders, obs = [], [], [], []
    for k, im in enumerate(images):
        cam0 = colmap_camera(rec.cameras[im.camera_id])
        path = Path(image_dir) / im.name
        cam = prepare_image(np.zeros((cam0.height, cam0.width, 3), np.uint8), cam0,
                            opts.image_max_size)[1]
        loaders.append(lambda p=path, c=cam0: prepare_image(load_rgb(p), c,
                                                            opts.image_max_size)[0])
        cams.append(cam)
        poses.append(np.vstack([im.cam_from_world().matrix(), [0, 0, 0, 1]]))
        ids = np.array([p.point3D_id for p in im.points2D], np.uint64)
        xy = np.array([p.xy for p in im.points2D], np.float64).reshape(-1, 2)
        has = ids != _NO_POINT
        sx, sy = cam.width / cam0.width, cam.height / cam0.height
        uv = xy[has] * [sx, sy] - 0.5     # COLMAP -> OpenCV (-0.5) and the resize rule
        obs.append((np.full(int(has.sum()), k), ids[has], uv))
    obs_kf, obs_id, obs_uv = (np.concatenate(a) for a in zip(*obs))
    obs_kf, obs_id, obs_uv = _cap_per_keyframe(obs_kf, obs_id, obs_uv, rec,
                                               opts.max_points_per_keyframe)
    uniq, obs_point = np.unique(obs_id, return_inverse=True)
    pts = np.array([rec.points3D[int(i)].xyz for i in uniq], np.float64).reshape(-1, 3)
    rgb = np.array([rec.points3D[int(i)].color for i in uniq], np.uint8).reshape(-1, 3)
    T = np.stack(poses)
    coarse, fine, glob, light, track = describe_observations(
        loaders, cams, T, pts, obs_kf, obs_point, model, opts.descriptor_dtype, progress,
        'descriptors')
    m = assemble_map(model, [im.name for im in images], cams, T, glob, pts, rgb, obs_kf,
                     obs_point, obs_uv, coarse, fine, units='sfm', brightness=light,
                     obs_fine_tracking=track,
                     prov=provenance(builder, image_dir, opts, colmap_model=str(model_dir)
                                     if not isinstance(model_dir, pycolmap.Reconstruction)
                                     else 'in-memory SfM', excluded=list(exclude)))
    logger.info('%s map: %d keyframes, %d points in %.1f s', builder, m.num_keyframes,
                m.num_points, time.perf_counter() - t0)
    return m


def _cap_per_keyframe(obs_kf, obs_id, obs_uv, rec, max_points: int):
    """Keep per keyframe the ``max_points`` observations of the longest tracks."""
    uniq, inv = np.unique(obs_id, return_inverse=True)
    length = np.array([rec.points3D[int(i)].track.length() for i in uniq])[inv]
    order = np.lexsort((-length, obs_kf))
    rank = np.arange(len(order)) - np.searchsorted(obs_kf[order], obs_kf[order])
    keep = np.sort(order[rank < max_points])
    return obs_kf[keep], obs_id[keep], obs_uv[keep]


def build_sfm_map(image_dir: str | Path, model: FeatureModel, opts: BuildOptions = BuildOptions(),
                  exclude: tuple[str, ...] = (), work_dir: str | Path | None = None,
                  progress: bool = False) -> Map:
    """Images alone: pycolmap SIFT + exhaustive matching + incremental SfM, then the COLMAP
    builder on the largest reconstruction (its SfM model is kept in ``work_dir`` if given)."""
    pycolmap = _pycolmap()
    image_dir = Path(image_dir)
    names = sorted(p.name for p in image_dir.iterdir()
                   if p.suffix.lower() in ('.jpg', '.jpeg', '.png') and p.name not in exclude)
    tmp = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix='nre_sfm_'))
    tmp.mkdir(parents=True, exist_ok=True)
    db = tmp / 'database.db'
    db.unlink(missing_ok=True)
    t0 = time.perf_counter()
    pycolmap.extract_features(db, image_dir, image_names=names,
                              camera_mode=pycolmap.CameraMode.PER_IMAGE)
    pycolmap.match_exhaustive(db)
    recs = pycolmap.incremental_mapping(db, image_dir, tmp / 'sfm')
    if not recs:
        raise InputError(f'SfM registered no model from the {len(names)} images in {image_dir}')
    rec = max(recs.values(), key=lambda r: r.num_reg_images())
    logger.info('SfM: %d/%d images registered, %d points in %.1f s', rec.num_reg_images(),
                len(names), rec.num_points3D(), time.perf_counter() - t0)
    try:
        return build_colmap_map(rec, image_dir, model, opts, exclude, progress, builder='sfm')
    finally:
        if not work_dir:
            shutil.rmtree(tmp, ignore_errors=True)
