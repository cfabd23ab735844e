"""Compiled kernels: the two nearest *distinct* cells of every pixel, in separable passes.

A generalisation of the separable exact Euclidean distance transform (Saito & Toriwaki,
Meijster et al.) that keeps, for every pixel, the squared distances to the nearest pixel
of its nearest cell and of its second-nearest *other* cell (``b1, l1, b2, l2``).

Why two per pixel are enough: after the passes along the first ``k`` axes, the state
of a pixel holds the two nearest distinct labels within the ``k``-dimensional slab
through it. In the next pass, a pixel's second-nearest distinct label ``L`` is reached
through some line position ``j``; if ``L`` were not among the two nearest distinct
labels at ``j``, two other labels would be nearer than ``L`` through ``j`` and hence
nearer to the pixel, and ``L`` would not be second. (With ties the label may differ,
the distance does not.)

Passes:

1. :func:`sweep_first_axis`: along the first axis, two linear sweeps that track the last
   two distinct labels seen (O(1) per pixel, exact, unbounded).
2. :func:`scan_axis` (3D, the middle axis): every pixel looks at the line positions
   outward from itself and stops as soon as the offset alone is no smaller than its
   current second distance, or beyond the reach ``R`` (offsets beyond ``R`` only give
   distances beyond ``R``, which the caller does not need).
3. :func:`scan_last_axis`: the same scan along the last axis, for background pixels only,
   writing the distances; it also stops once a pixel's nearest cell is known to lie
   beyond ``R/2`` (such a pixel is not contested: its border term is negligible).

All kernels are compiled with ``nogil`` so the caller can run slabs of the image in
threads. Label 0 is background; ``l = 0`` with ``b = inf`` means "no cell".
"""

from __future__ import annotations

import numpy as np
from numba import njit

INF = np.float32(np.inf)


@njit(cache=True, nogil=True, inline="always")
def _push(b1, l1, b2, l2, d, lab):
    """Insert candidate ``(d, lab)`` into the two nearest distinct labels ``(b1,l1),(b2,l2)``.

    (A candidate with label ``l2`` needs no case of its own: it either becomes the
    nearest, pushing ``l1`` second, or replaces ``l2``'s distance.)
    """
    if lab == 0:
        return b1, l1, b2, l2
    if lab == l1:
        if d < b1:
            b1 = d
    elif d < b1:
        b2, l2 = b1, l1
        b1, l1 = d, lab
    elif d < b2:
        b2, l2 = d, lab
    return b1, l1, b2, l2


@njit(cache=True, nogil=True)
def sweep_first_axis(lab, s2, b1, l1, b2, l2, c0, c1):
    """Pass along axis 0 of the 2D view ``lab[n, m]`` for columns ``c0:c1``.

    ``s2`` is the squared spacing along axis 0. Writes ``b1, l1, b2, l2`` (squared
    distances along the column to the two nearest distinct labels): a sweep down gives
    the two nearest distinct labels above each pixel, a sweep up merges those below.
    """
    _sweep(lab, s2, b1, l1, b2, l2, c0, c1, False)
    _sweep(lab, s2, b1, l1, b2, l2, c0, c1, True)


@njit(cache=True, nogil=True)
def _sweep(lab, s2, b1, l1, b2, l2, c0, c1, upward):
    n = lab.shape[0]
    w = c1 - c0
    # per column: the last label seen (pa, la) and the last one before its run (pb, lb)
    pa = np.full(w, -1, np.int64)
    la = np.zeros(w, lab.dtype)
    pb = np.full(w, -1, np.int64)
    lb = np.zeros(w, lab.dtype)
    for step in range(n):
        i = n - 1 - step if upward else step
        for k in range(w):
            j = c0 + k
            v = lab[i, j]
            if v != 0:
                if v != la[k]:
                    pb[k] = pa[k]
                    lb[k] = la[k]
                    la[k] = v
                pa[k] = i
            if upward:
                x1, y1, x2, y2 = b1[i, j], l1[i, j], b2[i, j], l2[i, j]
            else:
                x1, y1, x2, y2 = INF, lab.dtype.type(0), INF, lab.dtype.type(0)
            if pa[k] >= 0:
                x1, y1, x2, y2 = _push(x1, y1, x2, y2, np.float32((pa[k] - i) * (pa[k] - i) * s2), la[k])
            if pb[k] >= 0:
                x1, y1, x2, y2 = _push(x1, y1, x2, y2, np.float32((pb[k] - i) * (pb[k] - i) * s2), lb[k])
            b1[i, j] = x1
            l1[i, j] = y1
            b2[i, j] = x2
            l2[i, j] = y2


@njit(cache=True, nogil=True)
def scan_axis(b1, l1, b2, l2, o1, m1, o2, m2, s2, reach2, a0, a1, c0, c1):
    """Pass along axis 1 of the 3D views ``[a, line, c]``, for ``a0:a1`` and ``c0:c1``.

    Reads the state ``b1, l1, b2, l2`` and writes the new one to ``o1, m1, o2, m2``.
    ``s2``: squared spacing along the line; ``reach2``: squared reach.
    """
    n = b1.shape[1]
    for a in range(a0, a1):
        for i in range(n):
            for c in range(c0, c1):
                x1, y1, x2, y2 = b1[a, i, c], l1[a, i, c], b2[a, i, c], l2[a, i, c]
                t = 1
                while True:
                    off = np.float32(t * t * s2)
                    if off >= x2 or off > reach2:
                        break
                    if i - t < 0 and i + t >= n:
                        break
                    if i - t >= 0:
                        x1, y1, x2, y2 = _push(x1, y1, x2, y2, b1[a, i - t, c] + off, l1[a, i - t, c])
                        x1, y1, x2, y2 = _push(x1, y1, x2, y2, b2[a, i - t, c] + off, l2[a, i - t, c])
                    if i + t < n:
                        x1, y1, x2, y2 = _push(x1, y1, x2, y2, b1[a, i + t, c] + off, l1[a, i + t, c])
                        x1, y1, x2, y2 = _push(x1, y1, x2, y2, b2[a, i + t, c] + off, l2[a, i + t, c])
                    t += 1
                o1[a, i, c] = x1
                m1[a, i, c] = y1
                o2[a, i, c] = x2
                m2[a, i, c] = y2


@njit(cache=True, nogil=True)
def scan_last_axis(lab, b1, l1, b2, l2, d1, d2, s2, reach2, half2, r0, r1):
    """Final pass along the last axis of the 2D views ``[row, x]``, rows ``r0:r1``.

    Writes the distances ``d1, d2`` (not squared) of background pixels; cell pixels get
    0. A pixel whose nearest cell is farther than ``sqrt(half2)`` is not contested: its
    ``d2`` is left ``inf`` and its ``d1`` is only a lower bound. ``d2`` is exact where
    ``d1 + d2 <= sqrt(reach2)`` and ``inf`` or no smaller than the exact value elsewhere.
    """
    n = b1.shape[1]
    for r in range(r0, r1):
        for i in range(n):
            if lab[r, i] != 0:
                d1[r, i] = 0.0
                d2[r, i] = 0.0
                continue
            x1, y1, x2, y2 = b1[r, i], l1[r, i], b2[r, i], l2[r, i]
            t = 1
            while True:
                off = np.float32(t * t * s2)
                if off >= x2 or off > reach2:
                    break
                if off > half2 and x1 > half2:
                    break  # nearest cell beyond half the reach: not contested
                if i - t < 0 and i + t >= n:
                    break
                if i - t >= 0:
                    x1, y1, x2, y2 = _push(x1, y1, x2, y2, b1[r, i - t] + off, l1[r, i - t])
                    x1, y1, x2, y2 = _push(x1, y1, x2, y2, b2[r, i - t] + off, l2[r, i - t])
                if i + t < n:
                    x1, y1, x2, y2 = _push(x1, y1, x2, y2, b1[r, i + t] + off, l1[r, i + t])
                    x1, y1, x2, y2 = _push(x1, y1, x2, y2, b2[r, i + t] + off, l2[r, i + t])
                t += 1
            d1[r, i] = np.sqrt(x1)
            if x1 > half2:
                d2[r, i] = INF
            else:
                d2[r, i] = np.sqrt(x2)
