"""Solver speed: loss maps, MSAC, coarse GNC, fine GNC vs OpenCV / PoseLib RE, same inputs.

Synthetic 640x480 query, coarse grid 80x60 (XFeat-like 64-d descriptors, tau = 20), fine grid
320x240 (stride 2, windows of 16 cells), 50% wrong maps, 1-cell noise. Loss maps are built from
random descriptors (timed: coarse maps + fine windows at the coarse solution); the solver stages
then run on maps built from the scene's ground truth (random descriptors carry no signal; those
are built outside the timed runs, once per pose). The descriptors have the memory layout the
default pipeline gives them on this machine (channels-last after bf16 networks). Usage: ``python benchmarks/solver.py [--json] [--repeats 20] [--threads 2]
[--clock wall|thread]``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import nre_ros  # noqa: F401  before torch: OpenMP workers sleep between regions, as in the product
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import header, run_metadata  # noqa: E402

from nre_ros.lossmaps import coarse_loss_maps, fine_loss_maps  # noqa: E402
from nre_ros.solver import (SolverConfig, msac, refine, refine_level, se3,  # noqa: E402
                            solve_coarse, verdict)
from nre_ros.solver.baselines import (argmax_correspondences, re_opencv_magsac,  # noqa: E402
                                      re_poselib)
from nre_ros.solver.synthetic import fine_builder, random_scene  # noqa: E402

PAPER_TAB3 = ('Paper Tab. 3 (1000 points, GTX 1080Ti + Xeon): correspondence maps 8 ms coarse + '
              '3 ms local fine; pose init 1.1 ms per hypothesis; refinement 150 ms coarse + 280 ms '
              'fine; maps memory 46 MB.')


CLOCK = {'wall': None, 'thread': time.thread_time}
_clock = None


def time_ms(fn, repeats: int = 20, warmup: int = 3):
    """common.time_ms, or the same on this thread's CPU time (``--clock thread``: with
    ``--threads 1`` it excludes the time other processes hold the cores)."""
    if _clock is None:
        return common.time_ms(fn, repeats, warmup)
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        t0 = _clock()
        out = fn()
        times.append((_clock() - t0) * 1e3)
    q1, med, q3 = np.percentile(times, [25, 50, 75])
    return float(med), float(q3 - q1), out


def product_layout() -> str:
    """The memory layout of the query descriptors with the default pipeline on this machine:
    channels-last where the networks run in bf16 (DenseFeatures), contiguous otherwise; the
    coarse maps' matmul runs in bf16 there too (``pipeline.coarse_matmul_dtype``)."""
    from nre_ros.pipeline import PipelineConfig, resolve_runtime
    backend, precision = resolve_runtime(PipelineConfig())
    return 'channels-last' if backend == 'torch' and precision == 'bf16' else 'contiguous'


LAYOUT = 'contiguous'


def coarse_maps(q: torch.Tensor, p: torch.Tensor):
    """The coarse loss maps as the default pipeline builds them on this machine."""
    dtype = torch.bfloat16 if LAYOUT == 'channels-last' else torch.float32
    return coarse_loss_maps(q, p, 20.0, matmul_dtype=dtype)


def bench(n: int, repeats: int) -> dict:
    scene = random_scene(n, 0.5, noise=1.0, seed=n)
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(64, 60, 80, generator=g), dim=0)
    p = torch.nn.functional.normalize(torch.randn(n, 64, generator=g), dim=1)
    qf = torch.nn.functional.normalize(torch.randn(64, 240, 320, generator=g), dim=0)
    if LAYOUT == 'channels-last':     # as the default bf16 networks give them
        q = q.permute(1, 2, 0).contiguous().permute(2, 0, 1)
        qf = qf.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    pf = torch.nn.functional.normalize(torch.randn(n, 64, generator=g), dim=1)
    cfg = SolverConfig()
    lm_ms, lm_iqr, cmaps = time_ms(lambda: coarse_maps(q, p), repeats)
    maps = scene.maps
    ms_ms, ms_iqr, m = time_ms(lambda: msac(scene.points_world, maps, scene.K, cfg.msac), repeats)
    T0 = m.T_cam_world
    c_ms, c_iqr, rc = time_ms(lambda: refine(scene.points_world, maps, scene.K, T0, cfg.coarse),
                              repeats)
    synthetic_fine = fine_builder(scene, ratio=4, window=16, noise=1.0)
    fl = synthetic_fine(rc.T_cam_world)
    truth: dict[bytes, object] = {}

    def fine_from_descriptors(T: torch.Tensor):
        """Windows of the random fine descriptors at T (timed work, then discarded), then the
        ground-truth fine maps the refinement runs on: built once per pose, outside the timed
        runs (the pipeline builds only the windows from descriptors)."""
        uv, index = se3.project_in_grid(scene.points_world, T, fl.K, (320, 240))
        fine_loss_maps(qf, pf[index], uv[index].float(), cmaps, 4, 20.0, 16,
                       coarse_index=index)
        key = T.numpy().tobytes()
        if key not in truth:
            truth[key] = synthetic_fine(T)
        return truth[key]

    fm_ms, fm_iqr, _ = time_ms(lambda: fine_from_descriptors(rc.T_cam_world), repeats)
    f_ms, f_iqr, _ = time_ms(lambda: refine(scene.points_world, fl.maps, fl.K, rc.T_cam_world,
                                            cfg.fine), repeats)
    def solve_all():
        """What the pipeline runs: coarse maps, solve_coarse, fine windows, fine GNC, verdict."""
        coarse_maps(q, p)
        sol = solve_coarse(scene.points_world, maps, scene.K, cfg)
        return verdict(refine_level(sol, fine_from_descriptors(sol.T_cam_world), cfg),
                       cfg.verdict)

    tot_ms, tot_iqr, res = time_ms(solve_all, repeats)
    uv = argmax_correspondences(maps, subcell=True)
    cv_ms, cv_iqr, _ = time_ms(lambda: re_opencv_magsac(scene.points_world, uv, scene.K),
                               max(3, repeats // 4), 1)
    pl_ms, pl_iqr, _ = time_ms(lambda: re_poselib(scene.points_world, uv, scene.K,
                                                  maps.grid_size), max(3, repeats // 4), 1)
    return {'n_points': n, 'lossmaps_ms': lm_ms + fm_ms, 'coarse_maps_ms': lm_ms,
            'fine_maps_ms': fm_ms, 'msac_ms': ms_ms,
            'hypotheses_per_s': m.num_hypotheses / (ms_ms / 1e3), 'coarse_ms': c_ms,
            'fine_ms': f_ms, 'total_ms': tot_ms, 'total_iqr_ms': tot_iqr,
            'maps_mb': (maps.nbytes + fl.maps.nbytes) / 2 ** 20,
            'opencv_magsac_ms': cv_ms, 'poselib_ms': pl_ms, 'ok': bool(res.ok)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--json', action='store_true')
    ap.add_argument('--repeats', type=int, default=20)
    ap.add_argument('--points', type=int, nargs='+', default=[250, 1000, 4000])
    ap.add_argument('--threads', type=int, default=None,
                    help='torch intra-op threads (default: torch default, 2 on this CPU)')
    ap.add_argument('--clock', choices=sorted(CLOCK), default='wall',
                    help="'thread': CPU time of this thread (use with --threads 1 on a shared "
                    'machine)')
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        import cv2
        cv2.setNumThreads(args.threads)  # the OpenCV RE baseline too
    if args.clock == 'thread' and torch.get_num_threads() != 1:
        ap.error('--clock thread needs --threads 1 (other threads are not counted)')
    global _clock, LAYOUT
    _clock = CLOCK[args.clock]
    LAYOUT = product_layout()
    rows = [bench(n, args.repeats) for n in args.points]
    if args.json:
        print(json.dumps(rows))
        return
    print(f'# solver benchmark — {header(run_metadata())} | clock: {args.clock} | '
          f'descriptors: {LAYOUT} (the default pipeline\'s here; coarse matmul in '
          f'{"bf16" if LAYOUT == "channels-last" else "float32"})')
    print('| N | loss maps ms (coarse + fine) | MSAC ms (hyp/s) | coarse GNC ms | fine GNC ms '
          '| total ms p50 (IQR) | maps MB | RE OpenCV MAGSAC ms | RE PoseLib ms |')
    print('|---|---|---|---|---|---|---|---|---|')
    for r in rows:
        print(f"| {r['n_points']} | {r['lossmaps_ms']:.1f} ({r['coarse_maps_ms']:.1f} + "
              f"{r['fine_maps_ms']:.1f}) | {r['msac_ms']:.1f} "
              f"({r['hypotheses_per_s'] / 1e3:.0f}k) | {r['coarse_ms']:.1f} | {r['fine_ms']:.1f} | "
              f"{r['total_ms']:.1f} ({r['total_iqr_ms']:.1f}) | {r['maps_mb']:.1f} | "
              f"{r['opencv_magsac_ms']:.1f} | {r['poselib_ms']:.1f} |")
    print()
    print(PAPER_TAB3)
    print('total = coarse maps from descriptors + MSAC + coarse GNC + fine windows from '
          'descriptors + fine GNC + verdict (the ground-truth fine maps the GNC runs on are '
          'built once per coarse pose, in the warm-up: the pipeline does not build them).')


if __name__ == '__main__':
    np.set_printoptions(precision=3)
    main()
