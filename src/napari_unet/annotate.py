"""Label-editing helpers for annotation, as plain array functions (Qt- and napari-free).

napari's Labels tools paint, erase and fill; these cover what they do not: the next free
id, removing stray pieces, filling holes inside cells, splitting a cell along a drawn line,
merging ids, pre-filling labels from a model's prediction, and turning Shapes (rectangles,
polygons) into a mask of the annotated region.

Every editing helper returns an :class:`Edit` -- the indices that change and their new
values -- instead of a new array. The Annotate widget applies it with napari's
``Labels.data_setitem`` (which records undo history), and scripts apply it with
:meth:`Edit.apply`. Because an edit lists only the changed pixels, undoing it restores
exactly what was there, and an edit of one plane of a stack can be lifted into the stack
with :meth:`Edit.in_plane`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .metrics import restrict_to_region  # defined with the scores (importable from here too)
from .targets import DEFAULT_MARGIN, annotated_mask, check_labels

__all__ = [
    "Edit",
    "bounding_box",
    "count_cells",
    "diff_edit",
    "fill_holes",
    "fill_from_prediction",
    "merge_labels",
    "next_free_id",
    "polyline_pixels",
    "region_from_shapes",
    "region_score",
    "restrict_to_region",
    "remove_small_pieces",
    "split_label",
    "default_region",
]


@dataclass(frozen=True)
class Edit:
    """A change to a label image: ``labels[indices] = values``.

    Attributes:
        indices: one integer index array per axis (numpy "fancy" indices), as napari's
            ``Labels.data_setitem`` takes them.
        values: new value of each indexed pixel (same length as each index array).
        message: what the edit did, for the person ("removed 3 pieces", ...).
    """

    indices: tuple[np.ndarray, ...]
    values: np.ndarray
    message: str = ""

    @property
    def size(self) -> int:
        """Number of pixels that change."""
        return int(self.values.size)

    def __bool__(self) -> bool:
        return self.size > 0

    def apply(self, labels: np.ndarray) -> np.ndarray:
        """Apply the edit to ``labels`` in place and return it."""
        labels[self.indices] = self.values
        return labels

    def in_plane(self, plane: Sequence[int]) -> Edit:
        """The same edit made on plane ``plane`` (leading indices) of a stack."""
        n = self.size
        lead = tuple(np.full(n, int(p), dtype=np.intp) for p in plane)
        return Edit(lead + tuple(self.indices), self.values, self.message)


def _empty_edit(ndim: int, message: str) -> Edit:
    return Edit(tuple(np.zeros(0, np.intp) for _ in range(ndim)), np.zeros(0, np.int64), message)


def diff_edit(old: np.ndarray, new: np.ndarray, message: str = "") -> Edit:
    """The :class:`Edit` that turns ``old`` into ``new`` (only the pixels that differ).

    Args:
        old: label image before.
        new: label image after, same shape.
        message: description kept on the edit.

    Returns:
        An :class:`Edit`; empty when the two are equal.
    """
    if old.shape != new.shape:
        raise ValueError(f"cannot compare label images of shapes {old.shape} and {new.shape}")
    changed = np.nonzero(old != new)
    return Edit(tuple(np.asarray(i, np.intp) for i in changed), np.asarray(new[changed]), message)


def count_cells(labels: Any) -> int:
    """Number of distinct non-zero ids in a label image."""
    ids = np.unique(np.asarray(labels))
    return int(np.count_nonzero(ids))


def next_free_id(labels: Any) -> int:
    """The smallest id larger than every id in ``labels`` (1 for empty labels).

    Args:
        labels: integer label image (any shape).

    Returns:
        ``max(labels) + 1``; one past the largest id, never reusing a gap, so a new cell is
        never confused with an old one that was erased and whose id is still on some other
        plane or in the undo history.

    Raises:
        ValueError: float/negative labels, or the label dtype cannot hold one more id.
    """
    lab = check_labels(labels)
    top = int(lab.max(initial=0))
    if np.issubdtype(lab.dtype, np.integer) and top >= np.iinfo(lab.dtype).max:
        raise ValueError(
            f"the labels' dtype {lab.dtype} cannot hold another id (largest is {top}); "
            "convert the layer to a wider integer type (e.g. int32)"
        )
    return top + 1


def _components(labels: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    """Connected pieces of every id (pieces of different ids are different components)."""
    from skimage.measure import label as sk_label

    comp = sk_label(labels, background=0, connectivity=connectivity)
    return comp, int(comp.max(initial=0))


def remove_small_pieces(labels: Any, min_size: int, *, connectivity: int = 1) -> Edit:
    """Erase (set to 0) every connected piece of a cell smaller than ``min_size`` pixels.

    A "piece" is a connected part of one id, so both tiny whole cells and stray bits of a
    cell (a brush slip, a fragment left after erasing) go, while a big cell's main body
    stays.

    Args:
        labels: integer label image (2D, or 3D treated as a volume).
        min_size: pieces with fewer pixels than this are removed; must be >= 1.
        connectivity: 1 (4/6-neighbours, default) or ``labels.ndim`` (8/26-neighbours).

    Returns:
        The :class:`Edit` (empty when nothing is that small).
    """
    lab = check_labels(labels)
    if int(min_size) < 1:
        raise ValueError(f"min_size must be at least 1 pixel, got {min_size}")
    if not 1 <= connectivity <= max(lab.ndim, 1):
        raise ValueError(f"connectivity must be between 1 and {lab.ndim}, got {connectivity}")
    comp, n = _components(lab, connectivity)
    if n == 0:
        return _empty_edit(lab.ndim, "no cells")
    sizes = np.bincount(comp.ravel(), minlength=n + 1)
    small = sizes < int(min_size)
    small[0] = False
    idx = np.nonzero(small[comp])
    n_small = int(np.count_nonzero(small))
    return Edit(
        tuple(np.asarray(i, np.intp) for i in idx),
        np.zeros(idx[0].size, lab.dtype),
        f"removed {n_small} piece{'s' if n_small != 1 else ''} smaller than {int(min_size)} px",
    )


def fill_holes(labels: Any, max_size: int | None = None) -> Edit:
    """Fill background holes that lie entirely inside one cell with that cell's id.

    A hole is a connected patch of background (0) that does not touch the image border
    and whose surrounding pixels all belong to the same cell. Background enclosed by
    *several* cells (the gap between touching cells) is left alone: that gap is exactly
    what the network must learn.

    Args:
        labels: integer label image (2D, or 3D treated as a volume).
        max_size: fill only holes up to this many pixels (None: any size).

    Returns:
        The :class:`Edit` (empty when there is no hole).
    """
    lab = check_labels(labels)
    conn = ndi.generate_binary_structure(lab.ndim, 1)
    holes, n = ndi.label(lab == 0, structure=conn)
    if n == 0:
        return _empty_edit(lab.ndim, "no holes")
    # patches that touch the image border are outside every cell
    border = np.zeros(n + 1, bool)
    for ax in range(lab.ndim):
        for end in (0, -1):
            border[np.unique(np.take(holes, end, axis=ax))] = True
    idx_list: list[tuple[np.ndarray, ...]] = []
    val_list: list[np.ndarray] = []
    filled = 0
    for h, box in enumerate(ndi.find_objects(holes), start=1):
        if box is None or border[h]:
            continue
        # grow the box by one pixel so the hole's rim is inside it
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        hole = holes[box] == h
        if max_size is not None and int(hole.sum()) > max_size:
            continue
        rim = ndi.binary_dilation(hole, structure=conn) & ~hole
        ids = np.unique(lab[box][rim])
        if ids.size != 1 or ids[0] == 0:
            continue
        local = np.nonzero(hole)
        idx_list.append(tuple(np.asarray(i + s.start, np.intp) for i, s in zip(local, box)))
        val_list.append(np.full(local[0].size, ids[0], lab.dtype))
        filled += 1
    if not filled:
        return _empty_edit(lab.ndim, "no holes inside a single cell")
    idx = tuple(np.concatenate([ix[a] for ix in idx_list]) for a in range(lab.ndim))
    return Edit(idx, np.concatenate(val_list), f"filled {filled} hole{'s' if filled != 1 else ''}")


def polyline_pixels(points: Any, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of a 2D polyline (8-connected, clipped to ``shape``).

    Args:
        points: (N, 2) vertices (row, column) in pixel coordinates, N >= 2.
        shape: (rows, columns) of the image.

    Returns:
        ``(rows, cols)`` index arrays of the pixels on the line.
    """
    from skimage.draw import line

    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 2:
        raise ValueError(f"a line needs at least 2 points of (row, column), got an array of shape {pts.shape}")
    pts = np.round(pts).astype(np.int64)
    rr_all, cc_all = [], []
    for (r0, c0), (r1, c1) in zip(pts[:-1], pts[1:]):
        rr, cc = line(int(r0), int(c0), int(r1), int(c1))
        rr_all.append(rr), cc_all.append(cc)
    rr, cc = np.concatenate(rr_all), np.concatenate(cc_all)
    keep = (rr >= 0) & (rr < shape[0]) & (cc >= 0) & (cc < shape[1])
    return rr[keep], cc[keep]


def split_label(labels: Any, line: Any, label_id: int | None = None, *, min_piece: int = 4) -> Edit:
    """Split a cell in two (or more) along a drawn line.

    The line's pixels are removed from the cell, the rest falls into connected pieces
    (4-connected, which an 8-connected digital line always separates); the largest piece
    keeps the id, every other piece gets a new id, and the pixels on the line (and slivers
    smaller than ``min_piece``) go to the nearest piece, so the cell's area is unchanged.

    On a (Z, Y, X) stack the line, drawn in any plane, cuts the cell through all its
    planes (the cut is the line extruded along Z) and the pieces are 6-connected: one
    stroke splits two nuclei a 3D segmentation joined.

    Args:
        labels: 2D integer label image, or a 3D (Z, Y, X) stack.
        line: (N, 2) polyline vertices (row, column) in pixel coordinates; on a stack
            (N, 3) vertices (plane, row, column) are accepted too (the plane is ignored).
        label_id: the cell to split; None = the id most of the line runs over.
        min_piece: pieces smaller than this are slivers cut off by a line that grazes the
            edge, and are given back to their neighbour.

    Returns:
        The :class:`Edit`.

    Raises:
        ValueError: the line crosses no cell, or does not cut the cell into pieces of at
            least ``min_piece`` pixels (draw it across the whole cell).
    """
    lab = check_labels(labels)
    if lab.ndim not in (2, 3):
        raise ValueError(f"split works on a 2D plane or a (Z, Y, X) stack, got labels of shape {lab.shape}")
    pts = np.asarray(line, dtype=float)
    if lab.ndim == 3 and pts.ndim == 2 and pts.shape[1] == 3:
        pts = pts[:, 1:]
    rr, cc = polyline_pixels(pts, lab.shape[-2:])
    under = lab[..., rr, cc]
    if label_id is None:
        ids, counts = np.unique(under[under > 0], return_counts=True)
        if ids.size == 0:
            raise ValueError("the line does not cross any cell: draw it across the cell to split")
        label_id = int(ids[np.argmax(counts)])
    label_id = int(label_id)
    cell = lab == label_id
    if not cell.any():
        raise ValueError(f"there is no cell with id {label_id}")
    box = ndi.find_objects(cell.astype(np.int8))[0]
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
    cut = np.zeros(lab.shape, bool)
    cut[..., rr, cc] = True
    cell_b, cut_b = cell[box], cut[box]
    pieces, n = ndi.label(cell_b & ~cut_b)  # 4-connected (6-connected in 3D)
    sizes = np.bincount(pieces.ravel(), minlength=n + 1)
    big = [i for i in range(1, n + 1) if sizes[i] >= min_piece]
    if len(big) < 2:
        raise ValueError(
            f"the line does not cut cell {label_id} in two: draw it from one side of the cell "
            "right across to the other"
        )
    # largest piece keeps the id, the others get fresh ids
    big.sort(key=lambda i: -sizes[i])
    new_id = next_free_id(lab)
    lut = np.zeros(n + 1, np.int64)
    for k, i in enumerate(big):
        lut[i] = label_id if k == 0 else new_id + k - 1
    assigned = lut[pieces]
    # line pixels and slivers join the nearest kept piece
    rest = cell_b & (assigned == 0)
    if rest.any():
        _, near = ndi.distance_transform_edt(assigned == 0, return_indices=True)
        assigned[rest] = assigned[tuple(ix[rest] for ix in near)]
    new_b = np.where(cell_b, assigned, lab[box])
    local = diff_edit(lab[box], new_b.astype(lab.dtype, copy=False))
    idx = tuple(i + s.start for i, s in zip(local.indices, box))
    m = len(big) - 1
    return Edit(idx, local.values, f"split cell {label_id} into {len(big)} (new id{'s' if m > 1 else ''} "
                f"{', '.join(str(new_id + k) for k in range(m))})")


def merge_labels(labels: Any, ids: Sequence[int], into: int | None = None) -> Edit:
    """Give every pixel of the cells ``ids`` one id (the smallest, unless ``into`` is set).

    Args:
        labels: integer label image.
        ids: the ids to merge (at least two, non-zero).
        into: the id they all get; must be one of ``ids`` (default: the smallest).

    Returns:
        The :class:`Edit`.
    """
    lab = check_labels(labels)
    ids = sorted({int(i) for i in ids})
    if len(ids) < 2:
        raise ValueError(f"merging needs two different ids, got {ids}")
    if 0 in ids:
        raise ValueError("0 is the background and cannot be merged; pick two cell ids")
    into = ids[0] if into is None else int(into)
    if into not in ids:
        raise ValueError(f"into={into} must be one of the merged ids {ids}")
    present = [i for i in ids if np.any(lab == i)]
    missing = sorted(set(ids) - set(present))
    if missing:
        raise ValueError(f"no cell with id {', '.join(map(str, missing))} in these labels")
    others = [i for i in ids if i != into]
    idx = np.nonzero(np.isin(lab, others))
    return Edit(
        tuple(np.asarray(i, np.intp) for i in idx),
        np.full(idx[0].size, into, lab.dtype),
        f"merged {', '.join(map(str, others))} into {into}",
    )


def fill_from_prediction(
    labels: Any,
    predicted: Any,
    region: Any = None,
    *,
    replace: bool = False,
    max_overlap: float = 0.2,
) -> Edit:
    """Pre-fill labels from a model's prediction so a person corrects rather than draws.

    Predicted cells get fresh ids (after :func:`next_free_id`) so they never merge with
    existing ones.

    Args:
        labels: the person's current labels.
        predicted: predicted instance labels, same shape.
        region: bool mask where to write (None: everywhere). Predicted cells are clipped
            to it.
        replace: False (default): keep every existing label and add only the predicted
            cells that fall on empty pixels (a predicted cell that overlaps existing
            labels by more than ``max_overlap`` of its area is skipped, and the others
            fill only the empty pixels). True: inside the region, the prediction replaces
            what was there (use a region, or everything is replaced).
        max_overlap: see ``replace``.

    Returns:
        The :class:`Edit`.
    """
    lab = check_labels(labels)
    pred = check_labels(predicted, "predicted labels")
    if pred.shape != lab.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match the labels' shape {lab.shape}")
    where = np.ones(lab.shape, bool) if region is None else np.asarray(region, bool)
    if where.shape != lab.shape:
        raise ValueError(f"region shape {where.shape} does not match the labels' shape {lab.shape}")
    p = np.where(where, pred, 0)
    n_pred = int(p.max(initial=0)) + 1
    if not replace:
        area = np.bincount(p.ravel(), minlength=n_pred)
        clash = np.bincount(p[lab > 0].ravel(), minlength=n_pred)
        skip = clash > max_overlap * np.maximum(area, 1)
        skip[0] = True
        p = np.where(skip[p] | (lab > 0), 0, p)
    kept = np.unique(p)
    kept = kept[kept > 0]
    first = next_free_id(lab)
    if kept.size and first + kept.size - 1 > np.iinfo(lab.dtype).max:
        raise ValueError(f"the labels' dtype {lab.dtype} cannot hold {kept.size} more ids; use int32 labels")
    lut = np.zeros(n_pred, np.int64)
    lut[kept] = np.arange(first, first + kept.size)
    if replace:
        new = np.where(where, lut[p], lab)
    else:
        new = np.where(p > 0, lut[p], lab)
    edit = diff_edit(lab, new.astype(lab.dtype, copy=False))
    return Edit(edit.indices, edit.values, f"added {kept.size} predicted cell{'s' if kept.size != 1 else ''}")


# -- regions -----------------------------------------------------------------------------


def region_from_shapes(
    shapes: Sequence[Any],
    shape_types: Sequence[str],
    image_shape: Sequence[int],
    plane: Sequence[int] | None = None,
) -> np.ndarray:
    """Rasterise rectangles, polygons and ellipses into a bool mask of the annotated area.

    Args:
        shapes: vertex arrays in the label image's pixel coordinates, each (N, D) with
            D = 2 (row, column) or D = ``len(image_shape)``; for a stack, the leading
            coordinates of a D-dimensional shape say on which plane it lies (a 2D shape on
            a stack covers every plane).
        shape_types: napari shape type of each ("rectangle", "polygon", "ellipse";
            "line", "path" and "polyline" enclose nothing and are skipped).
        image_shape: shape of the label image.
        plane: for a stack, return only the 2D mask of this plane (leading indices), so
            a big stack is never rasterised whole.

    Returns:
        bool mask of ``image_shape`` (or of its last two axes when ``plane`` is given).
    """
    from skimage.draw import ellipse, polygon

    image_shape = tuple(int(s) for s in image_shape)
    if len(image_shape) < 2:
        raise ValueError(f"the image must be at least 2D, got shape {image_shape}")
    if len(shapes) != len(shape_types):
        raise ValueError(f"got {len(shapes)} shapes but {len(shape_types)} shape types")
    hw = image_shape[-2:]
    lead_dims = len(image_shape) - 2
    if plane is not None:
        plane = tuple(int(p) for p in plane)
        if len(plane) != lead_dims:
            raise ValueError(f"plane {plane} does not index the leading axes of shape {image_shape}")
    mask = np.zeros(hw if plane is not None else image_shape, bool)
    for verts, kind in zip(shapes, shape_types):
        v = np.asarray(verts, dtype=float)
        if v.ndim != 2 or v.shape[1] < 2:
            raise ValueError(f"shape vertices must be an (N, 2+) array, got shape {v.shape}")
        if kind in ("line", "path", "polyline"):
            continue
        yx = v[:, -2:]
        if kind == "ellipse":
            # napari stores an ellipse as the 4 corners of its bounding box
            c = yx.mean(axis=0)
            r = np.abs(yx - c).max(axis=0)
            rr, cc = ellipse(c[0], c[1], max(r[0], 0.5), max(r[1], 0.5), shape=hw)
        elif kind in ("rectangle", "polygon"):
            # pixel centres inside the outline (a rectangle over pixels 0..9 is drawn from
            # -0.5 to 9.5 by napari, so its centres are 0..9)
            rr, cc = polygon(yx[:, 0], yx[:, 1], shape=hw)
        else:
            raise ValueError(f"unsupported shape type {kind!r}: use rectangles, polygons or ellipses")
        if lead_dims and v.shape[1] == len(image_shape):
            where = tuple(int(np.clip(round(float(x)), 0, n - 1)) for x, n in zip(v[0, :-2], image_shape[:-2]))
            if plane is None:
                mask[where + (rr, cc)] = True
            elif where == plane:
                mask[rr, cc] = True
        else:
            mask[(Ellipsis, rr, cc)] = True
    return mask


def region_score(annotation: Any, prediction: Any, region: Any = None, threshold: float = 0.5) -> float:
    """Average precision (TP / (TP + FP + FN) at an IoU threshold) inside an annotated region.

    Args:
        annotation: the person's labels (taken as the truth).
        prediction: predicted instance labels, same shape.
        region: bool mask of the annotated area (None: everything).
        threshold: IoU threshold (0.5: the usual AP@0.5).

    Returns:
        The score in [0, 1] over the objects at least half inside the region.
    """
    from .metrics import average_precision

    gt = check_labels(annotation)
    pred = check_labels(prediction, "prediction")
    if gt.shape != pred.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match the annotation's shape {gt.shape}")
    if region is not None:
        gt, pred = restrict_to_region(gt, region), restrict_to_region(pred, region)
    return float(average_precision(gt, pred, threshold)[float(threshold)])


def default_region(labels: Any, margin: int = DEFAULT_MARGIN) -> np.ndarray:
    """The annotated area assumed without an explicit region: labelled cells + ``margin``.

    This is exactly what training uses (``targets.annotated_mask`` with ``region=None``);
    an empty label image gives an empty mask here instead of an error, so it can be shown.
    For a stack, each plane is treated on its own (planes are trained on separately).
    """
    lab = check_labels(labels)
    if lab.ndim > 2:
        out = np.zeros(lab.shape, bool)
        for idx in np.ndindex(*lab.shape[:-2]):
            out[idx] = default_region(lab[idx], margin)
        return out
    if not (lab > 0).any():
        return np.zeros(lab.shape, bool)
    return annotated_mask(lab, None, margin)


def bounding_box(mask: Any, pad: int = 0) -> tuple[slice, ...] | None:
    """Slices of the smallest box holding every True pixel of ``mask`` (None if none).

    Args:
        mask: bool array.
        pad: pixels added on each side (clipped to the array).
    """
    m = np.asarray(mask, bool)
    if not m.any():
        return None
    out = []
    for ax in range(m.ndim):
        other = tuple(a for a in range(m.ndim) if a != ax)
        hit = np.nonzero(m.any(axis=other) if other else m)[0]
        out.append(slice(max(int(hit[0]) - pad, 0), min(int(hit[-1]) + 1 + pad, m.shape[ax])))
    return tuple(out)
