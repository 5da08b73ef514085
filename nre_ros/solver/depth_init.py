"""RGB-D initialization: MSAC over batched 3-point Kabsch hypotheses (metric, one pose each).

With a depth image the loss-map minima of the most peaked maps are lifted to 3D camera points;
triplets of (world point, lifted camera point) give one rigid pose each (Kabsch/Umeyama without
scale, weighted equally), triplets whose pairwise distances disagree between the two frames are
dropped before solving (a rigid motion keeps distances), and every surviving pose is scored by
the same summed truncated NRE as the P3P MSAC. Cheaper than P3P (no quartic, one pose per
triplet, most wrong triplets rejected by the distance test) and metric from the start.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from nre_ros.lossmaps import LossMaps
from nre_ros.solver import se3
from nre_ros.solver.msac import MsacConfig, MsacResult

__all__ = ['DepthInitConfig', 'kabsch', 'lift_minima', 'depth_msac']


@dataclass(frozen=True)
class DepthInitConfig:
    """RGB-D initialization settings (sampling and scoring reuse ``MsacConfig``)."""

    enabled: bool = True
    num_triplets: int = 512        # sampled triplets (most fail the distance test)
    min_depth_m: float = 0.1       # valid depth range of the sensor
    max_depth_m: float = 10.0
    distance_tolerance: float = 0.05   # |d_world - d_cam| <= tol_abs + tol_rel * d (metres)
    distance_tolerance_rel: float = 0.05
    min_edge_m: float = 0.05       # shortest triplet edge (metres)


def kabsch(P: Tensor, Q: Tensor) -> tuple[Tensor, Tensor]:
    """Rigid fits ``Q ~ R P + t`` for a batch of point sets.

    Args:
        P: (M, K, 3) source points (world frame), K >= 3.
        Q: (M, K, 3) target points (camera frame).

    Returns:
        R: (M, 3, 3) proper rotations; t: (M, 3).
    """
    cp, cq = P.mean(dim=1, keepdim=True), Q.mean(dim=1, keepdim=True)
    H = (P - cp).transpose(1, 2) @ (Q - cq)            # (M, 3, 3)
    U, _, Vt = torch.linalg.svd(H)
    d = torch.sign(torch.linalg.det(Vt.transpose(1, 2) @ U.transpose(1, 2)))
    d = torch.where(d == 0, torch.ones_like(d), d)
    D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], dim=-1))
    R = Vt.transpose(1, 2) @ D @ U.transpose(1, 2)
    t = cq[:, 0] - (R @ cp[:, 0, :, None])[..., 0]
    return R, t


def lift_minima(uv_grid: Tensor, K_grid: Tensor, depth: Tensor, K_image: Tensor,
                min_depth: float, max_depth: float) -> tuple[Tensor, Tensor]:
    """Camera-frame 3D points of grid positions, with depth read at the matching image pixel.

    Args:
        uv_grid: (N, 2) float64 grid coordinates (x, y).
        K_grid: (3, 3) float64 intrinsics of the grid.
        depth: (H, W) float32 depth of the image in the map's units (<= 0 or non-finite: none).
        K_image: (3, 3) float64 intrinsics of the image ``depth`` belongs to.
        min_depth, max_depth: accepted depth range (map units).

    Returns:
        X_cam: (N, 3) float64 points (camera frame); valid: (N,) bool.
    """
    ones = torch.ones_like(uv_grid[:, :1])
    rays = torch.cat([uv_grid, ones], dim=1) @ torch.linalg.inv(K_grid).T   # z = 1
    pix = rays @ K_image.T
    H, W = depth.shape
    x = pix[:, 0].round().long()
    y = pix[:, 1].round().long()
    inside = (x >= 0) & (x < W) & (y >= 0) & (y < H)
    z = depth[y.clamp(0, H - 1), x.clamp(0, W - 1)].to(torch.float64)
    valid = inside & torch.isfinite(z) & (z >= min_depth) & (z <= max_depth)
    return rays * torch.where(valid, z, torch.zeros_like(z))[:, None], valid


def depth_msac(points_world: Tensor, maps: LossMaps, K: Tensor, depth: Tensor, K_image: Tensor,
               metres_per_unit: float = 1.0, config: DepthInitConfig = DepthInitConfig(),
               msac_config: MsacConfig = MsacConfig()) -> MsacResult:
    """Best Kabsch hypothesis by summed NRE; same result type and failure codes as ``msac``.

    Args:
        points_world: (N, 3) float64 world points, in the maps' order (map units).
        maps: N full-grid loss maps.
        K: (3, 3) float64 intrinsics of the grid.
        depth: (H, W) float32 depth in metres of the image the grid was computed on.
        K_image: (3, 3) float64 intrinsics of that image.
        metres_per_unit: size of one map unit in metres.
    """
    t0 = time.perf_counter()
    dev = points_world.device
    mc = msac_config
    chance = maps.ln_omega

    def fail(reason: str, detail: str, n: int) -> MsacResult:
        return MsacResult(None, float('inf'), float('inf'), 0, n, 0, n * chance,
                          (time.perf_counter() - t0) * 1e3, reason, detail)

    peak = maps.peakedness()
    peaked = torch.nonzero(peak >= mc.min_peakedness)[:, 0]
    if peaked.numel() < max(3, mc.min_peaked_maps):
        return fail('too_few_peaked_maps', f'{peaked.numel()} maps with peakedness >= '
                    f'{mc.min_peakedness} nats, need {mc.min_peaked_maps}', 0)
    n_cand = int(round(mc.candidate_fraction * maps.num_points))
    n_cand = min(max(n_cand, mc.min_candidates), mc.max_candidates, peaked.numel())
    cand = peaked[peak[peaked].argsort(descending=True)[:n_cand]]
    cmaps = maps.select(cand)
    cpts = points_world[cand]
    unit = 1.0 / metres_per_unit
    X_cam, lifted = lift_minima(cmaps.argmin_uv(mc.subcell_argmin).to(torch.float64), K,
                                depth.to(dev) * unit, K_image, config.min_depth_m * unit,
                                config.max_depth_m * unit)
    usable = torch.nonzero(lifted)[:, 0]
    if usable.numel() < 3:
        return fail('too_few_peaked_maps', f'only {usable.numel()} peaked maps have a valid '
                    'depth at their minimum', n_cand)

    gen = torch.Generator(device=dev).manual_seed(mc.seed)
    weights = (peak[cand][usable] - mc.min_peakedness + 0.1).float()
    m = int(config.num_triplets * 1.15) + 8
    tri = usable[torch.multinomial(weights, 3 * m, replacement=True, generator=gen)].reshape(m, 3)
    distinct = (tri[:, 0] != tri[:, 1]) & (tri[:, 0] != tri[:, 2]) & (tri[:, 1] != tri[:, 2])
    tri = tri[distinct][:config.num_triplets]
    P, Q = cpts[tri], X_cam[tri]                                   # (M, 3, 3)
    pairs = ([0, 1], [0, 2], [1, 2])
    d_world = torch.stack([(P[:, i] - P[:, j]).norm(dim=-1) for i, j in pairs], 1)
    d_cam = torch.stack([(Q[:, i] - Q[:, j]).norm(dim=-1) for i, j in pairs], 1)
    tol = (config.distance_tolerance * unit + config.distance_tolerance_rel * d_world)
    area = torch.linalg.cross(P[:, 0] - P[:, 1], P[:, 0] - P[:, 2]).norm(dim=-1)
    ok = ((d_world - d_cam).abs() <= tol).all(1) & (d_world.amin(1) >= config.min_edge_m * unit)
    ok &= area > mc.min_triangle * d_world.pow(2).amax(1)
    if not bool(ok.any()):
        return fail('no_hypothesis', f'none of {tri.shape[0]} depth triplets was rigid '
                    'between the map and the depth image', n_cand)
    R, t = kabsch(P[ok], Q[ok])

    pc = se3.transform(cpts.float(), R.float(), t.float())        # (M', n, 3)
    uv_h, vis = se3.project(pc, K.float(), mc.min_depth)
    nre = cmaps.lookup(uv_h, vis)
    cost = nre.sum(1)
    best = int(cost.argmin())
    far = se3.rotation_angle_deg(R, R[best:best + 1]) > 5.0
    runner = float(cost[far].min()) if bool(far.any()) else float('inf')
    support = int((nre[best] < chance - mc.support_margin).sum())
    elapsed = (time.perf_counter() - t0) * 1e3
    if support < mc.min_support:
        return MsacResult(None, float(cost[best]), runner, support, n_cand, R.shape[0],
                          n_cand * chance, elapsed, 'no_hypothesis',
                          f'best of {R.shape[0]} depth hypotheses is supported by {support} of '
                          f'{n_cand} candidates, need {mc.min_support}')
    return MsacResult(se3.make_T(R[best], t[best]), float(cost[best]), runner, support, n_cand,
                      R.shape[0], n_cand * chance, elapsed)
