"""Building-scale maps: load time, memory and global-query latency at 100 / 1,000 / 5,000 keyframes.

Large maps are made from a real one by replicating its keyframes in disjoint places (copy r
moved 100 m * r along x, rotated about z; ``nre_ros.maps.merge``); copies other than the first
get perturbed global descriptors (cosine ~0.8 to the original) so that retrieval still has to
search all keyframes and the true place wins. The real map (``--base``, default built here
once): the RGB-D builder on the fr1_rpy map split, every 3rd frame (64 keyframes, as the demo
map) with ``--max-points`` observations per keyframe (default 1200: ~400 points per keyframe,
so 5,000 keyframes hold over 2 M points; the shipped demo map has 600, ~250 points per
keyframe). Each size is loaded in a fresh process: ``load_map`` (sha256 check + validation)
and ``Relocalizer`` construction, wall and CPU time (the CPU time is what an idle machine
would take, about), RSS before and after loading (VmRSS) and peak (VmHWM). Then one process
runs global ``localize`` on every size with both retrieval backends (``retrieval.backend``
numpy and faiss, when faiss is importable), round robin per demo query (so load fluctuations
hit all alike): p50 of the total, of the total without the image-only network stages (the
map-dependent part) and of the pipeline's retrieval stage (global descriptor + top-k over all
keyframes + point set), recall checked; and the top-k search alone per backend. The first
size is the baseline of the ratio columns.

Usage: ``python benchmarks/map_scale.py [--sizes 100 1000 5000] [--queries 8]
[--max-points 1200 | --base MAP] [--work out/map_scale]`` (maps are cached in --work; ~1.4 GB
for 5,000 keyframes).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEMO_MAP = ROOT / 'maps' / 'demo' / 'fr1_rpy.nremap'
DEMO_QUERIES = ROOT / 'maps' / 'demo' / 'queries'
SPACING_M = 100.0
BACKENDS = ('numpy', 'faiss')


def make_base_map(max_points: int, out: Path) -> Path:
    """The real map that is replicated: fr1_rpy map split, every 3rd frame, RGB-D builder,
    ``max_points`` observations per keyframe (the demo map's recipe with more points)."""
    from nre_ros.maps import BuildOptions, build_rgbd_map, with_command
    from nre_ros.models import load_model
    from nre_ros.paths import shared_data_dir
    if (out / 'metadata.json').exists():
        return out
    opts = BuildOptions(split='map', keyframe_step=3, max_points_per_keyframe=max_points)
    m = build_rgbd_map(shared_data_dir() / 'tum_rgbd_fr1_rpy', load_model(load_map_spec_name()),
                       opts)
    m = with_command(m, f'benchmarks/map_scale.py: fr1_rpy map split, step 3, '
                        f'--max-points {max_points}')
    m.save(out)
    return out


def load_map_spec_name() -> str:
    """The demo map's model (the base map is built with the same one)."""
    from nre_ros.maps import load_map
    return load_map(DEMO_MAP).spec.name


def make_map(base_path: Path, size: int, out: Path, seed: int = 0) -> Path:
    """A map of ``size`` keyframes: copies of the base map in disjoint places."""
    from nre_ros.geometry import make_transform, so3_exp
    from nre_ros.maps import load_map, with_command
    from nre_ros.maps.merge import concat_maps, select_keyframes, transformed
    if (out / 'metadata.json').exists():
        return out
    base = load_map(base_path)
    rng = np.random.default_rng(seed)
    copies = []
    for r in range(-(-size // base.num_keyframes)):
        m = base
        if r:
            T = make_transform(so3_exp(np.array([0.0, 0.0, 0.7 * r])), [SPACING_M * r, 0, 0])
            g = np.asarray(base.kf_global) + 0.045 * rng.normal(size=base.kf_global.shape)
            g /= np.linalg.norm(g, axis=1, keepdims=True)
            m = replace(transformed(base, T), kf_global=g.astype(np.float32))
        copies.append(m)
    big = select_keyframes(concat_maps(copies), np.arange(size))
    big = with_command(big, f'benchmarks/map_scale.py: {base_path} x {len(copies)}, '
                            f'first {size} keyframes')
    big.save(out)
    return out


def _rss_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MB."""
    vals = {}
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith(('VmRSS', 'VmHWM')):
            k, v = line.split(':')
            vals[k] = int(v.split()[0]) / 1024
    return vals['VmRSS'], vals['VmHWM']


NETWORK_STAGES = ('features', 'fine_features')     # image-only stages (no map dependence)


def measure_load(map_path: Path) -> dict:
    """Load time and memory of one map, in this (fresh) process."""
    from nre_ros.maps import load_map
    from nre_ros.pipeline import PipelineConfig, Relocalizer, load_configured_model
    from nre_ros.threads import apply_threads
    config = PipelineConfig()
    apply_threads(config.num_threads)
    model = load_configured_model(load_map(DEMO_MAP).spec.name, config)
    model.extract(np.zeros((480, 640, 3), np.uint8))                 # warm
    rss0, _ = _rss_mb()
    c0, t0 = os.times(), time.perf_counter()
    m = load_map(map_path)
    t_load, c1 = time.perf_counter() - t0, os.times()
    Relocalizer(m, model, config)
    t_reloc = time.perf_counter() - t0
    rss_loaded, hwm = _rss_mb()
    arr = m.obs_coarse
    mmapped = isinstance(arr, np.memmap) or isinstance(getattr(arr, 'base', None), np.memmap)
    return {'keyframes': m.num_keyframes, 'memory_mapped': bool(mmapped),
            'points': m.num_points, 'observations': m.num_observations,
            'size_mb': sum(p.stat().st_size for p in map_path.iterdir()) / 2**20,
            'load_s': t_load, 'load_and_relocalizer_s': t_reloc,
            'load_cpu_s': (c1.user + c1.system) - (c0.user + c0.system),
            'rss_before_mb': rss0, 'rss_loaded_mb': rss_loaded, 'rss_peak_mb': hwm}


def _faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def measure_queries(map_paths: list[Path], n_queries: int) -> list[dict]:
    """Global queries on every map with each retrieval backend, round robin per query (same
    load for all), and the top-k search alone per backend."""
    from dataclasses import replace as dc_replace

    from nre_ros.datasets import TumSequence
    from nre_ros.geometry import invert, pose_error
    from nre_ros.maps import RetrievalIndex, load_map
    from nre_ros.pipeline import PipelineConfig, Relocalizer, load_configured_model
    from nre_ros.threads import apply_threads
    config = PipelineConfig()
    apply_threads(config.num_threads)
    model = load_configured_model(load_map(DEMO_MAP).spec.name, config)
    backends = [b for b in BACKENDS if b == 'numpy' or _faiss_available()]
    maps = [load_map(p) for p in map_paths]
    relocs = {(i, b): Relocalizer(m, model, dc_replace(
        config, retrieval=dc_replace(config.retrieval, backend=b)))
        for i, m in enumerate(maps) for b in backends}
    assert all(r.index.backend == b for (_, b), r in relocs.items())
    next(iter(relocs.values())).warmup()
    seq = TumSequence(DEMO_QUERIES)
    res = {key: {'total': [], 'map_part': [], 'retrieval': [], 'hits': 0} for key in relocs}
    for f in seq.frames[:n_queries]:
        rgb = seq.load_rgb(f)
        for key, reloc in relocs.items():
            out = reloc.localize(rgb, seq.camera)
            tm, r = out.timings_ms, res[key]
            r['total'].append(tm.get('total', np.nan))
            r['map_part'].append(tm.get('total', np.nan) -
                                 sum(tm.get(k, 0.0) for k in NETWORK_STAGES))
            r['retrieval'].append(tm.get('retrieval', np.nan))
            if out.ok:
                dt, dr = pose_error(out.T_cam_world, invert(f.T_world_cam))
                r['hits'] += int(dt < 0.25 and dr < 2.0)
    out = []
    for i, m in enumerate(maps):
        q = np.asarray(m.kf_global[:50])
        row = {}
        indexes = {b: RetrievalIndex(m.global_descriptors, b) for b in backends}
        times = {b: [] for b in backends}
        for j in range(300):                     # backends alternate: same load for both
            for b, index in indexes.items():
                t = time.perf_counter()
                index.query(q[j % len(q)], 5)
                times[b].append(1e3 * (time.perf_counter() - t))
        for b in BACKENDS:
            if (i, b) not in relocs:
                row[b] = None
                continue
            r = res[(i, b)]
            row[b] = {'query_ms_p50': float(np.nanmedian(r['total'])),
                      'map_part_ms_p50': float(np.nanmedian(r['map_part'])),
                      'retrieval_stage_ms_p50': float(np.nanmedian(r['retrieval'])),
                      'topk_ms_p50': float(np.median(times[b])),
                      'queries': len(r['total']), 'recall': r['hits']}
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--sizes', type=int, nargs='+', default=[100, 1000, 5000])
    p.add_argument('--queries', type=int, default=8)
    p.add_argument('--max-points', type=int, default=1200,
                   help='observations per keyframe of the base map built from fr1_rpy')
    p.add_argument('--base', type=Path, default=None,
                   help='replicate this map instead (e.g. maps/demo/fr1_rpy.nremap)')
    p.add_argument('--work', type=Path, default=ROOT / 'out' / 'map_scale')
    p.add_argument('--child', type=Path, help=argparse.SUPPRESS)
    p.add_argument('--queries-for', type=Path, nargs='+', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure_load(args.child)))
        return
    if args.queries_for:
        print(json.dumps(measure_queries(args.queries_for, args.queries)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import header, run_metadata
    print(header(run_metadata()))
    args.work.mkdir(parents=True, exist_ok=True)
    if args.base is None:
        t0 = time.perf_counter()
        args.base = make_base_map(args.max_points, args.work / f'base_{args.max_points}.nremap')
        print(f'base map {args.base}: ready in {time.perf_counter() - t0:.0f} s', flush=True)
    tag = args.base.name.replace('.nremap', '')
    rows, paths = [], []
    for size in args.sizes:
        t0 = time.perf_counter()
        path = make_map(args.base, size, args.work / f'scale_{tag}_{size}.nremap')
        print(f'map {size}: ready in {time.perf_counter() - t0:.0f} s', flush=True)
        res = subprocess.run([sys.executable, __file__, '--child', str(path)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        paths.append(str(path))
    res = subprocess.run([sys.executable, __file__, '--queries', str(args.queries),
                          '--queries-for', *paths], capture_output=True, text=True, check=True)
    for row, q in zip(rows, json.loads(res.stdout.strip().splitlines()[-1])):
        row.update(q)
    print(f'base map {args.base}; map tensors on this commit are',
          'memory-mapped' if rows[0]['memory_mapped'] else 'copied into memory at load')
    print('\n| keyframes | points | obs | size MB | load s wall / CPU (+relocalizer) | RSS MB '
          'before / loaded / peak |')
    print('|---|---|---|---|---|---|')
    for r in rows:
        print(f"| {r['keyframes']} | {r['points']:,} | {r['observations']:,} | "
              f"{r['size_mb']:.0f} | {r['load_s']:.2f} / {r['load_cpu_s']:.2f} "
              f"({r['load_and_relocalizer_s']:.2f}) | "
              f"{r['rss_before_mb']:.0f} / {r['rss_loaded_mb']:.0f} / {r['rss_peak_mb']:.0f} |")
    base = rows[0]['numpy']
    print('\n| keyframes | retrieval | global query p50 ms (x first numpy) | without networks '
          'p50 ms (x first numpy) | retrieval stage p50 ms | top-k alone p50 ms | recall |')
    print('|---|---|---|---|---|---|---|')
    for r in rows:
        for b in BACKENDS:
            q = r[b]
            if q is None:
                print(f"| {r['keyframes']} | {b} | n/a (not installed) | | | | |")
                continue
            print(f"| {r['keyframes']} | {b} | {q['query_ms_p50']:.0f} "
                  f"({q['query_ms_p50'] / base['query_ms_p50']:.2f}x) | "
                  f"{q['map_part_ms_p50']:.0f} "
                  f"({q['map_part_ms_p50'] / base['map_part_ms_p50']:.2f}x) | "
                  f"{q['retrieval_stage_ms_p50']:.2f} | {q['topk_ms_p50']:.3f} | "
                  f"{q['recall']}/{q['queries']} |")


if __name__ == '__main__':
    main()
