"""Initialization: MSAC over batched P3P hypotheses from loss-map minima (Germain et al.
CVPR 2021, §5.1, Eq. 8).

Triplets are drawn, solved and scored in a few batches, each at once: sample by peakedness
without repeated indices, reject degenerate triplets, P3P (up to 4 poses each), score every pose
by the summed truncated NRE (bilinear lookup) of the candidate points; points behind the camera
or projecting outside the grid cost ln|Omega|. Between batches an adaptive-RANSAC test stops the
search once an all-inlier triplet has been drawn with high probability.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from nre_ros.lossmaps import LossMaps, bilinear_cost
from nre_ros.solver import se3
from nre_ros.solver.p3p import p3p

__all__ = ['MsacConfig', 'MsacResult', 'MinimalSolver', 'P3PSolver', 'msac']


@dataclass(frozen=True)
class MsacConfig:
    """MSAC settings."""

    num_triplets: int = 1024         # most P3P problems per call (up to 4 hypotheses each)
    batch_triplets: int = 128        # first batch; later batches double (adaptive stop between)
    confidence: float = 0.9999       # stop once an all-inlier triplet was drawn with this prob.
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
        num_triplets: triplets drawn before the adaptive stop.
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
    num_triplets: int = 0


def _fail(reason: str, detail: str, n_cand: int, maps: LossMaps, t0: float) -> MsacResult:
    return MsacResult(None, float('inf'), float('inf'), 0, n_cand, 0,
                      n_cand * maps.ln_omega, (time.perf_counter() - t0) * 1e3, reason, detail)


def _needed_triplets(support: int, n_cand: int, confidence: float) -> float:
    """Triplets to draw so that an all-inlier triplet was drawn with ``confidence`` when the
    inlier fraction is support / n_cand (standard adaptive RANSAC count)."""
    eps = min(max(support / max(n_cand, 1), 0.0), 1.0)
    if eps >= 1.0:
        return 1.0
    p3 = eps ** 3
    if p3 <= 0.0:
        return math.inf
    return math.log(1.0 - confidence) / math.log1p(-p3)


class MinimalSolver(Protocol):
    """Poses from triplets of (world point, loss-map minimum): what MSAC samples and scores."""

    name: str

    def usable(self, uv: Tensor) -> Tensor:
        """(n,) bool: which candidates (grid minima ``uv`` (n, 2)) this solver can use."""
        ...

    def solve(self, X: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        """X (M, 3, 3) float64 world points, q (M, 3, 2) float64 grid minima ->
        R (P, 3, 3), t (P, 3) float64 poses T_cam_world (P >= 0)."""
        ...


class P3PSolver:
    """Batched P3P on the rays of the grid minima (up to 4 poses per triplet)."""

    name = 'P3P'

    def __init__(self, K: Tensor) -> None:
        self.f = K.new_tensor([float(K[0, 0]), float(K[1, 1])])
        self.c = K.new_tensor([float(K[0, 2]), float(K[1, 2])])

    def usable(self, uv: Tensor) -> Tensor:
        return torch.ones(uv.shape[0], dtype=torch.bool, device=uv.device)

    def solve(self, X: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        rays = torch.cat([(q - self.c.to(q)) / self.f.to(q), torch.ones_like(q[..., :1])], -1)
        rays = rays / rays.norm(dim=-1, keepdim=True)
        R, t, valid = p3p(rays, X)
        return R[valid], t[valid]


def msac(points_world: Tensor, maps: LossMaps, K: Tensor,
         config: MsacConfig = MsacConfig(),
         solver: MinimalSolver | None = None) -> MsacResult:
    """Best hypothesis of a minimal solver (P3P by default) by summed NRE.

    Triplets are drawn in batches (``batch_triplets``, then doubling) up to ``num_triplets``;
    after each batch the search stops once enough triplets were drawn to have sampled an
    all-inlier one with probability ``confidence``, the inlier fraction being estimated by
    the support of the best pose so far (adaptive RANSAC). Every batch is solved and scored
    at once.

    Args:
        points_world: (N, 3) float64 world points, in the maps' order.
        maps: N full-grid loss maps.
        K: (3, 3) float64 intrinsics of the grid.
        solver: the minimal solver (default ``P3PSolver(K)``; RGB-D: ``depth_init``).
    """
    t0 = time.perf_counter()
    dev = points_world.device
    solver = solver if solver is not None else P3PSolver(K)
    n, h, w = maps.maps.shape
    peak = maps.peakedness()
    is_peaked = peak >= config.min_peakedness
    n_peaked = int(is_peaked.sum())
    if n_peaked < max(3, config.min_peaked_maps):
        return _fail('too_few_peaked_maps', f'{n_peaked} maps with peakedness >= '
                     f'{config.min_peakedness} nats, need {config.min_peaked_maps}', 0, maps, t0)
    n_cand = int(round(config.candidate_fraction * maps.num_points))
    n_cand = min(max(n_cand, config.min_candidates), config.max_candidates, n_peaked)
    cand_peak, cand = peak.masked_fill(~is_peaked, -math.inf).topk(n_cand)
    cmaps = maps.maps.index_select(0, cand)   # compact copy: scoring reads stay local
    flat = cmaps.reshape(-1)
    cpts = points_world[cand]
    cpts_t = cpts.T.float()                   # (3, n)
    uv = maps.argmin_uv(config.subcell_argmin, cand).to(torch.float64)
    offset = torch.arange(n_cand, device=dev) * (h * w)
    fx, fy, cx, cy = (float(v) for v in (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
    low = maps.ln_omega - config.support_margin

    gen = torch.Generator(device=dev).manual_seed(config.seed)
    usable = solver.usable(uv)
    n_usable = int(usable.sum())
    if n_usable < 3:
        return _fail('too_few_peaked_maps', f'only {n_usable} of {n_cand} peaked maps are '
                     f'usable by {solver.name}', n_cand, maps, t0)
    weights = (cand_peak - config.min_peakedness + 0.1).float() * usable
    drawn = nondegenerate = 0
    size = max(1, min(config.batch_triplets, config.num_triplets))
    Rs, costs = [], []
    best_cost, best_support, best_R, best_t, best_nre = math.inf, 0, None, None, None
    while drawn < config.num_triplets:
        size = min(size, config.num_triplets - drawn)
        # Draw with replacement (cheap), then drop triplets with a repeated index.
        m = int(size * 1.15) + 8
        tri = torch.multinomial(weights, 3 * m, replacement=True, generator=gen).reshape(m, 3)
        distinct = ((tri[:, 0] != tri[:, 1]) & (tri[:, 0] != tri[:, 2])
                    & (tri[:, 1] != tri[:, 2]))
        tri = tri[distinct][:size]
        drawn += size
        X = cpts[tri]  # (M, 3, 3)
        q = uv[tri]
        X01, X02 = X[:, 0] - X[:, 1], X[:, 0] - X[:, 2]
        edges = torch.stack([X01, X02, X[:, 1] - X[:, 2]], 1).pow(2).sum(-1).amax(1)
        area = torch.linalg.cross(X01, X02).norm(dim=-1)
        sep = torch.stack([q[:, 0] - q[:, 1], q[:, 0] - q[:, 2], q[:, 1] - q[:, 2]], 1
                          ).norm(dim=-1)
        ok = (area > config.min_triangle * edges) & (sep.amin(1) >= config.min_separation)
        X, q = X[ok], q[ok]
        nondegenerate += X.shape[0]
        if X.shape[0] > 0:
            R, t = solver.solve(X, q)
            if R.shape[0] > 0:
                pc = torch.baddbmm(t.float()[:, :, None], R.float(),
                                   cpts_t.expand(R.shape[0], 3, n_cand))  # (P, 3, n)
                z = pc[:, 2]
                vis = z > config.min_depth
                iz = 1.0 / torch.where(vis, z, config.min_depth)
                nre = bilinear_cost(flat, offset, (w, h), maps.ln_omega,
                                    pc[:, 0] * iz * fx + cx, pc[:, 1] * iz * fy + cy,
                                    vis)  # (P, n)
                cost = nre.sum(1)
                i = int(cost.argmin())
                Rs.append(R)
                costs.append(cost)
                if float(cost[i]) < best_cost:
                    best_cost, best_R, best_t, best_nre = float(cost[i]), R[i], t[i], nre[i]
                    best_support = int((best_nre < low).sum())
        if drawn >= _needed_triplets(best_support, n_cand, config.confidence):
            break
        size *= 2
    if not Rs:
        if not nondegenerate:
            return _fail('degenerate_geometry', 'every sampled triplet was degenerate', n_cand,
                         maps, t0)
        return _fail('no_hypothesis', f'{solver.name} found no pose in {nondegenerate} '
                     'triplets', n_cand, maps, t0)
    R_all = torch.cat(Rs)
    cost_all = torch.cat(costs)
    # angle > 5 deg  <=>  (trace(R R_best^T) - 1) / 2 < cos 5 deg
    far = (R_all * best_R).sum(dim=(-1, -2)) < 1.0 + 2.0 * math.cos(math.radians(5.0))
    runner = float(cost_all[far].min()) if bool(far.any()) else float('inf')
    T = se3.make_T(best_R, best_t)
    n_hyp = int(R_all.shape[0])
    elapsed = (time.perf_counter() - t0) * 1e3
    if best_support < config.min_support:
        return MsacResult(None, best_cost, runner, best_support, n_cand, n_hyp,
                          n_cand * maps.ln_omega, elapsed, 'no_hypothesis',
                          f'best of {n_hyp} hypotheses is supported by {best_support} of '
                          f'{n_cand} candidates, need {config.min_support}', drawn)
    return MsacResult(T, best_cost, runner, best_support, n_cand, n_hyp,
                      n_cand * maps.ln_omega, elapsed, num_triplets=drawn)
