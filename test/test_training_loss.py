"""NRE training loss (Eq. 10): gradients, minimum at the ground truth, masking."""
from __future__ import annotations

import math

import pytest
import torch

from nre_training.loss import coarse_loss, cross_entropy_at, splat, window_loss


def test_splat_weights_sum_to_one_and_hit_the_right_cells():
    uv = torch.tensor([[1.25, 1.5], [0.0, 0.0], [3.0, 2.0]], dtype=torch.float64)
    index, weight, inside = splat(uv, (4, 3))
    assert inside.tolist() == [True, True, True]
    assert torch.allclose(weight.sum(1), torch.ones(3, dtype=torch.float64))
    uv2 = torch.tensor([[1.25, 1.5]], dtype=torch.float64)
    index, weight, inside = splat(uv2, (4, 3))
    assert index.tolist() == [[1 * 4 + 1, 1 * 4 + 2, 2 * 4 + 1, 2 * 4 + 2]]
    assert torch.allclose(weight, torch.tensor([[0.375, 0.125, 0.375, 0.125]],
                                               dtype=torch.float64))
    # exactly on the last cell: all mass there
    index, weight, _ = splat(torch.tensor([[3.0, 2.0]]), (4, 3))
    mass = torch.zeros(12).index_add_(0, index[0], weight[0])
    assert mass[2 * 4 + 3] == pytest.approx(1.0)


def test_out_of_grid_points_are_masked():
    uv = torch.tensor([[1.25, 2.5], [-0.1, 1.0], [float('nan'), 1.0], [1.0, 1.0]])
    _, _, inside = splat(uv, (4, 3))
    assert inside.tolist() == [False, False, False, True]


def test_gradcheck_coarse_and_window_loss():
    g = torch.Generator().manual_seed(0)
    n, c, h, w = 3, 4, 3, 5
    desc = torch.randn(n, c, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(c, h, w, generator=g, dtype=torch.float64, requires_grad=True)
    tau = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    uv = torch.tensor([[0.3, 1.7], [3.5, 0.2], [2.0, 1.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda d, t, s: coarse_loss(d, t, s, uv)[0],
                                     (desc, target, tau))
    win = torch.randn(n, 4, 4, c, generator=g, dtype=torch.float64, requires_grad=True)
    uvl = torch.tensor([[0.3, 1.7], [2.5, 0.2], [3.0, 3.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda d, t, s: window_loss(d, t, s, uvl)[0],
                                     (desc, win, tau))


def test_loss_is_minimal_at_the_ground_truth_map():
    """CE(q || C) >= H(q) with equality iff C = q: the splat itself is the optimum."""
    w, h = 6, 5
    uv = torch.tensor([[2.3, 1.6], [4.0, 3.0]], dtype=torch.float64)
    index, weight, _ = splat(uv, (w, h))
    q = torch.zeros(2, w * h, dtype=torch.float64).scatter_add_(1, index, weight)
    entropy = -(q * torch.log(q.clamp(min=1e-300))).sum(1)
    logits_gt = torch.log(q.clamp(min=1e-30))
    loss_gt, _ = cross_entropy_at(logits_gt, uv, (w, h))
    assert torch.allclose(loss_gt, entropy, atol=1e-9)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        noisy = logits_gt + 0.5 * torch.randn(logits_gt.shape, generator=g, dtype=torch.float64)
        assert (cross_entropy_at(noisy, uv, (w, h))[0] >= entropy - 1e-9).all()
    # a peaked map: loss smallest when the peak sits on the ground-truth cell
    losses = []
    for cell in range(w * h):
        logits = torch.full((1, w * h), 0.0, dtype=torch.float64)
        logits[0, cell] = 10.0
        losses.append(float(cross_entropy_at(logits, torch.tensor([[4.0, 3.0]]), (w, h))[0]))
    assert min(range(w * h), key=losses.__getitem__) == 3 * w + 4


def test_masked_points_contribute_nothing():
    g = torch.Generator().manual_seed(2)
    desc = torch.randn(3, 4, generator=g, requires_grad=True)
    target = torch.randn(4, 3, 5, generator=g)
    uv = torch.tensor([[0.5, 0.5], [1.0, 1.0], [9.0, 9.0]])        # last: outside the grid
    valid = torch.tensor([True, False, True])                       # second: occluded
    loss, mask = coarse_loss(desc, target, 1.0, uv, valid)
    assert mask.tolist() == [True, False, False]
    only, _ = coarse_loss(desc[:1], target, 1.0, uv[:1])
    assert torch.allclose(loss, only)
    loss.backward()
    assert desc.grad[1:].abs().max() == 0
    # everything masked: 0, finite, no NaN gradient
    desc.grad = None
    zero, _ = coarse_loss(desc, target, 1.0, uv, torch.zeros(3, dtype=torch.bool))
    zero.backward()
    assert float(zero.detach()) == 0.0 and torch.isfinite(desc.grad).all()


def test_uniform_map_costs_log_of_cells():
    loss, _ = coarse_loss(torch.zeros(2, 3), torch.zeros(3, 4, 5), 1.0,
                          torch.tensor([[1.5, 2.5], [0.0, 3.0]]))
    assert float(loss) == pytest.approx(math.log(20))
