"""``solve`` = ``solve_coarse`` (MSAC or pre-alignment, coarse GNC) -> ``refine_level`` (fine
GNC, optional) -> ``verdict`` (support, cost, conditioning, covariance). The pipeline calls the
three itself and runs the fine network between the first two."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from nre_ros.errors import ShapeError
from nre_ros.lossmaps import LossMaps
from nre_ros.results import Failure, PointSupport, Result
from nre_ros.solver import se3
from nre_ros.solver.gnc import GncConfig, information, refine
from nre_ros.solver.msac import MsacConfig, MsacResult, msac
from nre_ros.solver.prealign import PrealignConfig, prealign

logger = logging.getLogger(__name__)

__all__ = ['VerdictConfig', 'SolverConfig', 'FineLevel', 'Level', 'Solution', 'solve',
           'solve_coarse', 'refine_level', 'verdict', 'point_nre', 'evaluate_pose']


@dataclass(frozen=True)
class VerdictConfig:
    """When a refined pose is trusted, and how its covariance is scaled."""

    support_margin: float = 3.0     # supported: NRE < ln|Omega| - margin (map prob > e^3 x uniform)
    min_supported: int = 12         # fewer supported points -> 'too_few_supported'
    chance_factor: float = 4.0      # ... or fewer than min_supported + factor x chance support
    min_supported_fraction: float = 0.0  # fewer supported / all points -> 'too_few_supported'
    max_mean_cost: float | None = None  # optional cap on mean NRE per point (nats)
    max_condition: float = 1e12     # information condition number above -> degenerate
    covariance_scale: float = 1.0   # k^2 in Sigma = k^2 H^-1 (from NEES calibration)
    information: str = 'laplace'    # 'laplace' or 'irls' (see gnc.information)


@dataclass(frozen=True)
class SolverConfig:
    """Everything ``solve`` needs. Fine sigmas are in fine cells."""

    msac: MsacConfig = MsacConfig()
    coarse: GncConfig = GncConfig()
    fine: GncConfig = GncConfig()
    prealign: PrealignConfig = PrealignConfig()   # tracking (T_init given) only
    verdict: VerdictConfig = VerdictConfig()
    min_points: int = 6


@dataclass(frozen=True)
class FineLevel:
    """Fine maps built around the coarse solution.

    Attributes:
        maps: LossMaps (windows) of the points in ``index``.
        K: (3, 3) float64 intrinsics of the fine grid.
        index: (M,) int64 indices into solve's points_world (None = all N, same order).
    """

    maps: LossMaps
    K: Tensor
    index: Tensor | None = None


@dataclass(frozen=True)
class Level:
    """One refined level: its points, maps, intrinsics, GNC settings and the refinement's own
    final undamped information ((6, 6), None when not available)."""

    name: str                      # 'coarse' | 'fine'
    points_world: Tensor           # (N, 3) float64, in the order of the maps
    maps: LossMaps
    K: Tensor                      # (3, 3) float64 intrinsics of the maps' grid
    gnc: GncConfig
    information: Tensor | None


@dataclass(frozen=True)
class Solution:
    """A refined pose before the verdict: ``T_cam_world`` (4, 4) float64, the coarse level
    (support is tested there) and the finest level refined (the covariance comes from it)."""

    T_cam_world: Tensor
    coarse: Level
    level: Level
    iterations: int
    timings_ms: dict
    info: dict


def point_nre(points_world: Tensor, maps: LossMaps, K: Tensor, T: Tensor,
              min_depth: float = 1e-4) -> Tensor:
    """(N,) truncated NRE of each point at pose T (bilinear lookup; behind -> ln|Omega|)."""
    pc = se3.transform(points_world, T[:3, :3], T[:3, 3])
    uv, valid = se3.project(pc, K, min_depth)
    return maps.lookup(uv, valid)


def evaluate_pose(points_world: Tensor, maps: LossMaps, K: Tensor, T: Tensor,
                  support_margin: float = 3.0) -> tuple[float, int]:
    """Summed NRE and number of supported points of pose T."""
    nre = point_nre(points_world, maps, K, T)
    return float(nre.sum()), int((nre < maps.ln_omega - support_margin).sum())


def _ms(t0: float, dev: torch.device) -> float:
    if dev.type == 'cuda':
        torch.cuda.synchronize(dev)
    return (time.perf_counter() - t0) * 1e3


def solve(points_world: Tensor | np.ndarray, coarse: LossMaps, K_coarse: Tensor | np.ndarray,
          config: SolverConfig = SolverConfig(), fine: FineLevel | None = None,
          T_init: Tensor | np.ndarray | None = None) -> Result | Failure:
    """Estimate T_cam_world from NRE loss maps: ``solve_coarse``, ``refine_level`` on
    ``fine`` when given, ``verdict``.

    Args:
        points_world: (N, 3) world points, in the order of the maps.
        coarse: N full-grid coarse loss maps.
        K_coarse: (3, 3) pinhole intrinsics of the coarse grid (undistorted).
        config: solver settings.
        fine: None (coarse only) or fine maps (e.g. windows centred on the reprojections
            under a coarse pose).
        T_init: (4, 4) prior T_cam_world; when given MSAC is skipped (tracking mode).

    Returns:
        Result (pose, covariance of a left increment, translation first, in the units of the
        world frame / radians) or Failure with a reason code.
    """
    sol = solve_coarse(points_world, coarse, K_coarse, config, T_init)
    if isinstance(sol, Failure):
        return sol
    if fine is not None:
        sol = refine_level(sol, fine, config)
        if isinstance(sol, Failure):
            return sol
    return verdict(sol, config.verdict)


def solve_coarse(points_world: Tensor | np.ndarray, coarse: LossMaps,
                 K_coarse: Tensor | np.ndarray, config: SolverConfig = SolverConfig(),
                 T_init: Tensor | np.ndarray | None = None, prealign_init: bool = True
                 ) -> Solution | Failure:
    """Initial pose (MSAC without ``T_init``; with it, the tracking pre-alignment when
    ``config.prealign.enabled`` and ``prealign_init``), then GNC on the coarse maps.

    Args: as ``solve``; ``prealign_init`` False when T_init is already an MSAC pose.
    """
    dev = coarse.maps.device
    pts = torch.as_tensor(points_world, dtype=torch.float64, device=dev)
    K = torch.as_tensor(K_coarse, dtype=torch.float64, device=dev)
    if pts.ndim != 2 or pts.shape[1] != 3 or pts.shape[0] != coarse.num_points:
        raise ShapeError(f'points_world must be ({coarse.num_points}, 3), got {tuple(pts.shape)}')
    if K.shape != (3, 3):
        raise ShapeError(f'K_coarse must be (3, 3), got {tuple(K.shape)}')
    timings: dict[str, float] = {}
    info: dict = {'num_points': int(pts.shape[0])}
    finite = torch.isfinite(pts).all(1)
    if int(finite.sum()) < config.min_points:
        return Failure('too_few_points', f'{int(finite.sum())} finite points, need '
                       f'{config.min_points}', timings, info)
    if not bool(finite.all()):
        pts = torch.where(finite[:, None], pts, torch.zeros_like(pts))
        coarse = LossMaps(torch.where(finite[:, None, None], coarse.maps,
                                      torch.full_like(coarse.maps, coarse.ln_omega)),
                          coarse.ln_omega, coarse.grid_size, coarse.origin)

    t0 = time.perf_counter()
    if T_init is None:
        m: MsacResult = msac(pts, coarse, K, config.msac)
        timings['msac'] = _ms(t0, dev)
        info.update(msac_cost=m.cost, msac_runner_up=m.runner_up_cost, msac_support=m.support,
                    msac_hypotheses=m.num_hypotheses, msac_candidates=m.num_candidates)
        if m.T_cam_world is None:
            return Failure(m.reason, m.detail, timings, info)
        T = m.T_cam_world
    else:
        T = torch.as_tensor(T_init, dtype=torch.float64, device=dev).clone()
        if T.shape != (4, 4) or not bool(torch.isfinite(T).all()):
            raise ShapeError('T_init must be a finite (4, 4) transform')
        if config.prealign.enabled and prealign_init:
            T_pre = prealign(pts, coarse, K, T, config.prealign)
            # kept only when it explains the maps better than the prior (summed NRE)
            cost_prior = float(point_nre(pts, coarse, K, T).sum())
            cost_pre = float(point_nre(pts, coarse, K, T_pre).sum())
            info.update(prealign_kept=cost_pre < cost_prior, prior_cost=cost_prior,
                        prealign_cost=cost_pre)
            if cost_pre < cost_prior:
                T = T_pre
            timings['prealign'] = _ms(t0, dev)

    t0 = time.perf_counter()
    res = refine(pts, coarse, K, T, config.coarse)
    timings['coarse'] = _ms(t0, dev)
    info['coarse_cost'] = res.cost
    if not res.finite:
        return Failure('diverged', 'coarse refinement produced a non-finite pose', timings, info)
    level = Level('coarse', pts, coarse, K, config.coarse, res.information)
    return Solution(res.T_cam_world, level, level, res.iterations, timings, info)


def refine_level(sol: Solution, fine: FineLevel, config: SolverConfig = SolverConfig()
                 ) -> Solution | Failure:
    """GNC on fine maps from ``sol``'s pose; ``sol`` unchanged (as the finest level) when
    the fine level has fewer than ``config.min_points`` maps."""
    if fine.maps.num_points < config.min_points:
        return sol
    dev = sol.T_cam_world.device
    pts = sol.coarse.points_world
    t0 = time.perf_counter()
    fpts = pts if fine.index is None else pts[fine.index]
    fK = torch.as_tensor(fine.K, dtype=torch.float64, device=dev)
    res = refine(fpts, fine.maps, fK, sol.T_cam_world, config.fine)
    timings = {**sol.timings_ms, 'fine': _ms(t0, dev)}
    info = {**sol.info, 'fine_cost': res.cost}
    if not res.finite:
        return Failure('diverged', 'fine refinement produced a non-finite pose', timings, info)
    level = Level('fine', fpts, fine.maps, fK, config.fine, res.information)
    return Solution(res.T_cam_world, sol.coarse, level, sol.iterations + res.iterations,
                    timings, info)


def verdict(sol: Solution, cfg: VerdictConfig = VerdictConfig()) -> Result | Failure:
    """Support is tested on the full-grid (coarse) maps, where a pose explaining nothing has a
    known chance level; the covariance comes from the final (finest) level."""
    t0 = time.perf_counter()
    timings, info = dict(sol.timings_ms), dict(sol.info)
    out = _verdict(sol.coarse, sol.level, sol.T_cam_world, cfg, sol.iterations, timings, info)
    timings['verdict'] = _ms(t0, sol.T_cam_world.device)
    return out


def _verdict(support_level: Level, level: Level, T: Tensor, cfg: VerdictConfig,
             iterations: int, timings: dict, info: dict) -> Result | Failure:
    name, pts, maps, K, gcfg = (support_level.name, support_level.points_world,
                                support_level.maps, support_level.K, support_level.gnc)
    nre = point_nre(pts, maps, K, T, gcfg.min_depth)
    cost = float(nre.sum())
    n = int(nre.numel())
    supported = int((nre < maps.ln_omega - cfg.support_margin).sum())
    support = PointSupport(nre.detach().cpu().numpy().astype(np.float32),
                           float(maps.ln_omega - cfg.support_margin))
    # Expected support of a pose that explains nothing: sum over maps of the fraction of
    # cells that would count as support. Optimising 6 DoF finds a few times more by chance.
    # Counting it reads every cell of every map; when an upper bound already decides the
    # test, the bound is used instead: a map holds fewer than e^low / (h w) of its cells
    # below low (its probabilities sum to at most 1), and none if its minimum is not below.
    low = maps.ln_omega - cfg.support_margin
    cells = float(maps.maps[0].numel())
    floor = max(cfg.min_supported, cfg.min_supported_fraction * n)
    chance = None
    if supported >= floor:
        peaked = int((maps.map_min < low).sum())
        bound = peaked * min(1.0, math.exp(low) / cells)
        info['chance_support_bound'] = bound
        if supported >= max(cfg.min_supported + cfg.chance_factor * bound, floor):
            chance = bound
    if chance is None:
        chance = float(torch.count_nonzero(maps.maps < low)) / cells
        info['chance_support'] = chance
    need = max(cfg.min_supported + cfg.chance_factor * chance, floor)
    info.update(level=name, ln_omega=maps.ln_omega, supported=supported, cost=cost)
    if supported < need:
        return Failure('too_few_supported', f'{supported} of {n} points supported at the '
                       f'{name} level, need {need:.1f} (chance level {chance:.1f})',
                       timings, info)
    mean_cost = cost / max(n, 1)
    info['coarse_mean_cost'] = mean_cost
    if cfg.max_mean_cost is not None and mean_cost > cfg.max_mean_cost:
        return Failure('cost_too_high', f'mean NRE {mean_cost:.2f} > {cfg.max_mean_cost}',
                       timings, info)
    # The degeneracy test uses the coarse refinement's own final information (at the coarse
    # solution, within a fraction of a cell of T) rather than a new evaluation at T.
    H = _information(support_level, T, cfg.information)
    evals = np.linalg.eigvalsh(H)
    cond = float(evals[-1] / evals[0]) if float(evals[0]) > 0 else math.inf
    info['information_condition'] = cond
    if not math.isfinite(cond) or cond > cfg.max_condition:
        return Failure('degenerate_geometry', f'information condition number {cond:.3g} > '
                       f'{cfg.max_condition:.3g}', timings, info)
    if level is not support_level:
        name, pts, maps, K, gcfg = level.name, level.points_world, level.maps, level.K, level.gnc
        nre = point_nre(pts, maps, K, T, gcfg.min_depth)
        cost, n = float(nre.sum()), int(nre.numel())
        mean_cost = cost / max(n, 1)
        info.update(level=name, cost=cost)
        H = _information(level, T, cfg.information)
    cov = cfg.covariance_scale * np.linalg.inv(H)
    cov = 0.5 * (cov + cov.T)
    logger.debug('solve: %s level, cost %.1f, %d/%d supported, %d iterations', name, cost,
                 supported, n, iterations)
    return Result(T.cpu().numpy(), cov, cost, mean_cost, n, supported, iterations,
                  timings, info, support)


def _information(level: Level, T: Tensor, kind: str) -> np.ndarray:
    """(6, 6) float64 information of a level, last sigma: the level's refinement's own final
    undamped step matrix (at its final pose) when its step matches ``kind``, else evaluated
    at T."""
    H = level.information
    same = (kind == 'irls') == (level.gnc.step == 'irls')
    if not (same and H is not None):
        H = information(level.points_world, level.maps, level.K, T, level.gnc.sigmas[-1],
                        level.gnc, kind)
    return H.cpu().numpy()
