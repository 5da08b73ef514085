"""The compiled GNC kernels (nre_ros.solver._gnc_kernels) against the torch path they replace,
on exact synthetic maps: patches, smoothed terms, refinements."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nre_ros import compiled
from nre_ros.lossmaps import LossMaps
from nre_ros.solver import GncConfig, refine, solve_coarse
from nre_ros.solver.gnc import KERNELS, _Windows, information, smoothed_terms
from nre_ros.solver.synthetic import fine_builder, random_scene

pytestmark = pytest.mark.skipif(compiled.kernels(KERNELS) is None,
                                reason='compiled kernels unavailable (numba missing or '
                                'NRE_ROS_NUMBA=0)')


@pytest.fixture(scope='module')
def scene():
    s = random_scene(400, 0.4, noise=1.0, seed=21)
    sol = solve_coarse(s.points_world, s.maps, s.K)
    fine = fine_builder(s, ratio=4, window=16, noise=1.0)(sol.T_cam_world)
    return s, sol.T_cam_world, fine


def _close(got, ref):
    """Equal to float32 rounding: torch sums the window moments in float32, the kernel in
    float64, so terms that nearly cancel (b, S) differ by ~1e-7 of the largest term."""
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def _torch(monkeypatch, fn):
    with monkeypatch.context() as m:
        m.setenv('NRE_ROS_NUMBA', '0')
        return fn()


def _projections(points, T, K, jitter=0.0, seed=0):
    pc = points @ T[:3, :3].T + T[:3, 3]
    uv = (pc[:, :2] / pc[:, 2:]) * torch.stack([K[0, 0], K[1, 1]]) + K[:2, 2]
    g = torch.Generator().manual_seed(seed)
    return uv + jitter * torch.randn(uv.shape, generator=g, dtype=uv.dtype), pc[:, 2] > 0


def test_patches_equal_torch(scene, monkeypatch):
    s, T, _ = scene
    uv, _ = _projections(s.points_world, T, s.K, jitter=8.0)   # some patches cross the edge
    centre = uv.float().round()
    got = _Windows(s.maps, 10)
    assert got.kernels is not None
    G, peak = got._gather(centre, None)
    ref = _torch(monkeypatch, lambda: _Windows(s.maps, 10))
    assert ref.kernels is None
    G_ref, _ = ref._gather(centre, None)
    assert torch.equal(G, G_ref)
    assert torch.equal(peak, G_ref.reshape(G.shape[0], -1).amax(dim=1))


@pytest.mark.parametrize('sigma', [2.0, 0.8])
@pytest.mark.parametrize('level', ['coarse', 'fine'])
def test_smoothed_terms_equal_torch(scene, monkeypatch, sigma, level):
    s, T, fine = scene
    maps, K = (s.maps, s.K) if level == 'coarse' else (fine.maps, fine.K)
    uv, valid = _projections(s.points_world, T, K, jitter=3.0)
    uv[:5] += torch.tensor([2000.0, 0.0], dtype=uv.dtype)               # far outside: unused
    got = smoothed_terms(maps, uv, valid, sigma, second_moments=True)
    ref = _torch(monkeypatch, lambda: smoothed_terms(maps, uv, valid, sigma,
                                                     second_moments=True))
    assert float(got[0].abs().sum()) > 1.0                             # the maps are read
    _close(got, ref)


@pytest.mark.parametrize('level', ['coarse', 'fine'])
def test_refinement_equals_torch(scene, monkeypatch, level):
    s, T, fine = scene
    maps, K = (s.maps, s.K) if level == 'coarse' else (fine.maps, fine.K)
    T0 = T.clone()
    T0[:3, 3] += torch.tensor([0.02, -0.01, 0.03], dtype=T.dtype)
    got = refine(s.points_world, maps, K, T0, GncConfig())
    ref = _torch(monkeypatch, lambda: refine(s.points_world, maps, K, T0, GncConfig()))
    np.testing.assert_allclose(got.T_cam_world.numpy(), ref.T_cam_world.numpy(), atol=1e-7)
    assert got.iterations == ref.iterations and got.evaluations == ref.evaluations
    assert got.cost == pytest.approx(ref.cost, rel=1e-5)
    np.testing.assert_allclose(got.information.numpy(), ref.information.numpy(), rtol=1e-4,
                               atol=1e-6 * float(ref.information.abs().max()))


def test_window_maps_at_the_grid_edge(monkeypatch):
    """Window maps whose kernel support crosses the window's edge: cells beyond add nothing."""
    g = torch.Generator().manual_seed(3)
    maps = LossMaps(torch.rand(6, 8, 8, generator=g) * 5, 5.0, (64, 48),
                    torch.tensor([[0, 0], [10, 4], [56, 40], [20, 20], [30, 2], [2, 30]]))
    uv = torch.tensor([[0.2, 0.4], [9.3, 11.6], [63.4, 47.2], [24.0, 23.5], [31.0, 1.2],
                       [-1.5, 33.0]], dtype=torch.float64)
    valid = torch.ones(6, dtype=torch.bool)
    got = smoothed_terms(maps, uv, valid, 1.0, second_moments=True)
    ref = _torch(monkeypatch, lambda: smoothed_terms(maps, uv, valid, 1.0,
                                                     second_moments=True))
    _close(got, ref)


@pytest.mark.parametrize('kind', ['laplace', 'irls'])
def test_information_equals_torch(scene, monkeypatch, kind):
    """The normal equations (per-point PSD curvature, Jacobians, sums) of both step kinds."""
    s, T, _ = scene
    got = information(s.points_world, s.maps, s.K, T, 1.0, kind=kind)
    ref = _torch(monkeypatch, lambda: information(s.points_world, s.maps, s.K, T, 1.0,
                                                  kind=kind))
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-5,
                               atol=1e-7 * float(ref.abs().max()))


def test_warmup_compiles_every_kernel():
    """compiled.warmup (what Relocalizer.warmup runs) compiles every kernel a query uses: a
    coarse + fine solve and fine maps from descriptors afterwards compile nothing new."""
    from nre_ros.lossmaps import coarse_loss_maps, fine_loss_maps
    from nre_ros.solver import intrinsics_check, refine_level, solve_coarse, verdict
    assert compiled.warmup()
    names = ('nre_ros._lossmaps_kernels', 'nre_ros.solver._gnc_kernels',
             'nre_ros.solver._p3p_kernels', 'nre_ros.solver._intrinsics_kernels')
    kernels = [k for name in names for k in vars(compiled.kernels(name)).values()
               if hasattr(k, 'signatures')]
    before = [len(k.signatures) for k in kernels]
    s = random_scene(300, 0.3, noise=1.0, seed=4)
    sol = solve_coarse(s.points_world, s.maps, s.K)
    fine = fine_builder(s, ratio=4, window=16, noise=1.0)(sol.T_cam_world)
    refined = refine_level(sol, fine)
    assert verdict(refined).ok
    _, est = intrinsics_check.check(s.points_world, fine.maps, fine.K, refined.T_cam_world)
    assert est is not None
    _, est = intrinsics_check.check_gross(s.points_world, s.maps, s.K, sol.T_cam_world)
    assert est is not None
    g = torch.Generator().manual_seed(0)
    q, p = torch.randn(8, 60, 80, generator=g), torch.randn(300, 8, generator=g)
    coarse = coarse_loss_maps(q[:, ::4, ::4], p, 2.0)
    centres = torch.rand(300, 2, generator=g) * 70
    fine_loss_maps(q, p, centres, coarse, 4, 2.0, 16)
    fine_loss_maps(q.permute(1, 2, 0).contiguous().permute(2, 0, 1), p, centres, coarse, 4, 2.0,
                   16)                                   # descriptors as (H, W, C) rows
    assert [len(k.signatures) for k in kernels] == before
    assert sum(before) >= 9


def test_warmup_says_when_it_compiles(monkeypatch, caplog):
    """A first run after an install (empty numba cache beside the kernels) is announced before
    the seconds of compiling, not discovered as a silent stall; a filled cache is detected."""
    compiled.warmup()                                     # the cache beside the modules is filled
    assert not compiled._cache_is_cold()
    monkeypatch.setenv('NUMBA_CACHE_DIR', '/nonexistent')  # cache elsewhere: unknown, no claim
    assert not compiled._cache_is_cold()
    monkeypatch.delenv('NUMBA_CACHE_DIR')
    monkeypatch.setattr(compiled, '_cache_is_cold', lambda: True)
    with caplog.at_level('INFO', logger='nre_ros.compiled'):
        assert compiled.warmup()
    assert any(r.levelname == 'WARNING' and 'compiling the CPU kernels' in r.getMessage()
               for r in caplog.records)


def _solve_with_fine_maps(threads: int) -> tuple:
    """Coarse maps, a coarse + fine solve and fine maps from descriptors on ``threads`` torch
    (and so numba) threads."""
    from nre_ros.lossmaps import coarse_loss_maps, fine_loss_maps
    from nre_ros.solver import refine_level, verdict
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        s = random_scene(1000, 0.5, noise=1.0, seed=8)
        sol = solve_coarse(s.points_world, s.maps, s.K)
        fine = fine_builder(s, ratio=4, window=16, noise=1.0)(sol.T_cam_world)
        res = verdict(refine_level(sol, fine))
        g = torch.Generator().manual_seed(0)
        q, p = torch.randn(64, 240, 320, generator=g), torch.randn(1000, 64, generator=g)
        coarse = coarse_loss_maps(q[:, ::4, ::4], p, 0.5)
        windows = fine_loss_maps(q, p, torch.rand(1000, 2, generator=g) * 330 - 5, coarse, 4,
                                 0.5, 16)
        return res.T_cam_world, res.iterations, coarse.maps, windows.maps
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(compiled.available() and
                    __import__('numba').config.NUMBA_NUM_THREADS < 2, reason='one CPU')
def test_parallel_kernels_do_not_depend_on_the_thread_count():
    """The parallel kernels (windows, log-mass, truncation, patches, moments, lookups) split
    points across threads without changing any sum: 1 and 2 threads give the same bits."""
    one, two = _solve_with_fine_maps(1), _solve_with_fine_maps(2)
    assert np.array_equal(one[0], two[0]) and one[1] == two[1]
    assert torch.equal(one[2], two[2]) and torch.equal(one[3], two[3])


def test_small_calls_run_on_one_thread():
    torch_threads = torch.get_num_threads()
    assert compiled.threads() == min(torch_threads,
                                     __import__('numba').config.NUMBA_NUM_THREADS)
    assert compiled.threads(compiled.PARALLEL_MIN_WORK - 1) == 1
    assert compiled.threads(compiled.PARALLEL_MIN_WORK) == compiled.threads()
