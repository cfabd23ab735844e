"""Instance labels plane by plane at the image's own size: predict a plane, turn its
probabilities into labels, drop the objects lost in the image's noise, renumber.

This is the step of :func:`napari_unet.segmentation.segment_iter` after the model is
chosen and the image is zoomed (if at all): :mod:`napari_unet.tiling` predicts each plane,
:func:`napari_unet.postprocess.probabilities_to_labels` labels it and the noise test of
:mod:`napari_unet.image_checks` keeps the objects that stand out. The cell-size
measurement (:mod:`napari_unet.diameter`) segments its crops with it too.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Generator
from typing import Any

import numpy as np
import torch

from ._progress import Progress
from .device import available_memory
from .image_checks import MIN_OBJECT_Z, NOTHING_HERE_WARNING, drop_faint_objects
from .inputs import ImageInput, Layout, SegmentOptions, describe_input
from .tiling import Predictor, Source, plane_writer


def label_planes_iter(
    image: Any,
    facts: ImageInput,
    options: SegmentOptions,
    *,
    out: Any = None,
    probabilities_out: Any = None,
) -> Generator[Progress, None, Any]:
    """Labels of every plane of ``image`` (described by ``facts``: its axes, model and
    normalisation, decided at the door) with ids unique across the planes.

    ``options`` as for :func:`napari_unet.segmentation.segment_iter` (without the zoom and
    the 3D path); ``options.postprocess``: further options of the post-processing.
    """
    from skimage.segmentation import relabel_sequential

    from .postprocess import probabilities_to_labels

    lay = facts.layout
    check_plane_memory(lay, facts.model.config.num_classes, out is None)
    pred = Predictor(image, facts.model, axes=None, normalization=facts.normalization, layout=lay,
                     channel_map=facts.channel_map, **options.predict_kw)
    mode = options.mode or pred.meta.get("mode", "instance3")
    min_size, min_object_z = options.min_size, options.min_object_z
    if out is None:
        out = np.zeros(lay.out_shape, np.int32)
    lay.check_out(out, "labels")
    k = pred.config.num_classes
    if probabilities_out is not None:
        lay.check_out(probabilities_out, "probabilities", k)
    planes = lay.plane_indices()
    H, W = lay.yx_shape
    kwargs = dict(options.postprocess)
    if mode == "instance2" and pred.meta.get("preset") == "membranes":
        kwargs.setdefault("membranes", True)  # cells between membranes: the membrane watershed
    if min_size is not None:
        kwargs["min_size"] = min_size
    total = pred.n_tiles(len(planes)) + len(planes)
    done = 0
    next_id = 0
    found = 0
    for plane in planes:
        buf = np.zeros((k, H, W), np.float32)
        done += yield from pred.run([plane], plane_writer(buf), done, total)
        idx, transpose = lay.out_index(plane, slice(None), slice(None))
        if probabilities_out is not None:
            probabilities_out[(slice(None),) + idx] = buf.transpose(0, 2, 1) if transpose else buf
        yield Progress(done, total, "post-processing", {"plane": plane})
        labels = probabilities_to_labels(buf, mode, **kwargs).astype(np.int64)
        if mode != "semantic" and min_object_z is not None:
            kept = drop_faint_objects(pred.source.seen(plane, pred.lo, pred.hi), labels, min_object_z)
            labels = kept if kept is labels else relabel_sequential(kept)[0]  # 1..N if any was dropped
            found += int(labels.max(initial=0))
        if mode != "semantic" and next_id:
            labels[labels > 0] += next_id
        if labels.size and labels.max() > np.iinfo(np.int32).max:
            raise ValueError("more objects than int32 labels can hold; segment the planes separately")
        if mode != "semantic":
            next_id = max(next_id, int(labels.max(initial=0)))
        labels = labels.astype(np.int32)
        out[idx] = labels.T if transpose else labels
        done += 1
        yield Progress(done, total, "post-processing", {"plane": plane})
    if mode != "semantic" and min_object_z is not None and not found:
        warnings.warn(NOTHING_HERE_WARNING, UserWarning, stacklevel=2)
    return out


def objects_above_noise(image: Any, labels: np.ndarray, model: Any, axes: str | None = None,
                        min_z: float = MIN_OBJECT_Z) -> np.ndarray:
    """``labels`` of ``image`` (same resolution) without the objects that do not stand out
    from its noise (see :mod:`napari_unet.image_checks`), renumbered without gaps.

    Args:
        image: the image as given to :func:`napari_unet.segment` (planes, channels as in ``axes``).
        labels: its instance labels, shaped like the image without its channel axis.
        model: the model (its normalisation rule and input channels).
        axes: as for :func:`napari_unet.segment`.
        min_z: see :data:`napari_unet.image_checks.MIN_OBJECT_Z`.
    """
    return drop_lost_objects(image, labels, describe_input(image, model, axes=axes, check=False), min_z)


def drop_lost_objects(image: Any, labels: np.ndarray, facts: ImageInput, min_z: float = MIN_OBJECT_Z) -> np.ndarray:
    """:func:`objects_above_noise` of an image described at the door (``facts``: its
    axes, channels and normalisation)."""
    from skimage.segmentation import relabel_sequential

    lay = facts.layout
    lo, hi = facts.normalization
    source = Source(image, lay, facts.channel_map)
    out = np.array(labels, copy=True)
    next_id = 0
    for plane in lay.plane_indices():
        idx, transpose = lay.out_index(plane, slice(None), slice(None))
        lab = out[idx].T if transpose else out[idx]
        # renumbered in any case: shrinking zoomed labels back can lose a speck
        lab = relabel_sequential(drop_faint_objects(source.seen(plane, lo, hi), lab, min_z))[0].astype(np.int64)
        lab[lab > 0] += next_id  # ids unique across the stack, as segment gives them
        next_id = max(next_id, int(lab.max(initial=0)))
        out[idx] = lab.T if transpose else lab
    return out


#: peak bytes per pixel of one plane's post-processing (instance3 watershed, measured with
#: tracemalloc on a 1024² plane: 48 B/px), on top of the plane's probabilities
POSTPROCESS_BYTES_PER_PIXEL = 60


def check_plane_memory(lay: Layout, num_classes: int, labels_in_memory: bool) -> None:
    """Refuse, with a way out, a plane too large to post-process in the free memory.

    ``segment`` holds one plane's probabilities and runs the watershed on the whole
    plane; past the free memory that would end in the out-of-memory killer, taking the
    viewer (and unsaved work) with it.
    """
    H, W = lay.yx_shape
    need = H * W * (4 * num_classes + POSTPROCESS_BYTES_PER_PIXEL)
    if labels_in_memory:
        need += 4 * math.prod(lay.out_shape)
    free = available_memory(torch.device("cpu"))
    if need > 0.8 * free:
        raise MemoryError(
            f"segmenting planes of {H}x{W} pixels in one piece needs about {need / 2**30:.1f} GiB of memory "
            f"and {free / 2**30:.1f} GiB is free; segment it in blocks with bounded memory "
            "(napari-unet segment IN -o OUT.zarr --workers N, or napari_unet.distributed.segment_distributed), "
            "or crop it"
        )


__all__ = ["POSTPROCESS_BYTES_PER_PIXEL", "check_plane_memory", "drop_lost_objects", "label_planes_iter", "objects_above_noise"]
