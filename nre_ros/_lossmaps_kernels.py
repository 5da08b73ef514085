"""numba kernels of ``nre_ros.lossmaps_numba`` (imported on first use: importing numba takes
about half a second, which a process that never builds fine maps should not pay)."""
from __future__ import annotations

import math

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True, error_model='numpy', fastmath={'contract'})
# Parallel kernels: ``prange`` loops over points / windows (independent outputs, the same
# arithmetic per element whatever the thread count) on numba's thread pool, sized by
# ``nre_ros.compiled`` to torch's thread count.
_pjit = numba.njit(cache=True, nogil=True, parallel=True, error_model='numpy',
                   fastmath={'contract'})
_CHUNK = 16         # windows per parallel work item (each item allocates its own buffers)


@_jit
def _inside(x0, y0, s, w, h):
    """(jlo, jhi, ilo, ihi): the columns / rows of the S x S window at (x0, y0) inside a w x h
    grid (empty when hi <= lo)."""
    return max(0, -x0), min(s, w - x0), max(0, -y0), min(s, h - y0)


@_pjit
def _window_dots(q, p, origin, order, out):
    """out[n, i, j] = p[n] . q[:, y0 + i, x0 + j] (0 outside the grid), points in ``order``
    (split into contiguous runs across the threads: neighbouring windows share cache lines).

    Two window rows at a time are accumulated over the channels in two 1-D buffers (two
    independent chains); unsigned flat indices keep numba's negative-index wraparound out of
    the inner loops."""
    c_dim, h, w = q.shape
    s = out.shape[1]
    qf = q.reshape(-1)
    plane = h * w
    total = order.shape[0]
    for b in numba.prange((total + _CHUNK - 1) // _CHUNK):
        acc0 = np.zeros(s, np.float32)
        acc1 = np.zeros(s, np.float32)
        for k in range(b * _CHUNK, min(total, (b + 1) * _CHUNK)):
            n = order[k]
            x0 = origin[n, 0]
            y0 = origin[n, 1]
            jlo, jhi, ilo, ihi = _inside(x0, y0, s, w, h)
            m = jhi - jlo
            on = out[n]
            on[:] = 0.0
            if m <= 0:
                continue
            for i in range(ilo, ihi, 2):
                two = i + 1 < ihi
                step = np.uint64(w) if two else np.uint64(0)    # a lone last row is read twice
                for j in range(m):
                    acc0[j] = 0.0
                    acc1[j] = 0.0
                base = np.uint64((y0 + i) * w + x0 + jlo)
                for c in range(c_dim):
                    pc = p[n, c]
                    b0 = base + np.uint64(c * plane)
                    b1 = b0 + step
                    for j in range(m):
                        acc0[j] += pc * qf[b0 + np.uint64(j)]
                    for j in range(m):
                        acc1[j] += pc * qf[b1 + np.uint64(j)]
                for j in range(m):
                    on[i, jlo + j] = acc0[j]
                if two:
                    for j in range(m):
                        on[i + 1, jlo + j] = acc1[j]


@numba.njit(cache=True, nogil=True, parallel=True, error_model='numpy',
            fastmath={'contract', 'reassoc'})
def _window_dots_hwc(q, p, origin, order, out):
    """``_window_dots`` for a grid of (h, w, C) rows: out[n, i, j] = p[n] . q[y0 + i, x0 + j]
    (0 outside the grid). Each cell's C values are contiguous, so each dot product is one
    vectorised pass (summation order reassociated, so float rounding differs from the CHW
    kernel's)."""
    h, w, c_dim = q.shape
    s = out.shape[1]
    total = order.shape[0]
    for b in numba.prange((total + _CHUNK - 1) // _CHUNK):
        for k in range(b * _CHUNK, min(total, (b + 1) * _CHUNK)):
            n = order[k]
            x0 = origin[n, 0]
            y0 = origin[n, 1]
            jlo, jhi, ilo, ihi = _inside(x0, y0, s, w, h)
            on = out[n]
            on[:] = 0.0
            if jhi <= jlo:
                continue
            pn = p[n]
            for i in range(ilo, ihi):
                row = q[y0 + i]
                for j in range(jlo, jhi):
                    cell = row[x0 + j]
                    acc = np.float32(0.0)
                    for c in range(c_dim):
                        acc += pn[c] * cell[c]
                    on[i, j] = acc


@_pjit
def _coarse_log_mass(coarse, rows, origin, s, r, wf, hf, ln_omega_c, out):
    """``nre_ros.lossmaps._coarse_log_mass`` per window (float64, same overlaps)."""
    h, w = coarse.shape[1], coarse.shape[2]
    k = int(math.ceil(s / r)) + 2
    cap = ln_omega_c - 1e-5
    total = origin.shape[0]
    for chunk in numba.prange((total + _CHUNK - 1) // _CHUNK):
        ovx = np.empty(k)
        ovy = np.empty(k)
        for n in range(chunk * _CHUNK, min(total, (chunk + 1) * _CHUNK)):
            ox = float(origin[n, 0])
            oy = float(origin[n, 1])
            lo_x = min(max(ox, 0.0), wf) / r - 0.5
            hi_x = min(max(ox + s, 0.0), wf) / r - 0.5
            lo_y = min(max(oy, 0.0), hf) / r - 0.5
            hi_y = min(max(oy + s, 0.0), hf) / r - 0.5
            j0x = int(math.floor(lo_x + 0.5))
            j0y = int(math.floor(lo_y + 0.5))
            for a in range(k):
                jx = j0x + a
                jy = j0y + a
                ovx[a] = max(min(hi_x, jx + 0.5) - max(lo_x, jx - 0.5), 0.0) \
                    if 0 <= jx < w else 0.0
                ovy[a] = max(min(hi_y, jy + 0.5) - max(lo_y, jy - 0.5), 0.0) \
                    if 0 <= jy < h else 0.0
            m = coarse[rows[n]]
            mass = 0.0
            for a in range(k):
                if ovy[a] == 0.0:
                    continue
                y = min(max(j0y + a, 0), h - 1)
                for b in range(k):
                    if ovx[b] == 0.0:
                        continue
                    loss = float(m[y, min(max(j0x + b, 0), w - 1)])
                    if loss < cap:
                        mass += math.exp(-loss) * ovy[a] * ovx[b]
            out[n] = math.log(max(mass, 1e-30))


@_pjit
def _window_loss(logits, origin, wf, hf, lse, log_mass, ln_omega, out):
    """out = min(max(-(logits - log-sum-exp + log_mass), 0), ln_omega) over the window's cells
    inside the grid; the others, and every cell of a window with no cell inside or a
    non-finite log-sum-exp, read ln_omega (``out`` may be ``logits``). ``lse`` (N,) holds the
    log-sum-exp over the whole window (vectorised by the caller); windows crossing the grid
    edge recompute theirs over their inside cells."""
    n_pts, s = logits.shape[0], logits.shape[1]
    cap = np.float32(ln_omega)
    zero = np.float32(0.0)
    for n in numba.prange(n_pts):
        jlo, jhi, ilo, ihi = _inside(origin[n, 0], origin[n, 1], s, wf, hf)
        x = logits[n]
        o = out[n]
        if jhi <= jlo or ihi <= ilo:
            o[:] = cap
            continue
        if jlo == 0 and ilo == 0 and jhi == s and ihi == s:
            shift = lse[n]
        else:
            top = -np.inf
            for i in range(ilo, ihi):
                for j in range(jlo, jhi):
                    v = x[i, j]
                    if v > top or v != v:
                        top = v
            total = 0.0
            for i in range(ilo, ihi):
                for j in range(jlo, jhi):
                    total += math.exp(x[i, j] - top)
            shift = np.float32(top) + np.float32(math.log(total))
        if not math.isfinite(shift):
            o[:] = cap
            continue
        shift = np.float32(shift - log_mass[n])
        if ilo > 0 or ihi < s or jlo > 0 or jhi < s:
            o[:] = cap
        for i in range(ilo, ihi):
            for j in range(jlo, jhi):
                v = shift - x[i, j]
                o[i, j] = cap if v != v else min(max(v, zero), cap)


@numba.njit(cache=True, nogil=True, parallel=True, error_model='numpy')  # no FMA: as torch
def _bilinear_cost(flat, offset, w, h, ln_omega, x, y, valid, out):
    """``nre_ros.lossmaps.bilinear_cost`` on (M, n) float32 coordinates (``valid`` (M, n)
    bool, or (0, 0) for none): each stencil corner outside its w x h map, every non-finite or
    invalid coordinate, reads ln_omega. Map by map (k outer): the M lookups of one map hit the
    cache."""
    cap = np.float32(ln_omega)
    zero = np.float32(0.0)
    one = np.float32(1.0)
    has_valid = valid.shape[0] > 0
    for k in numba.prange(x.shape[1]):
        for a in range(x.shape[0]):
            xv = x[a, k]
            yv = y[a, k]
            if not (math.isfinite(xv) and math.isfinite(yv)) or (has_valid and not valid[a, k]):
                out[a, k] = cap
                continue
            xv = min(max(xv, np.float32(-1.0)), np.float32(w))
            yv = min(max(yv, np.float32(-1.0)), np.float32(h))
            ix = int(xv)                        # floor without a libm call (|v| is small)
            iy = int(yv)
            ix -= xv < ix
            iy -= yv < iy
            fx = xv - np.float32(ix)
            fy = yv - np.float32(iy)
            wx0 = (one - fx) if 0 <= ix < w else zero
            wx1 = fx if ix < w - 1 else zero
            wy0 = (one - fy) if 0 <= iy < h else zero
            wy1 = fy if iy < h - 1 else zero
            x0 = min(max(ix, 0), w - 1)
            x1 = min(ix + 1, w - 1)
            r0 = min(max(iy, 0), h - 1) * w + offset[k]
            r1 = min(iy + 1, h - 1) * w + offset[k]
            g00 = cap - flat[r0 + x0]
            g01 = cap - flat[r0 + x1]
            g10 = cap - flat[r1 + x0]
            g11 = cap - flat[r1 + x1]
            gain = wy0 * (wx0 * g00 + wx1 * g01) + wy1 * (wx0 * g10 + wx1 * g11)
            out[a, k] = min(max(cap - gain, zero), cap)


@_pjit
def _neg_clamp(flat, cap):
    """flat <- min(-flat, cap) in place (NaN stays NaN), one pass."""
    c = np.float32(cap)
    for i in numba.prange(flat.shape[0]):
        v = -flat[i]
        flat[i] = c if v > c else v


@numba.njit(cache=True, nogil=True, error_model='numpy', fastmath={'nnan', 'nsz'})
def _row_min(row):
    """min(row) of a float32 row without NaN (fast-math flags: a vectorized reduction)."""
    r = row[0]
    for j in range(1, row.shape[0]):
        v = row[j]
        r = v if v < r else r
    return r


@numba.njit(cache=True, nogil=True, error_model='numpy', fastmath={'nnan', 'nsz'})
def _neg_clamp_min(seg, cap):
    """seg <- min(-seg, cap) in place for a float32 segment without NaN; returns its minimum
    (fast-math flags: one vectorized pass)."""
    low = cap
    for j in range(seg.shape[0]):
        v = -seg[j]
        v = cap if v > cap else v
        seg[j] = v
        low = v if v < low else low
    return low


@_pjit
def _neg_clamp_rows(maps, cap, width, minima, first):
    """Each row of (N, M) ``maps`` (N maps of M = h * width cells, without NaN) <- min(-row,
    cap) in place; its minimum into ``minima`` (N,) and the flat index of the minimum's first
    occurrence in row-major order into ``first`` (N,), found on the way: the minimum of each
    map row as it is clamped, then the first cell holding it in the first map row whose
    minimum it is."""
    c = np.float32(cap)
    h = maps.shape[1] // width
    for n in numba.prange(maps.shape[0]):
        cells = maps[n]
        by = 0
        low = c
        for y in range(h):
            v = _neg_clamp_min(cells[y * width:(y + 1) * width], c)
            if v < low:
                low = v
                by = y
        row = cells[by * width:(by + 1) * width]
        bx = 0
        while bx < width - 1 and row[bx] != low:
            bx += 1
        minima[n] = low
        first[n] = by * width + bx


@_jit
def _argmin_cells(maps, index, minima, out):
    """out[m] = the (x, y) cell of the first minimum in row-major order of maps[index[m]]
    (N, h, w), whose value ``minima[index[m]]`` is known, read in place: the first row whose
    minimum it is, then the first cell of that row holding it (the rows below are not read).
    One thread: a pass over a few hundred maps is too short for a parallel region to pay on a
    busy CPU."""
    h, w = maps.shape[1], maps.shape[2]
    for m in range(index.shape[0]):
        src = maps[index[m]]
        target = minima[index[m]]
        by = 0
        while by < h - 1 and _row_min(src[by]) != target:
            by += 1
        row = src[by]
        bx = 0
        while bx < w - 1 and row[bx] != target:
            bx += 1
        out[m, 0] = bx
        out[m, 1] = by
