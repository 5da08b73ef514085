"""Batched P3P in torch: the cubic-pencil formulation of Ding et al. (CVPR 2023), vectorized.

Written from the published method (the same one PoseLib 2.x uses; PoseLib serves as the
reference in test/test_p3p.py). Every triplet is solved at once: no Python loop over triplets.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from nre_ros import compiled

__all__ = ['p3p', 'warmup_compiled']

KERNELS = 'nre_ros.solver._p3p_kernels'    # numba kernel of the CPU path (nre_ros.compiled)


def _cubic_real_root(k2: Tensor, k1: Tensor, k0: Tensor) -> Tensor:
    """One real root of s^3 + k2 s^2 + k1 s + k0 (Cardano / trigonometric + 2 Newton steps)."""
    p = k1 - k2 * k2 / 3
    q = 2 * k2 ** 3 / 27 - k2 * k1 / 3 + k0
    disc = (q / 2) ** 2 + (p / 3) ** 3
    sq = torch.sqrt(disc.clamp(min=0))
    u = -q / 2 + sq
    v = -q / 2 - sq
    t_one = torch.sign(u) * u.abs() ** (1 / 3) + torch.sign(v) * v.abs() ** (1 / 3)
    pn = torch.where(p < 0, p, torch.full_like(p, -1.0))
    arg = ((3 * q / (2 * pn)) * torch.sqrt(-3 / pn)).clamp(-1, 1)
    t_three = 2 * torch.sqrt(-pn / 3) * torch.cos(torch.arccos(arg) / 3)
    s = torch.where(disc >= 0, t_one, t_three) - k2 / 3
    for _ in range(2):
        f = ((s + k2) * s + k1) * s + k0
        df = (3 * s + 2 * k2) * s + k1
        s = torch.where(df.abs() > 1e-14, s - f / torch.where(df == 0, torch.ones_like(df), df), s)
    return s


def _quadratic_roots(b: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Real roots of tau^2 + b tau + c (numerically stable); valid where the discriminant >= 0."""
    v = b * b - 4 * c
    ok = v >= -1e-12
    y = torch.sqrt(v.clamp(min=0))
    # Stable pair: the root with no cancellation, and c / (that root) for the other one.
    big = torch.where(b < 0, 0.5 * (-b + y), 0.5 * (-b - y))
    other = c / torch.where(big == 0, torch.ones_like(big), big)
    return big, other, ok


def _refine_depths(d: Tensor, a: Tensor, m: Tensor, iters: int = 2) -> Tensor:
    """Newton steps on d_i^2 - 2 d_i d_j m_ij + d_j^2 = a_ij for the pairs (01, 02, 12).

    d: (..., 3) depths; a: (..., 3) squared distances (a01, a02, a12); m: (..., 3) cosines.
    """
    d0, d1, d2 = d.unbind(-1)
    a01, a02, a12 = a.unbind(-1)
    m01, m02, m12 = m.unbind(-1)
    for _ in range(iters):
        r1 = d0 * d0 - 2 * d0 * d1 * m01 + d1 * d1 - a01
        r2 = d0 * d0 - 2 * d0 * d2 * m02 + d2 * d2 - a02
        r3 = d1 * d1 - 2 * d1 * d2 * m12 + d2 * d2 - a12
        x11, x12 = d0 - d1 * m01, d1 - d0 * m01
        x21, x23 = d0 - d2 * m02, d2 - d0 * m02
        x32, x33 = d1 - d2 * m12, d2 - d1 * m12
        det = x11 * x23 * x32 + x12 * x21 * x33
        ok = det.abs() > 1e-300
        inv = torch.where(ok, 0.5 / torch.where(ok, det, torch.ones_like(det)),
                          torch.zeros_like(det))
        d0 = d0 + (-x23 * x32 * r1 - x12 * x33 * r2 + x12 * x23 * r3) * inv
        d1 = d1 + (-x21 * x33 * r1 + x11 * x33 * r2 - x11 * x23 * r3) * inv
        d2 = d2 + (x21 * x32 * r1 - x11 * x32 * r2 - x12 * x21 * r3) * inv
    return torch.stack([d0, d1, d2], dim=-1)


def p3p(bearings: Tensor, points: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Solve M P3P problems at once.

    Args:
        bearings: (M, 3, 3) unit bearing vectors (rows) in the camera frame, float64.
        points: (M, 3, 3) the matching world points (rows), float64.

    Returns:
        R: (M, 4, 3, 3) rotations and t: (M, 4, 3) translations of T_cam_world
            (``x_cam = R X + t``) for up to 4 solutions per triplet;
        valid: (M, 4) bool, True for real solutions with positive depths.
    """
    m = bearings.shape[0]
    dev, dt = bearings.device, bearings.dtype
    kernels = compiled.usable(KERNELS, bearings, points)
    if kernels is not None and dt == points.dtype == torch.float64:
        R, t, valid = np.empty((m, 4, 3, 3)), np.empty((m, 4, 3)), np.empty((m, 4), bool)
        kernels._p3p(np.ascontiguousarray(bearings.numpy()), np.ascontiguousarray(points.numpy()),
                     R, t, valid)
        return torch.from_numpy(R), torch.from_numpy(t), torch.from_numpy(valid)
    # Reorder so that the pair (1, 2) has the largest 3D distance.
    a01 = (points[:, 0] - points[:, 1]).pow(2).sum(-1)
    a02 = (points[:, 0] - points[:, 2]).pow(2).sum(-1)
    a12 = (points[:, 1] - points[:, 2]).pow(2).sum(-1)
    perm = torch.tensor([0, 1, 2], device=dev).repeat(m, 1)
    swap02 = (a01 > a02) & (a01 > a12)
    swap01 = (a01 <= a02) & (a02 > a12)
    perm[swap02] = torch.tensor([2, 1, 0], device=dev)
    perm[swap01] = torch.tensor([1, 0, 2], device=dev)
    gidx = perm[:, :, None].expand(m, 3, 3)
    x = bearings.gather(1, gidx)
    X = points.gather(1, gidx)
    X01 = X[:, 0] - X[:, 1]
    X02 = X[:, 0] - X[:, 2]
    a01 = X01.pow(2).sum(-1)
    a02 = X02.pow(2).sum(-1)
    a12 = (X[:, 1] - X[:, 2]).pow(2).sum(-1)
    a = a01 / a12
    b = a02 / a12
    m01 = (x[:, 0] * x[:, 1]).sum(-1)
    m02 = (x[:, 0] * x[:, 2]).sum(-1)
    m12 = (x[:, 1] * x[:, 2]).sum(-1)

    m12sq = 1 - m12 * m12
    m02sq = m02 * m02 - 1
    m01sq = m01 * m01 - 1
    m013 = -2 + 2 * m01 * m02 * m12
    k3_inv = 1 / (b * b * m12sq + b * m02sq)
    k2 = k3_inv * ((a - 1) * m02sq + 2 * a * b * m12sq + b * b * m12sq + b * m013)
    k1 = k3_inv * (a * a * m12sq + 2 * a * b * m12sq + a * m013 + (b - 1) * m01sq)
    k0 = k3_inv * (a * a * m12sq + a * m01sq)
    s = _cubic_real_root(k2, k1, k0)

    # Degenerate conic C (rank 2) = pair of lines; split it via its adjugate.
    C = torch.stack([
        -a + s * (1 - b), -m02 * s, a * m12 + b * m12 * s,
        -m02 * s, s + 1, -m01,
        a * m12 + b * m12 * s, -m01, -a - b * s + 1], dim=-1).reshape(m, 3, 3)
    adj = torch.empty_like(C)
    adj[:, 0, 0] = C[:, 1, 2] * C[:, 2, 1] - C[:, 1, 1] * C[:, 2, 2]
    adj[:, 1, 1] = C[:, 0, 2] * C[:, 2, 0] - C[:, 0, 0] * C[:, 2, 2]
    adj[:, 2, 2] = C[:, 0, 1] * C[:, 1, 0] - C[:, 0, 0] * C[:, 1, 1]
    adj[:, 0, 1] = adj[:, 1, 0] = C[:, 0, 1] * C[:, 2, 2] - C[:, 0, 2] * C[:, 2, 1]
    adj[:, 0, 2] = adj[:, 2, 0] = C[:, 0, 2] * C[:, 1, 1] - C[:, 0, 1] * C[:, 1, 2]
    adj[:, 1, 2] = adj[:, 2, 1] = C[:, 0, 0] * C[:, 1, 2] - C[:, 0, 2] * C[:, 1, 0]
    diag = torch.diagonal(adj, dim1=1, dim2=2)
    j = diag.argmax(dim=1)
    col = adj.gather(2, j[:, None, None].expand(m, 3, 1))[:, :, 0]
    v = col / diag.gather(1, j[:, None]).clamp(min=1e-300).sqrt()
    D = C.clone()
    D[:, 0, 1] -= v[:, 2]
    D[:, 0, 2] += v[:, 1]
    D[:, 1, 2] -= v[:, 0]
    D[:, 1, 0] += v[:, 2]
    D[:, 2, 0] -= v[:, 1]
    D[:, 2, 1] += v[:, 0]
    lines = torch.stack([D[:, :, 0], D[:, 0, :]], dim=1)  # (M, 2, 3)

    p0, p1, p2 = lines.unbind(-1)  # (M, 2) each
    A, B = a[:, None], b[:, None]
    M01, M02, M12 = m01[:, None], m02[:, None], m12[:, None]
    switch = p0.abs() <= p1.abs()
    one = torch.ones_like(p0)
    # Branch "switch": eliminate d0 (d0 = w0 d2 + w1 d1, tau = d1 / d2).
    sw0 = -p0 / torch.where(p1 == 0, one, p1)
    sw1 = -p2 / torch.where(p1 == 0, one, p1)
    ca = 1 / (sw1 * sw1 - B)
    cb_s = 2 * (B * M12 - M02 * sw1 + sw0 * sw1) * ca
    cc_s = (sw0 * sw0 - 2 * M02 * sw0 - B + 1) * ca
    # Other branch: d2 = w0 d0 + w1 d1, tau = d1 / d0.
    ow0 = -p1 / torch.where(p0 == 0, one, p0)
    ow1 = -p2 / torch.where(p0 == 0, one, p0)
    ca = 1 / (-A * ow1 * ow1 + 2 * A * M12 * ow1 - A + 1)
    cb_o = 2 * (A * M12 * ow0 - M01 - A * ow0 * ow1) * ca
    cc_o = (1 - A * ow0 * ow0) * ca
    cb = torch.where(switch, cb_s, cb_o)
    cc = torch.where(switch, cc_s, cc_o)
    r1, r2, ok = _quadratic_roots(cb, cc)
    tau = torch.stack([r1, r2], dim=-1)  # (M, 2 lines, 2 roots)
    sw = switch[..., None].expand_as(tau)
    w0 = torch.where(switch, sw0, ow0)[..., None]
    w1 = torch.where(switch, sw1, ow1)[..., None]
    A12, A01 = a12[:, None, None], a01[:, None, None]
    den_s = tau * (tau - 2 * m12[:, None, None]) + 1
    den_o = tau * (tau - 2 * m01[:, None, None]) + 1
    d_first = torch.sqrt((torch.where(sw, A12 / den_s, A01 / den_o)).clamp(min=0))
    d_second = tau * d_first
    d_third = w0 * d_first + w1 * d_second
    d0 = torch.where(sw, d_third, d_first)
    d1 = d_second
    d2 = torch.where(sw, d_first, d_third)
    valid = ok[..., None] & (tau > 0) & (d_third >= 0)
    d = torch.stack([d0, d1, d2], dim=-1).reshape(m, 4, 3)
    valid = valid.reshape(m, 4) & torch.isfinite(d).all(-1)
    d = torch.where(valid[..., None], d, torch.ones_like(d))
    d = _refine_depths(d, torch.stack([a01, a02, a12], -1)[:, None],
                       torch.stack([m01, m02, m12], -1)[:, None])

    xs = x[:, None]  # (M, 1, 3, 3)
    v1 = d[..., 0:1] * xs[:, :, 0] - d[..., 1:2] * xs[:, :, 1]
    v2 = d[..., 0:1] * xs[:, :, 0] - d[..., 2:3] * xs[:, :, 2]
    YY = torch.stack([v1, v2, torch.cross(v1, v2, dim=-1)], dim=-1)  # columns
    X03 = torch.cross(X01, X02, dim=-1)
    # Closed-form inverse of XX = [X01 | X02 | X03] (columns a, b, c = a x b): rows b x c,
    # c x a, a x b over det = a . (b x c).
    adj_xx = torch.stack([torch.cross(X02, X03, dim=-1), torch.cross(X03, X01, dim=-1), X03],
                         dim=1)
    det = (X01 * adj_xx[:, 0]).sum(-1)
    good_xx = det.abs() > 1e-12 * (a12 ** 1.5)
    inv_xx = adj_xx / torch.where(good_xx, det, torch.ones_like(det))[:, None, None]
    inv_xx = torch.where(good_xx[:, None, None], inv_xx,
                         torch.eye(3, dtype=dt, device=dev).expand_as(adj_xx))
    R = YY @ inv_xx[:, None]
    t = d[..., 0:1] * xs[:, :, 0] - (R @ X[:, None, 0, :, None])[..., 0]
    valid = valid & good_xx[:, None] & torch.isfinite(R).flatten(2).all(-1) & torch.isfinite(t).all(-1)
    valid = valid & ((R.transpose(-1, -2) @ R - torch.eye(3, dtype=dt, device=dev)).abs()
                     .flatten(2).amax(-1) < 1e-3)
    return R, t, valid


def warmup_compiled() -> bool:
    """Compile (or load from the disk cache) the kernel of the CPU path; False without it."""
    if compiled.kernels(KERNELS) is None:
        return False
    g = torch.Generator().manual_seed(0)
    rays = torch.nn.functional.normalize(torch.rand(2, 3, 3, generator=g, dtype=torch.float64)
                                         + torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64),
                                         dim=-1)
    p3p(rays, torch.rand(2, 3, 3, generator=g, dtype=torch.float64))
    return True
