"""RGB-D map building speed, before and after, in the same run, with the maps compared.

    python benchmarks/map_build.py [--sequence DIR] [--split map] [--max-keyframes N] [--json]

Builds the map of ``--split`` (default: fr3 cabinet's map split, every frame, every other
build option at its default, as ``nre-ros build-map SEQ OUT --builder rgbd --split map``) twice:

- ``torch``: the feature model run by torch (what ``build-map`` used before);
- ``product``: the relocalizer's own backend and threads (``build_map.feature_model``: ONNX
  Runtime on CPU), what ``build-map`` runs now.

Prints seconds per keyframe of each (whole build: image decoding, networks, fusion), then how
equal the maps are (keyframes, points, observations; keypoints at the same pixels; largest
descriptor and point differences of those) and the recall at (0.25 m, 2 deg) of the
sequence's ``query`` split against each map with the default pipeline. Timings depend on the
machine's load: the load average is printed with them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nre_ros  # noqa: E402,F401  (before torch: passive OpenMP waiting)
from nre_ros.paths import shared_data_dir  # noqa: E402


def build(seq_dir: Path, model, opts) -> tuple[object, float]:
    from nre_ros.maps import build_rgbd_map
    t0 = time.perf_counter()
    m = build_rgbd_map(seq_dir, model, opts, progress=True)
    return m, time.perf_counter() - t0


def compare(a, b) -> dict:
    """How equal map ``b`` is to map ``a`` (same keyframes expected)."""
    out = {'keyframes': (a.num_keyframes, b.num_keyframes), 'points': (a.num_points, b.num_points),
           'observations': (a.num_observations, b.num_observations)}
    same_kp, total = 0, 0
    d_coarse, d_fine, d_point = [], [], []
    pa, pb = np.asarray(a.points_world), np.asarray(b.points_world)
    for k in range(min(a.num_keyframes, b.num_keyframes)):
        sa = slice(a.kf_offsets[k], a.kf_offsets[k + 1])
        sb = slice(b.kf_offsets[k], b.kf_offsets[k + 1])
        ua = {tuple(uv): i for i, uv in enumerate(np.asarray(a.obs_uv[sa]).round(3).tolist())}
        ub = np.asarray(b.obs_uv[sb]).round(3).tolist()
        pairs = [(ua[tuple(uv)], j) for j, uv in enumerate(ub) if tuple(uv) in ua]
        total += len(ua)
        same_kp += len(pairs)
        if not pairs:
            continue
        ia = np.array([p[0] for p in pairs]) + a.kf_offsets[k]
        ib = np.array([p[1] for p in pairs]) + b.kf_offsets[k]
        d_coarse.append(np.abs(np.asarray(a.obs_coarse[ia], np.float32)
                               - np.asarray(b.obs_coarse[ib], np.float32)).max(1))
        if a.obs_fine is not None and b.obs_fine is not None:
            d_fine.append(np.abs(np.asarray(a.obs_fine[ia], np.float32)
                                 - np.asarray(b.obs_fine[ib], np.float32)).max(1))
        d_point.append(np.linalg.norm(pa[a.obs_point[ia]] - pb[b.obs_point[ib]], axis=1))
    cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0))
    dc, df, dp = cat(d_coarse), cat(d_fine), cat(d_point)
    out.update(same_keypoints=same_kp / max(total, 1),
               coarse_max_abs=float(dc.max()) if dc.size else None,
               coarse_p99_abs=float(np.percentile(dc, 99)) if dc.size else None,
               fine_max_abs=float(df.max()) if df.size else None,
               fine_p99_abs=float(np.percentile(df, 99)) if df.size else None,
               point_same_within_1mm=float(np.mean(dp < 1e-3)) if dp.size else None)
    return out


def recall(map_, seq_dir: Path, model) -> tuple[int, int]:
    """Queries of the ``query`` split localized within (0.25 m, 2 deg), and their number."""
    from nre_ros.datasets import TumSequence
    from nre_ros.geometry import pose_error
    from nre_ros.pipeline import PipelineConfig, Relocalizer
    seq = TumSequence(seq_dir)
    reloc = Relocalizer(map_, model, PipelineConfig())
    ok, frames = 0, seq.split('query')
    for f in frames:
        o = reloc.localize(seq.load_rgb(f), seq.camera)
        if o.ok:
            t, r = pose_error(o.T_cam_world, np.linalg.inv(f.T_world_cam))
            ok += int(t <= 0.25 and r <= 2.0)
    return ok, len(frames)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--sequence', type=Path,
                    default=shared_data_dir() / 'tum_rgbd_fr3_cabinet_keyframes')
    ap.add_argument('--split', default='map')
    ap.add_argument('--max-keyframes', type=int, default=None, help='short runs')
    ap.add_argument('--no-recall', action='store_true')
    ap.add_argument('--json', action='store_true')
    args = ap.parse_args(argv)
    from nre_ros.commands.build_map import feature_model
    from nre_ros.maps import BuildOptions
    from nre_ros.models import DEFAULT_MODEL, load_model
    opts = BuildOptions(split=args.split, max_keyframes=args.max_keyframes)
    product = feature_model(None, 'cpu')          # sets the threads as build-map does
    builders = {'torch': load_model(DEFAULT_MODEL, 'cpu'), 'product': product}
    rows, maps = {}, {}
    for name, model in builders.items():
        model.extract(np.zeros((480, 640, 3), np.uint8))       # warm (and ONNX export)
        load0 = os.getloadavg()[0]
        maps[name], secs = build(args.sequence, model, opts)
        rows[name] = {'backend': getattr(getattr(model, 'model', model), 'backend', 'torch'),
                      's_per_keyframe': secs / maps[name].num_keyframes,
                      'keyframes': maps[name].num_keyframes,
                      'load_avg_1min': (load0, os.getloadavg()[0])}
    result = {'rows': rows, 'equal': compare(maps['torch'], maps['product'])}
    if not args.no_recall:
        queries = getattr(product, 'model', product)      # the map's model (WithTrackingLevel)
        result['recall_25cm_2deg'] = {n: recall(m, args.sequence, queries)
                                      for n, m in maps.items()}
    if args.json:
        print(json.dumps(result))
        return
    print(f'{args.sequence.name} split {args.split}, {DEFAULT_MODEL}, threads '
          f'{__import__("torch").get_num_threads()}')
    print('| builder | networks | s / keyframe | keyframes | load avg (1 min) before, after |')
    print('|---|---|---|---|---|')
    for name, r in rows.items():
        print(f'| {name} | {r["backend"]} | {r["s_per_keyframe"]:.2f} | {r["keyframes"]} | '
              f'{r["load_avg_1min"][0]:.1f}, {r["load_avg_1min"][1]:.1f} |')
    print(f'speed-up: {rows["torch"]["s_per_keyframe"] / rows["product"]["s_per_keyframe"]:.1f}x')
    print('maps (torch vs product): ' + ', '.join(f'{k} {v}' for k, v in result['equal'].items()))
    if 'recall_25cm_2deg' in result:
        print('recall (0.25 m, 2 deg) of the query split: ' + ', '.join(
            f'{n} map {ok}/{n_q}' for n, (ok, n_q) in result['recall_25cm_2deg'].items()))


if __name__ == '__main__':
    main()
