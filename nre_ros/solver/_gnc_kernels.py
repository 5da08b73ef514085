"""numba kernels of ``nre_ros.solver.gnc`` (imported on first use through ``nre_ros.compiled``)."""
from __future__ import annotations

import math

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True, fastmath={'contract'})


@_jit
def _gather_patches(maps, pts, centre, half, ln_omega, out, peak):
    """out[m] = ln_omega - maps[pts[m]] over the (2 half + 1)^2 cells around the (x, y) cell
    ``centre[m]``, 0 beyond the map; ``peak[m]`` the largest value of out[m]."""
    h, w = maps.shape[1], maps.shape[2]
    s = out.shape[1]
    cap = np.float32(ln_omega)
    for m in range(pts.shape[0]):
        src = maps[pts[m]]
        x0 = centre[m, 0] - half
        y0 = centre[m, 1] - half
        jlo = min(max(-x0, 0), s)
        jhi = max(min(w - x0, s), jlo)
        o = out[m]
        top = -np.inf
        for i in range(s):
            y = y0 + i
            row = o[i]
            if y < 0 or y >= h:
                row[:] = 0.0
                top = max(top, 0.0)
                continue
            line = src[y]
            for j in range(jlo):
                row[j] = 0.0
            for j in range(jhi, s):
                row[j] = 0.0
            if jlo > 0 or jhi < s:
                top = max(top, 0.0)
            for j in range(jlo, jhi):
                v = cap - line[x0 + j]
                row[j] = v
                if v > top:
                    top = v
        peak[m] = top


@_jit
def _moments(src, offset, cell, pw, ph, f, ok, sigma, r, out):
    """(6, M) float64 moments ``sum_q k(q - w) G(q) m(d)``, m(d) = 1, dx, dy, dx^2, dx dy,
    dy^2 (d = q - w), of the (2r+1)^2 window of G around cell ``cell[m]`` (x, y) of point m's
    ph x pw patch at ``src[offset[m]:]``; cells beyond the patch and points with ``ok`` False
    add nothing. ``f`` (M, 2): the projection minus its window's centre cell."""
    k = 2 * r + 1
    c2 = np.float32(-0.5 / (sigma * sigma))
    norm = np.float32(1.0 / (2 * math.pi * sigma * sigma))
    kx = np.empty(k, np.float32)
    ky = np.empty(k, np.float32)
    for m in range(f.shape[0]):
        if not ok[m]:
            for t in range(6):
                out[t, m] = 0.0
            continue
        fx = f[m, 0]
        fy = f[m, 1]
        for a in range(k):
            dx = np.float32(a - r) - fx
            dy = np.float32(a - r) - fy
            kx[a] = math.exp(dx * dx * c2)
            ky[a] = math.exp(dy * dy * c2) * norm
        x0 = cell[m, 0] - r
        y0 = cell[m, 1] - r
        jlo = max(-x0, 0)
        jhi = min(pw - x0, k)
        ilo = max(-y0, 0)
        ihi = min(ph - y0, k)
        m00 = 0.0
        mx = 0.0
        my = 0.0
        mxx = 0.0
        mxy = 0.0
        myy = 0.0
        base = offset[m] + y0 * pw + x0
        for i in range(ilo, ihi):
            row = base + i * pw
            a0 = 0.0
            a1 = 0.0
            a2 = 0.0
            for j in range(jlo, jhi):
                g = float(src[row + j] * kx[j])
                cx = float(j - r)
                a0 += g
                a1 += g * cx
                a2 += g * cx * cx
            wy = float(ky[i])
            cy = float(i - r)
            m00 += wy * a0
            mx += wy * a1
            my += wy * cy * a0
            mxx += wy * a2
            mxy += wy * cy * a1
            myy += wy * cy * cy * a0
        # d = c - f (binomial shift)
        fxd = float(fx)
        fyd = float(fy)
        sx = mx - fxd * m00
        sy = my - fyd * m00
        out[0, m] = m00
        out[1, m] = sx
        out[2, m] = sy
        out[3, m] = mxx - fxd * (mx + sx)
        out[4, m] = mxy - fxd * my - fyd * sx
        out[5, m] = myy - fyd * (my + sy)
