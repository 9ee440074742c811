"""Compiled loops over diffraction patterns: weighted detector sums, the summed pattern, and the
per-pattern steps of :mod:`polarstem.preprocess` (binning, pixel cleaning, disk centres, resampling
weights, normalisation), which give bitwise what the numpy/scipy calls they replace give.

Virtual images spend all their time here, once per pattern, so these loops are compiled with
numba (a HyperSpy dependency) and release the GIL: the scan walk runs one per core. Each loop
reads a pattern row once while it is in the L1 cache, for every detector plane that covers it.

Accuracy: a pattern row is summed in float32 over at most :data:`SEGMENT` pixels, the segments in
float64. For integer patterns below 2**16 (uint8, uint16) with 0/1 masks each segment sum stays
below 2**24, so BF and ADF images are exact; weighted planes (centre of mass) and float data are
within float32 rounding of each segment (~1e-7 relative). Non-finite pixels count as 0.

Importing this module imports numba (~0.3 s) and compiles on first use (cached on disk);
:mod:`polarstem.virtual` imports it only for scans large enough to gain from it, :mod:`polarstem.preprocess`
on its first call.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Pixels per float32 partial sum: 256 * 65535 < 2**24, so integer data below 2**16 sum exactly.
SEGMENT = 256

_FAST = {"reassoc", "contract", "nsz"}  # vectorised reductions; NaN/inf semantics kept


@njit(nogil=True, cache=True, fastmath=_FAST)
def plane_sums(frames, planes, bbox, out):  # pragma: no cover - compiled
    """``out[i, p] = sum(frames[i] * planes[p])`` over the bounding box ``bbox[p] = (r0, r1, c0, c1)``.

    frames (n, ky, kx) any real dtype, C-ordered; planes (k, ky, kx) float32; out (n, k) float64.
    """
    n = frames.shape[0]
    k = planes.shape[0]
    acc = np.zeros(k)
    r_lo = bbox[:, 0].min()
    r_hi = bbox[:, 1].max()
    for i in range(n):
        f = frames[i]
        acc[:] = 0.0
        for r in range(r_lo, r_hi):
            for p in range(k):
                if r < bbox[p, 0] or r >= bbox[p, 1]:
                    continue
                for c0 in range(bbox[p, 2], bbox[p, 3], SEGMENT):
                    c1 = min(c0 + SEGMENT, bbox[p, 3])
                    fr = f[r, c0:c1]
                    wr = planes[p, r, c0:c1]
                    s = np.float32(0.0)
                    for c in range(fr.shape[0]):
                        v = np.float32(fr[c])
                        if v - v != 0:  # NaN or inf
                            v = np.float32(0.0)
                        s += v * wr[c]
                    acc[p] += s
        for p in range(k):
            out[i, p] = acc[p]


@njit(nogil=True, cache=True, fastmath=_FAST)
def moment_sums(frames, weight, bbox, xs, ys, out):  # pragma: no cover - compiled
    """Zeroth and first moments under ``weight``: ``out[i] = (sum w*I, sum w*I*ys[row], sum w*I*xs[col])``.

    frames (n, ky, kx); weight (ky, kx) float32, zero outside ``bbox = (r0, r1, c0, c1)``; xs (kx,)
    float32 and ys (ky,) float64 the pixel coordinates about the centre; out (n, 3) float64.
    """
    n = frames.shape[0]
    r0, r1, c_lo, c_hi = bbox[0], bbox[1], bbox[2], bbox[3]
    for i in range(n):
        f = frames[i]
        total = 0.0
        first_y = 0.0
        first_x = 0.0
        for r in range(r0, r1):
            row = 0.0
            for c0 in range(c_lo, c_hi, SEGMENT):
                c1 = min(c0 + SEGMENT, c_hi)
                fr = f[r, c0:c1]
                wr = weight[r, c0:c1]
                xr = xs[c0:c1]
                s = np.float32(0.0)
                t = np.float32(0.0)
                for c in range(fr.shape[0]):
                    v = np.float32(fr[c])
                    if v - v != 0:
                        v = np.float32(0.0)
                    v = v * wr[c]
                    s += v
                    t += v * xr[c]
                row += s
                first_x += t
            total += row
            first_y += row * ys[r]
        out[i, 0] = total
        out[i, 1] = first_y
        out[i, 2] = first_x


@njit(nogil=True, cache=True, fastmath=_FAST)
def pattern_sum(frames, total):  # pragma: no cover - compiled
    """``total += frames.sum(axis=0)`` in float64; frames (n, ky, kx), total (ky, kx) float64."""
    n, ky, kx = frames.shape
    for i in range(n):
        for r in range(ky):
            fr = frames[i, r]
            tr = total[r]
            for c in range(kx):
                v = np.float64(fr[c])
                if v - v != 0:
                    v = 0.0
                tr[c] += v


@njit(nogil=True, cache=True)
def unshuffle(raw, size, out):  # pragma: no cover - compiled
    """Undo HDF5's shuffle filter: ``size`` byte planes of ``raw`` (uint8) interleaved into ``out`` (uint8).

    2- and 4-byte values are put together as integers (vectorised; little-endian hosts only).
    """
    n = out.shape[0] // size
    if size == 2:
        o2 = out.view(np.uint16)
        b0 = raw[:n]
        b1 = raw[n:2 * n]
        for i in range(n):
            o2[i] = np.uint16(b0[i]) | (np.uint16(b1[i]) << np.uint16(8))
    elif size == 4:
        o4 = out.view(np.uint32)
        b0 = raw[:n]
        b1 = raw[n:2 * n]
        b2 = raw[2 * n:3 * n]
        b3 = raw[3 * n:4 * n]
        for i in range(n):
            o4[i] = (np.uint32(b0[i]) | (np.uint32(b1[i]) << np.uint32(8)) | (np.uint32(b2[i]) << np.uint32(16))
                     | (np.uint32(b3[i]) << np.uint32(24)))
    else:
        for b in range(size):
            plane = raw[b * n:(b + 1) * n]
            for i in range(n):
                out[i * size + b] = plane[i]


# --------------------------------------------------------------------------------------------------
# preprocessing (polarstem.preprocess): one frame at a time in the cache, bitwise the numpy/scipy results
#
# No fastmath here: the loops repeat the arithmetic of the numpy/scipy calls they replace, in the same
# order and precision (scipy's line filters run in float64 and store the input's dtype, numpy sums
# float32 pairwise), so thresholds decide exactly as those calls would.

#: Largest |integer| * pixels-per-bin that ``load_binned`` sums exactly in float32 (2**24).
EXACT_F32 = 2 ** 24


@njit(nogil=True, cache=True)
def load_binned(raw, factor, out, totals):  # pragma: no cover - compiled
    """Integer frames (n, ky, kx) -> float32 ``factor`` x ``factor`` block sums ``out`` (n, ky // f, kx // f)
    and ``totals[i]`` = the sum of all of frame ``i`` (float64). Returns the largest |value| read: below
    ``EXACT_F32 / factor**2`` every value, block sum and total is an exact integer, the same as numpy's
    float32 conversion and sums give in any order (otherwise the results are not to be used)."""
    n, ky, kx = raw.shape
    by, bx = out.shape[1], out.shape[2]
    acc = np.zeros(kx, np.int64)
    blk = np.zeros(bx, np.int64)
    big = 0.0
    for i in range(n):
        total = 0
        lo = raw[i, 0, 0]
        hi = raw[i, 0, 0]
        for r in range(ky):
            row = raw[i, r]
            for c in range(kx):
                v = row[c]
                lo = min(lo, v)
                hi = max(hi, v)
                total += v
        totals[i] = np.float64(total)
        big = max(big, abs(np.float64(lo)), abs(np.float64(hi)))
        for b in range(by):
            acc[:] = 0
            for r in range(b * factor, (b + 1) * factor):
                row = raw[i, r]
                for c in range(kx):
                    acc[c] += row[c]
            blk[:] = 0
            for k in range(factor):
                for c in range(bx):
                    blk[c] += acc[c * factor + k]
            o = out[i, b]
            for c in range(bx):
                o[c] = np.float32(blk[c])
    return big


@njit(nogil=True, cache=True)
def _pairwise_block(a, lo, n):  # pragma: no cover - compiled
    """numpy's pairwise sum of ``a[lo:lo + n]``, n <= 128: 8 float32 lanes, the rest in order."""
    if n < 8:
        res = np.float32(0.0)
        for i in range(lo, lo + n):
            res += a[i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    while i < n - n % 8:
        j = lo + i
        r0 += a[j]
        r1 += a[j + 1]
        r2 += a[j + 2]
        r3 += a[j + 3]
        r4 += a[j + 4]
        r5 += a[j + 5]
        r6 += a[j + 6]
        r7 += a[j + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@njit(nogil=True, cache=True)
def _pairwise_sum(a):  # pragma: no cover - compiled
    """numpy's float32 sum of a 1-D array: halves (multiples of 8) down to blocks of 128, summed pairwise.
    The recursion runs on an explicit stack (cached numba functions must not recurse)."""
    if a.size <= 128:
        return _pairwise_block(a, 0, a.size)
    los = np.empty(128, np.int64)
    ns = np.empty(128, np.int64)
    split = np.zeros(128, np.bool_)
    vals = np.empty(128, np.float32)
    top = 0
    nv = 0
    los[0], ns[0] = 0, a.size
    while top >= 0:
        lo, n = los[top], ns[top]
        if n <= 128:
            vals[nv] = _pairwise_block(a, lo, n)
            nv += 1
            top -= 1
        elif split[top]:  # both halves done
            vals[nv - 2] = vals[nv - 2] + vals[nv - 1]
            nv -= 1
            split[top] = False
            top -= 1
        else:
            n2 = n // 2
            n2 -= n2 % 8
            split[top] = True
            los[top + 1], ns[top + 1] = lo + n2, n - n2
            los[top + 2], ns[top + 2] = lo, n2
            split[top + 1] = False
            split[top + 2] = False
            top += 2
    return vals[0]


@njit(nogil=True, cache=True)
def _frame_mean(f):  # pragma: no cover - compiled
    """``f.mean()`` of a float32 frame as numpy computes it (pairwise float32 sum, float64 division)."""
    flat = f.reshape(-1)
    return np.float32(np.float64(np.float32(0.0) + _pairwise_sum(flat)) / flat.size)


@njit(nogil=True, cache=True)
def _neighbour_mean(f, tmp, nb):  # pragma: no cover - compiled
    """Mean of the 8 neighbours, ``(uniform_filter(f, 3, mode="nearest") * 9 - f) / 8`` as scipy and numpy
    compute it: running 3-sums in float64 along rows then columns, each divided by 3 into float32."""
    ky, kx = f.shape
    for c in range(kx):  # axis 0
        t = 0.0
        t += np.float64(f[0, c])
        t += np.float64(f[0, c])
        t += np.float64(f[min(1, ky - 1), c])
        tmp[0, c] = t / 3.0
        for r in range(1, ky):
            t += np.float64(f[min(r + 1, ky - 1), c]) - np.float64(f[r - 2 if r >= 2 else 0, c])
            tmp[r, c] = t / 3.0
    for r in range(ky):  # axis 1
        src = tmp[r]
        t = 0.0
        t += np.float64(src[0])
        t += np.float64(src[0])
        t += np.float64(src[min(1, kx - 1)])
        nb[r, 0] = t / 3.0
        for c in range(1, kx):
            t += np.float64(src[min(c + 1, kx - 1)]) - np.float64(src[c - 2 if c >= 2 else 0])
            nb[r, c] = t / 3.0
    nine = np.float32(9.0)
    eight = np.float32(8.0)
    for r in range(ky):
        for c in range(kx):
            nb[r, c] = (nb[r, c] * nine - f[r, c]) / eight


@njit(nogil=True, cache=True)
def clean_frames(frames):  # pragma: no cover - compiled
    """Hot and dead pixels of float32 frames (n, ky, kx) replaced in place (``preprocess.clean_pixels``)."""
    n, ky, kx = frames.shape
    tmp = np.empty((ky, kx), np.float32)
    nb = np.empty((ky, kx), np.float32)
    five = np.float32(5.0)
    tiny = np.float32(1e-12)
    for i in range(n):
        f = frames[i]
        _neighbour_mean(f, tmp, nb)
        mean = max(_frame_mean(f), tiny)
        limit = five * mean
        hot = False
        for r in range(ky):
            for c in range(kx):
                if f[r, c] > five * nb[r, c] + limit:
                    hot = True
        if hot:  # all at once, from the neighbours before any replacement
            for r in range(ky):
                for c in range(kx):
                    if f[r, c] > five * nb[r, c] + limit:
                        tmp[r, c] = nb[r, c]
                    else:
                        tmp[r, c] = f[r, c]
            f[:, :] = tmp
            _neighbour_mean(f, tmp, nb)
            mean = max(_frame_mean(f), tiny)
            limit = five * mean
        for r in range(ky):
            for c in range(kx):
                if f[r, c] <= 0 and nb[r, c] > limit:
                    f[r, c] = nb[r, c]


@njit(nogil=True, cache=True)
def _gauss_lines(src, dst, w, axis, acc):  # pragma: no cover - compiled
    """scipy's ``correlate1d`` with a symmetric kernel ``w`` (odd length), mode "nearest", along ``axis``
    (0 or 1) of a 2-D frame: per pixel ``v * w[h]`` plus the mirrored pairs ``(left + right) * w``,
    outermost first, in float64, stored in ``dst``'s dtype. ``acc``: float64 scratch of ``max(ky, kx) + 2 * h``."""
    ky, kx = src.shape
    h = (w.shape[0] - 1) // 2
    if axis == 0:
        for r in range(ky):
            s0 = src[r]
            for c in range(kx):
                acc[c] = np.float64(s0[c]) * w[h]
            for j in range(-h, 0):
                a = src[min(max(r + j, 0), ky - 1)]
                b = src[min(max(r - j, 0), ky - 1)]
                wj = w[h + j]
                for c in range(kx):
                    acc[c] += (np.float64(a[c]) + np.float64(b[c])) * wj
            d = dst[r]
            for c in range(kx):
                d[c] = acc[c]
    else:
        line = acc[kx + 2 * h:]
        for r in range(ky):
            s = src[r]
            for c in range(-h, kx + h):  # the row extended by its edge values
                line[c + h] = np.float64(s[min(max(c, 0), kx - 1)])
            for c in range(kx):
                acc[c] = line[c + h] * w[h]
            for j in range(-h, 0):
                wj = w[h + j]
                for c in range(kx):
                    acc[c] += (line[c + h + j] + line[c + h - j]) * wj
            d = dst[r]
            for c in range(kx):
                d[c] = acc[c]


@njit(nogil=True, cache=True)
def _order_keys(x, keys):  # pragma: no cover - compiled
    """uint32 keys of float32 ``x`` that sort as the values do (no NaN; -0 before +0, equal as values)."""
    bits = x.view(np.uint32)
    for i in range(x.size):
        b = bits[i]
        keys[i] = b ^ np.uint32(0xFFFFFFFF) if b >> np.uint32(31) else b | np.uint32(0x80000000)


@njit(nogil=True, cache=True)
def _radix_bucket(src, m, level, k, hist):  # pragma: no cover - compiled
    """One level of the radix selection (11, 11 and 10 bits): the digit's shift and mask, the histogram of
    ``src[:m]`` by that digit (``hist``: 2048), and the bucket that holds rank ``k`` with ``k``'s rank in it."""
    shift = np.uint32(21 - 11 * level) if level < 2 else np.uint32(0)
    mask = np.uint32(0x7FF) if level < 2 else np.uint32(0x3FF)
    hist[:] = 0
    for i in range(m):
        hist[(src[i] >> shift) & mask] += 1
    b = 0
    while k >= hist[b]:
        k -= hist[b]
        b += 1
    return shift, mask, b, k


@njit(nogil=True, cache=True)
def _keep_bucket(src, m, shift, mask, b, cand):  # pragma: no cover - compiled
    """Copy the keys of ``src[:m]`` whose digit is ``b`` to the front of ``cand`` (may be ``src``); their count."""
    j = 0
    bb = np.uint32(b)
    for i in range(m):
        if (src[i] >> shift) & mask == bb:
            cand[j] = src[i]
            j += 1
    return j


@njit(nogil=True, cache=True)
def _select(keys, k, cand, hist):  # pragma: no cover - compiled
    """The ``k``-th smallest of ``keys`` (uint32), by radix: 11, 11 and 10 bits, keeping only the bucket
    that holds rank ``k`` (``cand``: scratch as long as ``keys``, ``hist``: 2048)."""
    m = keys.size
    src = keys
    for level in range(3):
        shift, mask, b, k = _radix_bucket(src, m, level, k, hist)
        m = _keep_bucket(src, m, shift, mask, b, cand)
        src = cand
    return cand[0]


@njit(nogil=True, cache=True)
def _select_pair(keys, k, cand, hist):  # pragma: no cover - compiled
    """The ``k``-th and ``k + 1``-th smallest of ``keys`` in one radix descent (as ``_select``): where the
    two ranks fall in different buckets, the first is the largest of its bucket and the second the
    smallest of the next non-empty one."""
    m = keys.size
    src = keys
    for level in range(3):
        shift, mask, b, k = _radix_bucket(src, m, level, k, hist)
        if k + 1 < hist[b]:  # both in bucket b: keep only it
            m = _keep_bucket(src, m, shift, mask, b, cand)
            src = cand
            continue
        b2 = b + 1
        while hist[b2] == 0:
            b2 += 1
        bb, bb2 = np.uint32(b), np.uint32(b2)
        first = np.uint32(0)
        second = np.uint32(0xFFFFFFFF)
        for i in range(m):
            v = src[i]
            t = (v >> shift) & mask
            if t == bb and v > first:
                first = v
            elif t == bb2 and v < second:
                second = v
        return first, second
    return cand[0], cand[0]


@njit(nogil=True, cache=True)
def _key_value(key):  # pragma: no cover - compiled
    """The float32 whose ``_order_keys`` key is ``key``."""
    b = key ^ np.uint32(0x80000000) if key >> np.uint32(31) else key ^ np.uint32(0xFFFFFFFF)
    return np.array([b], np.uint32).view(np.float32)[0]


@njit(nogil=True, cache=True)
def _lerp(a, b, t):  # pragma: no cover - compiled
    """numpy's percentile interpolation between order statistics ``a`` <= ``b`` (float64 result)."""
    d = b - a
    if t >= 0.5:
        return np.float64(b) - np.float64(d) * (1.0 - t)
    return np.float64(a) + np.float64(d) * t


@njit(nogil=True, cache=True)
def disk_moments(frames, w, stride, kth, gamma, fractions, radix, out):  # pragma: no cover - compiled
    """Per frame: gaussian smoothing (``_gauss_lines`` along both axes), the low/high percentiles of every
    ``stride``-th smoothed pixel (order statistics ``kth`` = (lo, lo + 1, hi, hi + 1) in the subsample,
    interpolated by ``gamma`` = (lo, hi) as numpy does), and over the pixels above
    ``lo + fractions[k] * (hi - lo)``: ``out[i] = (count above fractions[0], sum of their rows, sum of
    their columns, count above fractions[1])`` (float64, exact integers). ``radix``: frames are float32."""
    n, ky, kx = frames.shape
    tmp = np.empty((ky, kx), frames.dtype)
    smooth = np.empty((ky, kx), frames.dtype)
    acc = np.empty(2 * (max(ky, kx) + w.shape[0]))
    m = (ky * kx + stride - 1) // stride
    sub = np.empty(m, np.float32)
    keys = np.empty(m, np.uint32)
    cand = np.empty(m, np.uint32)
    hist = np.empty(2048, np.int64)
    stats = np.empty(4, np.float64)
    for i in range(n):
        _gauss_lines(frames[i], tmp, w, 0, acc)
        _gauss_lines(tmp, smooth, w, 1, acc)
        flat = smooth.reshape(-1)
        if radix:  # float32: order statistics by radix selection on the float bits
            for j in range(m):
                sub[j] = flat[j * stride]
            _order_keys(sub, keys)
            for q in range(0, 4, 2):
                if kth[q + 1] == kth[q] + 1:
                    a, b = _select_pair(keys, kth[q], cand, hist)
                else:
                    a, b = _select(keys, kth[q], cand, hist), _select(keys, kth[q + 1], cand, hist)
                stats[q] = _key_value(a)
                stats[q + 1] = _key_value(b)
            lo = _lerp(np.float32(stats[0]), np.float32(stats[1]), gamma[0])
            hi = _lerp(np.float32(stats[2]), np.float32(stats[3]), gamma[1])
        else:
            part = np.partition(flat[::stride].copy(), kth)
            lo = _lerp(part[kth[0]], part[kth[1]], gamma[0])
            hi = _lerp(part[kth[2]], part[kth[3]], gamma[1])
        area = 0
        sy = 0
        sx = 0
        half = 0
        if hi - lo > 0:
            t1 = lo + fractions[0] * (hi - lo)
            t2 = lo + fractions[1] * (hi - lo)
            for r in range(ky):
                row = smooth[r]
                cnt = 0
                for c in range(kx):
                    v = row[c]
                    if v > t1:
                        cnt += 1
                        sx += c
                    if v > t2:
                        half += 1
                area += cnt
                sy += cnt * r
        out[i, 0] = area
        out[i, 1] = sy
        out[i, 2] = sx
        out[i, 3] = half


@njit(nogil=True, cache=True)
def triangle_weights(u, width, out):  # pragma: no cover - compiled
    """``out[i, j, r] = max(0, 1 - |r - u[i, j]| / width) / width`` (float64, stored as float32; ``out``
    zeroed by the caller): only the input pixels within ``width`` of ``u`` are computed."""
    n, n_out, n_in = out.shape
    for i in range(n):
        for j in range(n_out):
            uj = u[i, j]
            r0, r1 = 0, n_in
            if abs(uj) < 1e15:  # finite: the triangle covers only |r - uj| < width
                r0 = min(max(0, int(np.floor(uj - width))), n_in)
                r1 = max(min(n_in, int(np.ceil(uj + width)) + 1), r0)
            for r in range(r0, r1):
                w = 1.0 - abs(np.float64(r) - uj) / width
                if w < 0.0:  # np.maximum(0, w): NaN stays NaN
                    w = 0.0
                out[i, j, r] = w / width


@njit(nogil=True, cache=True)
def sqrt_standardize(x, tmp):  # pragma: no cover - compiled
    """``preprocess.normalize(x, "sqrt")`` in place on float32 (n, h, w): per pattern divide by the mean,
    square root, standardise, clip to [-5, 10]; numpy's float32 means and standard deviation
    (``_frame_mean``; ``tmp``: float32 scratch of one pattern)."""
    n = x.shape[0]
    tiny = np.float32(1e-12)
    small = np.float32(1e-6)
    zero = np.float32(0.0)
    for i in range(n):
        f = x[i].reshape(-1)
        t = tmp.reshape(-1)
        d = max(_frame_mean(x[i]), tiny)
        for j in range(f.size):
            v = f[j]
            f[j] = np.sqrt((v if v >= zero else zero) / d)
        m = _frame_mean(x[i])
        for j in range(f.size):
            e = f[j] - m
            t[j] = e * e
        s = np.sqrt(np.float32(np.float64(_pairwise_sum(t)) / f.size))
        s = max(s, small)
        for j in range(f.size):
            v = (f[j] - m) / s
            f[j] = min(max(v, np.float32(-5.0)), np.float32(10.0))


@njit(nogil=True, cache=True)
def annulus_sums(x, rr, r_in, r_lo, r_hi, sums, counts):  # pragma: no cover - compiled
    """Per pattern ``i`` of float32 x (n, h, w): ``sums[i] = (sum(x * (rr <= r_in[i])), sum(x * ring))`` with
    ring ``r_lo[i] <= rr <= r_hi[i]``, as numpy sums them (pairwise, float32), and the pixel counts."""
    n = x.shape[0]
    size = rr.size
    rflat = rr.reshape(-1)
    t_in = np.empty(size, np.float32)
    t_ring = np.empty(size, np.float32)
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for i in range(n):
        f = x[i].reshape(-1)
        c_in = 0
        c_ring = 0
        for j in range(size):
            r = rflat[j]
            a = r <= r_in[i]
            b = r >= r_lo[i] and r <= r_hi[i]
            t_in[j] = f[j] * (one if a else zero)
            t_ring[j] = f[j] * (one if b else zero)
            c_in += a
            c_ring += b
        sums[i, 0] = _pairwise_sum(t_in)
        sums[i, 1] = _pairwise_sum(t_ring)
        counts[i, 0] = c_in
        counts[i, 1] = c_ring
