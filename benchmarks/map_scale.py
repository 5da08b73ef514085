"""Building-scale maps: load time, memory and global-query latency at 100 / 1,000 / 5,000 keyframes.

Large maps are made from a real one (default: the shipped demo map, 64 fr1_rpy keyframes) by
replicating its keyframes in disjoint places (copy r moved 100 m * r along x, rotated about z;
``nre_ros.maps.merge``); copies other than the first get perturbed global descriptors (cosine
~0.8 to the original) so that retrieval still has to search all keyframes and the true place
wins. Each size is loaded in a fresh process: ``load_map`` (sha256 check + validation) and
``Relocalizer`` construction, RSS before and after loading (VmRSS) and peak (VmHWM). Then one
process runs global ``localize`` on every size, round robin per demo query (so load
fluctuations hit all sizes alike): p50 of the total and of the total without the image-only
network stages (the map-dependent part), recall checked; and the retrieval step alone with numpy
and FAISS (``IndexFlatIP``, exact; when importable) side by side. The first size is the
baseline of the ratio columns.

Usage: ``python benchmarks/map_scale.py [--sizes 100 1000 5000] [--queries 8]
[--work /tmp/nre_map_scale]`` (maps are cached in --work; ~1 GB for 5,000 keyframes).
"""
from __future__ import annotations

import argparse
import json
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
    t0 = time.perf_counter()
    m = load_map(map_path)
    t_load = time.perf_counter() - t0
    Relocalizer(m, model, config)
    t_reloc = time.perf_counter() - t0
    rss_loaded, hwm = _rss_mb()
    arr = m.obs_coarse
    mmapped = isinstance(arr, np.memmap) or isinstance(getattr(arr, 'base', None), np.memmap)
    return {'keyframes': m.num_keyframes, 'memory_mapped': bool(mmapped),
            'points': m.num_points, 'observations': m.num_observations,
            'size_mb': sum(p.stat().st_size for p in map_path.iterdir()) / 2**20,
            'load_s': t_load, 'load_and_relocalizer_s': t_reloc,
            'rss_before_mb': rss0, 'rss_loaded_mb': rss_loaded, 'rss_peak_mb': hwm}


def measure_queries(map_paths: list[Path], n_queries: int) -> list[dict]:
    """Global queries on every map, round robin per query (same load for all sizes), and the
    retrieval step alone (numpy / FAISS)."""
    from nre_ros.datasets import TumSequence
    from nre_ros.geometry import invert, pose_error
    from nre_ros.maps import RetrievalIndex, load_map
    from nre_ros.pipeline import PipelineConfig, Relocalizer, load_configured_model
    from nre_ros.threads import apply_threads
    config = PipelineConfig()
    apply_threads(config.num_threads)
    model = load_configured_model(load_map(DEMO_MAP).spec.name, config)
    relocs = [Relocalizer(load_map(p), model, config) for p in map_paths]
    relocs[0].warmup()
    seq = TumSequence(DEMO_QUERIES)
    res = [{'total': [], 'map_part': [], 'hits': 0} for _ in relocs]
    for f in seq.frames[:n_queries]:
        rgb = seq.load_rgb(f)
        for r, reloc in zip(res, relocs):
            out = reloc.localize(rgb, seq.camera)
            tm = out.timings_ms
            r['total'].append(tm.get('total', np.nan))
            r['map_part'].append(tm.get('total', np.nan) -
                                 sum(tm.get(k, 0.0) for k in NETWORK_STAGES))
            if out.ok:
                dt, dr = pose_error(out.T_cam_world, invert(f.T_world_cam))
                r['hits'] += int(dt < 0.25 and dr < 2.0)
    out = []
    for r, reloc in zip(res, relocs):
        q = np.asarray(reloc.map.kf_global[:50])
        retrieval = {}
        for backend in ('numpy', 'faiss'):
            try:
                index = RetrievalIndex(reloc.map.global_descriptors, backend)
            except Exception:                   # noqa: BLE001 - faiss not installed
                retrieval[backend] = None
                continue
            times = []
            for i in range(300):
                t = time.perf_counter()
                index.query(q[i % len(q)], 5)
                times.append(1e3 * (time.perf_counter() - t))
            retrieval[backend] = float(np.median(times))
        out.append({'query_ms_p50': float(np.nanmedian(r['total'])),
                    'map_part_ms_p50': float(np.nanmedian(r['map_part'])),
                    'queries': len(r['total']), 'recall': r['hits'],
                    'retrieval_ms_p50': retrieval})
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--sizes', type=int, nargs='+', default=[100, 1000, 5000])
    p.add_argument('--queries', type=int, default=8)
    p.add_argument('--base', type=Path, default=DEMO_MAP)
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
    rows, paths = [], []
    for size in args.sizes:
        t0 = time.perf_counter()
        path = make_map(args.base, size, args.work / f'scale_{size}.nremap')
        print(f'map {size}: ready in {time.perf_counter() - t0:.0f} s', flush=True)
        res = subprocess.run([sys.executable, __file__, '--child', str(path)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        paths.append(str(path))
    res = subprocess.run([sys.executable, __file__, '--queries', str(args.queries),
                          '--queries-for', *paths], capture_output=True, text=True, check=True)
    for row, q in zip(rows, json.loads(res.stdout.strip().splitlines()[-1])):
        row.update(q)
    base, base_map = rows[0]['query_ms_p50'], rows[0]['map_part_ms_p50']
    print('map tensors on this commit are', 'memory-mapped' if rows[0]['memory_mapped'] else
          'copied into memory at load')
    print('\n| keyframes | points | obs | size MB | load s (map / +relocalizer) | RSS MB '
          'before / loaded / peak | global query p50 ms (x first) | without networks p50 ms '
          '(x first) | recall | retrieval p50 ms numpy / faiss |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for r in rows:
        ret = r['retrieval_ms_p50']
        faiss = 'n/a' if ret['faiss'] is None else f"{ret['faiss']:.3f}"
        print(f"| {r['keyframes']} | {r['points']} | {r['observations']} | {r['size_mb']:.0f} | "
              f"{r['load_s']:.2f} / {r['load_and_relocalizer_s']:.2f} | "
              f"{r['rss_before_mb']:.0f} / {r['rss_loaded_mb']:.0f} / {r['rss_peak_mb']:.0f} | "
              f"{r['query_ms_p50']:.0f} ({r['query_ms_p50'] / base:.2f}x) | "
              f"{r['map_part_ms_p50']:.0f} ({r['map_part_ms_p50'] / base_map:.2f}x) | "
              f"{r['recall']}/{r['queries']} | {ret['numpy']:.3f} / {faiss} |")


if __name__ == '__main__':
    main()
