"""Cell size: the diameter a model expects, the diameter of an image's cells, and the zoom
between them.

A model segments best the cells about as large as those it learned from
(``model.meta["diameter"]``: the median diameter of its training cells; for the bundled
model, which saw many sizes, the value chosen by ``benchmarks/calibrate_diameter.py``). Cells much
larger get cut into pieces, and much smaller ones get lost; segmenting a zoomed copy and
scaling the labels back fixes both (``segment(..., diameter="auto")``; measured in
``benchmarks/eval_bundled.py --scales``).

Diameters are *median equivalent diameters*, ``2 sqrt(area / pi)`` over the objects, in
pixels.

:func:`measure_diameter` asks the model itself: it segments a crop of the image at a
ladder of zooms and keeps the zoom at which the model's cells come out closest to the
size it expects, where its own measurement is the most trustworthy (cells far too large
come out as many small pieces, so a single pass at zoom 1 can be badly wrong).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Generator, Iterable, Sequence
from typing import Any

import numpy as np

from ._progress import Progress, drain
from .inputs import ImageInput, SegmentOptions, parse_axes
from .instances import drop_lost_objects, label_planes_iter
from .resize import resize_image, resize_nearest, zoomed_shape  # also importable from here (old import path)

#: zooms tried by :func:`measure_diameter` (cells 4x too large to 2x too small)
ZOOMS = (2.0, 1.4, 1.0, 0.7, 0.5, 0.35, 0.25)

#: side of the crop segmented at each zoom, in zoomed pixels
CROP = 512

#: cells within this factor of the model's diameter are segmented without zooming
TOLERANCE = 1.25

#: fewer cells than this in the crop are not enough to measure their size
MIN_CELLS = 5

#: the estimates at two neighbouring zooms agree when within this factor (tried in turn)
AGREEMENT = (1.1, 1.2)


class CellSizeError(ValueError):
    """No cell size can be measured: too few cells at every zoom (an empty field, a few cells).

    Attributes:
        reason: what was found, in a few words (for a status line).
        tried: the cells found at each zoom tried (``"2x: 0 cells"``...), for the message.
    """

    def __init__(self, reason: str, tried: Sequence[str] = ()) -> None:
        detail = f" (fewer than {MIN_CELLS} at every zoom: {'; '.join(tried) or 'image too small'})"
        super().__init__(f"{reason}{detail}; give the cell diameter instead")
        self.reason = reason
        self.tried = tuple(tried)


def label_diameter(labels: Any | Iterable[Any]) -> float:
    """Median equivalent diameter ``2 sqrt(area / pi)`` of labelled objects, in pixels.

    Args:
        labels: an integer label image, or a list of them (the median is over the objects
            of all of them). 3D labels are measured plane by plane (a 2D model's view).

    Returns:
        the median over objects, or ``nan`` when there is none.
    """
    arrays = [labels] if isinstance(labels, np.ndarray) or not isinstance(labels, Iterable) else list(labels)
    areas = []
    for lab in arrays:
        lab = np.asarray(lab)
        if not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == bool):
            raise ValueError(f"labels must be integer arrays, got dtype {lab.dtype}")
        if lab.ndim < 2:
            raise ValueError(f"labels must be at least 2D, got shape {lab.shape}")
        planes = lab.reshape((-1,) + lab.shape[-2:])
        for plane in planes:
            _, counts = np.unique(plane[plane > 0], return_counts=True)
            areas.append(counts)
    areas_all = np.concatenate(areas) if areas else np.zeros(0)
    if areas_all.size == 0:
        return math.nan
    return float(np.median(2.0 * np.sqrt(areas_all / math.pi)))


def model_diameter(model: Any) -> float:
    """The cell diameter ``model`` expects (``model.meta["diameter"]``), in pixels.

    Raises:
        ValueError: the model does not record one (models trained before it was recorded:
            set ``model.meta["diameter"]`` to the median cell diameter of its training data).
    """
    d = getattr(model, "meta", {}).get("diameter")
    if d is None or isinstance(d, bool) or not (isinstance(d, numbers.Real) and math.isfinite(d) and d > 0):
        raise ValueError(
            "this model does not record the cell diameter it was trained on, so it cannot rescale "
            "images; set model.meta['diameter'] (pixels) or fine-tune it again"
        )
    return float(d)


def zoom_for(model_d: float, diameter: float) -> float:
    """Zoom that brings cells of ``diameter`` to the model's ``model_d``; 1 within :data:`TOLERANCE`."""
    if isinstance(diameter, bool) or not (isinstance(diameter, numbers.Real) and math.isfinite(diameter) and diameter > 0):
        raise ValueError(f"the cell diameter must be a positive number of pixels, got {diameter!r}")
    z = model_d / float(diameter)
    return 1.0 if 1 / TOLERANCE <= z <= TOLERANCE else z


def middle_plane(image: Any, axes: str | None = None, max_side: int | None = None) -> tuple[np.ndarray, str]:
    """The middle plane of a stack with its channels, and its axis letters (``"YX"``, ``"CYX"``...).

    ``max_side``: read at most a centred crop of this many pixels per side (only that is
    read from a lazy image).
    """
    lay = parse_axes(np.shape(image), axes)
    kept = "".join(lay.axes[a] for a in range(len(lay.shape)) if a not in lay.planes)
    return np.asarray(image[_middle_index(lay, max_side)]), kept


def _middle_index(lay: Any, max_side: int | None) -> tuple[Any, ...]:
    """The index of a layout's middle plane (a centred crop of ``max_side`` pixels a side)."""
    index: list[Any] = [slice(None)] * len(lay.shape)
    for a in lay.planes:
        index[a] = lay.shape[a] // 2
    if max_side is not None:
        for a in (lay.y, lay.x):
            start = max(0, (lay.shape[a] - max_side) // 2)
            index[a] = slice(start, start + max_side)
    return tuple(index)


def measure_diameter_iter(
    image: Any,
    model: Any = None,
    *,
    axes: str | None = None,
    device: Any = None,
    zooms: Iterable[float] = ZOOMS,
) -> Generator[Progress, None, float]:
    """The median cell diameter of ``image`` in pixels, measured with the model.

    A centred crop of the middle plane is segmented at each zoom; the zoom whose cells come
    out closest (in ratio) to the model's diameter wins, and the diameter measured there,
    scaled back, is the answer. About a second for the bundled model on a CPU.

    Args:
        image: as for :func:`napari_unet.segment` (2D, stack, channels, RGB; lazy arrays
            are read only where the crops lie).
        model: the network (None = the bundled model); must record ``meta["diameter"]``.
        axes: axis letters as for :func:`napari_unet.predict`.
        device: as for :func:`napari_unet.predict`.
        zooms: the ladder of zooms to try.

    Yields:
        :class:`~napari_unet._progress.Progress`, one per zoom (so a worker can stop it).

    Returns:
        the estimated median equivalent diameter of the image's cells (pixels).

    Raises:
        CellSizeError: no zoom shows enough cells (:data:`MIN_CELLS`; objects that do not
            stand out from the image's noise do not count).
        ValueError: the model records no diameter.
    """
    from .inputs import describe_input

    facts = describe_input(image, "fluorescence" if model is None else model, axes=axes, check=False)
    return (yield from measure_iter(image, facts, device=device, zooms=zooms))


def measure_iter(image: Any, facts: ImageInput, *, device: Any = None,
                 zooms: Iterable[float] = ZOOMS) -> Generator[Progress, None, float]:
    """:func:`measure_diameter_iter` of an image described at the door (``facts``: its
    axes, model and normalisation): every zoomed crop is normalised as the image is (its
    own percentiles would stretch the noise)."""
    net = facts.model
    target = model_diameter(net)
    zooms = tuple(zooms)
    plane, plane_facts = _middle_plane(image, facts, max_side=int(round(CROP / min(zooms))) + 1)
    lay = plane_facts.layout
    options = SegmentOptions(device=device, min_object_z=None)
    found: list[tuple[float, float]] = []  # (diameter seen at zoom z, that diameter / z)
    tried: list[str] = []
    counts: list[int] = []
    for k, z in enumerate(zooms):
        yield Progress(k, len(zooms), f"measuring the cell size ({z:g}x)")
        side = int(round(CROP / z))
        H, W = lay.yx_shape
        y0, x0 = max(0, (H - side) // 2), max(0, (W - side) // 2)
        index = [slice(None)] * plane.ndim
        index[lay.y] = slice(y0, y0 + side)
        index[lay.x] = slice(x0, x0 + side)
        crop = plane[tuple(index)]
        yx = crop.shape[lay.y], crop.shape[lay.x]
        if min(yx) * z < 32:
            continue  # too small to hold cells at this zoom
        zoomed = resize_image(crop, lay.axes, zoomed_shape(yx, z)) if z != 1 else crop
        # no try/except: any error here (a bad device) is the user's to see
        lab = drain(label_planes_iter(zoomed, plane_facts.plane(zoomed.shape), options))
        # objects lost in the noise do not count: tested on the crop itself, whose noise is the camera's
        crop_facts = plane_facts.plane(crop.shape)
        if z != 1:
            out_axes = lay.axes.replace("C", "").replace("S", "")
            real = drop_lost_objects(crop, resize_nearest(lab, out_axes, yx), crop_facts)
            lab = np.where(np.isin(lab, np.unique(lab[resize_nearest(real, out_axes, lab.shape) > 0])), lab, 0)
        else:
            lab = drop_lost_objects(crop, lab, crop_facts)
        n = len(np.unique(lab)) - 1
        tried.append(f"{z:g}x: {n} cells")
        counts.append(n)
        if n >= MIN_CELLS:
            d = label_diameter(lab)
            found.append((d, d / z))
    if not found:
        most = max(counts, default=0)
        reason = ("the image is too small to measure its cells" if not counts else
                  "no cells found: the image looks like noise" if most == 0 else
                  f"too few cells to measure their size (at most {most} at any zoom)")
        raise CellSizeError(reason, tried)
    return _pick(found, target)


def _middle_plane(image: Any, facts: ImageInput, max_side: int | None = None) -> tuple[np.ndarray, ImageInput]:
    """:func:`middle_plane` with the image's facts: the plane and its facts."""
    plane = np.asarray(image[_middle_index(facts.layout, max_side)])
    return plane, facts.plane(plane.shape)


def diameter_to_use(image: Any, facts: ImageInput, diameter: float | str, *, device: Any = None,
                    what: str = "image") -> Generator[Progress, None, float]:
    """The cell diameter to zoom by: ``diameter`` in pixels, or for ``"auto"`` the measured
    one; when it cannot be measured (an empty field, a few cells), the model's own (no
    zoom), with a warning naming ``what`` was segmented as it is."""
    if not isinstance(diameter, str):
        return float(diameter)
    if diameter != "auto":
        raise ValueError(f"diameter must be a number of pixels, 'auto' or None, got {diameter!r}")
    try:
        return (yield from measure_iter(image, facts, device=device))
    except CellSizeError as exc:
        warnings.warn(f"The cell size could not be measured ({exc.reason}), so the {what} was segmented as it is.",
                      UserWarning, stacklevel=3)
        return model_diameter(facts.model)


def measure_diameter(
    image: Any,
    model: Any = None,
    *,
    axes: str | None = None,
    device: Any = None,
    zooms: Iterable[float] = ZOOMS,
) -> float:
    """:func:`measure_diameter_iter` run to the end: the cells' median diameter in pixels."""
    return drain(measure_diameter_iter(image, model, axes=axes, device=device, zooms=zooms))


def _pick(found: list[tuple[float, float]], target: float) -> float:
    """The estimate from the zoom whose cells look most like the model's size, among the
    zooms whose estimate agrees with a neighbouring zoom's (within :data:`AGREEMENT`).

    Where the model works, the size it measures does not depend on the zoom. Where the
    cells are too large for it, it cuts them into pieces of about the same size *in its
    own pixels* at every zoom, so the estimates drift with the zoom; where they are too
    small it loses them. Requiring agreement keeps those zooms out.
    """
    logs = [math.log(e) for _, e in found]
    for tol in AGREEMENT:
        candidates = [
            i for i in range(len(found))
            if any(abs(logs[i] - logs[j]) <= math.log(tol) for j in (i - 1, i + 1) if 0 <= j < len(found))
        ]
        if candidates:
            break
    else:
        candidates = list(range(len(found)))
    best = min(candidates, key=lambda i: abs(math.log(found[i][0] / target)))
    return float(found[best][1])


__all__ = [
    "CellSizeError",
    "label_diameter",
    "measure_diameter",
    "measure_diameter_iter",
    "middle_plane",
    "model_diameter",
    "resize_nearest",
    "resize_image",
    "zoom_for",
    "zoomed_shape",
]
