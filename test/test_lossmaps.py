"""Tests of nre_ros.lossmaps: exact values, truncation, lookups, window placement, mass."""
from __future__ import annotations

import math

import pytest
import torch

from nre_ros.lossmaps import (LossMaps, coarse_loss_maps, fine_loss_maps,
                              fine_loss_maps_from_logits, loss_maps_from_logits, window_logits,
                              window_origins)
from nre_ros.solver.synthetic import gaussian_logits


def _random_desc(c=16, h=6, w=9, n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(c, h, w, generator=g), torch.randn(n, c, generator=g)


class TestCoarseLossMaps:
    def test_matches_float64_reference(self):
        q, p = _random_desc()
        maps = coarse_loss_maps(q, p, inv_temperature=2.5)
        logits = 2.5 * p.double() @ q.double().reshape(16, -1)
        ref = (-torch.log_softmax(logits, dim=1)).clamp(max=math.log(6 * 9 + 1)).reshape(5, 6, 9)
        assert maps.maps.dtype == torch.float32 and maps.maps.shape == (5, 6, 9)
        assert maps.ln_omega == pytest.approx(math.log(55))
        assert maps.grid_size == (9, 6)
        torch.testing.assert_close(maps.maps.double(), ref, atol=1e-4, rtol=1e-5)

    def test_truncation_is_active(self):
        q, p = _random_desc()
        maps = coarse_loss_maps(q, p, inv_temperature=10.0)
        assert float(maps.maps.max()) == pytest.approx(maps.ln_omega)
        assert float(maps.maps.min()) >= 0.0

    def test_chunked_equals_single_pass(self):
        q, p = _random_desc(n=37)
        full = coarse_loss_maps(q, p, 3.0)
        chunked = coarse_loss_maps(q, p, 3.0, chunk_elements=54 * 4)  # 4 points per chunk
        torch.testing.assert_close(full.maps, chunked.maps)

    def test_minima_found_on_the_way_are_the_maps_first_minima(self):
        q, p = _random_desc(c=8, h=12, w=16, n=40)
        q = q.round()                  # integer descriptors: ties between cells are common
        p = p.round()
        maps = coarse_loss_maps(q, p, 1.0)
        assert maps.minima is not None and maps.min_cells is not None
        flat = maps.maps.reshape(40, -1)
        low, first = flat.min(dim=1)
        assert torch.equal(maps.minima, low)
        assert torch.equal(maps.min_cells, torch.stack([first % 16, first // 16], 1))
        ties = (flat == low[:, None]).sum(1) > 1
        assert bool(ties.any())        # the first occurrence was tested
        plain = LossMaps(maps.maps, maps.ln_omega, maps.grid_size)
        index = torch.tensor([3, 0, 39, 17])
        torch.testing.assert_close(maps.argmin_uv(True), plain.argmin_uv(True))
        torch.testing.assert_close(maps.argmin_uv(True, index), plain.argmin_uv(True, index))
        sub = maps.select(index)
        assert torch.equal(sub.map_min, low[index])
        # replacing the maps drops the minima found for the old ones
        from dataclasses import replace
        flat = replace(maps, maps=torch.zeros_like(maps.maps))
        assert flat.minima is None and flat.min_cells is None
        assert float(flat.map_min.max()) == 0.0
        torch.testing.assert_close(sub.argmin_uv(False), plain.argmin_uv(False, index))

    def test_minima_of_a_non_finite_descriptor_are_nan(self):
        q, p = _random_desc(n=6)
        p[2, 0] = float('nan')
        maps = coarse_loss_maps(q, p, 2.0)
        assert bool(torch.isnan(maps.minima[2]))
        keep = torch.tensor([0, 1, 3, 4, 5])
        torch.testing.assert_close(maps.minima[keep], coarse_loss_maps(q, p[keep], 2.0).minima)
        assert not bool(maps.peakedness()[2] >= 0)        # never counted as peaked

    def test_bf16_matmul_is_within_rounding_of_float32(self):
        """bf16 dot products, shifted so that the resolved logits are the finest rounded:
        within 0.15 nats of float32 wherever a map is below its cap (a bf16 network's own
        descriptors differ more from float32's), also for descriptors that are not unit-norm."""
        g = torch.Generator().manual_seed(1)
        smooth = torch.nn.functional.interpolate(torch.randn(1, 64, 6, 8, generator=g),
                                                 size=(30, 40), mode='bilinear')[0]
        q = torch.nn.functional.normalize(smooth, dim=0)   # neighbours alike: wide bumps
        cells = torch.randint(0, 1200, (300,), generator=g)
        p = q.reshape(64, -1)[:, cells].T + 0.06 * torch.randn(300, 64, generator=g)
        for scale in (1.0, 3.0):
            ref = coarse_loss_maps(q.double() * scale, p.double(), 20.0).maps.float()
            got = coarse_loss_maps(q * scale, p, 20.0, matmul_dtype=torch.bfloat16)
            resolved = ref < got.ln_omega - 0.5
            assert int(resolved.sum()) > 3000
            err = (got.maps - ref)[resolved].abs()
            assert float(err.max()) < 0.15, float(err.max())
            assert float(err.median()) < 0.03, float(err.median())
            assert float((got.maps - ref).abs().max()) < 0.2
            low, first = got.maps.reshape(300, -1).min(dim=1)
            assert torch.equal(got.minima, low)
        with pytest.raises(ValueError, match='matmul_dtype'):
            coarse_loss_maps(q, p, 20.0, matmul_dtype=torch.float16)

    def test_normalize(self):
        q, p = _random_desc()
        a = coarse_loss_maps(q, p, 5.0, normalize=True)
        b = coarse_loss_maps(q / q.norm(dim=0, keepdim=True), p / p.norm(dim=1, keepdim=True), 5.0)
        torch.testing.assert_close(a.maps, b.maps)

    def test_flat_map_sits_just_below_cap(self):
        maps = loss_maps_from_logits(torch.zeros(1, 60, 80))
        assert float(maps.maps.max()) == pytest.approx(math.log(4800), abs=1e-4)
        assert float(maps.peakedness()[0]) == pytest.approx(math.log(4801 / 4800), abs=1e-4)


class TestLookup:
    def test_integer_cells_and_bilinear(self):
        maps = loss_maps_from_logits(torch.randn(2, 5, 7, generator=torch.Generator()
                                                 .manual_seed(1)))
        m = maps.maps
        uv = torch.tensor([[3.0, 2.0], [1.25, 3.5]])
        got = maps.lookup(uv)
        assert float(got[0]) == pytest.approx(float(m[0, 2, 3]), abs=1e-6)
        a = 0.75 * m[1, 3, 1] + 0.25 * m[1, 3, 2]
        b = 0.75 * m[1, 4, 1] + 0.25 * m[1, 4, 2]
        assert float(got[1]) == pytest.approx(float(0.5 * a + 0.5 * b), abs=1e-5)

    def test_outside_and_invalid_cost_ln_omega(self):
        maps = loss_maps_from_logits(torch.zeros(3, 5, 7))
        uv = torch.tensor([[-3.0, 1.0], [2.0, 2.0], [float('nan'), 1.0]])
        got = maps.lookup(uv, valid=torch.tensor([True, False, True]))
        assert torch.allclose(got, torch.full((3,), maps.ln_omega))
        # half of the bilinear stencil outside: half the cap
        edge = maps.lookup(torch.tensor([[-0.5, 2.0], [6.5, 2.0], [3.0, 4.5]]))
        inside = float(maps.maps[0, 0, 0])
        assert torch.allclose(edge, torch.full((3,), 0.5 * (maps.ln_omega + inside)))

    def test_batched_hypotheses(self):
        maps = loss_maps_from_logits(torch.randn(4, 6, 8))
        uv = torch.rand(10, 4, 2) * 5
        got = maps.lookup(uv)
        assert got.shape == (10, 4)
        torch.testing.assert_close(got[3], maps.lookup(uv[3]))


def test_subcell_argmin_of_gaussian_bump():
    peaks = torch.tensor([[10.3, 7.8], [0.0, 0.0], [40.6, 20.2]])
    maps = loss_maps_from_logits(gaussian_logits(peaks, (64, 48), spread=1.0))
    assert torch.equal(maps.argmin_uv(subcell=False), torch.tensor([[10., 8.], [0., 0.], [41., 20.]]))
    err = (maps.argmin_uv() - peaks).abs()
    assert float(err.max()) < 1e-3  # the loss of a Gaussian bump is quadratic: exact vertex


class TestFineMaps:
    def test_window_is_centred(self):
        c = torch.tensor([[10.0, 20.0], [10.4, 19.6], [3.5, 3.5]])
        o = window_origins(c, 16)
        assert ((o.float() + 7.5) - c).abs().max() <= 0.5
        o = window_origins(c, 17)
        assert torch.equal(o[0], torch.tensor([2, 12]))

    def test_peak_reads_back_at_known_cell(self):
        # Fine descriptors: one-hot per cell index, the point matches cell (37, 21) exactly.
        hf, wf, r = 48, 64, 4
        c = hf * wf
        q = torch.eye(c).reshape(c, hf, wf)
        target = (37, 21)
        p = torch.zeros(1, c)
        p[0, target[1] * wf + target[0]] = 1.0
        coarse = loss_maps_from_logits(torch.zeros(1, hf // r, wf // r))
        centre = torch.tensor([[33.2, 25.7]])  # target inside the window, off-centre
        fine = fine_loss_maps(q, p, centre, coarse, r, inv_temperature=20.0, window=16)
        assert fine.maps.shape == (1, 16, 16)
        _, xy = fine.min_loss()
        assert xy[0].tolist() == list(target)
        assert float(fine.lookup(torch.tensor([[37.0, 21.0]]))[0]) == pytest.approx(
            float(fine.maps.min()))
        assert torch.allclose(fine.argmin_uv(subcell=False), torch.tensor([[37.0, 21.0]]))

    def test_mass_follows_coarse_map(self):
        # Coarse map certain of cell (5, 4); a window covering it keeps all of its mass, a
        # window elsewhere gets almost none.
        r, window = 4, 8
        coarse_logits = torch.full((2, 12, 16), -50.0)
        coarse_logits[:, 4, 5] = 0.0
        coarse = loss_maps_from_logits(coarse_logits)
        origin = torch.tensor([[18, 14], [40, 30]])  # fine (18..25, 14..21) covers coarse (5,4)
        logits = torch.zeros(2, window, window)
        fine = fine_loss_maps_from_logits(logits, origin, coarse, r, (64, 48))
        mass = torch.exp(-fine.maps.double()).sum(dim=(1, 2))
        assert float(mass[0]) == pytest.approx(1.0, abs=1e-3)
        assert float(fine.maps[1].min()) == pytest.approx(fine.ln_omega)
        half = fine_loss_maps_from_logits(logits, origin, coarse, r, (64, 48), divisor=2.0)
        assert float(half.maps[0, 0, 0] - fine.maps[0, 0, 0]) == pytest.approx(math.log(2), abs=1e-4)

    def test_cells_outside_fine_grid_cost_ln_omega(self):
        coarse = loss_maps_from_logits(torch.zeros(1, 12, 16))
        fine = fine_loss_maps_from_logits(torch.zeros(1, 8, 8), torch.tensor([[-4, -4]]), coarse,
                                          4, (64, 48))
        assert torch.all(fine.maps[0, :4, :] == fine.ln_omega)
        assert torch.all(fine.maps[0, 4:, 4:] < fine.ln_omega)
        assert fine.lookup(torch.tensor([[-2.0, -2.0]]))[0] == pytest.approx(fine.ln_omega)

    def test_select_keeps_origin(self):
        coarse = loss_maps_from_logits(torch.zeros(3, 12, 16))
        fine = fine_loss_maps_from_logits(torch.randn(3, 8, 8), torch.tensor([[0, 0], [8, 8],
                                                                               [16, 4]]),
                                          coarse, 4, (64, 48))
        sub = fine.select(torch.tensor([2]))
        assert isinstance(sub, LossMaps) and sub.origin.tolist() == [[16, 4]]


def test_fine_maps_read_coarse_rows_in_place():
    """``coarse_index=`` reads the coarse rows in place: the same maps as from the copy."""
    g = torch.Generator().manual_seed(3)
    coarse = loss_maps_from_logits(4 * torch.randn(6, 12, 16, generator=g))
    index = torch.tensor([4, 0, 5])
    q, p = _random_desc(c=8, h=48, w=64, n=3, seed=4)
    centres = torch.tensor([[10.3, 12.0], [40.0, 30.6], [60.0, 2.0]])
    a = fine_loss_maps(q, p, centres, coarse.select(index), 4, 5.0, window=8)
    b = fine_loss_maps(q, p, centres, coarse, 4, 5.0, window=8, coarse_index=index)
    torch.testing.assert_close(a.maps, b.maps)
    assert torch.equal(a.origin, b.origin)
    with pytest.raises(Exception, match='must hold 3 points'):
        fine_loss_maps(q, p, centres, coarse, 4, 5.0, window=8, coarse_index=index[:2])


@pytest.mark.parametrize('tile', [1, 5, 48])
def test_window_logits_match_direct_dot_products(tile):
    """Tiled window logits equal p_n . q(cell) read cell by cell, for windows inside, across
    every edge and wholly outside the grid (cells outside the grid hold 0)."""
    q, p = _random_desc(c=8, h=23, w=31, n=40, seed=5)
    g = torch.Generator().manual_seed(6)
    origin = torch.stack([torch.randint(-12, 36, (40,), generator=g),
                          torch.randint(-12, 28, (40,), generator=g)], dim=1)
    s = 6
    out = window_logits(q, p, origin, s, tile)
    d = torch.arange(s)
    xs = origin[:, 0, None, None] + d[None, None, :]             # (N, 1, S)
    ys = origin[:, 1, None, None] + d[None, :, None]             # (N, S, 1)
    inside = (xs >= 0) & (xs < 31) & (ys >= 0) & (ys < 23)
    cells = q[:, ys.clamp(0, 22), xs.clamp(0, 30)]                # (C, N, S, S)
    ref = torch.einsum('cnij,nc->nij', cells, p) * inside
    assert out.shape == (40, s, s)
    assert bool((~inside).any()) and bool(inside.any())       # both kinds are exercised
    torch.testing.assert_close(out * inside, ref)


def _needs_kernels():
    from nre_ros import compiled, lossmaps_numba
    if compiled.kernels(lossmaps_numba.KERNELS) is None:
        pytest.skip('compiled kernels unavailable (numba missing or NRE_ROS_NUMBA=0)')


class TestNumbaKernels:
    """The compiled CPU kernels (nre_ros.lossmaps_numba) against the torch reference, on random
    data with windows inside, across every edge and wholly outside the fine grid."""

    @staticmethod
    def _problem(seed=7):
        """Fine grid 52 x 40, coarse 13 x 10 (4 fine cells per coarse cell); point k's coarse
        map (row index[k]) peaks near its window centre, as after a coarse solve."""
        g = torch.Generator().manual_seed(seed)
        q, p = _random_desc(c=12, h=40, w=52, n=120, seed=seed)
        centres = torch.rand(120, 2, generator=g) * torch.tensor([80.0, 64.0]) - 14
        index = torch.randperm(130, generator=g)[:120]
        peaks = torch.rand(130, 2, generator=g) * torch.tensor([12.0, 9.0])
        peaks[index] = (centres + 0.5) / 4 - 0.5 + torch.randn(120, 2, generator=g)
        coarse = loss_maps_from_logits(gaussian_logits(peaks, (13, 10), 1.5))
        return q, p, coarse, index, centres

    @pytest.mark.parametrize('s', [16, 7])
    def test_fine_maps_equal_torch(self, s, monkeypatch):
        _needs_kernels()
        from nre_ros import lossmaps_numba
        q, p, coarse, index, centres = self._problem()
        got = fine_loss_maps(q, p, centres, coarse, 4, 0.3, s, divisor=2.0, coarse_index=index)
        monkeypatch.setenv('NRE_ROS_NUMBA', '0')
        assert not lossmaps_numba.usable(q)
        ref = fine_loss_maps(q, p, centres, coarse, 4, 0.3, s, divisor=2.0, coarse_index=index)
        assert torch.equal(got.origin, ref.origin)
        capped = ref.maps == ref.ln_omega
        assert 0.2 < float(capped.float().mean()) < 0.8      # both kinds of cells exercised
        torch.testing.assert_close(got.maps, ref.maps, atol=2e-5, rtol=1e-6)

    @pytest.mark.parametrize('layout', ['chw', 'hwc'])
    def test_window_logits_equal_torch(self, layout):
        """Both kernels: descriptors as contiguous (C, H, W) planes and as a (C, H, W) view of
        (H, W, C) rows (channels-last networks), read in place."""
        _needs_kernels()
        from nre_ros import lossmaps_numba
        q, p, _, _, centres = self._problem()
        if layout == 'hwc':
            q = q.permute(1, 2, 0).contiguous().permute(2, 0, 1)
            assert not q.is_contiguous()
        origin = window_origins(centres, 9)
        got = lossmaps_numba.window_logits(q, p, origin, 9)
        ref = window_logits(q, p, origin, 9)
        d = torch.arange(9)
        xs = origin[:, 0, None, None] + d[None, None, :]
        ys = origin[:, 1, None, None] + d[None, :, None]
        inside = (xs >= 0) & (xs < 52) & (ys >= 0) & (ys < 40)
        assert bool((~inside.flatten(1).any(1)).any())           # a window wholly outside
        torch.testing.assert_close(got * inside, ref * inside, atol=1e-5, rtol=1e-5)
        assert bool((got[~inside] == 0).all())

    def test_fine_and_coarse_maps_read_either_layout(self):
        """Loss maps from (H, W, C)-row descriptors equal those from the same values in
        contiguous (C, H, W) planes."""
        _needs_kernels()
        q, p, coarse, index, centres = self._problem()
        rows = q.permute(1, 2, 0).contiguous().permute(2, 0, 1)
        a = fine_loss_maps(q, p, centres, coarse, 4, 0.3, 16, coarse_index=index)
        b = fine_loss_maps(rows, p, centres, coarse, 4, 0.3, 16, coarse_index=index)
        torch.testing.assert_close(a.maps, b.maps, atol=2e-5, rtol=1e-6)
        qc = q[:, ::4, ::4]
        qc_rows = qc.permute(1, 2, 0).contiguous().permute(2, 0, 1)
        torch.testing.assert_close(coarse_loss_maps(qc, p, 5.0).maps,
                                   coarse_loss_maps(qc_rows, p, 5.0).maps, atol=1e-5, rtol=1e-6)

    def test_non_finite_logits_read_the_cap(self):
        _needs_kernels()
        coarse = loss_maps_from_logits(torch.zeros(2, 12, 16))
        logits = torch.zeros(2, 8, 8)
        logits[0, 3, 3] = float('nan')
        got = fine_loss_maps_from_logits(logits, torch.tensor([[4, 4], [-2, 0]]), coarse, 4,
                                         (64, 48))
        assert bool((got.maps[0] == got.ln_omega).all())
        assert bool((got.maps[1, :, :2] == got.ln_omega).all())
        assert bool((got.maps[1, :, 2:] < got.ln_omega).all())

    def test_torch_path_kept_for_gradients(self):
        _needs_kernels()
        from nre_ros import lossmaps_numba
        x = torch.zeros(3, requires_grad=True)
        assert not lossmaps_numba.usable(x)
        assert lossmaps_numba.usable(x.detach())
        assert lossmaps_numba.warmup()

    def test_bilinear_cost_equals_torch(self, monkeypatch):
        _needs_kernels()
        g = torch.Generator().manual_seed(8)
        maps = loss_maps_from_logits(3 * torch.randn(7, 9, 11, generator=g))
        uv = torch.rand(5, 7, 2, generator=g) * torch.tensor([15.0, 13.0]) - 2   # some outside
        uv[0, 0, 0] = float('nan')
        uv[1, 2, 1] = float('inf')
        valid = torch.rand(5, 7, generator=g) > 0.2
        got = maps.lookup(uv, valid), maps.lookup(uv)
        monkeypatch.setenv('NRE_ROS_NUMBA', '0')
        ref = maps.lookup(uv, valid), maps.lookup(uv)
        assert bool((ref[1] < maps.ln_omega).any()) and bool((ref[1] == maps.ln_omega).any())
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)

    def test_argmin_of_selected_maps_equals_torch(self, monkeypatch):
        """The compiled argmin reads the selected maps in place and finds the torch path's
        cells (first minimum in row-major order: ties, flat maps, minima on every edge) and
        subcell offsets."""
        _needs_kernels()
        g = torch.Generator().manual_seed(9)
        maps = torch.rand(40, 9, 11, generator=g) * 5
        maps[3] = 2.0                                           # flat: cell (0, 0)
        maps[4, 2, 7] = maps[4, 6, 1] = maps[4, 2, 9] = -1.0     # ties: the first row, column
        maps[5, 8, 10] = maps[6, 0, 5] = maps[7, 4, 0] = -1.0    # on the edges
        fine = LossMaps(maps, 5.0, (60, 50), torch.randint(-5, 50, (40, 2), generator=g))
        index = torch.tensor([4, 3, 7, 5, 6, 4, 0, 39, 21])
        got = fine.argmin_uv(True, index), fine.argmin_uv(False, index)
        monkeypatch.setenv('NRE_ROS_NUMBA', '0')
        ref = fine.select(index).argmin_uv(True), fine.select(index).argmin_uv(False)
        assert torch.equal(ref[1][:5] - fine.origin[index[:5]],
                           torch.tensor([[7.0, 2], [0, 0], [0, 4], [10, 8], [5, 0]]))
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
        assert torch.equal(fine.argmin_uv(True, index), ref[0])    # the torch path too

    def test_coarse_maps_equal_torch(self, monkeypatch):
        _needs_kernels()
        q, p = _random_desc(n=40)
        got = coarse_loss_maps(q, p, 6.0)
        chunked = coarse_loss_maps(q, p, 6.0, chunk_elements=54 * 7)
        monkeypatch.setenv('NRE_ROS_NUMBA', '0')
        ref = coarse_loss_maps(q, p, 6.0)
        assert bool((ref.maps == ref.ln_omega).any())                 # truncation exercised
        assert torch.equal(got.maps, ref.maps)
        # chunks are smaller matrix products, which BLAS may sum in another order (AMD EPYC)
        torch.testing.assert_close(chunked.maps, ref.maps, atol=2e-5, rtol=0)
