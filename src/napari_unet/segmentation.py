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
from .diameter import diameter_to_use, measure_diameter_iter, model_diameter, zoom_for
from .image_checks import MIN_OBJECT_Z, MIN_OBJECT_Z_STAINED, NOTHING_HERE_WARNING
from .instances import label_planes_iter, objects_above_noise
from .resize import resize_image, resize_nearest, zoomed_shape
from .tiling import INNER_KEY, check_out, checked_model, inner_model, parse_axes, with_normalization_of
from .volume import segment_volume_iter


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
    model, picked = checked_model(image, model, axes)
    said = {"model": picked} if picked else {}
    if min_object_z == MIN_OBJECT_Z and getattr(model, "meta", {}).get("modality") == "stained":
        min_object_z = MIN_OBJECT_Z_STAINED  # the default, for stained tissue
    meta = getattr(model, "meta", {})
    if isinstance(diameter, str) and diameter == AS_IS:
        diameter = None
    elif diameter is None and meta.get("zoom_each") and not meta.get(INNER_KEY):
        diameter = "auto"  # a model trained with each image zoomed to its cell size (stained tissue)
    if not plane_by_plane and "Z" in str(axes or "").upper():
        return (yield from with_info(segment_volume_iter(
            image, model, axes=axes, voxel_size=voxel_size, diameter=diameter, tile_size=tile_size, device=device,
            min_size=min_size, mode=mode, batch_size=batch_size, out=out, probabilities_out=probabilities_out,
            amp=amp, channels_last=channels_last, min_object_z=min_object_z, **postprocess,
        ), said))
    # the model's own post-processing defaults (stained tissue: models/stained.md); the caller's win
    postprocess = {**meta.get("postprocess", {}), **postprocess}
    if diameter is not None:
        return (yield from with_info(_segment_zoomed(
            image, model, diameter, tile_size=tile_size, device=device, axes=axes, min_size=min_size,
            mode=mode, batch_size=batch_size, out=out, probabilities_out=probabilities_out, amp=amp,
            channels_last=channels_last, min_object_z=min_object_z, plane_by_plane=plane_by_plane, **postprocess,
        ), said))
    return (yield from label_planes_iter(
        image, model, tile_size=tile_size, device=device, axes=axes, min_size=min_size, mode=mode,
        batch_size=batch_size, out=out, probabilities_out=probabilities_out, amp=amp, channels_last=channels_last,
        min_object_z=min_object_z, picked=picked, **postprocess,
    ))


def _segment_zoomed(
    image: Any, model: Any, diameter: float | str, *, axes: str | None, device: Any, min_size: int | None,
    out: Any, probabilities_out: Any, min_object_z: float | None, **kwargs: Any,
) -> Generator[Progress, None, Any]:
    """:func:`segment_iter` with ``diameter``: segment a copy zoomed to the model's cell size."""
    if not hasattr(image, "shape") or not hasattr(image, "__getitem__"):
        image = np.asarray(image)
    lay = parse_axes(image.shape, axes)
    net = model  # resolved by segment_iter, which also reports the pick
    target = model_diameter(net)
    diameter = yield from diameter_to_use(image, net, diameter, axes=lay.axes, device=device)
    zoom = zoom_for(target, diameter)
    extra = {"diameter": float(diameter), "zoom": zoom}
    if zoom == 1:
        inner = segment_iter(image, inner_model(net), axes=lay.axes, device=device, min_size=min_size, out=out,
                             probabilities_out=probabilities_out, min_object_z=min_object_z, **kwargs)
        return (yield from with_info(inner, extra))
    out_axes = "".join(a for i, a in enumerate(lay.axes) if i != lay.channel)
    if out is not None:
        check_out(out, lay.out_shape, "labels")
    if probabilities_out is not None:
        check_out(probabilities_out, (net.config.num_classes, *lay.out_shape), "probabilities")
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
    if min_size is not None:
        min_size = max(1, round(min_size * zoom * zoom))
    probs = None
    if probabilities_out is not None:
        probs = np.zeros((net.config.num_classes, *(s for i, s in enumerate(zoomed.shape) if i != lay.channel)),
                         np.float32)
    small = yield from with_info(
        segment_iter(zoomed, with_normalization_of(net, image, lay), axes=lay.axes, device=device, min_size=min_size,
                     probabilities_out=probs, min_object_z=None, **kwargs),
        extra,
    )
    labels = resize_nearest(small, out_axes, lay.yx_shape)
    mode = kwargs.get("mode") or net.meta.get("mode", "instance3")
    if mode != "semantic" and min_object_z is not None:
        # tested at the image's own resolution, where its noise is the camera's, not smoothed
        labels = objects_above_noise(image, labels, net, lay.axes, min_object_z).astype(np.int32, copy=False)
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
    image: Any, model: Any, *, device: Any, axes: str | None, notes: list[str] | None = None, **kwargs: Any
) -> Generator[Progress, None, Any]:
    """``segment_iter`` on ``image``, zoomed to the model's cell size when the model records
    one and enough cells are in view to measure them; as it is otherwise, saying why in
    ``notes`` (Cell size "auto" in the Segment widget; predict-to-annotate, scoring and
    apply after training)."""
    diameter: float | str = AS_IS
    if not model.meta.get("diameter"):
        if notes is not None:
            notes.append("the model records no cell diameter, so the image was segmented as it is")
    else:
        try:
            diameter = yield from measure_diameter_iter(image, model, axes=axes, device=device)
        except ValueError as exc:
            if notes is not None:
                notes.append(f"cell size not measured ({exc}), so the image was segmented as it is")
    return (yield from segment_iter(image, model, device=device, axes=axes, diameter=diameter, **kwargs))


__all__ = ["AS_IS", "segment", "segment_at_model_size", "segment_iter"]
