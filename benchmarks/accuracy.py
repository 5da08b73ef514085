"""Accuracy on real held-out queries: nre_ros beside RE baselines and sparse matcher peers.

All rows are measured in the same run, on the same maps and the same query images:

- ``nre_ros``: ``Relocalizer`` with the default ``PipelineConfig`` (coarse + fine + verdict);
- ``nre_ros_coarse``: the same with ``fine.enabled = False``;
- ``nre_ros_rgbd``: the default pipeline given the query's depth image (metres, float32,
  0 = invalid): ``localize(image, camera, depth=depth)``; n/a where a dataset has no depth;
- ``re_opencv_magsac`` / ``re_poselib``: reprojection-error RANSAC on the argmax (sub-cell)
  correspondences of exactly the coarse loss maps nre_ros built (same retrieval, same rotation
  candidates, same point set; the candidate with most inliers wins). Their latency is the
  pipeline's features + retrieval + loss-map time plus the RE solver time;
- peers (``accuracy_peers.py``): retrieval top-3 with the map's global descriptors, sparse
  features of the map's keyframe images lifted to 3D with what the map was built from (depth
  + ground-truth pose; the given 3D points for nre_megadepth_pair):
  ``xfeat_mnn_poselib`` (XFeat + mutual NN + PoseLib), ``xfeat_lighterglue_poselib`` (XFeat +
  LighterGlue, top-1 keyframe, + PoseLib), ``sift_magsac`` (OpenCV SIFT + ratio test +
  ``solvePnPRansac`` USAC_MAGSAC).

Fix thresholds. The RE baselines and the peers publish a pose only with >= T inliers. T is
chosen per method from the out-of-map runs of this invocation (both directions pooled): the
smallest T >= 6 whose out-of-map fix rate is <= 1 %. It is printed. Note that the out-of-map
false-fix rates of these rows are then in-sample (by construction <= 1 %). Without out-of-map
datasets in the run, ``DEFAULT_THRESHOLDS`` (chosen that way by a full run) or
``--min-inliers`` apply.

Datasets: ``fr1_hard`` (fr1_rpy hard_map / hard_query), ``fr1_easy`` (fr1_rpy map / query),
``cabinet`` (fr3 cabinet map / query splits), ``nre_megadepth_pair`` (map = the source image
and the given 3D points; query = the target image; errors in SfM units, not metres),
``out_of_map_cabinet_in_fr1`` (all 58 cabinet images against the fr1_hard map),
``out_of_map_fr1_in_cabinet`` (fr1_rpy hard_query images against the cabinet map). On the
out-of-map sets every published pose is a false fix; ``out_of_map`` pools both.

Latency: per-stage p50/p90 (``timings_ms``) of the in-map queries in global mode (nre_ros),
tracking mode (prior = ground truth perturbed by 5 cm / 2 deg in a random direction, seed 0)
and RGB-D mode.

Maps are what a user gets: each TUM map is built by running ``nre-ros build-map SEQ OUT
--builder rgbd --split SPLIT`` with every other option at its default (the MegaDepth map, which
has no CLI equivalent, from the given 3D points). Maps and the peers' keyframe features are
cached under ``--cache`` (default ``out/accuracy_cache``); a map built with another model or by
another command (e.g. older defaults) is rebuilt. Data: ``$NRE_SHARED_DATA``, default
``shared/data`` beside the checkout (``nre_ros.paths.shared_data_dir``).

``--every N`` subsamples every dataset except ``cabinet`` and ``nre_megadepth_pair`` (14 and 1
queries, always all). ``--raw DIR`` saves each dataset's per-query records as it finishes;
``--report-only --raw DIR`` renders the tables from them (e.g. after an interrupted run).

Usage: ``python benchmarks/accuracy.py [--every 2] [--limit N] [--datasets ...] [--methods ...]
[--raw DIR] [--json]``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import nre_ros  # noqa: F401  (before torch: passive OpenMP waiting, as the product)
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_peers import PEERS, Extractors, Peers, build_db, load_db, save_db  # noqa: E402
from common import header, run_metadata  # noqa: E402

from nre_ros.camera import Camera  # noqa: E402
from nre_ros.datasets import TumSequence, load_rgb  # noqa: E402
from nre_ros.errors import MapFormatError  # noqa: E402
from nre_ros.eval.metrics import errors, nees, summarize  # noqa: E402
from nre_ros.geometry import transform_points  # noqa: E402
from nre_ros.maps import BuildOptions, load_map, with_command  # noqa: E402
from nre_ros.models import DEFAULT_MODEL, load_model  # noqa: E402
from nre_ros.paths import shared_data_dir  # noqa: E402
from nre_ros.precision import PRECISIONS  # noqa: E402
from nre_ros.pipeline import (FineConfig, PipelineConfig, Prior, Relocalizer,  # noqa: E402
                              load_configured_model)
from nre_ros.results import Result  # noqa: E402
from nre_ros.threads import apply_threads  # noqa: E402
from nre_ros.solver.baselines import (argmax_correspondences, re_opencv_magsac,  # noqa: E402
                                      re_poselib)

ROOT = Path(__file__).resolve().parents[1]
DATA = shared_data_dir()             # $NRE_SHARED_DATA, else shared/data beside the checkout
FR1 = DATA / 'tum_rgbd_fr1_rpy'
CABINET = DATA / 'tum_rgbd_fr3_cabinet_keyframes'
MEGADEPTH = DATA / 'nre_megadepth_pair'
# map name -> (sequence, split): built by `nre-ros build-map SEQ OUT --builder rgbd --split SPLIT`
# with every other option at its default, as a user would; 'megadepth' is built from the npz
MAPS = {'fr1_hard': (FR1, 'hard_map'), 'fr1_easy': (FR1, 'map'), 'cabinet': (CABINET, 'map'),
        'megadepth': (MEGADEPTH, None)}
# dataset -> (query source, query split (None = every image), map)
DATASETS = {'fr1_hard': (FR1, 'hard_query', 'fr1_hard'),
            'fr1_easy': (FR1, 'query', 'fr1_easy'),
            'cabinet': (CABINET, 'query', 'cabinet'),
            'nre_megadepth_pair': (MEGADEPTH, None, 'megadepth'),
            'out_of_map_cabinet_in_fr1': (CABINET, None, 'fr1_hard'),
            'out_of_map_fr1_in_cabinet': (FR1, 'hard_query', 'cabinet')}
OUT_OF_MAP = ('out_of_map_cabinet_in_fr1', 'out_of_map_fr1_in_cabinet')
SMALL = ('cabinet', 'nre_megadepth_pair')      # always every query (14 and 1), --every ignored
RE_ROWS = ('re_opencv_magsac', 're_poselib')
METHODS = ('nre_ros', 'nre_ros_coarse', 'nre_ros_rgbd') + RE_ROWS + PEERS
THRESHOLDED = RE_ROWS + PEERS
MIN_THRESHOLD = 6
MAX_OOM_RATE = 0.01
# fix thresholds chosen by a full run (--every 4, 39 out-of-map queries: the max out-of-map inlier
# count + 1; nre_ros code of 33cd4f3 + a work-in-progress msac.py, 2026-11-23); used only when
# a run has no out-of-map datasets and no --min-inliers
DEFAULT_THRESHOLDS = {'re_opencv_magsac': 190, 're_poselib': 201, 'xfeat_mnn_poselib': 13,
                      'xfeat_lighterglue_poselib': 11, 'sift_magsac': 9}
KEYS = ('recall_25cm_2deg', 'recall_50cm_5deg', 'recall_5m_10deg', 'median_t_m', 'median_r_deg',
        'false_fix_rate', 'ms_p50')
PRIOR_NOISE = (0.05, 2.0)     # metres, degrees


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def nre_ros_worktree() -> str:
    """'clean', or the nre_ros/ files with uncommitted changes (they are what runs)."""
    import subprocess
    try:
        out = subprocess.run(['git', 'status', '--porcelain', '--', 'nre_ros'], cwd=ROOT,
                             check=True, capture_output=True, text=True).stdout.split('\n')
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'
    files = [ln[3:] for ln in out if ln.strip()]
    return 'clean' if not files else 'uncommitted changes in ' + ', '.join(files)


# ---------------------------------------------------------------------- queries
@dataclass
class Query:
    name: str
    image: Callable[[], np.ndarray]
    camera: Camera
    T_gt: np.ndarray | None          # T_cam_world in the map's frame; None when out of map
    depth: Callable[[], np.ndarray] | None = None


def megadepth_sample() -> dict:
    z = np.load(MEGADEPTH / 'sample.npz')
    return {k: z[k] for k in z.files}


def queries(name: str, every: int, limit: int | None) -> list[Query]:
    root, split, _ = DATASETS[name]
    in_map = name not in OUT_OF_MAP
    if root == MEGADEPTH:
        s = megadepth_sample()
        img = load_rgb(MEGADEPTH / 'target_image.jpg')
        cam = Camera(img.shape[1], img.shape[0], s['target_K'].astype(np.float64),
                     s['target_dist'].astype(np.float64))
        qs = [Query('target_image.jpg', lambda: img, cam,
                    s['target_P'].astype(np.float64) if in_map else None)]
    else:
        seq = TumSequence(root)
        frames = seq.split(split) if split else list(seq.frames)
        qs = [Query(f.name, (lambda f=f: seq.load_rgb(f)), seq.camera,
                    np.linalg.inv(f.T_world_cam) if in_map else None,
                    (lambda f=f: seq.load_depth(f)) if f.depth_path is not None else None)
              for f in frames]
    if name not in SMALL:
        qs = qs[::every]
    return qs[:limit] if limit else qs


# ---------------------------------------------------------------------- maps
def build_megadepth_map(model):
    """One keyframe (source image, resized to 640 px like the queries) + the given p3D."""
    from nre_ros.maps.build_common import (assemble_map, describe_observations, prepare_image,
                                           provenance)
    s = megadepth_sample()
    img = load_rgb(MEGADEPTH / 'source_image.jpg')
    cam = Camera(img.shape[1], img.shape[0], s['source_K'].astype(np.float64),
                 s['source_dist'].astype(np.float64))
    img, cam = prepare_image(img, cam, 640)
    T = s['source_P'].astype(np.float64)
    pts = s['p3D'].astype(np.float64)
    uv, valid = cam.project(transform_points(T, pts))
    pts, uv = pts[valid], uv[valid]
    n = len(pts)
    coarse, fine, glob, light, _ = describe_observations([lambda: img], [cam], T[None], pts,
                                                         np.zeros(n, np.int64), np.arange(n),
                                                         model, 'float16')
    rgb = img[np.clip(uv[:, 1].round().astype(int), 0, cam.height - 1),
              np.clip(uv[:, 0].round().astype(int), 0, cam.width - 1)]
    opts = BuildOptions(image_max_size=640, max_points_per_keyframe=max(n, 1))
    return assemble_map(model, ['source_image.jpg'], [cam], T[None], glob, pts, rgb,
                        np.zeros(n, np.int64), np.arange(n), uv.astype(np.float32), coarse, fine,
                        prov=provenance('npz_points', MEGADEPTH, opts),
                        units='sfm (MegaDepth, arbitrary scale)', brightness=light)


def build_map_argv(name: str, path: Path, model: str | None = None) -> list[str]:
    """The ``nre-ros`` command line that builds map ``name`` at ``path`` (defaults only, plus
    ``--model`` when one other than the default is benchmarked)."""
    seq, split = MAPS[name]
    extra = [] if model in (None, DEFAULT_MODEL) else ['--model', model]
    return ['build-map', str(seq), str(path), '--builder', 'rgbd', '--split', split] + extra


def missing_tracking_level(m) -> bool:
    """Whether ``build-map`` with its defaults would now store a tracking level ``m`` lacks."""
    from nre_ros.models import TRACKING_MODELS
    return m.tracking_spec is None and m.spec.name in TRACKING_MODELS


def get_map(name: str, cache: Path, model) -> Path:
    """Path of map ``name`` in the cache, built when absent or stale (another model, or other
    build options than the CLI's current defaults, read from the map's provenance)."""
    path = cache / f'{name}.nremap'
    expected = None
    if name != 'megadepth':
        from nre_ros.commands.build_map import command_line
        from nre_ros.cli import build_parser
        expected = command_line(build_parser().parse_args(
            build_map_argv(name, path, model.spec.name)))
    if path.exists():
        try:
            m = load_map(path, model.spec)
            if m.kf_brightness is None:
                log(f'map {path} predates keyframe brightness (kf_brightness); rebuilding')
            elif name != 'megadepth' and missing_tracking_level(m):
                log(f'map {path} predates the tracking level (obs_fine_tracking); rebuilding')
            elif expected is None or m.metadata.provenance.get('command') == expected:
                return path
            else:
                log(f'map {path} was built by {m.metadata.provenance.get("command")!r}; '
                    'rebuilding')
        except MapFormatError as exc:
            log(f'map {path} is stale ({exc}); rebuilding')
    log(f'building map {name} -> {path}')
    t0 = time.perf_counter()
    cache.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(path, ignore_errors=True)
    if name == 'megadepth':
        m = with_command(build_megadepth_map(model),
                         'benchmarks/accuracy.py (build_megadepth_map)')
        m.save(path)
    else:
        from nre_ros.cli import main as nre_ros_cli
        argv = build_map_argv(name, path, model.spec.name)
        if nre_ros_cli(argv) != 0:
            raise RuntimeError(f'nre-ros {" ".join(argv)} failed')
    log(f'  built in {time.perf_counter() - t0:.0f} s')
    return path


def get_peer_db(name: str, map_, cache: Path, ex: Extractors) -> dict:
    """Sparse XFeat / SIFT features of the map's keyframes, lifted to 3D (cached)."""
    path = cache / f'{name}.peerdb.npz'
    db = load_db(path)
    if db is not None and len(db['size']) == map_.num_keyframes:
        return db
    log(f'building peer keyframe features {name} -> {path}')
    t0 = time.perf_counter()
    if name == 'megadepth':
        s = megadepth_sample()
        img = load_rgb(MEGADEPTH / 'source_image.jpg')
        cam = Camera(img.shape[1], img.shape[0], s['source_K'].astype(np.float64),
                     s['source_dist'].astype(np.float64))
        kfs = [(img, cam, np.linalg.inv(s['source_P'].astype(np.float64)), None,
                (None, s['p3D'].astype(np.float64)))]
    else:
        seq = TumSequence(MAPS[name][0])
        by_name = {f.name: f for f in seq.frames}
        kfs = ((seq.load_rgb(by_name[n]), seq.camera, by_name[n].T_world_cam,
                seq.load_depth(by_name[n]), None) for n in map_.keyframe_names)
    db = build_db(kfs, ex)
    save_db(db, path)
    log(f'  built in {time.perf_counter() - t0:.0f} s')
    return db


# ---------------------------------------------------------------------- nre_ros variants
class CapturingRelocalizer(Relocalizer):
    """Relocalizer that keeps the candidates whose coarse loss maps it built (for RE rows)."""

    captured: list

    def _coarse_maps(self, c, timings):
        c = super()._coarse_maps(c, timings)
        self.captured.append(c)
        return c


def to_caller(T_img_world: np.ndarray, R_img_cam: np.ndarray) -> np.ndarray:
    R = np.eye(4)
    R[:3, :3] = R_img_cam.T
    return R @ T_img_world


def re_rows(reloc: Relocalizer, outcome, methods: list[str]) -> dict:
    """RE baselines on the captured candidates: {method: (T_cam_world | None, inliers, ms)};
    the candidate with most inliers (threshold applied later)."""
    base_ms = sum(outcome.timings_ms.get(k, 0.0) for k in ('features', 'retrieval', 'lossmaps'))
    out = {}
    for m in methods:
        best, ms = (None, 0), base_ms
        for c in reloc.captured:
            if c.coarse_maps is None:
                continue
            uv = argmax_correspondences(c.coarse_maps, subcell=True)
            K = reloc._K_grid(c.prep, reloc.model.spec.coarse_stride)
            pts = reloc.points_world[c.point_idx]
            if m == 're_opencv_magsac':
                r = re_opencv_magsac(pts, uv, K)
            else:
                r = re_poselib(pts, uv, K, c.coarse_maps.grid_size)
            ms += r.elapsed_ms
            if r.T_cam_world is not None and r.num_inliers > best[1]:
                best = (to_caller(r.T_cam_world, c.prep.R_img_cam), int(r.num_inliers))
        out[m] = (best[0], best[1], ms)
    return out


def perturb(T_cam_world: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Ground truth moved by PRIOR_NOISE (camera centre in metres, rotation in degrees)."""
    import cv2
    T_world_cam = np.linalg.inv(T_cam_world)
    d = rng.normal(size=3)
    axis = rng.normal(size=3)
    R = cv2.Rodrigues(axis / np.linalg.norm(axis) * np.radians(PRIOR_NOISE[1]))[0]
    T = T_world_cam.copy()
    T[:3, :3] = T_world_cam[:3, :3] @ R
    T[:3, 3] += d / np.linalg.norm(d) * PRIOR_NOISE[0]
    return np.linalg.inv(T)


# ---------------------------------------------------------------------- one dataset
def run_dataset(name: str, qs: list[Query], methods: list[str], map_path: Path, model,
                cache: Path, ex: Extractors | None, tracking: bool) -> dict:
    """Raw per-query records: {'est': {m: [(T|None, inliers|None, ms)]}, 'timings': {...}}."""
    map_ = load_map(map_path)
    cfg = PipelineConfig()
    full = CapturingRelocalizer(map_, model, cfg)
    plain = Relocalizer(map_, model, cfg)
    coarse = Relocalizer(map_, model, replace(cfg, fine=FineConfig(enabled=False)))
    full.warmup()
    peer_methods = [m for m in methods if m in PEERS]
    peers = None
    if peer_methods:
        peers = Peers(full, get_peer_db(DATASETS[name][2], map_, cache, ex), ex, peer_methods)
    need_full = any(m in methods for m in ('nre_ros',) + RE_ROWS)
    in_map = name not in OUT_OF_MAP
    rng = np.random.default_rng(0)
    est = {m: [] for m in methods}
    timings = {'global': [], 'tracking': [], 'rgbd': []}
    track = []          # (T | None, mode)
    nees_vals = []
    log(f'{name}: {len(qs)} queries against {map_path}')
    for i, q in enumerate(qs):
        image = q.image()
        if need_full:
            full.captured = []
            o = full.localize(image, q.camera)
            if 'nre_ros' in methods:
                est['nre_ros'].append((o.T_cam_world if o.ok else None, None,
                                       o.timings_ms.get('total', np.nan)))
                if in_map:
                    timings['global'].append(dict(o.timings_ms))
                if isinstance(o, Result) and q.T_gt is not None:
                    nees_vals.append(nees(o.T_cam_world, q.T_gt, o.covariance))
            for m, rec in re_rows(full, o, [m for m in methods if m in RE_ROWS]).items():
                est[m].append(rec)
        if 'nre_ros_coarse' in methods:
            o = coarse.localize(image, q.camera)
            est['nre_ros_coarse'].append((o.T_cam_world if o.ok else None, None,
                                          o.timings_ms.get('total', np.nan)))
        if 'nre_ros_rgbd' in methods:
            if q.depth is None:
                est['nre_ros_rgbd'].append(None)       # n/a
            else:
                o = plain.localize(image, q.camera, depth=q.depth())
                est['nre_ros_rgbd'].append((o.T_cam_world if o.ok else None, None,
                                            o.timings_ms.get('total', np.nan)))
                if in_map:
                    timings['rgbd'].append(dict(o.timings_ms))
        if tracking and in_map and q.T_gt is not None:
            o = plain.localize(image, q.camera, prior=Prior(perturb(q.T_gt, rng)))
            track.append((o.T_cam_world if o.ok else None, o.info.get('mode', '?')))
            timings['tracking'].append({**o.timings_ms, '_mode': o.info.get('mode', '?')})
        if peers is not None:
            for m, rec in peers.localize(image, q.camera).items():
                est[m].append(rec)
        log(f'  {i + 1}/{len(qs)} ' + ' '.join(
            f'{m}=' + ('n/a' if est[m][-1] is None else
                       ('fix' if est[m][-1][0] is not None else '-') +
                       (f'({est[m][-1][1]})' if est[m][-1][1] is not None else ''))
            for m in methods))
    return {'est': est, 'timings': timings, 'track': track, 'nees': nees_vals,
            'T_gt': [q.T_gt for q in qs], 'n': len(qs)}


def _to_json(v):
    """json.dumps default for the raw records: arrays tagged, numpy scalars as numbers."""
    if isinstance(v, np.ndarray):
        return {'__ndarray__': v.tolist()}
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f'not JSON serialisable: {type(v).__name__}')


def _from_json(d: dict):
    return np.asarray(d['__ndarray__']) if set(d) == {'__ndarray__'} else d


# ---------------------------------------------------------------------- tables
def choose_thresholds(raw: dict, methods: list[str], fallback: dict) -> tuple[dict, dict]:
    """Smallest T >= MIN_THRESHOLD whose pooled out-of-map fix rate is <= MAX_OOM_RATE."""
    chosen, info = {}, {}
    for m in methods:
        if m not in THRESHOLDED:
            continue
        inl = [rec[1] for ds in OUT_OF_MAP if ds in raw for rec in raw[ds]['est'][m]
               if rec[0] is not None]
        n = sum(len(raw[ds]['est'][m]) for ds in OUT_OF_MAP if ds in raw)
        if n == 0:
            chosen[m] = fallback[m]
            info[m] = {'source': 'default', 'n_out_of_map': 0}
            continue
        inl = np.array(inl, int)
        T = MIN_THRESHOLD
        while np.sum(inl >= T) > MAX_OOM_RATE * n:
            T += 1
        chosen[m] = int(T)
        info[m] = {'source': 'out-of-map', 'n_out_of_map': n,
                   'max_out_of_map_inliers': int(inl.max()) if inl.size else 0,
                   'fixes_at_threshold': int(np.sum(inl >= T))}
    return chosen, info


def published(rec, method: str, thresholds: dict):
    T, inl, _ = rec
    if T is None or (method in thresholds and inl < thresholds[method]):
        return None
    return T


def table_rows(raw: dict, methods: list[str], thresholds: dict) -> dict:
    """{method: {dataset: row}}, row = KEYS + num_queries, num_published; None values = n/a."""
    results = {m: {} for m in methods}
    for ds, r in raw.items():
        oom = ds in OUT_OF_MAP
        for m in methods:
            recs = [x for x in r['est'][m] if x is not None]
            row = {k: None for k in KEYS}
            row['num_queries'], row['num_published'] = len(recs), 0
            if recs:
                Ts = [published(x, m, thresholds) for x in recs]
                ms = np.asarray([x[2] for x in recs], float)
                pub = np.array([T is not None for T in Ts])
                row['num_published'] = int(pub.sum())
                row['ms_p50'] = float(np.nanpercentile(ms, 50))
                if oom:
                    row['false_fix_rate'] = float(pub.mean())
                else:
                    gt = np.stack([g for g, x in zip(r['T_gt'], r['est'][m]) if x is not None])
                    d = summarize(*errors(Ts, gt), ms).as_dict()
                    row.update({k: d[k] for k in KEYS if k != 'ms_p50'})
            results[m][ds] = row
    pool = [ds for ds in OUT_OF_MAP if ds in raw]
    if pool:
        for m in methods:
            rows = [results[m][ds] for ds in pool]
            n = sum(r['num_queries'] for r in rows)
            p = sum(r['num_published'] for r in rows)
            ms = [x[2] for ds in pool for x in raw[ds]['est'][m] if x is not None]
            row = {k: None for k in KEYS}
            row.update(num_queries=n, num_published=p,
                       false_fix_rate=p / n if n else None,
                       ms_p50=float(np.nanpercentile(ms, 50)) if ms else None)
            results[m]['out_of_map'] = row
    return results


def clean(v):
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(v, dict):
        return {k: clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [clean(x) for x in v]
    if isinstance(v, (np.floating, float)):
        return float(v) if np.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def to_json(results: dict) -> str:
    return json.dumps(clean({m: {ds: {k: r[k] for k in KEYS} for ds, r in v.items()}
                             for m, v in results.items()}), allow_nan=False)


def fmt(v, spec: str) -> str:
    return 'n/a' if v is None or not np.isfinite(v) else format(v, spec)


def stage_table(timings: list[dict]) -> list[tuple[str, int, float, float]]:
    keys = []
    for t in timings:
        keys += [k for k in t if k not in keys and not k.startswith('_')]
    rows = []
    for k in sorted(keys, key=lambda k: (k == 'total', keys.index(k))):
        v = np.array([t[k] for t in timings if k in t], float)
        rows.append((k, len(v), float(np.percentile(v, 50)), float(np.percentile(v, 90))))
    return rows


def print_report(args, results, raw, thresholds, th_info, wall, meta: dict) -> None:
    print(f'# accuracy benchmark — {header(meta)}')
    loads = [x for r in raw.values() for x in r.get('load_avg_5min', ())]
    print(f'every {args.every}-th query (all of {", ".join(SMALL)})'
          f'{f", at most {args.limit} per dataset" if args.limit else ""}; wall {wall:.0f} s; '
          f'5-min load average during the run {min(loads, default=0):.1f}-'
          f'{max(loads, default=0):.1f} on {os.cpu_count()} CPUs (shared machine: latencies '
          f'scale with it)')
    print()
    if th_info:
        print('Fix thresholds (min inliers; smallest >= %d with pooled out-of-map fix rate '
              '<= %.0f%%):' % (MIN_THRESHOLD, 100 * MAX_OOM_RATE))
        print('| method | threshold | chosen from | out-of-map queries | max out-of-map inliers '
              '| out-of-map fixes at threshold |')
        print('|---|---|---|---|---|---|')
        for m, t in thresholds.items():
            i = th_info[m]
            print(f"| {m} | {t} | {i['source']} | {i['n_out_of_map']} | "
                  f"{i.get('max_out_of_map_inliers', 'n/a')} | {i.get('fixes_at_threshold', 'n/a')} |")
        print()
    datasets = list(raw) + (['out_of_map'] if any(d in raw for d in OUT_OF_MAP) else [])
    print('| method | dataset | n | published | R@25cm,2° | R@50cm,5° | R@5m,10° | median t (m) '
          '| median R (°) | false-fix rate | ms p50 |')
    print('|---|---|---|---|---|---|---|---|---|---|---|')
    for ds in datasets:
        for m in args.methods:
            r = results[m][ds]
            if r['num_queries'] == 0:
                print(f'| {m} | {ds} | 0 | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a |')
                continue
            print(f"| {m} | {ds} | {r['num_queries']} | {r['num_published']} | "
                  f"{fmt(r['recall_25cm_2deg'], '.3f')} | {fmt(r['recall_50cm_5deg'], '.3f')} | "
                  f"{fmt(r['recall_5m_10deg'], '.3f')} | {fmt(r['median_t_m'], '.3f')} | "
                  f"{fmt(r['median_r_deg'], '.2f')} | {fmt(r['false_fix_rate'], '.3f')} | "
                  f"{fmt(r['ms_p50'], '.0f')} |")
    if 'nre_ros' in args.methods:
        print()
        print('nre_ros NEES (expected 6 if consistent), over published in-map results:')
        print('| dataset | n | NEES mean | NEES median |')
        print('|---|---|---|---|')
        for ds, r in raw.items():
            v = r['nees']
            print(f"| {ds} | {len(v)} | {fmt(np.mean(v) if v else None, '.1f')} | "
                  f"{fmt(np.median(v) if v else None, '.1f')} |")
    print()
    print('Latency per stage (ms, in-map queries, 2 CPU threads, 640 px; paper: ~470 ms/query '
          'on a 1080Ti):')
    print('| mode | stage | n | p50 | p90 |')
    print('|---|---|---|---|---|')
    for mode in ('global', 'tracking', 'rgbd'):
        tim = [t for r in raw.values() for t in r['timings'][mode]]
        for stage, n, p50, p90 in stage_table(tim):
            print(f'| {mode} | {stage} | {n} | {p50:.0f} | {p90:.0f} |')
    print('The stages are disjoint and add up to total, the wall time of localize() (fine_features '
          'is the fine network pass, fine_maps the fine windows).')
    track = [(ds, x) for ds, r in raw.items() for x in r['track']]
    if track:
        print()
        print(f'Tracking mode (prior = ground truth + {PRIOR_NOISE[0] * 100:.0f} cm / '
              f'{PRIOR_NOISE[1]:.0f}° noise, seed 0):')
        print('| dataset | n | stayed in tracking | R@25cm,2° | R@50cm,5° | median t (m) | '
              'median R (°) | total ms p50 |')
        print('|---|---|---|---|---|---|---|---|')
        for ds, r in raw.items():
            if not r['track']:
                continue
            gt = np.stack([g for g in r['T_gt']])
            d = summarize(*errors([x[0] for x in r['track']], gt),
                          [t['total'] for t in r['timings']['tracking']]).as_dict()
            stay = sum(x[1] == 'tracking' for x in r['track'])
            print(f"| {ds} | {len(r['track'])} | {stay} | {fmt(d['recall_25cm_2deg'], '.3f')} | "
                  f"{fmt(d['recall_50cm_5deg'], '.3f')} | {fmt(d['median_t_m'], '.3f')} | "
                  f"{fmt(d['median_r_deg'], '.2f')} | {fmt(d['ms_p50'], '.0f')} |")
    print()
    print('Out-of-map sets: every published pose is a false fix (false-fix rate = published / '
          'queries). Elsewhere false-fix rate = published beyond (5 m, 10°) / published. '
          'nre_megadepth_pair errors are in SfM units (scene depth 3.6-19.9 units). '
          'Thresholded rows (RE, peers) on out-of-map sets are in-sample.')
    print()
    print('JSON: ' + to_json(results))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--every', type=int, default=1, help='use every n-th query')
    ap.add_argument('--limit', type=int, default=None, help='at most this many queries per set')
    ap.add_argument('--datasets', nargs='+', default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    ap.add_argument('--no-tracking', action='store_true', help='skip the tracking-mode runs')
    ap.add_argument('--model', default=DEFAULT_MODEL,
                    help='feature model of nre_ros (maps built with it; default: the default '
                         'model). Use another --cache per model')
    ap.add_argument('--cache', type=Path, default=ROOT / 'out' / 'accuracy_cache')
    ap.add_argument('--min-inliers', type=int, default=None,
                    help='fix threshold for RE/peer rows (default: chosen from out-of-map runs, '
                         'else DEFAULT_THRESHOLDS)')
    ap.add_argument('--precision', default='auto', choices=PRECISIONS,
                    help='precision of the query networks (maps are built by `nre-ros build-map` '
                         'with its default, auto)')
    ap.add_argument('--json', action='store_true', help='print only the JSON table')
    ap.add_argument('--raw', type=Path, default=None,
                    help='save each dataset\'s per-query records here (JSON) as it finishes')
    ap.add_argument('--report-only', action='store_true',
                    help='no localization: render the report from the --raw records')
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    apply_threads(PipelineConfig().num_threads)
    model = load_model(args.model, 'cpu')             # builds the maps (torch)
    # localizes: the product's default backend and precision, as Relocalizer.from_config
    loc_model = load_configured_model(args.model, PipelineConfig(precision=args.precision))
    ex = None
    if not args.report_only and any(m in PEERS for m in args.methods):
        ex = Extractors(with_lighterglue='xfeat_lighterglue_poselib' in args.methods)
    raw = {}
    t0 = time.perf_counter()
    load0 = os.getloadavg()[1]
    meta = run_metadata()           # at the start: the code that runs (others may commit meanwhile)
    meta['nre_ros_worktree'] = nre_ros_worktree()
    meta['query_networks'] = getattr(loc_model, 'backend', 'torch')
    for ds in args.datasets:
        saved = None if args.raw is None else args.raw / f'{ds}.json'
        if args.report_only:
            if saved is not None and saved.exists():
                raw[ds] = json.loads(saved.read_text(), object_hook=_from_json)
            continue
        map_path = get_map(DATASETS[ds][2], args.cache, model)
        raw[ds] = run_dataset(ds, queries(ds, args.every, args.limit), args.methods, map_path,
                              loc_model, args.cache, ex,
                              tracking='nre_ros' in args.methods and not args.no_tracking)
        raw[ds]['load_avg_5min'] = (load0, os.getloadavg()[1])
        raw[ds]['wall_s'] = time.perf_counter() - t0
        raw[ds]['every'], raw[ds]['limit'] = args.every, args.limit
        raw[ds]['meta'] = meta
        if saved is not None:
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(raw[ds], default=_to_json))
    wall = time.perf_counter() - t0
    if args.report_only:
        wall = max([r['wall_s'] for r in raw.values()], default=0.0)
        args.every = max([r.get('every', args.every) for r in raw.values()], default=args.every)
        args.limit = max([r.get('limit') or 0 for r in raw.values()], default=0) or None
        meta = next((r['meta'] for r in raw.values() if 'meta' in r), meta)
        args.methods = [m for m in args.methods if all(m in r['est'] for r in raw.values())]
    if args.min_inliers is not None:
        thresholds = {m: args.min_inliers for m in args.methods if m in THRESHOLDED}
        th_info = {m: {'source': '--min-inliers', 'n_out_of_map': 0} for m in thresholds}
    else:
        thresholds, th_info = choose_thresholds(raw, args.methods, DEFAULT_THRESHOLDS)
    for m, t in thresholds.items():
        log(f'fix threshold {m}: {t} ({th_info[m]})')
    results = table_rows(raw, args.methods, thresholds)
    if args.json:
        print(to_json(results))
        return
    print_report(args, results, raw, thresholds, th_info, wall, meta)


if __name__ == '__main__':
    main()
