"""numba kernels of ``nre_ros.solver.intrinsics_check`` (imported on first use through
``nre_ros.compiled``)."""
from __future__ import annotations

import math

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True, error_model='numpy', fastmath={'contract'})


@_jit
def _rotvec_matrix(w, out):
    """out (3, 3) = the rotation of rotation vector w (3,), through its unit quaternion as
    ``scipy.spatial.transform.Rotation.from_rotvec(w).as_matrix()`` (``geometry.so3_exp``)."""
    angle = math.sqrt(w[0] * w[0] + w[1] * w[1] + w[2] * w[2])
    if angle <= 1e-3:
        a2 = angle * angle
        scale = 0.5 - a2 / 48 + a2 * a2 / 3840
    else:
        scale = math.sin(angle / 2) / angle
    x, y, z, q = w[0] * scale, w[1] * scale, w[2] * scale, math.cos(angle / 2)
    x2, y2, z2, q2 = x * x, y * y, z * z, q * q
    out[0, 0], out[0, 1], out[0, 2] = x2 - y2 - z2 + q2, 2 * (x * y - z * q), 2 * (x * z + y * q)
    out[1, 0], out[1, 1], out[1, 2] = 2 * (x * y + z * q), -x2 + y2 - z2 + q2, 2 * (y * z - x * q)
    out[2, 0], out[2, 1], out[2, 2] = 2 * (x * z - y * q), 2 * (y * z + x * q), -x2 - y2 + z2 + q2


@_jit
def _solve(A, b, out):
    """out = A^-1 b for a small square A (Gaussian elimination with partial pivoting, A and b
    overwritten); False when a pivot is exactly 0 (singular, as LAPACK's gesv reports)."""
    n = A.shape[0]
    for k in range(n):
        p = k
        for i in range(k + 1, n):
            if abs(A[i, k]) > abs(A[p, k]):
                p = i
        if A[p, k] == 0.0:
            return False
        if p != k:
            for j in range(n):
                A[k, j], A[p, j] = A[p, j], A[k, j]
            b[k], b[p] = b[p], b[k]
        for i in range(k + 1, n):
            f = A[i, k] / A[k, k]
            for j in range(k + 1, n):
                A[i, j] -= f * A[k, j]
            b[i] -= f * b[k]
    for i in range(n - 1, -1, -1):
        acc = b[i]
        for j in range(i + 1, n):
            acc -= A[i, j] * out[j]
        out[i] = acc / A[i, i]
    return True


@_jit
def _max_abs(v, lo, hi):
    """max |v[lo:hi]| (0 for an empty range)."""
    m = 0.0
    for i in range(lo, hi):
        m = max(m, abs(v[i]))
    return m


@_jit
def _normal_equations(X, uv, keep, R, t, K, theta, inv_rs2, H, g):
    """The Cauchy-weighted normal equations of one fit at pose (R (3, 3), t (3,)) and theta
    (log s[, dx, dy]), accumulated point by point (no Jacobian arrays) over the observations
    ``keep`` (N,) selects that lie in front of the camera: the upper triangle of H (9, 9)
    and g (9,) for the parameters (translation, rotation, log s, dx, dy) (the first 7 of them
    without the principal point). Returns the weighted squared residuals' sum and the number
    of observations used."""
    s = math.exp(theta[0])
    dx = theta[1] if theta.shape[0] == 3 else 0.0
    dy = theta[2] if theta.shape[0] == 3 else 0.0
    fx, fy, cx, cy = s * K[0, 0], s * K[1, 1], K[0, 2], K[1, 2]
    r00, r01, r02, t0 = R[0, 0], R[0, 1], R[0, 2], t[0]
    r10, r11, r12, t1 = R[1, 0], R[1, 1], R[1, 2], t[1]
    r20, r21, r22, t2 = R[2, 0], R[2, 1], R[2, 2], t[2]
    H[:, :] = 0.0
    g[:] = 0.0
    ju = np.zeros(9)
    jv = np.zeros(9)
    ju[7], jv[8] = 1.0, 1.0
    wr2, used = 0.0, 0
    for n in range(X.shape[0]):
        if not keep[n]:
            continue
        X0, X1, X2 = X[n, 0], X[n, 1], X[n, 2]
        pz = r20 * X0 + r21 * X1 + r22 * X2 + t2
        if not pz > 1e-6:
            continue
        px = r00 * X0 + r01 * X1 + r02 * X2 + t0
        py = r10 * X0 + r11 * X1 + r12 * X2 + t1
        iz = 1.0 / pz
        x, y = px * iz, py * iz
        ru = fx * x + cx + dx - uv[n, 0]
        rv = fy * y + cy + dy - uv[n, 1]
        r2 = ru * ru + rv * rv
        w = 1.0 / (1.0 + r2 * inv_rs2)
        ju[0], ju[2], ju[3], ju[4], ju[5], ju[6] = \
            fx * iz, -fx * x * iz, -fx * x * y, fx * (1.0 + x * x), -fx * y, fx * x
        jv[1], jv[2], jv[3], jv[4], jv[5], jv[6] = \
            fy * iz, -fy * y * iz, -fy * (1.0 + y * y), fy * x * y, fy * x, fy * y
        for i in range(9):
            wu, wv = w * ju[i], w * jv[i]
            for j in range(i, 9):
                H[i, j] += wu * ju[j] + wv * jv[j]
            g[i] += wu * ru + wv * rv
        wr2 += w * r2
        used += 1
    return wr2, used


@_jit
def _fit_many(X, uv, K, keep, robust_scale, iterations, R, t, theta, H, sigma2):
    """``intrinsics_check._gauss_newton`` compiled: the Cauchy-weighted Gauss-Newton fits of the
    observations ``keep`` (B, N) selects, updating R (B, 3, 3), t (B, 3), theta (B, P) and the
    last normal matrices H (B, 6 + P, 6 + P) and residual variances sigma2 (B,) in place; each
    fit iterates on its own."""
    n_th = theta.shape[1]
    n_par = 6 + n_th
    inv_rs2 = 1.0 / (robust_scale * robust_scale)
    H9 = np.empty((9, 9))
    g9 = np.empty(9)
    A = np.empty((n_par, n_par))
    g = np.empty(n_par)
    step = np.empty(n_par)
    dR = np.empty((3, 3))
    Rb = np.empty((3, 3))
    tb = np.empty(3)
    for b in range(keep.shape[0]):
        for _ in range(iterations):
            wr2, used = _normal_equations(X, uv, keep[b], R[b], t[b], K, theta[b], inv_rs2,
                                          H9, g9)
            for i in range(n_par):
                for j in range(i, n_par):
                    H[b, i, j] = H[b, j, i] = H9[i, j]
                g[i] = g9[i]
            sigma2[b] = wr2 / max(1, 2 * used - n_par)
            A[:, :] = H[b]
            for i in range(n_par):
                A[i, i] += 1e-9 * H[b, i, i]
            if not _solve(A, g, step):
                break
            step *= -1.0
            _rotvec_matrix(step[3:6], dR)
            Rb[:, :] = R[b]
            tb[:] = t[b]
            for i in range(3):
                for j in range(3):
                    R[b, i, j] = dR[i, 0] * Rb[0, j] + dR[i, 1] * Rb[1, j] + dR[i, 2] * Rb[2, j]
                t[b, i] = dR[i, 0] * tb[0] + dR[i, 1] * tb[1] + dR[i, 2] * tb[2] + step[i]
            for i in range(n_th):
                theta[b, i] += step[6 + i]
            if _max_abs(step, 0, 7) < 1e-7 and _max_abs(step, 7, n_par) < 1e-4:
                break
