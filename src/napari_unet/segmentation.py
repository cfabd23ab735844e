"""Segmentation, the whole way: size -> zoom -> predict -> instances -> unzoom.

:func:`segment_iter` chooses the model and checks the image against it
(:func:`napari_unet.tiling.checked_model`), sends Z stacks to the 3D path
(:mod:`napari_unet.volume`), zooms an image whose cells are not the model's size to that
size (``diameter``; measured by :mod:`napari_unet.diameter` for ``"auto"``; resized by
:mod:`napari_unet.resize`), labels it plane by plane (:mod:`napari_unet.instances`, on the
predictions of :mod:`napari_unet.tiling`) and scales the labels back.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Generator
from typing import Any

import numpy as np
import torch

from ._progress import Progress, ProgressBar, drain, with_info
from .device import available_memory
from .diameter import CellSizeError, diameter_to_use, measure_iter, model_diameter, zoom_for
from .image_checks import MIN_OBJECT_Z, NOTHING_HERE_WARNING
from .inputs import ImageInput, SegmentOptions, describe_input, options_from
from .instances import drop_lost_objects, label_planes_iter
from .resize import resize_image, resize_nearest, zoomed_shape
from .volume import volume_iter


#: ``diameter=AS_IS``: segment the image unchanged, also with a model that zooms each image
AS_IS = "as is"


def segment_iter(
    image: Any,
    model: Any = None,
    *,
    tile_size: int | None = None,
    device: str | torch.device | None = None,
    axes: str | None = None,
    min_size: int | None = None,
    mode: str | None = None,
    batch_size: int | None = None,
    out: Any = None,
    probabilities_out: Any = None,
    amp: bool | None = None,
    channels_last: bool = True,
    diameter: float | str | None = None,
    min_object_z: float | None = MIN_OBJECT_Z,
    voxel_size: Any = None,
    plane_by_plane: bool = False,
    **postprocess: Any,
) -> Generator[Progress, None, Any]:
    """Instance (or semantic) labels by tiled prediction and post-processing, plane by plane.

    A stack whose axes name a ``Z`` (``axes="ZYX"``, ``"TZYX"``...) gets 3D labels, one id
    per cell across its planes (:mod:`napari_unet.volume`), unless ``plane_by_plane``.

    Each plane is predicted (see :func:`napari_unet.tiling.predict_iter`) and turned into labels with
    :func:`napari_unet.postprocess.probabilities_to_labels`; a stack's planes are
    processed one at a time, so memory is bounded by one plane. Instance ids are unique
    across the whole stack (each plane's ids start after the previous plane's largest).

    Args:
        image, model, tile_size, device, axes, batch_size, amp, channels_last: as for
            :func:`napari_unet.tiling.predict_iter`.
        min_size: objects smaller than this many pixels are removed (None = the
            post-processing default).
        mode: ``"instance3"``, ``"instance2"`` or ``"semantic"``; None = ``model.meta["mode"]``.
        out: optional int32 array (numpy, zarr...) shaped like the image without its
            channel axis, written plane by plane.
        probabilities_out: optional array ``(num_classes, *that shape)`` that also receives
            the probabilities.
        diameter: the cells' median diameter in pixels, or ``"auto"`` to measure it with
            the model (:func:`napari_unet.diameter.measure_diameter`, about a second).
            When it differs from the model's own (``model.meta["diameter"]``) by more than
            25%, a copy zoomed to the model's cell size is segmented (in memory) and the
            labels are scaled back. None (default): segment the image as it is, or, for a
            model that records ``meta["zoom_each"]`` (the stained-tissue model, trained with
            each image zoomed to its cell size), ``"auto"``. ``"as is"``: the image as it is,
            whatever the model.
        min_object_z: instance modes: objects whose mean intensity does not stand out from
            the background around them by this many standard errors of the image's noise
            (the default 6 is 2 for a model of stained tissue) are dropped, so an empty
            field gives no cells (and a ``UserWarning`` says there are none; see
            :mod:`napari_unet.image_checks`). None keeps every object.
        voxel_size: Z stacks: ``(z, y, x)`` voxel size (a napari layer's ``scale``) or
            one number, Z step / pixel size; None = estimated from the cells.
        plane_by_plane: Z stacks: label each plane on its own (unrelated sections), as
            for other plane axes.
        **postprocess: further options of ``probabilities_to_labels`` (3D: of
            :func:`napari_unet.volume.segment_volume_iter`, e.g. ``views``); the model's
            ``meta["postprocess"]`` (if any) gives the defaults of those not passed.

    Yields:
        :class:`Progress`; with ``diameter``, ``info`` also holds ``diameter`` and ``zoom``.

    Returns:
        int32 labels shaped like the image without its channel axis (or ``out``).
    """
    if not hasattr(image, "shape") or not hasattr(image, "__getitem__"):
        image = np.asarray(image)
    facts = describe_input(image, model, axes=axes, voxel_size=voxel_size)
    facts.say_warnings()
    options = options_from(facts.model, tile_size=tile_size, device=device, min_size=min_size, mode=mode,
                           batch_size=batch_size, amp=amp, channels_last=channels_last, diameter=diameter,
                           min_object_z=min_object_z, plane_by_plane=plane_by_plane, **postprocess)
    return (yield from segment_input_iter(image, facts, options, out=out, probabilities_out=probabilities_out))


def segment_input_iter(image: Any, facts: ImageInput, options: SegmentOptions, *, out: Any = None,
                       probabilities_out: Any = None) -> Generator[Progress, None, Any]:
    """:func:`segment_iter` of an image described at the door (``facts``, see
    :mod:`napari_unet.inputs`) with ``options``: the 3D path, the zoom to the model's cell
    size, or the image as it is. Every record's ``info`` says what was done (the axes, the
    model and why it was picked)."""
    said = facts.info()
    if not options.plane_by_plane and "Z" in facts.axes:
        return (yield from with_info(volume_iter(image, facts, options, out=out, probabilities_out=probabilities_out),
                                     said))
    # the model's own post-processing defaults (stained tissue: models/stained.md); the caller's win
    options = options.replace(postprocess={**facts.model.meta.get("postprocess", {}), **options.postprocess})
    if options.diameter is not None:
        gen = _segment_zoomed(image, facts, options, out, probabilities_out)
    else:
        gen = label_planes_iter(image, facts, options, out=out, probabilities_out=probabilities_out)
    return (yield from with_info(gen, said))


def _segment_zoomed(image: Any, facts: ImageInput, options: SegmentOptions, out: Any,
                    probabilities_out: Any) -> Generator[Progress, None, Any]:
    """:func:`segment_input_iter` with a diameter: segment a copy zoomed to the model's cell size."""
    lay, net = facts.layout, facts.model
    target = model_diameter(net)
    diameter = yield from diameter_to_use(image, facts, options.diameter, device=options.device)
    zoom = zoom_for(target, diameter)
    extra = {"diameter": float(diameter), "zoom": zoom}
    if zoom == 1:
        inner = label_planes_iter(image, facts, options, out=out, probabilities_out=probabilities_out)
        return (yield from with_info(inner, extra))
    out_axes = "".join(a for i, a in enumerate(lay.axes) if i != lay.channel)
    if out is not None:
        lay.check_out(out, "labels")
    if probabilities_out is not None:
        lay.check_out(probabilities_out, "probabilities", net.config.num_classes)
    # the image and its zoomed copy are held in memory (a lazy image is read here, once)
    zh, zw = zoomed_shape(lay.yx_shape, zoom)
    planes = math.prod(lay.shape) // (lay.yx_shape[0] * lay.yx_shape[1])  # planes x channels
    need = planes * (lay.yx_shape[0] * lay.yx_shape[1] * (np.dtype(image.dtype).itemsize + 8) + zh * zw * 12)
    if need > 0.7 * available_memory(torch.device("cpu")):
        raise MemoryError(
            f"zooming this image by {zoom:.2f} (cells of {float(diameter):.0f} px to the model's {target:.0f} px) "
            f"needs about {need / 2**30:.1f} GiB in memory, more than is free; zoom it beforehand "
            "(or segment it as it is)"
        )
    zoomed = resize_image(np.asarray(image), lay.axes, (zh, zw))
    min_size = options.min_size
    if min_size is not None:
        min_size = max(1, round(min_size * zoom * zoom))
    probs = None
    if probabilities_out is not None:
        probs = np.zeros((net.config.num_classes, *(s for i, s in enumerate(zoomed.shape) if i != lay.channel)),
                         np.float32)
    # the zoomed copy is normalised as the image: zooming smooths the noise, so its own
    # percentiles would stretch it further and show cells where there is only noise
    small = yield from with_info(
        label_planes_iter(zoomed, facts.reshaped(zoomed.shape), options.replace(min_size=min_size, min_object_z=None),
                          probabilities_out=probs),
        extra,
    )
    labels = resize_nearest(small, out_axes, lay.yx_shape)
    mode = options.mode or net.meta.get("mode", "instance3")
    if mode != "semantic" and options.min_object_z is not None:
        # tested at the image's own resolution, where its noise is the camera's, not smoothed
        labels = drop_lost_objects(image, labels, facts, options.min_object_z)
        labels = labels.astype(np.int32, copy=False)
        if not labels.any():
            warnings.warn(NOTHING_HERE_WARNING, UserWarning, stacklevel=2)
    elif zoom > 1 and mode != "semantic":
        # shrinking the labels back can drop a speck: keep the ids 1..N without gaps
        from skimage.segmentation import relabel_sequential

        labels = relabel_sequential(labels)[0].astype(np.int32, copy=False)
    if probabilities_out is not None:
        probabilities_out[...] = resize_image(probs, "C" + out_axes, lay.yx_shape)
    if out is None:
        return labels
    out[...] = labels
    return out


def segment(image: Any, model: Any = None, *, tile_size: int | None = None, device: str | torch.device | None = None,
            axes: str | None = None, progress: ProgressBar | None = None, **kwargs: Any) -> Any:
    """Instance labels of ``image``: :func:`segment_iter` run to the end.

    Args:
        progress: optional tqdm-like bar.
        **kwargs: further arguments of :func:`segment_iter` (``min_size``, ``mode``, ``out``...).

    Returns:
        int32 labels shaped like the image without its channel axis (or ``out``).
    """
    return drain(segment_iter(image, model, tile_size=tile_size, device=device, axes=axes, **kwargs), progress)


def segment_at_model_size(
    image: Any, model: Any = None, *, device: Any, axes: str | None = None, notes: list[str] | None = None,
    facts: ImageInput | None = None, **kwargs: Any
) -> Generator[Progress, None, Any]:
    """``segment_iter`` on ``image``, zoomed to the model's cell size when the model records
    one and enough cells are in view to measure them; as it is otherwise, saying why in
    ``notes`` (Cell size "auto" in the Segment widget; predict-to-annotate, scoring and
    apply after training).

    ``facts``: the image described at the door (:func:`napari_unet.inputs.describe_input`);
    None: described here from ``model``, ``axes`` and ``kwargs["voxel_size"]``.
    """
    voxel_size = kwargs.pop("voxel_size", None)
    if facts is None:
        facts = describe_input(image, model, axes=axes, voxel_size=voxel_size)
        facts.say_warnings()
    out, probabilities_out = kwargs.pop("out", None), kwargs.pop("probabilities_out", None)
    diameter: float | str = AS_IS
    if not facts.model.meta.get("diameter"):
        if notes is not None:
            notes.append("the model records no cell diameter, so the image was segmented as it is")
    else:
        try:
            diameter = yield from measure_iter(image, facts, device=device)
        except CellSizeError as exc:
            if notes is not None:
                notes.append(f"{exc.reason}; the cell size was not measured, so the image was segmented as it is")
        except ValueError as exc:
            if notes is not None:
                notes.append(f"cell size not measured ({exc}), so the image was segmented as it is")
    options = options_from(facts.model, device=device, diameter=diameter, **kwargs)
    return (yield from segment_input_iter(image, facts, options, out=out, probabilities_out=probabilities_out))


__all__ = ["AS_IS", "segment", "segment_at_model_size", "segment_input_iter", "segment_iter"]
