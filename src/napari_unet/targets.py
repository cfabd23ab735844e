"""Instance or semantic labels → the classes a network learns, and the ignore mask.

Modes (see ``UNet.meta["mode"]``):

* ``"instance3"`` (default): 0 background, 1 cell interior, 2 cell boundary (the inner
  one-pixel rim of every cell). Seeded watershed on the interior separates touching
  cells at inference.
* ``"instance2"``: the paper's form, 0 background and 1 cell, with the pixels where two
  different cells touch carved out as background, so touching cells are separated by a
  background gap (and the border term of the weight map teaches the network that gap).
* ``"semantic"``: label values *are* classes (0, 1, 2, ...).

Membrane data (EM; ``preset="membranes"`` in :mod:`napari_unet.training`): cells fill the
image and background is the thin membrane between them. Such data comes either as cell
labels (0 = membrane; a 0/1 interior mask is split into its 4-connected components) or
as a painted membrane mask (nonzero = membrane), whose cells are the 4-connected
components of the rest (:func:`membrane_mask_to_cells`). :func:`looks_like_membranes`
recognises the first form, so ``mode="instance2"`` on it gets the membrane recipe.

The *mask* says which pixels count in the loss. Sparse annotation: a person labels a few
cells in a big image, and pixels outside the annotated region must not be taught as
background. ``region`` is an explicit boolean mask of the annotated area; when it is
``None`` the annotated area is "every labelled cell plus ``margin`` pixels"; ``"all"``
means the labels are complete.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .modes import MODES

DEFAULT_MARGIN = 16


def check_labels(labels: Any, name: str = "labels") -> np.ndarray:
    """Return ``labels`` as an integer array, or raise a clear ``ValueError``."""
    arr = np.asarray(labels)
    if arr.dtype == bool:
        return arr.astype(np.int32)
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{name} must hold integer label ids, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} must not hold negative ids (found {arr.min()})")
    return arr


_FOUR = ndi.generate_binary_structure(2, 1)
#: looks_like_membranes: cells cover at least this share of the image, and half of the
#: background lies within this many pixels of a cell (ISBI 2012: 77% and 2 px; nuclei
#: images: mostly background, far from any nucleus)
MEMBRANE_CELL_FRACTION = 0.6
MEMBRANE_HALF_WIDTH = 3.0


def membrane_mask_to_cells(mask: Any) -> np.ndarray:
    """Cell labels from a membrane mask (nonzero = membrane): the 4-connected components
    of the other pixels, numbered 1..N; the membrane is 0."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"a membrane mask must be 2D, got shape {arr.shape}")
    return ndi.label(arr == 0, structure=_FOUR)[0].astype(np.int32)


def cells_between_membranes(labels: Any) -> np.ndarray:
    """Cell labels of membrane data: instance ids as they are, a 0/1 interior mask split
    into its 4-connected components."""
    lab = check_labels(labels)
    if lab.ndim == 2 and int(lab.max(initial=0)) == 1:
        return ndi.label(lab > 0, structure=_FOUR)[0].astype(np.int32)
    return lab


def looks_like_membranes(labels: Any) -> bool:
    """True for complete labels whose cells fill the image and whose background is thin
    (membranes between cells, as in EM), False for cells or nuclei on a background."""
    lab = np.asarray(labels)
    cells = lab > 0
    if lab.ndim != 2 or cells.mean() < MEMBRANE_CELL_FRACTION or cells.all():
        return False
    from ._morphology import edt  # scipy's values, compiled

    return float(np.median(edt(~cells)[~cells])) <= MEMBRANE_HALF_WIDTH


def touching_borders(labels: np.ndarray) -> np.ndarray:
    """Pixels of a cell that touch a *different* cell (8/26-connected)."""
    fp = np.ones((3,) * labels.ndim, bool)
    lab = labels.astype(np.int64, copy=False)
    big = int(lab.max()) + 1 if lab.size else 1
    lab_max = ndi.maximum_filter(lab, footprint=fp, mode="nearest")
    lab_min = ndi.minimum_filter(np.where(lab == 0, big, lab), footprint=fp, mode="nearest")
    # for a cell pixel of id L: a neighbour id > L shows in the max, a nonzero id < L in the min
    return (lab > 0) & ((lab_max > lab) | (lab_min < lab))


def cell_rims(labels: np.ndarray) -> np.ndarray:
    """Pixels of a cell that touch background or another cell (4/6-connected)."""
    fp = ndi.generate_binary_structure(labels.ndim, 1)
    lab_max = ndi.maximum_filter(labels, footprint=fp, mode="nearest")
    lab_min = ndi.minimum_filter(labels, footprint=fp, mode="nearest")
    return (labels > 0) & ((lab_max != labels) | (lab_min != labels))


def annotated_mask(labels: np.ndarray, region: Any = None, margin: int = DEFAULT_MARGIN) -> np.ndarray:
    """Boolean mask of the pixels whose labels are to be trusted (see module doc)."""
    if isinstance(region, str):
        if region != "all":
            raise ValueError(f"region must be a mask, None or 'all', got {region!r}")
        return np.ones(labels.shape, bool)
    if region is None:
        cells = labels > 0
        if not cells.any():
            raise ValueError(
                "the labels are empty and no annotated region was given: there is nothing to "
                "learn from (label some cells, or mark a region that is truly background)"
            )
        if margin <= 0:
            return cells
        # distance to the nearest cell <= margin, without materialising a big footprint
        return ndi.distance_transform_edt(~cells) <= margin
    mask = np.asarray(region)
    if mask.shape != labels.shape:
        raise ValueError(f"region mask shape {mask.shape} does not match labels shape {labels.shape}")
    return mask.astype(bool)


def labels_to_targets(
    labels: Any,
    mode: str = "instance3",
    region: Any = None,
    margin: int = DEFAULT_MARGIN,
) -> tuple[np.ndarray, np.ndarray]:
    """Convert labels to (class targets, mask of pixels that count).

    Args:
        labels: integer label image (2D or 3D); 0 is background.
        mode: ``"instance3"``, ``"instance2"`` or ``"semantic"`` (see module doc).
        region: annotated area: a boolean mask, ``None`` (labelled cells + margin) or
            ``"all"``.
        margin: pixels around labelled cells that count as annotated when ``region`` is
            None.

    Returns:
        ``(targets, mask)``: int64 classes and a bool mask (True = use in the loss).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    lab = check_labels(labels)
    mask = annotated_mask(lab, region, margin)
    if mode == "semantic":
        return lab.astype(np.int64), mask
    targets = (lab > 0).astype(np.int64)
    if mode == "instance3":
        targets[cell_rims(lab)] = 2
    else:
        targets[touching_borders(lab)] = 0
    return targets, mask
