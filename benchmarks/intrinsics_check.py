"""Intrinsics self-check speed on real queries: the numpy / torch reference path vs the compiled
(numba) path, same inputs, same run.

    PYTHONPATH=. python benchmarks/intrinsics_check.py [--repeats 5] [--json]

The shipped demo queries (``maps/demo``) are localized against the demo map with the right K
and with two wrong ones (focal x1.25, principal point +80 px), by one relocalizer per path
(``NRE_ROS_NUMBA=0`` for the reference: every stage on its torch path), query by query in
turn: the pipeline's ``intrinsics_check`` stage time of each, and the inputs of every
intrinsics check the compiled run made (the coarse gross-error guard and the fine check). Each
query's checks are then replayed with each path in turn (reference, compiled, reference, ...),
timing the stages of ``nre_ros.solver.intrinsics_check``: the peaked observations (argmins of
the most peaked maps), the joint fit and the block-jackknife refits. Printed: ms p50 per query
and stage for both paths, and the largest differences between their estimates (focal scale,
principal offset) and verdicts.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import nre_ros  # noqa: F401  (before torch: passive OpenMP waiting, as the product)
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, run_metadata  # noqa: E402

from nre_ros.camera import Camera  # noqa: E402
from nre_ros.datasets import TumSequence  # noqa: E402
from nre_ros.maps import load_map  # noqa: E402
from nre_ros.models import DEFAULT_MODEL  # noqa: E402
from nre_ros.paths import shared_file  # noqa: E402
from nre_ros.pipeline import PipelineConfig, Relocalizer, load_configured_model  # noqa: E402
from nre_ros.solver import intrinsics_check as ic  # noqa: E402
from nre_ros.threads import apply_threads  # noqa: E402

PATHS = {'reference': '0', 'compiled': '1'}      # NRE_ROS_NUMBA of each path
STAGES = ('coarse peaked observations', 'coarse fit', 'fine peaked observations', 'fine fit',
          'fine jackknife', 'total per query')


def _cameras(cam: Camera) -> dict[str, Camera]:
    """The right K and two wrong ones (as benchmarks/robustness.py's sweep)."""
    out = {'right K': cam}
    for name, scale, dcx in (('f x1.25', 1.25, 0.0), ('cx +80 px', 1.0, 80.0)):
        K = cam.K.copy()
        K[:2, :2] *= scale
        K[0, 2] += dcx
        out[name] = Camera(cam.width, cam.height, K, cam.dist)
    return out


def record_checks(relocs: dict[str, Relocalizer], seq: TumSequence
                  ) -> tuple[list[list[tuple]], dict[str, list[float]]]:
    """Localize every query with each path's relocalizer in turn: per query that reached the
    check, the (kind, args, kwargs) of each intrinsics check it ran (compiled path's run), and
    per path the pipeline's ``intrinsics_check`` stage (ms) of each query."""
    calls: list[tuple] = []
    check, check_gross = ic.check, ic.check_gross
    ic.check = lambda *a, **k: calls.append(('fine', a, k)) or check(*a, **k)
    ic.check_gross = lambda *a, **k: calls.append(('coarse', a, k)) or check_gross(*a, **k)
    queries, stage_ms = [], {p: [] for p in PATHS}
    try:
        for cam in _cameras(seq.camera).values():
            for frame in seq.frames:
                image = seq.load_rgb(frame)
                for path, flag in PATHS.items():
                    os.environ['NRE_ROS_NUMBA'] = flag
                    calls = []
                    out = relocs[path].localize(image, cam)
                    if 'intrinsics_check' in out.timings_ms:
                        stage_ms[path].append(out.timings_ms['intrinsics_check'])
                if calls:
                    queries.append(calls)
    finally:
        ic.check, ic.check_gross = check, check_gross
        os.environ.pop('NRE_ROS_NUMBA')
    return queries, stage_ms


def replay(kind: str, args: tuple, kwargs: dict) -> tuple[dict, str | None, object]:
    """One check as ``check`` / ``check_gross`` run it, stage by stage: (ms per stage, verdict,
    estimate)."""
    points, maps, K, T, cfg, stride = args[:6]
    fine = kind == 'fine'
    view_scale = kwargs.get('view_scale', args[6] if len(args) > 6 else 1.0)
    ms = {}
    t = time.perf_counter()
    X, uv = ic.peaked_observations(points, maps, cfg.max_points, cfg.peak_margin)
    ms[f'{kind} peaked observations'] = time.perf_counter() - t
    if len(X) < cfg.min_points:
        return ms, None, None
    K = K.cpu().numpy().astype(np.float64)
    T = np.asarray(T.cpu().numpy() if hasattr(T, 'cpu') else T, np.float64)
    scale = max(1.0, cfg.robust_scale_px / stride)
    t = time.perf_counter()
    T_fit, theta, cov = ic._fit(X, uv, K, T, np.zeros(3 if fine else 1), scale, cfg.iterations)
    ms[f'{kind} fit'] = time.perf_counter() - t
    jack = np.full_like(cov, np.inf)
    if fine:
        t = time.perf_counter()
        jack = ic._jackknife_cov(X, uv, K, T_fit, theta, scale, cfg.jackknife_blocks,
                                 max(len(theta) + 6, len(X) // 2))
        ms['fine jackknife'] = time.perf_counter() - t
    pp = (float(theta[1]), float(theta[2])) if fine else (0.0, 0.0)
    est = ic.IntrinsicsEstimate(float(np.exp(theta[0])), pp, cov, jack, T_fit, len(X), fine)
    verdict = (ic.inconsistency(est, K, cfg, view_scale) if fine else
               ic.gross_inconsistency(est.focal_scale, cfg, view_scale))
    return ms, verdict, est


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--repeats', type=int, default=5, help='replays of each query per path')
    ap.add_argument('--json', action='store_true')
    args = ap.parse_args(argv)
    apply_threads(PipelineConfig().num_threads)
    map_ = load_map(shared_file('maps/demo/fr1_rpy.nremap'))
    model = load_configured_model(DEFAULT_MODEL, PipelineConfig())
    relocs = {p: Relocalizer(map_, model) for p in PATHS}    # each its own camera evidence
    relocs['compiled'].warmup()
    queries, stage_ms = record_checks(relocs, TumSequence(shared_file('maps/demo/queries')))
    times = {p: {s: [] for s in STAGES} for p in PATHS}
    results = {p: [] for p in PATHS}
    for calls in queries:
        per_path = {p: [] for p in PATHS}
        for _ in range(args.repeats):
            for path, flag in PATHS.items():
                os.environ['NRE_ROS_NUMBA'] = flag
                per_path[path].append([replay(*c) for c in calls])
        for path, runs in per_path.items():
            for stage in STAGES[:-1]:
                values = [r[0][stage] for run in runs for r in run if stage in r[0]]
                if values:
                    times[path][stage].append(1e3 * float(np.median(values)))
            totals = [sum(sum(r[0].values()) for r in run) for run in runs]
            times[path]['total per query'].append(1e3 * float(np.median(totals)))
            results[path].append([r[1:] for r in runs[0]])
    os.environ.pop('NRE_ROS_NUMBA')
    pipeline_p50 = {p: float(np.median(v)) for p, v in stage_ms.items()}
    d_focal = d_pp = 0.0
    same_verdicts = True
    for ref, new in zip(results['reference'], results['compiled']):
        for (v_ref, e_ref), (v_new, e_new) in zip(ref, new):
            same_verdicts &= v_ref == v_new
            if e_ref is not None:
                d_focal = max(d_focal, abs(e_new.focal_scale / e_ref.focal_scale - 1))
                d_pp = max(d_pp, float(np.abs(np.subtract(e_new.principal_offset,
                                                          e_ref.principal_offset)).max()))
    p50 = {p: {s: float(np.median(v)) for s, v in times[p].items() if v} for p in PATHS}
    if args.json:
        print(json.dumps({'ms_p50': p50, 'pipeline_stage_ms_p50': pipeline_p50,
                          'queries': len(queries), 'max_rel_focal_diff': d_focal,
                          'max_principal_offset_diff_px': d_pp, 'same_verdicts': same_verdicts}))
        return
    print(f'# benchmarks/intrinsics_check.py, demo map, {len(queries)} checked queries (8 demo '
          f'queries x right K, f x1.25, cx +80 px), {args.repeats} replays per path; '
          f'{header(run_metadata())}')
    print('| stage (ms p50 per query) | reference (numpy / torch) | compiled (numba) | speed-up |')
    print('|---|---|---|---|')
    for s in STAGES:
        if s in p50['reference']:
            r, c = p50['reference'][s], p50['compiled'][s]
            print(f'| {s} | {r:.2f} | {c:.2f} | {r / max(c, 1e-9):.1f}x |')
    r, c = pipeline_p50['reference'], pipeline_p50['compiled']
    print(f'| pipeline stage `intrinsics_check` (localize, {len(stage_ms["compiled"])} / '
          f'{len(stage_ms["reference"])} queries) | {r:.2f} | {c:.2f} | {r / max(c, 1e-9):.1f}x |')
    print(f'\nlargest difference compiled vs reference: focal scale {d_focal:.1e} (relative), '
          f'principal offset {d_pp:.1e} grid px; verdicts {"equal" if same_verdicts else "DIFFER"}')


if __name__ == '__main__':
    main()
