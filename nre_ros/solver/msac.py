"""Initialization: MSAC over batched P3P hypotheses from loss-map minima (§5.1, Eq. 8).

All triplets are drawn, solved and scored at once: sample by peakedness without repeated
indices, reject degenerate triplets, P3P (up to 4 poses each), score every pose by the summed
truncated NRE (bilinear lookup) of the candidate points; points behind the camera or projecting
outside the grid cost ln|Omega|.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from nre_ros.lossmaps import LossMaps
from nre_ros.solver import se3
from nre_ros.solver.p3p import p3p

__all__ = ['MsacConfig', 'MsacResult', 'msac']


@dataclass(frozen=True)
class MsacConfig:
    """MSAC settings."""

    num_triplets: int = 1024         # P3P problems per call (up to 4 hypotheses each)
    candidate_fraction: float = 0.25  # most peaked fraction of the maps used (official: 0.25)
    min_candidates: int = 32         # ... but at least this many when available
    max_candidates: int = 400        # ... and at most this many (bounds scoring cost)
    min_peakedness: float = 3.0      # nats: ln|Omega| - min L; flatter maps are never sampled
    min_peaked_maps: int = 6         # fewer peaked maps -> Failure('too_few_peaked_maps')
    subcell_argmin: bool = True
    min_separation: float = 1.0      # cells between the argmins of a triplet
    min_triangle: float = 1e-2       # |X01 x X02| / max edge^2 of a triplet
    support_margin: float = 3.0      # a point supports a pose when NRE < ln|Omega| - margin
    min_support: int = 6             # candidates supporting the best pose, else 'no_hypothesis'
    seed: int = 0
    min_depth: float = 1e-4


@dataclass(frozen=True)
class MsacResult:
    """Best hypothesis, or ``reason`` (a Failure code) when there is none.

    Attributes:
        T_cam_world: (4, 4) float64 best pose (None on failure).
        cost: its summed NRE over the candidates (nats).
        runner_up_cost: best cost among poses > 5 deg away from it (inf if none).
        support: candidates with NRE < ln|Omega| - support_margin under the best pose.
        num_candidates, num_hypotheses: sizes of the problem.
        chance_cost: num_candidates * ln|Omega| (cost of a pose that explains nothing).
    """

    T_cam_world: Tensor | None
    cost: float
    runner_up_cost: float
    support: int
    num_candidates: int
    num_hypotheses: int
    chance_cost: float
    elapsed_ms: float
    reason: str = ''
    detail: str = ''


def _fail(reason: str, detail: str, n_cand: int, maps: LossMaps, t0: float) -> MsacResult:
    return MsacResult(None, float('inf'), float('inf'), 0, n_cand, 0,
                      n_cand * maps.ln_omega, (time.perf_counter() - t0) * 1e3, reason, detail)


def msac(points_world: Tensor, maps: LossMaps, K: Tensor,
         config: MsacConfig = MsacConfig()) -> MsacResult:
    """Best P3P hypothesis by summed NRE.

    Args:
        points_world: (N, 3) float64 world points, in the maps' order.
        maps: N full-grid loss maps.
        K: (3, 3) float64 intrinsics of the grid.
    """
    t0 = time.perf_counter()
    dev = points_world.device
    peak = maps.peakedness()
    peaked = torch.nonzero(peak >= config.min_peakedness)[:, 0]
    if peaked.numel() < max(3, config.min_peaked_maps):
        return _fail('too_few_peaked_maps', f'{peaked.numel()} maps with peakedness >= '
                     f'{config.min_peakedness} nats, need {config.min_peaked_maps}', 0, maps, t0)
    n_cand = int(round(config.candidate_fraction * maps.num_points))
    n_cand = min(max(n_cand, config.min_candidates), config.max_candidates, peaked.numel())
    cand = peaked[peak[peaked].argsort(descending=True)[:n_cand]]
    cmaps = maps.select(cand)
    cpts = points_world[cand]
    uv = cmaps.argmin_uv(config.subcell_argmin).to(torch.float64)

    gen = torch.Generator(device=dev).manual_seed(config.seed)
    weights = (peak[cand] - config.min_peakedness + 0.1).float()
    # Draw with replacement (cheap), then drop triplets with a repeated index.
    m = int(config.num_triplets * 1.15) + 8
    tri = torch.multinomial(weights, 3 * m, replacement=True, generator=gen).reshape(m, 3)
    distinct = ((tri[:, 0] != tri[:, 1]) & (tri[:, 0] != tri[:, 2]) & (tri[:, 1] != tri[:, 2]))
    tri = tri[distinct][:config.num_triplets]
    X = cpts[tri]  # (M, 3, 3)
    q = uv[tri]
    X01, X02 = X[:, 0] - X[:, 1], X[:, 0] - X[:, 2]
    edges = torch.stack([X01, X02, X[:, 1] - X[:, 2]], 1).pow(2).sum(-1).amax(1)
    area = torch.linalg.cross(X01, X02).norm(dim=-1)
    sep = torch.stack([q[:, 0] - q[:, 1], q[:, 0] - q[:, 2], q[:, 1] - q[:, 2]], 1).norm(dim=-1)
    ok = (area > config.min_triangle * edges) & (sep.amin(1) >= config.min_separation)
    X, q = X[ok], q[ok]
    if X.shape[0] == 0:
        return _fail('degenerate_geometry', 'every sampled triplet was degenerate', n_cand,
                     maps, t0)
    rays = torch.cat([q, torch.ones_like(q[..., :1])], -1) @ torch.linalg.inv(K).T
    rays = rays / rays.norm(dim=-1, keepdim=True)
    R, t, valid = p3p(rays, X)
    R, t = R[valid], t[valid]
    if R.shape[0] == 0:
        return _fail('no_hypothesis', 'P3P found no real solution', n_cand, maps, t0)

    pc = se3.transform(cpts.float(), R.float(), t.float())  # (P, n, 3)
    uv_h, vis = se3.project(pc, K.float(), config.min_depth)
    nre = cmaps.lookup(uv_h, vis)  # (P, n)
    cost = nre.sum(1)
    best = int(cost.argmin())
    angle = se3.rotation_angle_deg(R, R[best:best + 1])
    far = angle > 5.0
    runner = float(cost[far].min()) if bool(far.any()) else float('inf')
    support = int((nre[best] < maps.ln_omega - config.support_margin).sum())
    T = se3.make_T(R[best], t[best])
    elapsed = (time.perf_counter() - t0) * 1e3
    if support < config.min_support:
        return MsacResult(None, float(cost[best]), runner, support, n_cand, R.shape[0],
                          n_cand * maps.ln_omega, elapsed, 'no_hypothesis',
                          f'best of {R.shape[0]} hypotheses is supported by {support} of '
                          f'{n_cand} candidates, need {config.min_support}')
    return MsacResult(T, float(cost[best]), runner, support, n_cand, R.shape[0],
                      n_cand * maps.ln_omega, elapsed)
