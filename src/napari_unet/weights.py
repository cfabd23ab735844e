"""The paper's boundary weight map (Ronneberger et al. 2015, eq. 2), exact and fast.

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

``d1`` and ``d2`` are the Euclidean distances from a *background* pixel ``x`` to the
nearest pixel of the nearest and of the second-nearest cell (one cell = one label id).
The border term is 0 on cell pixels; ``w_c`` balances the class frequencies.

How it is computed (same values as one distance transform per cell, far less work):

1. One feature transform of the background, done in cache-sized tiles with a halo, gives
   ``d1`` and the nearest cell ``c1`` of every pixel (exact, scipy's Euclidean
   transform).
2. ``d2(x)`` is the distance from ``x`` to the cells *other than* ``c1(x)``. It only
   matters where the border term is not negligible, which bounds the distances
   involved: with ``D = sigma * sqrt(2 ln(w0 / tol))`` the term is below ``tol`` as soon
   as ``d1 + d2 > D`` (:func:`cutoff_distance`). Since ``d2 >= d1``, only background
   pixels with ``d1 <= D/2`` need ``d2``; each is "owned" by its nearest cell.
3. For each cell ``c``, ``d2`` of the pixels it owns is an exact Euclidean transform of
   "all cells but ``c``" in a window: the box around the balls of radius ``D - d1(x)``
   around its pixels ``x`` (no cell outside it can matter), about the cell's box
   enlarged by ``D``. Cells are independent, so the windows are shared among the
   CPU threads (scipy's transforms release the GIL). Work and memory are proportional to
   the pixels of the windows (a few times the image), never to cells x pixels.

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
from scipy import ndimage as ndi

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


def _tiles(shape: tuple[int, ...], tile: int) -> list[tuple[slice, ...]]:
    """Cut ``shape`` into blocks of at most ``tile`` pixels per axis."""
    import itertools

    ranges = [[slice(i, min(i + tile, n)) for i in range(0, n, tile)] for n in shape]
    return [tuple(t) for t in itertools.product(*ranges)]


def _window(box: tuple[slice, ...], margin: Sequence[int], shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(
        slice(max(s.start - m, 0), min(s.stop + m, n)) for s, m, n in zip(box, margin, shape)
    )


def _map(fn: Any, items: list, workers: int) -> None:
    """Run ``fn`` on every item, in ``workers`` threads (scipy's transforms free the GIL)."""
    if workers >= 2 and len(items) > 1:
        with ThreadPoolExecutor(workers) as pool:
            # interleaved chunks: one task per thread keeps the pool overhead negligible
            list(pool.map(lambda chunk: [fn(it) for it in chunk], [items[i::workers] for i in range(workers)]))
    else:
        for it in items:
            fn(it)


def _nearest_cell(
    cells: np.ndarray, lab: np.ndarray, sp: np.ndarray, reach: float, workers: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(d1, c1)``: distance to and id of the nearest cell, exact where ``d1 <= reach``.

    The image is transformed in tiles with a halo of ``reach`` (a pixel's nearest cell
    within ``reach`` lies in its halo). Small tiles also keep scipy's transform in the
    cache, which makes the tiled transform about twice as fast as one whole-image one.
    Elsewhere ``d1`` is ``>`` reach (or inf) and ``c1`` is a cell within the halo, or 0.
    """
    shape = lab.shape
    margin = [int(math.ceil(reach / s)) + 1 for s in sp]
    tile = 256 if lab.ndim == 2 else 48
    d1 = np.full(shape, np.inf, np.float32)
    c1 = np.zeros(shape, lab.dtype)

    def one(core: tuple[slice, ...]) -> None:
        win = _window(core, margin, shape)
        sub = cells[win]
        if not sub.any():
            return  # no cell within reach
        ft = _feature_transform(~sub, sp)
        inner = tuple(slice(c.start - w.start, c.stop - w.start) for c, w in zip(core, win))
        grid = np.ogrid[inner]
        acc = None
        for ax in range(lab.ndim):
            diff = (ft[ax][inner] - grid[ax]).astype(np.float32)
            diff *= np.float32(sp[ax])
            diff *= diff
            acc = diff if acc is None else acc + diff
        d1[core] = np.sqrt(acc)
        c1[core] = lab[win][tuple(f[inner] for f in ft)]

    # when the halo spans the image, tiling would only repeat the whole-image transform
    tiles = _tiles(shape, tile) if any(2 * m < n for m, n in zip(margin, shape)) else _tiles(shape, max(shape))
    _map(one, tiles, workers)
    return d1, c1


def _feature_transform(nonfeature: np.ndarray, sp: np.ndarray | None) -> np.ndarray:
    """scipy's exact Euclidean feature transform (indices of the nearest 0 of ``nonfeature``).

    Calls scipy's C routine directly when it is there: the public wrapper copies the input
    twice, which costs as much as the transform itself on the many small windows here.
    """
    ft = np.empty((nonfeature.ndim, *nonfeature.shape), np.int32)
    if _EFT is not None:
        inp = np.ascontiguousarray(nonfeature).view(np.int8)
        _EFT(inp, None if sp is None else np.ascontiguousarray(sp, np.float64), ft)
        return ft
    return ndi.distance_transform_edt(nonfeature, sampling=sp, return_distances=False, return_indices=True)


try:  # private, but stable for many scipy releases; the public path is the fallback
    from scipy.ndimage import _nd_image

    _EFT = _nd_image.euclidean_feature_transform
    _probe = np.ones((3, 3), bool)
    _probe[1, 1] = False
    if not np.array_equal(_feature_transform(_probe, None)[:, 0, 0], [1, 1]):  # pragma: no cover
        _EFT = None
except (ImportError, AttributeError, TypeError):  # pragma: no cover
    _EFT = None


def _second_distance(
    lab: np.ndarray,
    d1: np.ndarray,
    c1: np.ndarray,
    sp: np.ndarray,
    cutoff: float,
    workers: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``(contested, d2)``: the pixels that need ``d2`` and ``d2`` there (inf elsewhere)."""
    shape = lab.shape
    d2 = np.full(shape, np.inf, np.float32)
    # 1e-3 of slack covers float32 rounding of d1
    contested = (lab == 0) & (d1 <= cutoff / 2 + 1e-3)
    flat = np.flatnonzero(contested)
    if flat.size == 0:
        return contested, d2
    # group the contested pixels by their nearest cell (their "owner")
    own = c1.ravel()[flat]
    # numpy radix-sorts 16-bit keys: several times faster than its int32 sort here
    order = np.argsort(own.astype(np.uint16) if int(own.max()) < 2**16 else own, kind="stable")
    own = own[order]
    flat = flat[order]
    dvals = d1.ravel()[flat]
    coords = np.unravel_index(flat, shape)
    starts = np.flatnonzero(np.r_[True, own[1:] != own[:-1]])
    ends = np.r_[starts[1:], own.size]
    # A pixel x can only see cells within cutoff - d1(x): the owner's window is the box
    # around all those balls (per axis, in pixels).
    reach = (cutoff + 1e-3) - dvals
    lows, highs = [], []
    for ax in range(lab.ndim):
        r = reach / sp[ax]
        lows.append(np.maximum(np.floor(np.minimum.reduceat(coords[ax] - r, starts)), 0).astype(np.int64))
        highs.append(np.minimum(np.ceil(np.maximum.reduceat(coords[ax] + r, starts)) + 1, shape[ax]).astype(np.int64))
    iso = None if np.all(sp == 1) else sp

    def one(k: int) -> None:
        s, e = starts[k], ends[k]
        cid = own[s]
        win = tuple(slice(int(lo[k]), int(hi[k])) for lo, hi in zip(lows, highs))
        labw = lab[win]
        nonfeature = labw == 0
        nonfeature |= labw == cid
        if nonfeature.all():
            return  # no other cell within reach: the term is negligible here
        ft = _feature_transform(nonfeature, iso)
        pix = tuple(c[s:e] - w.start for c, w in zip(coords, win))
        acc = None
        for ax in range(lab.ndim):
            diff = (ft[ax][pix] - pix[ax]).astype(np.float32)
            if iso is not None:
                diff *= np.float32(sp[ax])
            diff *= diff
            acc = diff if acc is None else acc + diff
        # each contested pixel has one owner, so threads never write the same pixel
        d2[tuple(c[s:e] for c in coords)] = np.sqrt(acc)

    _map(one, list(range(starts.size)), workers)
    return contested, d2


def border_distances(
    labels: Any,
    cutoff: float = math.inf,
    spacing: float | Sequence[float] | None = None,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Distances ``d1`` (nearest cell) and ``d2`` (second-nearest cell) on background pixels.

    Args:
        labels: integer label image (2D or 3D), 0 = background.
        cutoff: ``d2`` is exact on the background pixels where ``d1 + d2 <= cutoff``;
            elsewhere it is ``inf`` or a value ``>= `` the exact one with ``d1 + d2 > cutoff``.
        spacing: pixel size per axis (or one number), for anisotropic images.
        workers: threads to use (default: :func:`default_workers`).

    Returns:
        ``(d1, d2)`` float32; both are 0 on cell pixels; ``d2`` is ``inf`` where there is no
        second cell within reach.
    """
    lab = check_labels(labels)
    sp = _check_spacing(spacing, lab.ndim)
    if workers is None:
        workers = default_workers()
    cells = lab > 0
    if not cells.any():
        return np.full(lab.shape, np.inf, np.float32), np.full(lab.shape, np.inf, np.float32)
    if int(lab.max()) > 2 * lab.size + 1024:
        # scipy's find_objects makes one entry per id up to the largest: relabel huge ids
        ids = np.unique(lab)
        lab = (np.searchsorted(ids, lab) + (ids[0] != 0)).astype(np.int64)
    if math.isinf(cutoff):
        cutoff = float(np.sqrt(np.sum((np.array(lab.shape) * sp) ** 2))) * 2
    d1, c1 = _nearest_cell(cells, lab, sp, cutoff / 2 + 1.0, workers)
    contested, d2 = _second_distance(lab, d1, c1, sp, cutoff, workers)
    d1[cells] = 0
    d2[cells] = 0
    return d1, d2


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
