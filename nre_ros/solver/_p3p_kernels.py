"""numba kernel of ``nre_ros.solver.p3p.p3p`` (imported on first use through ``nre_ros.compiled``):
the same cubic-pencil P3P, one triplet at a time instead of batched torch ops."""
from __future__ import annotations

import math

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True, error_model='numpy')   # IEEE division


@_jit
def _cubic_real_root(k2, k1, k0):
    """One real root of s^3 + k2 s^2 + k1 s + k0 (as ``p3p._cubic_real_root``)."""
    p = k1 - k2 * k2 / 3
    q = 2 * k2 ** 3 / 27 - k2 * k1 / 3 + k0
    disc = (q / 2) ** 2 + (p / 3) ** 3
    if disc >= 0:
        sq = math.sqrt(disc)
        u = -q / 2 + sq
        v = -q / 2 - sq
        s = np.sign(u) * abs(u) ** (1 / 3) + np.sign(v) * abs(v) ** (1 / 3)
    else:
        pn = p if p < 0 else -1.0
        arg = min(max((3 * q / (2 * pn)) * math.sqrt(-3 / pn), -1.0), 1.0)
        s = 2 * math.sqrt(-pn / 3) * math.cos(math.acos(arg) / 3)
    s -= k2 / 3
    for _ in range(2):
        f = ((s + k2) * s + k1) * s + k0
        df = (3 * s + 2 * k2) * s + k1
        if abs(df) > 1e-14:
            s = s - f / df
    return s


@_jit
def _p3p(bearings, points, R, t, valid):
    """R (M, 4, 3, 3), t (M, 4, 3), valid (M, 4) of ``p3p.p3p`` (rows of invalid solutions
    are unspecified)."""
    x = np.empty((3, 3))
    X = np.empty((3, 3))
    C = np.empty((3, 3))
    adj = np.empty((3, 3))
    d = np.empty((4, 3))
    ok4 = np.empty(4, np.bool_)
    YY = np.empty((3, 3))
    inv = np.empty((3, 3))
    for m in range(bearings.shape[0]):
        P = points[m]
        a01 = (P[0, 0] - P[1, 0]) ** 2 + (P[0, 1] - P[1, 1]) ** 2 + (P[0, 2] - P[1, 2]) ** 2
        a02 = (P[0, 0] - P[2, 0]) ** 2 + (P[0, 1] - P[2, 1]) ** 2 + (P[0, 2] - P[2, 2]) ** 2
        a12 = (P[1, 0] - P[2, 0]) ** 2 + (P[1, 1] - P[2, 1]) ** 2 + (P[1, 2] - P[2, 2]) ** 2
        p0, p1, p2 = 0, 1, 2                       # the pair (1, 2) is the farthest apart
        if a01 > a02 and a01 > a12:
            p0, p2 = 2, 0
        elif a01 <= a02 and a02 > a12:
            p0, p1 = 1, 0
        for k in range(3):
            x[0, k], x[1, k], x[2, k] = bearings[m, p0, k], bearings[m, p1, k], bearings[m, p2, k]
            X[0, k], X[1, k], X[2, k] = P[p0, k], P[p1, k], P[p2, k]
        X01 = X[0] - X[1]
        X02 = X[0] - X[2]
        X12 = X[1] - X[2]
        a01 = X01[0] ** 2 + X01[1] ** 2 + X01[2] ** 2
        a02 = X02[0] ** 2 + X02[1] ** 2 + X02[2] ** 2
        a12 = X12[0] ** 2 + X12[1] ** 2 + X12[2] ** 2
        a = a01 / a12
        b = a02 / a12
        m01 = x[0, 0] * x[1, 0] + x[0, 1] * x[1, 1] + x[0, 2] * x[1, 2]
        m02 = x[0, 0] * x[2, 0] + x[0, 1] * x[2, 1] + x[0, 2] * x[2, 2]
        m12 = x[1, 0] * x[2, 0] + x[1, 1] * x[2, 1] + x[1, 2] * x[2, 2]
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
        C[0, 0], C[0, 1], C[0, 2] = -a + s * (1 - b), -m02 * s, a * m12 + b * m12 * s
        C[1, 0], C[1, 1], C[1, 2] = -m02 * s, s + 1, -m01
        C[2, 0], C[2, 1], C[2, 2] = a * m12 + b * m12 * s, -m01, -a - b * s + 1
        adj[0, 0] = C[1, 2] * C[2, 1] - C[1, 1] * C[2, 2]
        adj[1, 1] = C[0, 2] * C[2, 0] - C[0, 0] * C[2, 2]
        adj[2, 2] = C[0, 1] * C[1, 0] - C[0, 0] * C[1, 1]
        adj[0, 1] = adj[1, 0] = C[0, 1] * C[2, 2] - C[0, 2] * C[2, 1]
        adj[0, 2] = adj[2, 0] = C[0, 2] * C[1, 1] - C[0, 1] * C[1, 2]
        adj[1, 2] = adj[2, 1] = C[0, 0] * C[1, 2] - C[0, 2] * C[1, 0]
        j = 0
        for i in range(1, 3):
            if adj[i, i] > adj[j, j]:
                j = i
        sc = math.sqrt(max(adj[j, j], 1e-300))
        v1, v2 = adj[1, j] / sc, adj[2, j] / sc
        D01, D02 = C[0, 1] - v2, C[0, 2] + v1        # D = C + [v]_x: its first row / column
        D10, D20 = C[1, 0] + v2, C[2, 0] - v1
        for li in range(2):
            if li == 0:
                q0, q1, q2 = C[0, 0], D10, D20           # first column of D
            else:
                q0, q1, q2 = C[0, 0], D01, D02           # first row of D
            switch = abs(q0) <= abs(q1)
            if switch:      # d0 = w0 d2 + w1 d1, tau = d1 / d2
                den = q1 if q1 != 0 else 1.0
                w0, w1 = -q0 / den, -q2 / den
                ca = 1 / (w1 * w1 - b)
                cb = 2 * (b * m12 - m02 * w1 + w0 * w1) * ca
                cc = (w0 * w0 - 2 * m02 * w0 - b + 1) * ca
            else:           # d2 = w0 d0 + w1 d1, tau = d1 / d0
                den = q0 if q0 != 0 else 1.0
                w0, w1 = -q1 / den, -q2 / den
                ca = 1 / (-a * w1 * w1 + 2 * a * m12 * w1 - a + 1)
                cb = 2 * (a * m12 * w0 - m01 - a * w0 * w1) * ca
                cc = (1 - a * w0 * w0) * ca
            disc = cb * cb - 4 * cc
            real = disc >= -1e-12
            y = math.sqrt(max(disc, 0.0))
            big = 0.5 * (-cb + y) if cb < 0 else 0.5 * (-cb - y)
            other = cc / (big if big != 0 else 1.0)
            for ri in range(2):
                tau = big if ri == 0 else other
                if switch:
                    first = math.sqrt(max(a12 / (tau * (tau - 2 * m12) + 1), 0.0))
                else:
                    first = math.sqrt(max(a01 / (tau * (tau - 2 * m01) + 1), 0.0))
                second = tau * first
                third = w0 * first + w1 * second
                d0, d1, d2 = (third, second, first) if switch else (first, second, third)
                good = real and tau > 0 and third >= 0 and math.isfinite(d0) \
                    and math.isfinite(d1) and math.isfinite(d2)
                if not good:
                    d0, d1, d2 = 1.0, 1.0, 1.0
                for _ in range(2):              # Newton on the three distance equations
                    r1 = d0 * d0 - 2 * d0 * d1 * m01 + d1 * d1 - a01
                    r2 = d0 * d0 - 2 * d0 * d2 * m02 + d2 * d2 - a02
                    r3 = d1 * d1 - 2 * d1 * d2 * m12 + d2 * d2 - a12
                    x11, x12 = d0 - d1 * m01, d1 - d0 * m01
                    x21, x23 = d0 - d2 * m02, d2 - d0 * m02
                    x32, x33 = d1 - d2 * m12, d2 - d1 * m12
                    det = x11 * x23 * x32 + x12 * x21 * x33
                    iv = 0.5 / det if abs(det) > 1e-300 else 0.0
                    n0 = d0 + (-x23 * x32 * r1 - x12 * x33 * r2 + x12 * x23 * r3) * iv
                    n1 = d1 + (-x21 * x33 * r1 + x11 * x33 * r2 - x11 * x23 * r3) * iv
                    n2 = d2 + (x21 * x32 * r1 - x11 * x32 * r2 - x12 * x21 * r3) * iv
                    d0, d1, d2 = n0, n1, n2
                k = 2 * li + ri
                d[k, 0], d[k, 1], d[k, 2] = d0, d1, d2
                ok4[k] = good
        # Closed-form inverse of [X01 | X02 | X03] (X03 = X01 x X02).
        X03 = np.cross(X01, X02)
        r0 = np.cross(X02, X03)
        r1_ = np.cross(X03, X01)
        det = X01[0] * r0[0] + X01[1] * r0[1] + X01[2] * r0[2]
        good_xx = abs(det) > 1e-12 * a12 ** 1.5
        for k in range(3):
            if good_xx:
                inv[0, k], inv[1, k], inv[2, k] = r0[k] / det, r1_[k] / det, X03[k] / det
            else:
                inv[0, k], inv[1, k], inv[2, k] = 0.0, 0.0, 0.0
        if not good_xx:
            inv[0, 0] = inv[1, 1] = inv[2, 2] = 1.0
        for k in range(4):
            d0, d1, d2 = d[k, 0], d[k, 1], d[k, 2]
            for i in range(3):
                YY[i, 0] = d0 * x[0, i] - d1 * x[1, i]
                YY[i, 1] = d0 * x[0, i] - d2 * x[2, i]
            YY[0, 2] = YY[1, 0] * YY[2, 1] - YY[2, 0] * YY[1, 1]
            YY[1, 2] = YY[2, 0] * YY[0, 1] - YY[0, 0] * YY[2, 1]
            YY[2, 2] = YY[0, 0] * YY[1, 1] - YY[1, 0] * YY[0, 1]
            Rk = R[m, k]
            fin = True
            for i in range(3):
                for jj in range(3):
                    Rk[i, jj] = YY[i, 0] * inv[0, jj] + YY[i, 1] * inv[1, jj] + \
                        YY[i, 2] * inv[2, jj]
                    fin = fin and math.isfinite(Rk[i, jj])
            for i in range(3):
                t[m, k, i] = d0 * x[0, i] - (Rk[i, 0] * X[0, 0] + Rk[i, 1] * X[0, 1] +
                                             Rk[i, 2] * X[0, 2])
                fin = fin and math.isfinite(t[m, k, i])
            ortho = 0.0
            for i in range(3):
                for jj in range(3):
                    dot = Rk[0, i] * Rk[0, jj] + Rk[1, i] * Rk[1, jj] + Rk[2, i] * Rk[2, jj]
                    ortho = max(ortho, abs(dot - (1.0 if i == jj else 0.0)))
            valid[m, k] = ok4[k] and good_xx and fin and ortho < 1e-3
