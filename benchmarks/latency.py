"""Latency per mode, quiet and with one competing CPU-bound process, beside the peers.

    python benchmarks/latency.py [--queries N] [--methods ...] [--cache DIR] [--json]

One run on the fr1_rpy hard queries (every 2nd: 48) against the ``hard_map`` split:

- ``nre_ros``: the default pipeline (``PipelineConfig()``, the map built by ``nre-ros build-map
  SEQ OUT --builder rgbd --split hard_map`` with every other option at its default), in three
  modes: ``global`` (no prior), ``tracking`` (prior = ground truth moved 5 cm / 2 deg, seeded
  per query; fine level on, as by default) and ``rgbd`` (the query's depth image given);
- ``nre_ros_before``: the pipeline as it was before issue 17: the ``xfeat-ms`` model in fp32
  (``precision: fp32``, so ONNX Runtime on CPU; the map built with ``--model xfeat-ms``, the
  same map while ``xfeat-ms`` is the default model), tracking on the x4 fine level (its map's
  tracking level unused, as ``tracking.fine_level: model``);
- ``nre_ros_lite`` / ``nre_ros_s3`` / ``nre_ros_head``: the same with the ``xfeat-ms-lite`` /
  ``xfeat-ms-s3`` / ``xfeat-ms-head`` model (fine level on the x2 / x8/3 image / a trained head
  on the coarse pass: the cheaper candidates; map built with ``--model``);
- ``xfeat_mnn`` (XFeat + mutual NN + PoseLib) and ``sift_magsac`` (SIFT + ratio test + OpenCV
  MAGSAC) from ``accuracy_peers.py``, global only, fix thresholds ``accuracy.DEFAULT_THRESHOLDS``.

Each query runs every method and mode twice: quiet, and while one competing CPU-bound process
(``python -c "while True: pass"``) that this script starts runs; the competitor is paused
(SIGSTOP) between loaded measurements and killed at the end; the order quiet / loaded
alternates per query. Latency = the pipeline's ``total`` (or the peer's own time), p50 / p90 in
ms; recall at (0.25 m, 2 deg) of the quiet run. The load average of the machine before and
after is printed: other processes on the machine make both columns slower.

Maps and the peers' keyframe features are cached in ``--cache`` (default
``~/.cache/nre_ros/benchmarks``, ``$XDG_CACHE_HOME`` honoured); a map built by another command
line (e.g. other defaults) is rebuilt. Data: ``$NRE_SHARED_DATA`` (``nre_ros.paths``).

``--json`` prints one object ``{method: {mode: {quiet_p50_ms, loaded_p50_ms, recall}}}``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import nre_ros  # noqa: E402,F401  (before torch: passive OpenMP waiting)
from accuracy import (DEFAULT_THRESHOLDS, build_map_argv, get_peer_db,  # noqa: E402
                      missing_tracking_level, perturb, queries)
from common import header, run_metadata  # noqa: E402
from nre_ros.geometry import pose_error  # noqa: E402
from nre_ros.results import Prior  # noqa: E402

DATASET = 'fr1_hard'            # accuracy.py's fr1_rpy hard_query against the hard_map split
EVERY = 2
BEFORE_MODEL = 'xfeat-ms'
BEFORE_PRECISION = 'fp32'
CANDIDATE_MODELS = {'nre_ros_lite': 'xfeat-ms-lite', 'nre_ros_s3': 'xfeat-ms-s3',
                    'nre_ros_head': 'xfeat-ms-head'}
PEER_NAMES = {'xfeat_mnn': 'xfeat_mnn_poselib', 'sift_magsac': 'sift_magsac'}
METHODS = ('nre_ros', 'nre_ros_before') + tuple(CANDIDATE_MODELS) + tuple(PEER_NAMES)
NRE_MODES = ('global', 'tracking', 'rgbd')
CONDITIONS = ('quiet', 'loaded')
RECALL_AT = (0.25, 2.0)
COMPETITOR = 'while True: pass'


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def default_cache() -> Path:
    from nre_ros.backends import default_cache_dir
    return default_cache_dir() / 'benchmarks'


def get_map(cache: Path, model: str | None) -> Path:
    """The hard_map split built by ``nre-ros build-map`` (defaults; ``--model`` if given),
    cached; rebuilt when the cached map came from another command line."""
    from nre_ros.cli import build_parser
    from nre_ros.cli import main as nre_ros_cli
    from nre_ros.commands.build_map import command_line
    from nre_ros.errors import MapFormatError
    from nre_ros.maps import load_map
    path = cache / (f'{DATASET}.nremap' if model is None else f'{DATASET}-{model}.nremap')
    argv = build_map_argv(DATASET, path, model)
    expected = command_line(build_parser().parse_args(argv))
    if path.exists():
        try:
            m = load_map(path)
            if m.metadata.provenance.get('command') == expected \
                    and not missing_tracking_level(m):
                return path
        except MapFormatError as exc:
            log(f'{path}: {exc}')
        log(f'{path} is stale: rebuilding')
    cache.mkdir(parents=True, exist_ok=True)
    log('nre-ros ' + ' '.join(argv + ['--force']))
    with contextlib.redirect_stdout(sys.stderr):        # stdout is the table / JSON
        if nre_ros_cli(argv + ['--force']) != 0:
            raise RuntimeError('build-map failed')
    return path


class Competitor:
    """One CPU-bound process, paused unless ``on``; killed on exit."""

    def __enter__(self) -> 'Competitor':
        self.proc = subprocess.Popen([sys.executable, '-c', COMPETITOR])
        self.on = True
        self.set(False)
        return self

    def set(self, on: bool) -> None:
        if on != self.on:
            os.kill(self.proc.pid, signal.SIGCONT if on else signal.SIGSTOP)
            self.on = on
            if on:
                time.sleep(0.05)           # let the scheduler give it its share

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait()


def within(T, T_gt) -> bool:
    if T is None:
        return False
    t, r = pose_error(T, T_gt)
    return bool(t <= RECALL_AT[0] and r <= RECALL_AT[1])


class NreMethod:
    """The pipeline on one map: (ms, T | None, mode reached) per mode."""

    def __init__(self, map_path: Path, precision: str = 'auto',
                 tracking_level: bool = True) -> None:
        from nre_ros.maps import load_map
        from nre_ros.pipeline import PipelineConfig, Relocalizer, load_configured_model
        map_ = load_map(map_path)
        config = PipelineConfig(precision=precision)
        self.reloc = Relocalizer(map_, load_configured_model(map_.spec.name, config), config,
                                 tracking_model='auto' if tracking_level else None)
        self.reloc.warmup()

    def run(self, q, i: int) -> dict:
        image, out = q.image(), {}
        for mode in NRE_MODES:
            kwargs = {}
            if mode == 'tracking':
                kwargs['prior'] = Prior(perturb(q.T_gt, np.random.default_rng(i)))
            elif mode == 'rgbd':
                kwargs['depth'] = q.depth()
            o = self.reloc.localize(image, q.camera, **kwargs)
            out[mode] = (o.timings_ms.get('total', np.nan), o.T_cam_world if o.ok else None,
                         o.info.get('mode', '?'))
        return out


class PeerMethods:
    """XFeat MNN + PoseLib and SIFT + MAGSAC (accuracy_peers.Peers), global only."""

    def __init__(self, nre: NreMethod, cache: Path, names: list[str]) -> None:
        from accuracy_peers import Extractors, Peers
        ex = Extractors(with_lighterglue=False)
        db = get_peer_db(DATASET, nre.reloc.map, cache, ex)
        self.names = names
        self.peers = Peers(nre.reloc, db, ex, [PEER_NAMES[n] for n in names])

    def run(self, q, i: int) -> dict:
        res = self.peers.localize(q.image(), q.camera)
        out = {}
        for n in self.names:
            T, inliers, ms = res[PEER_NAMES[n]]
            if T is not None and inliers < DEFAULT_THRESHOLDS[PEER_NAMES[n]]:
                T = None
            out[n] = {'global': (ms, T, 'global')}
        return out


def summarize(records: dict, qs) -> dict:
    """{method: {mode: stats}} from {condition: {method: {mode: [(ms, T, reached)]}}}."""
    out: dict = {}
    for method, modes in records['quiet'].items():
        out[method] = {}
        for mode, recs in modes.items():
            row = {}
            for cond in CONDITIONS:
                r = records[cond][method][mode]
                ms = np.array([x[0] for x in r], float)
                row[f'{cond}_p50_ms'] = float(np.nanpercentile(ms, 50))
                row[f'{cond}_p90_ms'] = float(np.nanpercentile(ms, 90))
                row[f'{cond}_recall'] = float(np.mean([within(x[1], q.T_gt)
                                                       for x, q in zip(r, qs)]))
            row['recall'] = row['quiet_recall']
            row['ratio'] = row['loaded_p50_ms'] / row['quiet_p50_ms']
            if mode == 'tracking':
                row['tracked'] = float(np.mean([x[2] == 'tracking' for x in recs]))
            out[method][mode] = row
    return out


def run(args) -> tuple[dict, dict]:
    from nre_ros.models import DEFAULT_MODEL
    from nre_ros.pipeline import PipelineConfig
    from nre_ros.threads import apply_threads
    threads = apply_threads(PipelineConfig().num_threads)
    qs = queries(DATASET, EVERY, args.queries)
    runners = {}
    if 'nre_ros' in args.methods:
        runners['nre_ros'] = NreMethod(get_map(args.cache, None))
    if 'nre_ros_before' in args.methods:
        runners['nre_ros_before'] = NreMethod(
            get_map(args.cache, None if DEFAULT_MODEL == BEFORE_MODEL else BEFORE_MODEL),
            BEFORE_PRECISION, tracking_level=False)
    for method, model in CANDIDATE_MODELS.items():
        if method in args.methods and DEFAULT_MODEL != model:
            runners[method] = NreMethod(get_map(args.cache, model))
    peers = [m for m in args.methods if m in PEER_NAMES]
    if peers:
        nre = runners.get('nre_ros') or next(iter(runners.values()), None) \
            or NreMethod(get_map(args.cache, None))
        runners['peers'] = PeerMethods(nre, args.cache, peers)
    records = {c: {} for c in CONDITIONS}
    meta = run_metadata()
    meta.update(threads=threads, queries=len(qs), load_avg_1_5_min_before=os.getloadavg()[:2],
                networks={k: getattr(r.reloc.model, 'backend', 'torch')
                          for k, r in runners.items() if isinstance(r, NreMethod)})
    t0 = time.perf_counter()
    with Competitor() as competitor:
        for i, q in enumerate(qs):
            order = CONDITIONS if i % 2 == 0 else CONDITIONS[::-1]
            for cond in order:
                competitor.set(cond == 'loaded')
                for runner in runners.values():
                    res = runner.run(q, i)
                    for method, modes in (res.items() if isinstance(runner, PeerMethods)
                                          else [(_name(runners, runner), res)]):
                        for mode, rec in modes.items():
                            records[cond].setdefault(method, {}).setdefault(mode, []).append(rec)
            competitor.set(False)
            log(f'{i + 1}/{len(qs)} {q.name} ' + ' '.join(
                f'{m}/{mode}={"fix" if recs[-1][1] is not None else "-"}:{recs[-1][0]:.0f}ms'
                for m, modes in records['quiet'].items() for mode, recs in modes.items()))
    meta.update(load_avg_1_5_min_after=os.getloadavg()[:2], wall_s=round(time.perf_counter() - t0))
    table = summarize(records, qs)
    for method, model in CANDIDATE_MODELS.items():
        if method in args.methods and method not in table and 'nre_ros' in table:
            table[method] = table['nre_ros']
            meta[method] = f'= nre_ros ({model} is the default model)'
    table = {m: table[m] for m in args.methods if m in table}
    return table, meta


def _name(runners: dict, runner) -> str:
    return next(k for k, v in runners.items() if v is runner)


def print_table(table: dict, meta: dict) -> None:
    print(header(meta))
    print(f'fr1_rpy hard, {meta["queries"]} queries (every 2nd), 640x480; quiet vs one competing '
          f'`python -c "{COMPETITOR}"`; recall at ({RECALL_AT[0]} m, {RECALL_AT[1]:g} deg)')
    print('| method | mode | quiet p50 / p90 ms | loaded p50 / p90 ms | loaded / quiet | recall |')
    print('|---|---|---|---|---|---|')
    for method, modes in table.items():
        for mode, r in modes.items():
            rec = f'{r["recall"]:.3f}'
            if abs(r['loaded_recall'] - r['recall']) > 1e-9:
                rec += f' (loaded {r["loaded_recall"]:.3f})'
            if 'tracked' in r:
                rec += f', tracked {r["tracked"]:.0%}'
            print(f'| {method} | {mode} | {r["quiet_p50_ms"]:.0f} / {r["quiet_p90_ms"]:.0f} | '
                  f'{r["loaded_p50_ms"]:.0f} / {r["loaded_p90_ms"]:.0f} | {r["ratio"]:.2f}x | '
                  f'{rec} |')


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--queries', type=int, default=None,
                    help='only the first N of the 48 queries (short runs)')
    ap.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    ap.add_argument('--cache', type=Path, default=None,
                    help='maps and peer features (default ~/.cache/nre_ros/benchmarks)')
    ap.add_argument('--json', action='store_true', help='print only the JSON object')
    args = ap.parse_args(argv)
    args.cache = args.cache or default_cache()
    logging.basicConfig(level=logging.WARNING)
    table, meta = run(args)
    if args.json:
        keys = ('quiet_p50_ms', 'loaded_p50_ms', 'recall')
        print(json.dumps({m: {mode: {k: round(r[k], 4) for k in keys} for mode, r in modes.items()}
                          for m, modes in table.items()}))
    else:
        print_table(table, meta)


if __name__ == '__main__':
    main()
