"""Compiled reductions of diffraction patterns: weighted detector sums and the summed pattern.

Virtual images spend all their time here, once per pattern, so these loops are compiled with
numba (a HyperSpy dependency) and release the GIL: the scan walk runs one per core. Each loop
reads a pattern row once while it is in the L1 cache, for every detector plane that covers it.

Accuracy: a pattern row is summed in float32 over at most :data:`SEGMENT` pixels, the segments in
float64. For integer patterns below 2**16 (uint8, uint16) with 0/1 masks each segment sum stays
below 2**24, so BF and ADF images are exact; weighted planes (centre of mass) and float data are
within float32 rounding of each segment (~1e-7 relative). Non-finite pixels count as 0.

Importing this module imports numba (~0.3 s) and compiles on first use (cached on disk);
:mod:`polarstem.virtual` imports it only for scans large enough to gain from it.
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
