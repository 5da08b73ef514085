"""numba kernels of ``nre_ros.solver.gnc`` (imported on first use through ``nre_ros.compiled``)."""
from __future__ import annotations

import math

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True, error_model='numpy', fastmath={'contract'})
# Parallel kernels: ``prange`` over points (independent outputs, the same arithmetic per point
# whatever the thread count), on numba's pool sized by ``nre_ros.compiled``.
_pjit = numba.njit(cache=True, nogil=True, parallel=True, error_model='numpy',
                   fastmath={'contract'})
_CHUNK = 32         # points per parallel work item (each item allocates its own buffers)


@_pjit
def _gather_patches(maps, pts, centre, half, ln_omega, out, peak):
    """out[m] = ln_omega - maps[pts[m]] over the (2 half + 1)^2 cells around the (x, y) cell
    ``centre[m]``, 0 beyond the map; ``peak[m]`` the largest value of out[m]."""
    h, w = maps.shape[1], maps.shape[2]
    s = out.shape[1]
    cap = np.float32(ln_omega)
    for m in numba.prange(pts.shape[0]):
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
def _window_cells(local, ok, patch_origin, size, r, f, cell):
    """``gnc._Windows.window`` on the compiled path: each point's window centre cell (the
    nearest cell of its map-frame projection ``local`` (M, 2) float32, rounded half to even)
    and offset ``f = local - centre``. With patches (``patch_origin`` (M, 2) float32 cells of
    their corner, side ``size``) the cell is the centre within its patch, clamped so that the
    window stays inside; without (``patch_origin`` (0, 2)) the centre itself. Returns True,
    leaving ``cell`` unfinished, when a usable point's (``ok``) window would leave its patch
    (the caller re-cuts the patches and calls again)."""
    cut = patch_origin.shape[0] > 0
    lo = np.float32(r)
    hi = np.float32(size - 1 - r)
    for m in range(local.shape[0]):
        cx = np.rint(local[m, 0])
        cy = np.rint(local[m, 1])
        f[m, 0] = local[m, 0] - cx
        f[m, 1] = local[m, 1] - cy
        if cut:
            ox = cx - patch_origin[m, 0]
            oy = cy - patch_origin[m, 1]
            if ok[m] and (ox < lo or ox > hi or oy < lo or oy > hi):
                return True
            cx = min(max(ox, lo), hi)
            cy = min(max(oy, lo), hi)
        cell[m, 0] = np.int64(cx)
        cell[m, 1] = np.int64(cy)
    return False


@_pjit
def _moments(src, offset, cell, pw, ph, f, ok, sigma, r, out):
    """(6, M) float64 moments ``sum_q k(q - w) G(q) m(d)``, m(d) = 1, dx, dy, dx^2, dx dy,
    dy^2 (d = q - w), of the (2r+1)^2 window of G around cell ``cell[m]`` (x, y) of point m's
    ph x pw patch at ``src[offset[m]:]``; cells beyond the patch and points with ``ok`` False
    add nothing. ``f`` (M, 2): the projection minus its window's centre cell."""
    k = 2 * r + 1
    c2 = np.float32(-0.5 / (sigma * sigma))
    norm = np.float32(1.0 / (2 * math.pi * sigma * sigma))
    total = f.shape[0]
    for chunk in numba.prange((total + _CHUNK - 1) // _CHUNK):
        kx = np.empty(k, np.float32)
        ky = np.empty(k, np.float32)
        for m in range(chunk * _CHUNK, min(total, (chunk + 1) * _CHUNK)):
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


@_jit
def _normal_equations(m, pc, fx, fy, min_depth, sigma, newton, H, g):
    """Undamped H (6, 6) and g (6,) of ``gnc._Problem.normal_equations`` in one pass over the
    points: each point's PSD curvature (``gnc._point_curvature``) and projection Jacobian
    (``gnc._jacobian``), accumulated as ``a Ju Ju^T + c (Ju Jv^T + Jv Ju^T) + e Jv Jv^T``."""
    s2 = sigma * sigma
    s4 = s2 * s2
    ju = np.empty(6)
    jv = np.empty(6)
    H[:, :] = 0.0
    g[:] = 0.0
    for n in range(m.shape[1]):
        A = m[0, n] / s2
        if newton:
            a = A - m[3, n] / s4
            c = m[4, n] / -s4
            e = A - m[5, n] / s4
            mean = 0.5 * (a + e)
            rad = math.sqrt((0.5 * (a - e)) ** 2 + c * c)
            l1 = mean + rad
            l2 = mean - rad
            if l2 < 0 and l1 > 0:
                scale = l1 / max(2 * rad, 1e-300)
                a, c, e = (a - l2) * scale, c * scale, (e - l2) * scale
            elif not l2 >= 0:
                a, c, e = 0.0, 0.0, 0.0
        else:
            a, c, e = A, 0.0, A
        iz = 1 / max(pc[n, 2], min_depth)
        u = pc[n, 0] * iz
        v = pc[n, 1] * iz
        uv = u * v
        ju[0], ju[1], ju[2], ju[3], ju[4], ju[5] = iz, 0.0, -u * iz, -uv, 1 + u * u, -v
        jv[0], jv[1], jv[2], jv[3], jv[4], jv[5] = 0.0, iz, -v * iz, -1 - v * v, uv, u
        for i in range(6):
            ju[i] *= fx
            jv[i] *= fy
        m1 = m[1, n]
        m2 = m[2, n]
        for i in range(6):
            pu = a * ju[i] + c * jv[i]
            pv = c * ju[i] + e * jv[i]
            for j in range(6):
                H[i, j] += pu * ju[j] + pv * jv[j]
            g[i] += ju[i] * m1 + jv[i] * m2
    for i in range(6):
        g[i] /= s2


@_jit
def _project(pts, T, fx, fy, cx, cy, origin, lo, hi, min_depth, pc, local, ok):
    """``gnc._Problem._project``: camera points ``pc = R X + t`` (float64), float32 map-frame
    projections (minus ``origin`` when it has rows; 0 where unusable) and the usable mask
    (in front of the camera, within (lo, hi) on both axes)."""
    has_origin = origin.shape[0] > 0
    for n in range(pts.shape[0]):
        x, y, zw = pts[n, 0], pts[n, 1], pts[n, 2]
        px = T[0, 0] * x + T[0, 1] * y + T[0, 2] * zw + T[0, 3]
        py = T[1, 0] * x + T[1, 1] * y + T[1, 2] * zw + T[1, 3]
        pz = T[2, 0] * x + T[2, 1] * y + T[2, 2] * zw + T[2, 3]
        pc[n, 0], pc[n, 1], pc[n, 2] = px, py, pz
        zc = max(pz, min_depth)
        u = np.float32(cx + px / zc * fx)
        v = np.float32(cy + py / zc * fy)
        if has_origin:
            u -= origin[n, 0]
            v -= origin[n, 1]
        good = pz > min_depth and lo[0] < u < hi[0] and lo[1] < v < hi[1]
        ok[n] = good
        local[n, 0] = u if good else np.float32(0.0)
        local[n, 1] = v if good else np.float32(0.0)
