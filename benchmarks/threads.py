"""``num_threads`` and OpenMP waiting: demo latency quiet and beside one CPU-bound process.

    python benchmarks/threads.py [--threads 1 2 auto] [--repeats 2] [--json]

For each setting (``num_threads`` x torch's OpenMP wait policy) a fresh process loads the demo
map as ``nre-ros demo`` does (``Relocalizer.from_config``, default pipeline) and localizes the
8 demo queries ``--repeats`` times, each query quiet and while one competing ``python -c
"while True: pass"`` runs (started by the worker, paused with SIGSTOP when quiet, order
alternating per query). ``passive``: nre_ros's default (``OMP_WAIT_POLICY=PASSIVE`` set when
nre_ros is imported); ``default``: libgomp's own (torch imported before nre_ros, so workers
spin for a while after each parallel region). p50 of the pipeline's ``total`` per setting and
the loaded / quiet ratio. The machine's load average is printed: other processes make both
columns slower.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(threads: str, omp: str, repeats: int) -> dict:
    if omp == 'default':
        import torch  # noqa: F401  (libgomp initialised before nre_ros can ask for passive)
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import numpy as np

    from latency import Competitor
    from nre_ros.datasets import TumSequence
    from nre_ros.paths import shared_file
    from nre_ros.pipeline import PipelineConfig, Relocalizer
    from nre_ros.threads import resolve_threads
    value = threads if threads == 'auto' else int(threads)
    reloc = Relocalizer.from_config(shared_file('maps/demo/fr1_rpy.nremap'),
                                    PipelineConfig(num_threads=value))
    reloc.warmup()
    seq = TumSequence(shared_file('maps/demo/queries'))
    images = [seq.load_rgb(f) for f in seq.frames]
    ms = {'quiet': [], 'loaded': []}
    ok = 0
    with Competitor() as competitor:
        for r in range(repeats):
            for i, image in enumerate(images):
                order = ('quiet', 'loaded') if (i + r) % 2 == 0 else ('loaded', 'quiet')
                for cond in order:
                    competitor.set(cond == 'loaded')
                    o = reloc.localize(image, seq.camera)
                    ms[cond].append(o.timings_ms.get('total', float('nan')))
                    ok += int(o.ok)
                competitor.set(False)
    return {'threads': threads, 'resolved': resolve_threads(value), 'omp': omp,
            'quiet_p50_ms': float(np.median(ms['quiet'])),
            'loaded_p50_ms': float(np.median(ms['loaded'])),
            'localized': ok, 'runs': 2 * repeats * len(images)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--threads', nargs='+', default=['1', '2', 'auto'])
    ap.add_argument('--omp', nargs='+', default=['passive', 'default'],
                    choices=['passive', 'default'])
    ap.add_argument('--repeats', type=int, default=2)
    ap.add_argument('--json', action='store_true')
    ap.add_argument('--worker', nargs=2, metavar=('THREADS', 'OMP'), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker, args.repeats)))
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith(('OMP_', 'GOMP_'))}
    env['PYTHONPATH'] = os.pathsep.join([str(ROOT)] + [p for p in [env.get('PYTHONPATH')] if p])
    rows, load0, t0 = [], os.getloadavg()[:2], time.perf_counter()
    for threads in args.threads:
        for omp in args.omp:
            if threads == '1' and omp == 'default' and 'passive' in args.omp:
                continue                      # one thread: no OpenMP workers to wait
            out = subprocess.run([sys.executable, __file__, '--worker', threads, omp,
                                  '--repeats', str(args.repeats)], env=env, check=True,
                                 capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(f'done {rows[-1]}', file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(rows))
        return
    print(f'demo map, 8 queries x {args.repeats}, {os.cpu_count()} CPUs; load average (1, 5 '
          f'min) before {load0[0]:.1f}, {load0[1]:.1f}, after {os.getloadavg()[0]:.1f}, '
          f'{os.getloadavg()[1]:.1f}; {time.perf_counter() - t0:.0f} s')
    print('| num_threads | OpenMP wait | quiet p50 ms | loaded p50 ms | loaded / quiet | '
          'localized |')
    print('|---|---|---|---|---|---|')
    for r in rows:
        name = r['threads'] + (f' (= {r["resolved"]})' if r['threads'] == 'auto' else '')
        print(f'| {name} | {r["omp"]} | {r["quiet_p50_ms"]:.0f} | {r["loaded_p50_ms"]:.0f} | '
              f'{r["loaded_p50_ms"] / r["quiet_p50_ms"]:.2f}x | {r["localized"]}/{r["runs"]} |')


if __name__ == '__main__':
    main()
