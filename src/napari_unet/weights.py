"""The paper's boundary weight map (Ronneberger et al. 2015, eq. 2), exact and fast.

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

``d1`` and ``d2`` are the Euclidean distances from a *background* pixel ``x`` to the
nearest pixel of the nearest and of the second-nearest cell (one cell = one label id).
The border term is 0 on cell pixels; ``w_c`` balances the class frequencies.

How it is computed (same values as one distance transform per cell, far less work):

1. ``d2(x)`` only matters where the border term is not negligible, which bounds the
   distances involved: with ``D = sigma * sqrt(2 ln(w0 / tol))`` the term is below
   ``tol`` as soon as ``d1 + d2 > D`` (:func:`cutoff_distance`). Since ``d2 >= d1``,
   only background pixels with ``d1 <= D/2`` need ``d2`` ("contested" pixels).
2. One separable transform finds, for every pixel at once, the squared distances to
   its two nearest *distinct* cells (:mod:`napari_unet._two_nearest`, compiled with
   numba): an exact linear sweep along the first axis, then along each further axis a
   scan outward from every pixel that stops at its current second distance or at
   ``D``. This is the exact Euclidean transform generalised from one nearest feature
   to two nearest distinct labels; the module's docstring says why it stays exact.
3. Slabs of the image are shared among threads (the kernels free the GIL). Work is
   about constant per pixel for crowded images; memory is 6 numbers per pixel (9 in
   3D), never cells x pixels.

The result equals the per-cell formula wherever the border term is at least ``tol``,
and differs from it by less than ``tol`` (default 1e-4) elsewhere.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .targets import check_labels

#: the border term is dropped where it is below this (see :func:`cutoff_distance`)
TOLERANCE = 1e-4

ClassWeights = None | str | Mapping[int, float]


def cutoff_distance(w0: float, sigma: float, tol: float = TOLERANCE) -> float:
    """Distance ``D`` beyond which the border term is negligible.

    ``w0 * exp(-(d1 + d2)^2 / (2 sigma^2)) < tol`` whenever ``d1 + d2 > D`` with
    ``D = sigma * sqrt(2 ln(w0 / tol))``.

    Args:
        w0: weight of the border term.
        sigma: width of the border term (same units as the spacing).
        tol: the term is dropped where it would be below this.

    Returns:
        ``D`` (0.0 when ``w0 <= tol``: the term is negligible everywhere).
    """
    if w0 <= tol:
        return 0.0
    return float(sigma * math.sqrt(2.0 * math.log(w0 / tol)))


def default_workers() -> int:
    """Threads for the distance transforms: the CPUs this process may use, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))  # respects cgroup / taskset limits on Linux
    except AttributeError:  # macOS, Windows
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def _check_spacing(spacing: Any, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    sp = np.atleast_1d(np.asarray(spacing, dtype=float))
    if sp.size == 1:
        sp = np.repeat(sp, ndim)
    if sp.shape != (ndim,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(
            f"spacing must be one positive number or one per axis ({ndim} values), got {spacing!r}"
        )
    return sp


def class_weight_map(labels: np.ndarray, class_weights: ClassWeights = None) -> np.ndarray:
    """The class-balance term ``w_c`` (background = class 0, any cell = class 1).

    Args:
        labels: integer label image.
        class_weights: ``None`` -> 1 everywhere. ``"balanced"`` -> inverse class
            frequency, normalised so that the *mean of w_c over the image is 1*: with
            ``N`` pixels of which ``N_k`` are of class ``k``, ``w_k = N / (2 N_k)``, so
            each class carries half of the total weight. When one class is absent,
            ``w_c = 1``. A mapping ``{0: w_background, 1: w_cells}`` gives the weights
            directly (a missing key means 1.0).

    Returns:
        float32 array of the labels' shape.
    """
    fg = labels > 0
    if class_weights is None or (isinstance(class_weights, str) and class_weights.lower() == "none"):
        return np.ones(labels.shape, np.float32)
    if isinstance(class_weights, str):
        if class_weights.lower() != "balanced":
            raise ValueError(
                f"class_weights must be None, 'balanced' or a mapping {{0: w, 1: w}}, got {class_weights!r}"
            )
        n = fg.size
        n_fg = int(np.count_nonzero(fg))
        n_bg = n - n_fg
        if n_fg == 0 or n_bg == 0:
            return np.ones(labels.shape, np.float32)
        w_bg, w_fg = n / (2.0 * n_bg), n / (2.0 * n_fg)
    elif isinstance(class_weights, Mapping):
        bad = [k for k in class_weights if k not in (0, 1)]
        if bad:
            raise ValueError(
                f"class_weights keys must be 0 (background) and 1 (cells), got {bad!r}"
            )
        w_bg = float(class_weights.get(0, 1.0))
        w_fg = float(class_weights.get(1, 1.0))
        if not (math.isfinite(w_bg) and math.isfinite(w_fg)) or w_bg < 0 or w_fg < 0:
            raise ValueError(f"class weights must be finite and >= 0, got {dict(class_weights)!r}")
    else:
        raise ValueError(
            f"class_weights must be None, 'balanced' or a mapping {{0: w, 1: w}}, got {class_weights!r}"
        )
    return np.where(fg, np.float32(w_fg), np.float32(w_bg)).astype(np.float32, copy=False)


def _chunks(n: int, k: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]``: ``range(n)`` cut into at most ``k`` nearly equal pieces."""
    edges = np.linspace(0, n, max(1, min(k, n)) + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _run(fn: Any, calls: list[tuple], workers: int) -> None:
    """``fn(*args)`` for every ``args`` in ``calls``, in ``workers`` threads (the kernels free the GIL)."""
    if workers >= 2 and len(calls) > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda args: fn(*args), calls))
    else:
        for args in calls:
            fn(*args)


def _as_int32(lab: np.ndarray) -> np.ndarray:
    """The labels as C-contiguous int32 (ids past int32 are renumbered, keeping cells apart)."""
    if lab.size and int(lab.max()) > np.iinfo(np.int32).max:
        ids, inverse = np.unique(lab, return_inverse=True)
        lab = (inverse.reshape(lab.shape) + (ids[0] != 0)).astype(np.int32)
    return np.ascontiguousarray(lab, np.int32)


def border_distances(
    labels: Any,
    cutoff: float = math.inf,
    spacing: float | Sequence[float] | None = None,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Distances ``d1`` (nearest cell) and ``d2`` (second-nearest cell) on background pixels.

    Args:
        labels: integer label image (2D or 3D), 0 = background.
        cutoff: only distances up to ``cutoff`` are looked for. ``d1`` is exact where it
            is at most ``cutoff / 2`` (elsewhere it is larger than that, or inf), and
            ``d2`` is exact where, in addition, ``d1 + d2 <= cutoff`` (elsewhere it is
            ``inf`` or no smaller than the exact value, so ``d1 + d2 > cutoff``).
        spacing: pixel size per axis (or one number), for anisotropic images.
        workers: threads to use (default: :func:`default_workers`).

    Returns:
        ``(d1, d2)`` float32; both are 0 on cell pixels; ``d2`` is ``inf`` where there is no
        second cell within reach.
    """
    from . import _two_nearest as kernels  # numba: compiled on first use, then cached

    lab = check_labels(labels)
    if lab.ndim not in (2, 3):
        raise ValueError(f"labels must be 2D or 3D, got {lab.ndim}D (shape {lab.shape})")
    sp = _check_spacing(spacing, lab.ndim)
    if workers is None:
        workers = default_workers()
    shape = lab.shape
    if not lab.any():
        return np.full(shape, np.inf, np.float32), np.full(shape, np.inf, np.float32)
    lab = _as_int32(lab)
    # 1e-3 of slack covers float32 rounding of the squared distances
    reach2 = np.float32((cutoff + 1e-3) ** 2)
    half2 = np.float32((cutoff / 2 + 1e-3) ** 2)
    pieces = 4 * workers  # a few pieces per thread evens out uneven slabs

    # pass 1, along axis 0: the state (b1, l1, b2, l2) of every pixel
    cols = lab.reshape(shape[0], -1)
    b1 = np.empty(cols.shape, np.float32)
    b2 = np.empty(cols.shape, np.float32)
    l1 = np.empty(cols.shape, np.int32)
    l2 = np.empty(cols.shape, np.int32)
    _run(
        kernels.sweep_first_axis,
        [(cols, sp[0] ** 2, b1, l1, b2, l2, c0, c1) for c0, c1 in _chunks(cols.shape[1], pieces)],
        workers,
    )
    state = [x.reshape(shape) for x in (b1, l1, b2, l2)]
    if lab.ndim == 3:  # pass 2, along axis 1, into a new state
        new = [np.empty(shape, x.dtype) for x in state]
        _run(
            kernels.scan_axis,
            [(*state, *new, sp[1] ** 2, reach2, z0, z1, 0, shape[2]) for z0, z1 in _chunks(shape[0], pieces)]
            if shape[0] >= pieces
            else [(*state, *new, sp[1] ** 2, reach2, 0, shape[0], x0, x1) for x0, x1 in _chunks(shape[2], pieces)],
            workers,
        )
        state = new
    # last pass, along the last axis: distances of the background pixels
    rows = lab.reshape(-1, shape[-1])
    state = [x.reshape(rows.shape) for x in state]
    d1 = np.empty(rows.shape, np.float32)
    d2 = np.empty(rows.shape, np.float32)
    _run(
        kernels.scan_last_axis,
        [(rows, *state, d1, d2, sp[-1] ** 2, reach2, half2, r0, r1) for r0, r1 in _chunks(rows.shape[0], pieces)],
        workers,
    )
    return d1.reshape(shape), d2.reshape(shape)


def compile_kernels() -> None:
    """Compile the distance kernels now (numba; about 2 s the first time, then read from
    numba's cache in a fraction of a second), e.g. in a background thread before a person
    first moves a slider."""
    lab = np.zeros((2, 3, 3), np.int32)
    lab[0, 0, 0], lab[1, 2, 2] = 1, 2
    border_distances(lab, workers=1)  # 3D uses all three kernels
    border_distances(lab[0] + lab[1], workers=1)


def weight_map(
    labels: Any,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: ClassWeights = None,
    spacing: float | Sequence[float] | None = None,
    *,
    tol: float = TOLERANCE,
    workers: int | None = None,
) -> np.ndarray:
    """The paper's weight map ``w = w_c + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))``.

    Args:
        labels: instance label image (2D or 3D), 0 = background, each other id one cell.
            Ids need not be consecutive. Must be integer (or whole-valued float) and >= 0.
        w0: weight of the border term (paper: 10).
        sigma: width of the border term, in the units of ``spacing`` (pixels by default;
            paper: about 5).
        class_weights: ``None`` (w_c = 1), ``"balanced"`` (inverse class frequency, mean 1
            over the image) or ``{0: w_background, 1: w_cells}``; see
            :func:`class_weight_map`.
        spacing: pixel size per axis (or one number) for anisotropic images.
        tol: the border term is dropped where it is below ``tol`` (this bounds the work
            per pixel, see :func:`cutoff_distance`); the result is exact to ``tol``.
        workers: threads (default: :func:`default_workers`, 2 on a 2-core machine).

    Returns:
        float32 array of the labels' shape. The border term is 0 on cell pixels and when
        there are fewer than two cells.

    Raises:
        ValueError: non-integer or negative labels, bad ``sigma``/``w0``/``spacing``/
            ``class_weights``.
    """
    lab = check_labels(labels)
    if lab.ndim not in (2, 3):
        raise ValueError(f"labels must be 2D or 3D, got {lab.ndim}D (shape {lab.shape}); pass one plane or stack")
    w0 = float(w0)
    sigma = float(sigma)
    if not math.isfinite(w0) or w0 < 0:
        raise ValueError(f"w0 must be a finite number >= 0, got {w0}")
    if not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a finite number > 0, got {sigma}")
    if not (0 < tol < 1):
        raise ValueError(f"tol must be between 0 and 1, got {tol}")
    sp = _check_spacing(spacing, lab.ndim)
    w = class_weight_map(lab, class_weights)
    cutoff = cutoff_distance(w0, sigma, tol)
    if cutoff <= 0 or np.count_nonzero(lab) == 0:
        return w
    d1, d2 = border_distances(lab, cutoff, sp, workers)
    return _add_border_term(w, lab, d1, d2, w0, sigma)


def _add_border_term(
    w: np.ndarray, lab: np.ndarray, d1: np.ndarray, d2: np.ndarray, w0: float, sigma: float
) -> np.ndarray:
    keep = np.isfinite(d2) & (lab == 0)
    s = d1[keep] + d2[keep]
    w[keep] += (w0 * np.exp(-(s * s) / np.float32(2.0 * sigma * sigma))).astype(np.float32)
    return w


def weight_map_from_distances(
    labels: Any,
    d1: np.ndarray,
    d2: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: ClassWeights = None,
) -> np.ndarray:
    """The weight map from distances computed once by :func:`border_distances`.

    Re-weighting is a single pass over the pixels, so a viewer can follow a slider: the
    distances computed with a cutoff ``C`` serve every ``(w0, sigma)`` whose
    :func:`cutoff_distance` is at most ``C``.

    Args:
        labels: the label image the distances were computed from.
        d1, d2: ``border_distances(labels, C)``.
        w0, sigma, class_weights: as in :func:`weight_map`.

    Returns:
        float32 array of the labels' shape.
    """
    lab = check_labels(labels)
    if d1.shape != lab.shape or d2.shape != lab.shape:
        raise ValueError(f"distances of shape {d1.shape} do not match labels of shape {lab.shape}")
    if not math.isfinite(float(sigma)) or sigma <= 0:
        raise ValueError(f"sigma must be a finite number > 0, got {sigma}")
    w = class_weight_map(lab, class_weights)
    if w0 <= 0 or np.count_nonzero(lab) == 0:
        return w
    return _add_border_term(w, lab, d1, d2, float(w0), float(sigma))
