"""The NRE training loss (Germain et al. CVPR 2021, Eq. 10, §6, App. D.2).

For a source point n with descriptor h_n, the predicted correspondence map over the target grid
is C_n = softmax_p(tau * h_n . H_T(p)) and the target pmf q_n is the bilinear splat of the
ground-truth reprojection w_n over its 4 neighbouring cells (f = w - floor(w),
w00 = (1-fx)(1-fy), w10 = fx(1-fy), w01 = (1-fx)fy, w11 = fx fy). The loss is the cross-entropy

    NRE_n = -sum_p q_n(p) ln C_n(p)       (s_n = 1, no truncation)

i.e. the bilinear lookup of -ln C_n at w_n, with the same grid convention as inference
(nre_ros.lossmaps: cell (x, y) centred on grid coordinate (x, y)).

Occluded / out-of-image points are **masked** (they contribute 0 and no gradient), not sent to
an outlier bin: the inference maps give "out" zero mass (C(out) := 0, |Omega| = h*w + 1), so
an "out" logit would be trained but never used, and a failed depth test is not evidence that a
point is invisible (depth holes, sensor noise). A point counts only when all 4 splat corners
lie on the grid (|w| within [0, w-1] x [0, h-1]); callers sample points that satisfy it.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ['splat', 'cross_entropy_at', 'coarse_loss', 'window_loss']


def splat(uv: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """Bilinear splat of grid coordinates onto a (w, h) grid.

    Args:
        uv: (N, 2) grid coordinates (x, y).
        size: (w, h) of the grid.

    Returns:
        index: (N, 4) int64 flat cell indices y*w + x of the corners (00, 10, 01, 11).
        weight: (N, 4) splat weights (sum 1), same dtype as uv.
        inside: (N,) bool, all 4 corners on the grid (and uv finite).
    """
    w, h = size
    x, y = uv[:, 0], uv[:, 1]
    inside = torch.isfinite(uv).all(dim=1) & (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    xs = torch.where(inside, x, torch.zeros_like(x))
    ys = torch.where(inside, y, torch.zeros_like(y))
    x0 = xs.floor().clamp(0, max(w - 2, 0))
    y0 = ys.floor().clamp(0, max(h - 2, 0))
    fx, fy = xs - x0, ys - y0
    x0l, y0l = x0.long(), y0.long()
    x1l = (x0l + 1).clamp(max=w - 1)
    y1l = (y0l + 1).clamp(max=h - 1)
    index = torch.stack([y0l * w + x0l, y0l * w + x1l, y1l * w + x0l, y1l * w + x1l], dim=1)
    weight = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], dim=1)
    return index, weight, inside


def cross_entropy_at(logits: Tensor, uv: Tensor, size: tuple[int, int],
                     valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-point Eq. 10 from flat logits.

    Args:
        logits: (N, h*w) matching scores over the grid cells (row-major, y*w + x).
        uv: (N, 2) ground-truth grid coordinates in the target.
        size: (w, h).
        valid: optional (N,) bool mask (visible / not occluded).

    Returns:
        loss: (N,) cross-entropy, 0 where masked.
        mask: (N,) bool, the points that count.
    """
    index, weight, inside = splat(uv, size)
    mask = inside if valid is None else inside & valid
    logp = torch.log_softmax(logits, dim=1).gather(1, index)
    loss = -(weight.to(logp.dtype) * logp).sum(dim=1)
    return torch.where(mask, loss, torch.zeros_like(loss)), mask


def _mean(loss: Tensor, mask: Tensor) -> Tensor:
    return loss.sum() / mask.sum().clamp(min=1).to(loss.dtype)


def coarse_loss(point_desc: Tensor, target_desc: Tensor, inv_temperature: Tensor | float,
                uv: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mean Eq. 10 over the whole target grid (softmax over all h*w cells).

    Args:
        point_desc: (N, C) source descriptors h_n (L2-normalized).
        target_desc: (C, h, w) target descriptors H_T (L2-normalized).
        inv_temperature: tau (scalar tensor for a learned one).
        uv: (N, 2) ground-truth target grid coordinates.
        valid: (N,) bool.

    Returns:
        (mean loss over counted points, (N,) bool mask of counted points).
    """
    c, h, w = target_desc.shape
    logits = inv_temperature * (point_desc @ target_desc.reshape(c, h * w))
    loss, mask = cross_entropy_at(logits, uv, (w, h), valid)
    return _mean(loss, mask), mask


def window_loss(point_desc: Tensor, window_desc: Tensor, inv_temperature: Tensor | float,
                uv_local: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mean Eq. 10 over local S x S fine windows (softmax within each window, as the
    inference's local maps; the coarse window mass is constant w.r.t. the fine descriptors).

    Args:
        point_desc: (N, C) fine source descriptors.
        window_desc: (N, S, S, C) fine target descriptors of each point's window.
        inv_temperature: tau of the fine level.
        uv_local: (N, 2) ground-truth coordinates in window cells (x, y).
        valid: (N,) bool.
    """
    n, s, _, c = window_desc.shape
    logits = inv_temperature * torch.einsum('nkc,nc->nk', window_desc.reshape(n, s * s, c),
                                            point_desc)
    loss, mask = cross_entropy_at(logits, uv_local, (s, s), valid)
    return _mean(loss, mask), mask
