"""Pose accuracy of NRE heads on held-out pairs with the project's own solver.

For a pair, the map is the source image: XFeat keypoints (best detector scores, NMS) with
valid depth lifted to 3D with the ground-truth source pose (MegaDepth: its SfM points seen by the
source). The query is the target image. Coarse loss maps over the whole target grid ->
``nre_ros.solver.solve`` (MSAC + P3P, GNC) -> fine windows around the reprojections under the
coarse pose (as ``nre_ros.pipeline``) -> fine GNC -> verdict. Identical points, solver and
settings for every model; only the heads/temperatures differ. A Failure counts as no estimate.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from nre_ros.camera import Camera
from nre_ros.eval.metrics import THRESHOLDS, errors, summarize
from nre_ros.lossmaps import coarse_loss_maps, fine_loss_maps
from nre_ros.maps.features import select_keypoints
from nre_ros.models.xfeat_nre import NreHeads
from nre_ros.results import Failure, Result
from nre_ros.solver import FineLevel, SolverConfig, refine_level, solve_coarse, verdict
from nre_ros.solver import se3
from nre_training.data import lift_depth
from nre_training.features import (COARSE_STRIDE, FINE_STRIDE, FeatureCache, dense_coarse,
                                   grid_coords, sample_bilinear, sample_fine_points)
from nre_training.pairs import PairLoss, cached_features, to_train_pairs
from nre_training.sets import PairSet



@dataclass
class EvalPair:
    """Map = source points; query = target image. ``T_gt`` is the target's T_cam_world."""

    name: str
    split: str
    src: str
    tgt: str
    uv_src: np.ndarray          # (N, 2) source pixels of the map points
    points_world: np.ndarray    # (N, 3)
    T_gt: np.ndarray            # (4, 4)
    camera: Camera              # target intrinsics (no distortion)


def eval_pairs(ps: PairSet, cache: FeatureCache, max_points: int = 600,
               points_world: np.ndarray | None = None) -> list[EvalPair]:
    """EvalPairs of a PairSet: keypoints with depth (RGB-D) or given SfM points."""
    out = []
    for p in ps.pairs:
        src, tgt = ps.views[p.src], ps.views[p.tgt]
        if points_world is None:
            uv, _ = select_keypoints(cache[p.src]['scores'], max_points, src.depth > 0)
            X, ok = lift_depth(src, uv)
            uv, X = uv[ok], X[ok]
        else:
            pc = points_world @ src.T_cam_world[:3, :3].T + src.T_cam_world[:3, 3]
            uv, ok = src.camera.project(pc)
            uv, X = uv[ok], points_world[ok]
        out.append(EvalPair(f'{p.src}->{p.tgt}', p.split, p.src, p.tgt, uv, X, tgt.T_cam_world,
                            tgt.camera))
    return out


@torch.no_grad()
def solve_pair(heads: NreHeads, cache: FeatureCache, ep: EvalPair,
               config: SolverConfig = SolverConfig(), fine: bool = True, window: int = 16
               ) -> tuple[np.ndarray | None, str]:
    """Estimated T_cam_world of the target (None on failure) and the outcome label."""
    tau_c, tau_f = heads.inv_temperatures()
    es, et = cache[ep.src], cache[ep.tgt]
    uv = torch.as_tensor(ep.uv_src, dtype=torch.float32)
    desc = sample_bilinear(dense_coarse(heads.coarse, es), grid_coords(uv, COARSE_STRIDE))
    maps = coarse_loss_maps(dense_coarse(heads.coarse, et), desc, tau_c)
    K = torch.as_tensor(ep.camera.feature_grid(COARSE_STRIDE).K)
    sol = solve_coarse(ep.points_world, maps, K, config)
    if isinstance(sol, Failure):
        return None, sol.reason
    if fine and 'fine' in es and 'fine' in et:
        K_f = torch.as_tensor(ep.camera.feature_grid(FINE_STRIDE).K)
        fdense = heads.fine(et['fine'][None].float())[0]
        fdesc = sample_fine_points(heads.fine, es['fine'], grid_coords(uv, FINE_STRIDE))
        pts = torch.as_tensor(ep.points_world, dtype=torch.float64)

        uvf, index = se3.project_in_grid(pts, sol.T_cam_world, K_f,
                                         (fdense.shape[2], fdense.shape[1]))
        if index.numel() > 0:
            fmaps = fine_loss_maps(fdense, fdesc[index], uvf[index].float(), maps,
                                   COARSE_STRIDE / FINE_STRIDE, tau_f, window, coarse_index=index)
            sol = refine_level(sol, FineLevel(fmaps, K_f, index), config)
            if isinstance(sol, Failure):
                return None, sol.reason
    res = verdict(sol, config.verdict)
    if isinstance(res, Result):
        return res.T_cam_world, 'ok'
    return None, res.reason


def evaluate(models: dict[str, NreHeads], datasets: dict[str, tuple[list[EvalPair],
                                                                   FeatureCache]],
             config: SolverConfig = SolverConfig(), fine: bool = True,
             progress: bool = False) -> list[dict]:
    """Rows {model, dataset, split ('all' too), n, recall x3, medians, published, s/pair}."""
    rows = []
    for mname, heads in models.items():
        heads = heads.eval()
        for dname, (pairs, cache) in datasets.items():
            est, gt, splits, secs = [], [], [], []
            for ep in pairs:
                t0 = time.perf_counter()
                T, _ = solve_pair(heads, cache, ep, config, fine)
                secs.append(time.perf_counter() - t0)
                est.append(T)
                gt.append(ep.T_gt)
                splits.append(ep.split)
                if progress:
                    print(f'{mname} {dname} {ep.name}: {"fail" if T is None else "ok"}',
                          flush=True)
            t_err, r_err = errors(est, np.asarray(gt))
            splits_a = np.array(splits)
            for split in ['all'] + sorted(set(splits) - {'all'}):
                sel = np.ones(len(splits_a), bool) if split == 'all' else splits_a == split
                if split != 'all' and len(set(splits)) == 1:
                    continue
                s = summarize(t_err[sel], r_err[sel])
                rows.append({'model': mname, 'dataset': dname, 'split': split,
                             'n': int(sel.sum()), 'published': s.num_published,
                             'recall': s.recall, 'median_t': s.median_t_m,
                             'median_r_deg': s.median_r_deg,
                             's_per_pair': float(np.mean(np.asarray(secs)[sel]))})
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown tables of ``evaluate`` / ``held_out_eval`` rows (pose, then Eq. 10 loss)."""
    loss_rows = [r for r in rows if r['split'] == 'eq10']
    rows = [r for r in rows if r['split'] != 'eq10']
    th = ' | '.join(f'({t:g} m, {r:g}°)' for t, r in THRESHOLDS)
    lines = [f'| dataset | split | model | pairs | published | {th} | median t | median R |',
             '|' + '---|' * 10]
    for r in sorted(rows, key=lambda r: (r['dataset'], r['split'] != 'all', r['split'],
                                         r['model'])):
        rec = ' | '.join(f'{v:.3f}' for v in r['recall'])
        lines.append(f"| {r['dataset']} | {r['split']} | {r['model']} | {r['n']} | "
                     f"{r['published']} | {rec} | {r['median_t']:.3f} | "
                     f"{r['median_r_deg']:.2f}° |")
    if loss_rows:
        lines += ['', '| dataset | model | pairs | mean Eq. 10 coarse (nats) | '
                  'mean Eq. 10 fine window (nats) |', '|---|---|---|---|---|']
        lines += [f"| {r['dataset']} | {r['model']} | {r['n']} | {r['coarse_loss']:.3f} | "
                  f"{r['fine_loss']:.3f} |" for r in loss_rows]
    return '\n'.join(lines)


def held_out_eval(weights: str | None, cache_dir: str = '~/.cache/nre_training',
                  per_split: int = 12, seed: int = 0, fine: bool = True,
                  progress: bool = False, include_val: bool = False,
                  ablation: bool = True) -> list[dict]:
    """Pretrained ('xfeat-ms' = identity heads, tau 20) vs trained heads on the held-out test
    pairs (fr3 cabinet, NRE MegaDepth pair), same points, solver and settings, one run."""
    from nre_ros.models.xfeat_nre import WEIGHTS_FILE, load_heads
    from nre_training.sets import cabinet_set, megadepth_set, validation_set
    cab = cabinet_set(per_split, seed)
    cab_cache = cached_features(f'test-cabinet-s{seed}-{per_split}', cab, cache_dir)
    md, md_points = megadepth_set()
    md_cache = cached_features('test-megadepth', md, cache_dir)
    datasets = {'fr3_cabinet': (eval_pairs(cab, cab_cache), cab_cache),
                'megadepth_pair': (eval_pairs(md, md_cache, points_world=md_points), md_cache)}
    if include_val:
        vset = validation_set(4, seed)
        vcache = cached_features(f'val-s{seed}-4', vset, cache_dir)
        datasets['fr1_val'] = (eval_pairs(vset, vcache), vcache)
    loss_sets = {'fr3_cabinet': (_with_points(cab), cab_cache),
                 'megadepth_pair': (_megadepth_points(md, md_points), md_cache)}
    trained = load_heads(weights or WEIGHTS_FILE)
    models = {'pretrained (xfeat-ms)': NreHeads(), 'trained (xfeat-ms-nre)': trained}
    if ablation:   # identity heads with the trained temperatures: what calibration alone does
        temp_only = NreHeads(**trained.config)
        with torch.no_grad():
            temp_only.log_inv_temperature.copy_(trained.log_inv_temperature)
        models['trained temperatures only'] = temp_only
    rows = evaluate(models, datasets, fine=fine, progress=progress)
    for mname, heads in models.items():
        for dname, (pairs, cache) in loss_sets.items():
            c, f = mean_losses(heads, pairs, cache)
            rows.append({'model': mname, 'dataset': dname, 'split': 'eq10', 'n': len(pairs),
                         'coarse_loss': c, 'fine_loss': f})
    return rows


def _with_points(ps: PairSet, n: int = 256, seed: int = 0) -> list:
    """TrainPairs (occlusion-checked co-visible points) of a held-out RGB-D PairSet."""
    from nre_training.data import sample_points
    rng = np.random.default_rng(seed)
    for p in ps.pairs:
        sample_points(p, ps.views[p.src], ps.views[p.tgt], n, rng)
    return to_train_pairs(ps)


def _megadepth_points(ps: PairSet, points_world: np.ndarray) -> list:
    from nre_training.data import visible_in
    p = ps.pairs[0]
    uv_s, ok_s = visible_in(ps.views[p.src], points_world, margin=8.0)
    uv_t, ok_t = visible_in(ps.views[p.tgt], points_world, margin=8.0)
    p.uv_src, p.uv_tgt = uv_s[ok_s & ok_t], uv_t[ok_s & ok_t]
    return to_train_pairs(ps)


@torch.no_grad()
def mean_losses(heads: NreHeads, pairs: list, cache: FeatureCache, window: int = 16
                ) -> tuple[float, float]:
    """Mean Eq. 10 (coarse full grid, fine windows centred on the truth) over all points of
    the pairs, averaged per pair."""
    module = PairLoss(heads.eval(), cache, window)
    items = [(p, torch.arange(len(p.uv_src)), torch.zeros(len(p.uv_src), 2)) for p in pairs
             if len(p.uv_src)]
    _, parts = module(items)
    return float(parts[0]), float(parts[1])
