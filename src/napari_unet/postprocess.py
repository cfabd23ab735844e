"""Class probabilities → labels (instances, or classes in semantic mode).

* ``"instance3"`` (background / interior / boundary, the default head). The interior
  mask (``p(interior) > seed_threshold``) is mostly split into cells by the predicted
  boundary rim, but where two cells press hard against each other a thin bridge of
  interior often survives. So, by default (``split="distance"``), seeds are the
  regional maxima of the (lightly smoothed) distance transform of the interior mask
  that stand at least ``h`` pixels above their surroundings (h-maxima): a bridge
  narrower than the cells it joins gives two maxima, hence two seeds. A seeded
  watershed then floods the *foreground* (interior + boundary) over the negated
  distance, so each cell gets its rim back. ``split="interior"`` uses every connected
  interior region as one seed instead (flooding ``1 - p(interior)``). Foreground pieces
  that no seed reaches (a cell whose interior was missed) become objects of their own.
  Measured with the bundled model (``benchmarks/eval_bundled.py``-style sweep), the
  distance split raised AP@0.5 from 0.69 to 0.85 on a real DSB 2018 nuclei crop and
  from 0.91 to 0.98 on the sample image, with h = 1 px and smoothing sigma 1 px better
  than 0.5, 1.5 or 2 px.
* ``"instance2"`` (the paper's background / cell head): connected components of the
  foreground, 4-connected, so the thin background gaps the border-weighted loss teaches
  between touching cells keep them apart.
* ``"instance2"`` on **membrane** data (``membranes=True``; ``segment`` turns it on for
  models trained with ``preset="membranes"``, see :mod:`napari_unet.training`): the
  cells fill the image and background is the thin membrane between them, so one gap of
  a few pixels in a membrane would fuse two cells into one component. Instead, a
  distance-transform watershed: the membrane probability is smoothed (1 px), the
  distance to the nearest membrane pixel (``p(membrane) > 1 - foreground_threshold``) is
  smoothed too, its h-maxima seed the cells (a
  gap is a narrow neck, so the two cells it joins keep two maxima), and the seeds flood
  the *whole* image over the smoothed membrane probability (ties broken by the
  distance), so every pixel, membrane included, belongs to a cell and the cell borders
  follow the membranes. Segments smaller than ``min_size`` are then merged into their
  neighbours (their seeds dropped and the flood redone), not left as holes. The seeds are
  generous (h = 2 px: a cell with a gap in its membrane keeps both halves' seeds), so some
  cells come out in pieces; last, neighbours whose shared border has a mean membrane
  probability below ``MEMBRANE_MERGE`` (0.4) merge, weakest border first
  (:func:`merge_weak_borders`): a piece border inside a cell runs over interior pixels,
  while a true border, even one with a gap of a few pixels, runs mostly over membrane.
* ``"semantic"``: the most probable class per pixel (label value = class index).

Objects smaller than ``min_size`` pixels are removed and the rest numbered 1..N. For
stacks (probabilities with more than 2 spatial axes) each plane (the last two axes) is
processed on its own and ids are unique across the whole stack: plane after plane, ids
continue from the previous plane's largest.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .modes import MODES

DEFAULT_MIN_SIZE = 16
#: instance3 distance split: h-maxima height and distance smoothing (pixels), measured
DEFAULT_H = 1.0
DISTANCE_SMOOTHING = 1.0
#: instance2 membrane watershed: h-maxima height, distance and probability smoothing
#: (pixels), the smallest segment kept, and the mean membrane probability below which the
#: border between two segments is no membrane (they merge), measured on ISBI 2012
#: (benchmarks/bench_em.py: seven trained models, adapted Rand error on slices 15-19 /
#: 12-14, none trained on: h 6 without merging 0.086 / 0.141; h 2, merge 0.4: 0.046 / 0.054)
MEMBRANE_H = 2.0
MEMBRANE_SMOOTHING = 1.0
MEMBRANE_MIN_SIZE = 64
MEMBRANE_MERGE = 0.4

_FOUR = ndi.generate_binary_structure(2, 1)


#: ``instance3``: the smallest mean foreground probability of an object (it is 0.5 or more
#: everywhere at the default foreground threshold; a lower threshold, as the stained
#: model's 0.3, lets faint smudges through). Measured with the stained model, AP@0.5 on the
#: shared H&E tiles, without / with: zero-shot, tiles 01 + 03 + 05 0.621 / 0.630, tiles 08
#: + 10 0.755 / 0.770; fine-tuned on eight 128-px windows of tiles 01, 03, 05 (240 steps), tiles
#: 08 + 10 0.600 / 0.687 (false cells 164 / 80; most of them on no nucleus, half the size
#: of a true one). 0.6 instead: 0.622, 0.758, 0.705 (more true cells lost)
MIN_MEAN_FOREGROUND = 0.5


def remove_small_and_relabel(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop objects below ``min_size`` pixels and renumber the rest 1..N (int32).

    The one definition (post-processing, the 3D path, the baseline). Not the annotation
    tool :func:`napari_unet.annotate.remove_small_pieces`, which erases small connected
    *pieces* of any id as an undoable edit and renumbers nothing.
    """
    n = int(labels.max(initial=0))
    if n == 0:
        return labels.astype(np.int32)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= max(int(min_size), 1)
    keep[0] = False
    lut = np.zeros(n + 1, np.int64)
    lut[keep] = np.arange(1, int(keep.sum()) + 1)
    return lut[labels].astype(np.int32)


def _instance3(probs: np.ndarray, foreground_threshold: float, seed_threshold: float, min_seed_size: int,
               split: str, h: float) -> np.ndarray:
    from skimage.segmentation import watershed

    interior = probs[1]
    foreground = (1.0 - probs[0]) > foreground_threshold
    seeds_mask = (interior > seed_threshold) & foreground
    if split == "distance":
        from ._morphology import edt, h_maxima  # scipy's and skimage's values, compiled

        dist = ndi.gaussian_filter(edt(seeds_mask), DISTANCE_SMOOTHING)
        peaks = h_maxima(dist, h) > 0 if seeds_mask.any() else seeds_mask
        seeds, n = ndi.label(peaks & seeds_mask, structure=_FOUR)
        landscape = -dist
    else:
        seeds, n = ndi.label(seeds_mask, structure=_FOUR)
        if n and min_seed_size > 1:
            # specks of interior are noise, not cells: they would split one cell in two
            seeds = remove_small_and_relabel(seeds, min_seed_size)
        landscape = 1.0 - interior
    labels = watershed(landscape, markers=seeds, mask=foreground, connectivity=1)
    # foreground that no seed reached (an interior missed entirely) still is an object
    orphans, m = ndi.label(foreground & (labels == 0), structure=_FOUR)
    if m:
        labels = np.where(orphans > 0, orphans + int(labels.max(initial=0)), labels)
    return _drop_faint(labels, 1.0 - probs[0])


def _drop_faint(labels: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Objects whose mean foreground probability is below :data:`MIN_MEAN_FOREGROUND` set
    to 0: a foreground threshold below it widens outlines, it does not make cells."""
    n = int(labels.max(initial=0))
    if n == 0:
        return labels
    mean = ndi.mean(foreground, labels, np.arange(1, n + 1))
    faint = mean < MIN_MEAN_FOREGROUND
    if not faint.any():
        return labels
    lut = np.arange(n + 1)
    lut[1:][faint] = 0
    return lut[labels]


def border_means(labels: np.ndarray, p: np.ndarray) -> dict[tuple[int, int], list[float]]:
    """``{(a, b): [sum, count]}`` (0 < a < b) of ``max(p)`` over the 4-neighbour pixel pairs
    that cross the border between segments a and b (label 0 is no segment)."""
    n = int(labels.max(initial=0)) + 1
    out: dict[tuple[int, int], list[float]] = {}
    for la, lb, pa, pb in ((labels[:, :-1], labels[:, 1:], p[:, :-1], p[:, 1:]),
                           (labels[:-1], labels[1:], p[:-1], p[1:])):
        cross = (la != lb) & (la > 0) & (lb > 0)
        a, b = la[cross].astype(np.int64), lb[cross].astype(np.int64)
        codes, inv = np.unique(np.minimum(a, b) * n + np.maximum(a, b), return_inverse=True)
        sums = np.bincount(inv, np.maximum(pa[cross], pb[cross]).astype(np.float64))
        counts = np.bincount(inv)
        for code, total, count in zip(codes.tolist(), sums.tolist(), counts.tolist()):
            entry = out.setdefault((code // n, code % n), [0.0, 0])
            entry[0] += total
            entry[1] += count
    return out


def merge_weak_borders(labels: np.ndarray, p: np.ndarray, threshold: float) -> np.ndarray:
    """Merge neighbouring segments whose border's mean membrane probability ``p`` is below
    ``threshold``, the weakest border first; a merged segment's borders are the sums of its
    parts' (so one gap of a few pixels in a long membrane keeps the border's mean high).
    Label 0 stays 0 and merges with nothing; ids are not renumbered (a merged segment keeps
    one of its parts' ids)."""
    import heapq

    borders = border_means(labels, p)
    nbrs: dict[int, dict[int, list[float]]] = {}
    for (a, b), entry in borders.items():
        nbrs.setdefault(a, {})[b] = entry
        nbrs.setdefault(b, {})[a] = entry
    heap = [(total / count, a, b) for (a, b), (total, count) in borders.items()]
    heapq.heapify(heap)
    into = np.arange(int(labels.max(initial=0)) + 1, dtype=labels.dtype)
    while heap:
        mean, a, b = heapq.heappop(heap)
        if mean >= threshold:
            break
        entry = nbrs.get(a, {}).get(b)
        if entry is None or entry[0] / entry[1] != mean:
            continue  # a border that a merge has since changed or removed
        into[b] = a  # b joins a; b's other borders become a's
        del nbrs[a][b]
        for c, (total, count) in nbrs.pop(b).items():
            if c == a:
                continue
            del nbrs[c][b]
            old = nbrs[a].get(c, [0.0, 0])
            merged = [old[0] + total, old[1] + count]
            nbrs[a][c] = nbrs[c][a] = merged
            heapq.heappush(heap, (merged[0] / merged[1], a, c))
    for k in range(len(into)):  # follow each chain of merges to its end
        while into[into[k]] != into[k]:
            into[k] = into[into[k]]
    return into[labels]


def membrane_watershed(p_membrane: np.ndarray, threshold: float = 0.5, h: float = MEMBRANE_H,
                       smoothing: float = MEMBRANE_SMOOTHING, min_size: int = MEMBRANE_MIN_SIZE,
                       merge: float | None = MEMBRANE_MERGE) -> np.ndarray:
    """Cells from a 2D membrane probability (see the module doc); no pixel is left 0.
    ``merge``: segments whose border's mean membrane probability is below it merge
    (:func:`merge_weak_borders`); None = no merging."""
    from skimage.segmentation import watershed

    from ._morphology import edt, h_maxima

    p = ndi.gaussian_filter(np.asarray(p_membrane, np.float32), smoothing) if smoothing > 0 else p_membrane
    inside = p <= threshold
    if not inside.any():
        return np.zeros(p.shape, np.int32)
    dist = edt(inside)
    if smoothing > 0:
        dist = ndi.gaussian_filter(dist, smoothing)
    seeds, n = ndi.label((h_maxima(dist, h) > 0) & inside, structure=_FOUR)
    # flood over the membrane probability; the distance breaks ties on flat plateaus
    landscape = p - 1e-3 * dist / max(float(dist.max()), 1e-6)
    labels = watershed(landscape, markers=seeds, connectivity=1)
    if n > 1 and min_size > 1:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        small = sizes < min_size
        small[0] = False
        if small.any() and not small[1:].all():
            labels = watershed(landscape, markers=np.where(small[seeds], 0, seeds), connectivity=1)
    if merge is not None and n > 1:
        labels = merge_weak_borders(labels, np.asarray(p_membrane, np.float32), merge)
    return labels


def probabilities_to_labels(
    probs: Any,
    mode: str = "instance3",
    *,
    min_size: int = DEFAULT_MIN_SIZE,
    foreground_threshold: float = 0.5,
    seed_threshold: float = 0.5,
    min_seed_size: int | None = None,
    split: str = "distance",
    h: float = DEFAULT_H,
    membranes: bool = False,
) -> np.ndarray:
    """Turn class probabilities into a label image.

    Args:
        probs: array ``(num_classes, ..., Y, X)`` of class probabilities (softmax output).
        mode: ``"instance3"`` (background/interior/boundary), ``"instance2"``
            (background/cell) or ``"semantic"`` (argmax).
        min_size: objects with fewer pixels are removed (instance modes; per plane).
        foreground_threshold: a pixel is foreground when ``1 - p(background)`` exceeds it.
        seed_threshold: ``instance3``: interior pixels with ``p(interior)`` above it seed
            the watershed.
        min_seed_size: ``instance3`` with ``split="interior"``: seeds smaller than this
            are ignored; None = ``max(1, min_size // 4)``.
        split: ``instance3``: ``"distance"`` (h-maxima of the interior's distance
            transform seed the watershed; splits cells joined by a bridge of interior) or
            ``"interior"`` (one seed per connected interior region).
        h: ``instance3`` with ``split="distance"``: how far (pixels) a distance maximum
            must rise above its surroundings to seed a cell of its own.
        membranes: ``instance2``: the background is membrane between cells that fill
            the image (EM): cells by the membrane watershed (module doc) instead of
            connected components; ``min_size`` is then the smallest segment kept
            (smaller ones merge into their neighbours; default 64 px).

    Returns:
        int32 labels of shape ``probs.shape[1:]``; 0 is background. Instance ids run
        1..N without gaps and are unique across all planes of a stack.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    probs = np.asarray(probs)
    if probs.ndim < 3:
        raise ValueError(f"probabilities need shape (classes, ..., Y, X), got {probs.shape}")
    k = probs.shape[0]
    need = {"instance3": 3, "instance2": 2}.get(mode)
    if need is not None and k != need:
        raise ValueError(f"mode {mode!r} needs {need} classes but the probabilities have {k}; pass the model's mode")
    if mode == "semantic":
        return np.argmax(probs, axis=0).astype(np.int32)
    if split not in ("distance", "interior"):
        raise ValueError(f"split must be 'distance' or 'interior', got {split!r}")
    probs = probs.astype(np.float32, copy=False)
    if min_seed_size is None:
        min_seed_size = max(1, int(min_size) // 4)
    membrane_min = MEMBRANE_MIN_SIZE if min_size == DEFAULT_MIN_SIZE else int(min_size)
    out = np.zeros(probs.shape[1:], np.int32)
    offset = 0
    for plane in np.ndindex(*probs.shape[1:-2]):
        p = probs[(slice(None),) + plane]
        if mode == "instance3":
            lab = _instance3(p, foreground_threshold, seed_threshold, min_seed_size, split, h)
        elif membranes:
            lab = membrane_watershed(p[0], 1.0 - foreground_threshold, min_size=membrane_min)
        else:
            lab, _ = ndi.label((1.0 - p[0]) > foreground_threshold, structure=_FOUR)
        lab = remove_small_and_relabel(lab, min_size)
        if offset:
            lab = np.where(lab > 0, lab + offset, 0)
        if offset + int(lab.max(initial=0)) > np.iinfo(np.int32).max:
            raise ValueError("more objects than int32 labels can hold")
        out[plane] = lab
        offset = max(offset, int(lab.max(initial=0)))
    return out


__all__ = ["DEFAULT_MIN_SIZE", "MODES", "membrane_watershed", "merge_weak_borders", "probabilities_to_labels",
           "remove_small_and_relabel"]
