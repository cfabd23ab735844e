"""The Segment dock widget: run a U-Net on an image layer, get a Labels layer back.

The widget decides the image's axes (the file's, or as napari shows the layer; a short
first axis is taken as channels, with a button to treat it as a Z stack) and the job
describes the image once (``inputs.describe_input``: axes, model and why, normalisation)
and runs ``segmentation.segment_input_iter`` in a napari ``thread_worker`` so the viewer
stays responsive; Cancel stops at the next tile and leaves every layer as it was. The
result goes to a Labels layer ``"<image> labels (<model>)"`` (``bundled``, ``stained`` or
the model file's name, however the model was chosen, so results of different models sit
side by side; a Z stack labelled plane by plane goes to ``"<image> labels, plane by plane
(<model>)"``), updated in place on a re-run unless the person painted on it or the layer
is not ours (see ``_common``), placed with the image layer's scale and translation, and
optionally to an Image layer ``"<image> probabilities (<model>)"`` whose first axis is the class.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    LineEdit,
    PushButton,
    SpinBox,
)

from .._progress import Progress
from ..annotate import count_cells as count_objects
from ._common import (
    add_or_update_layer,
    header,
    layer_data,
    load_model_cached,
    model_tag,
    result_name,
    scroll_form,
    set_status,
)
from ._sections import DevicePicker, ModelPicker, RunControls, layer_picker

if TYPE_CHECKING:  # pragma: no cover
    import napari

DEFAULT_MIN_SIZE = 16


#: the 3D methods of ``volume.py`` in a biologist's words
_METHOD_WORDS = {"linked planes": "each plane segmented, cells joined to the overlapping cells of the next plane"}

#: what predicted a stack's probabilities, in the same words
_VIEW_WORDS = {"3D network": "3D U-Net", "3D network + XY, XZ, YZ": "3D U-Net and 2D network in XY, XZ, YZ",
               "XY, XZ, YZ": "2D network in XY, XZ and YZ", "XY": "2D network in XY"}


@dataclass
class SegmentJob:
    """Everything the worker needs, read from the widgets in the GUI thread."""

    data: Any
    image_name: str
    model_path: Path | None
    device: str
    tile_size: int | None
    axes: str | None
    min_size: int
    want_probabilities: bool
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    notes: list[str] = field(default_factory=list)
    diameter: float | str | None = None  # None or "as is": as is; "auto": measured; or pixels
    model_tag: str = "bundled"  # names the output layers: "<image> labels (<model_tag>)"
    voxel_size: tuple[float, ...] | None = None  # Z stacks: the layer's (z, y, x) scale; None = estimate
    plane_by_plane: bool = False
    views: str = "auto"  # Z stacks: "auto" (the default 3D method) or "xyz" (the 2D network in three views)
    layout: Any = None  # the axes parsed at the door (inputs.Layout); None: parsed from ``axes``

    @property
    def labels_what(self) -> str:
        """What the labels layer is called after the image: a Z stack labelled plane by
        plane gets its own layer, beside the 3D result of the same image."""
        return "labels, plane by plane" if self.plane_by_plane and "Z" in (self.axes or "") else "labels"


@dataclass
class SegmentResult:
    labels: np.ndarray
    probabilities: np.ndarray | None
    class_names: list[str]
    mode: str
    num_objects: int
    device: str
    tile_size: int | None
    seconds: float
    diameter: float | None = None  # the cells' diameter used (measured or given), px
    zoom: float = 1.0
    notes: list[str] = field(default_factory=list)
    volume: dict[str, Any] = field(default_factory=dict)  # Z stacks: anisotropy and method
    model_name: str = "bundled"  # the model that segmented (its file's name): names the output layers


def layer_axes(layer: Any, text: str) -> str | None:
    """The ``axes`` string for the core: the person's entry, or as napari shows the layer.

    Args:
        layer: a napari Image layer.
        text: the widget's axes entry; "" or "auto" means "as napari shows it".

    Returns:
        axis letters for ``inputs.parse_axes``: the entry, or for "auto" ``...YXS`` for an
        RGB layer, ``ZYX`` for a 3D layer and ``TZYX`` for a 4D one, and ``...YX`` (planes
        over the leading axes) otherwise (the Annotate widget's rule; the Segment widget
        also reads the file and takes a short first axis as channels: :func:`auto_axes`).
    """
    data = layer_data(layer)
    ndim = len(data.shape)
    text = text.strip().upper()
    if text and text != "AUTO":
        return text
    if layer.rgb:
        return "Q" * (ndim - 3) + "YXS"
    return {3: "ZYX", 4: "TZYX"}.get(ndim, "Q" * (ndim - 2) + "YX")


#: how the status line says that a short first axis was taken as channels (the Z stack button shows then)
TAKEN_AS_CHANNELS = "taken as channels"


def file_axes(layer: Any) -> str | None:
    """The axes a TIFF layer's file records (OME, ImageJ or tifffile metadata), when they
    fit the layer; None otherwise (napari's reader does not keep them)."""
    path = getattr(getattr(layer, "source", None), "path", None)
    if not path or not str(path).lower().endswith((".tif", ".tiff")) or layer.multiscale:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    axes, shape = _recorded_axes(str(path), st.st_mtime_ns, st.st_size)
    return axes if axes and shape == tuple(layer_data(layer).shape) else None


@functools.lru_cache(maxsize=16)
def _recorded_axes(path: str, mtime_ns: int, size: int) -> tuple[str | None, tuple[int, ...] | None]:
    """The axes and shape a TIFF file records, read once per version of the file (its time
    and size are part of the key): the description line asks on every change of the form."""
    try:
        import tifffile

        from .._cli._io import _tiff_axes

        with tifffile.TiffFile(path) as tif:
            return _tiff_axes(tif), tuple(tif.series[0].shape)
    except Exception:  # noqa: BLE001 - a file that cannot be read says nothing about its axes
        return None, None


def auto_axes(layer: Any, model_channels: int = 1) -> tuple[str, str]:
    """The axes of a layer for "auto", and a note saying how they were decided ("" when
    there is nothing to say).

    In order: the last axis of an RGB layer is colour; the file's axes metadata; a short
    first axis (at most :data:`SHORT_AXIS`) of a 3D layer is taken as channels (a 2-channel
    image is no 2-plane Z stack); otherwise a 3D layer is ``ZYX`` and a 4D one ``TZYX``
    (3D cells), and more axes are planes. Channels the model does not read together are
    segmented one by one (axis ``Q``).
    """
    from ..inputs import SHORT_AXIS, each_channel_alone

    if layer.rgb:
        return layer_axes(layer, "auto"), ""
    data = layer_data(layer)
    axes, note = file_axes(layer), ""
    if axes:
        note = f"axes {axes} from the file"
    elif len(data.shape) == 3 and data.shape[0] <= SHORT_AXIS:
        axes, note = "CYX", f"its first axis ({data.shape[0]}) is short, so it was {TAKEN_AS_CHANNELS}"
    else:
        return layer_axes(layer, "auto"), ""
    axes, alone = each_channel_alone(axes, data.shape, model_channels)
    return axes, f"{note}; {alone}" if alone else note


def channel_mismatch_text(exc: Any, image_name: str) -> str:
    """The channel-mismatch error (:class:`napari_unet.inputs.ChannelMismatch`) in the
    widget's words: its fields and napari's menus, not Python."""
    lay, m = exc.layout, exc.model_channels
    if lay.channel is None:
        return (f"The model reads {m} channels but '{image_name}' has none: choose an image with {m} channels "
                "(and C for its channel axis in Axes), or a model for one channel")
    c, axes = lay.channels, lay.axes
    return (f"The model reads {m} channel(s) but '{image_name}' has {c} along its axis {lay.channel} "
            f"(Axes '{axes}'): set Axes to '{axes.replace('C', 'Q')}' to segment each channel on its own, "
            f"split the layer into its channels (right-click it ▸ Split Stack) and pick one, or choose a "
            f"model trained on {c} channels")


def layer_voxel_size(layer: Any, axes: str) -> tuple[float, float, float] | None:
    """The (z, y, x) voxel size of a layer with a Z axis, from its ``scale``; None when
    unknown (no Z axis, or napari's default scale of all ones, which says nothing)."""
    if "Z" not in axes or len(layer.scale) != len(axes):
        return None
    scale = tuple(float(layer.scale[axes.index(c)]) for c in "ZYX")
    return None if all(v == 1.0 for v in scale) else scale


def anisotropy_text(layer: Any, axes: str) -> str:
    """How the Z step will be known, for the status line."""
    if "Z" not in axes:
        return ""
    v = layer_voxel_size(layer, axes)
    if v is None:
        return ", Z step: estimated from the cells (layer scale unset)"
    return f", Z step {v[0] / (v[1] * v[2]) ** 0.5:.2g}x the pixel (layer scale)"


def output_geometry(layer: Any, channel_axis: int | None, out_ndim: int) -> tuple[tuple, tuple]:
    """Scale and translate of the image layer for an output without the channel axis."""
    scale = list(layer.scale)
    translate = list(layer.translate)
    if channel_axis is not None and not layer.rgb and len(scale) > out_ndim:
        # a non-RGB channel axis is one of napari's dimensions: drop its entry
        del scale[channel_axis], translate[channel_axis]
    # napari lines dimensions up from the last; keep the trailing ones
    return tuple(scale[-out_ndim:]), tuple(translate[-out_ndim:])


def run_segment(job: SegmentJob) -> Generator[Progress, None, SegmentResult]:
    """The worker's generator: describe the image once (axes, model, normalisation), then
    segment it with those facts.

    Runs ``segmentation.segment_input_iter`` (or ``segment_at_model_size`` for Cell size
    "auto"; plane by plane: memory is bounded by one plane plus the outputs), which yields
    at least every 0.2 s, so Cancel acts within a fraction of a second.
    """
    import time

    from ..device import describe_device, resolve_device
    from ..inputs import ChannelMismatch, describe_input, options_from
    from ..segmentation import segment_at_model_size, segment_input_iter

    t0 = time.perf_counter()
    yield Progress(0, 0, "Loading the model...")
    try:  # the image's facts, decided once: axes, model, normalisation, warnings
        facts = describe_input(job.data, job.model_path, axes=job.layout or job.axes, voxel_size=job.voxel_size,
                               model_name=job.model_tag, load=load_model_cached)
    except ChannelMismatch as exc:
        raise ValueError(channel_mismatch_text(exc, job.image_name)) from exc
    facts.say_warnings()
    model = facts.model
    notes: list[str] = []
    if facts.why == "stained":
        notes.append(f"used {facts.model_line}")
    device = resolve_device(job.device)
    yield Progress(0, 0, f"Reading the image, preparing {describe_device(device)}...")
    probs = None
    if job.want_probabilities:
        probs = np.zeros((model.config.num_classes, *facts.layout.out_shape), np.float32)
    settings = dict(tile_size=job.tile_size, min_size=job.min_size, plane_by_plane=job.plane_by_plane)
    if job.views != "auto":
        settings["views"] = job.views
    if job.diameter == "auto":
        gen = segment_at_model_size(job.data, facts=facts, device=device, notes=notes, probabilities_out=probs,
                                    **settings)
    else:
        options = options_from(model, device=device, diameter=job.diameter, **settings)
        gen = segment_input_iter(job.data, facts, options, probabilities_out=probs)
    info: dict[str, Any] = {}
    try:
        while True:  # the records pass through; what they say of the run is kept
            try:
                rec = next(gen)
            except StopIteration as stop:
                labels = np.asarray(stop.value)
                break
            info.update(rec.info)
            yield rec
    finally:
        gen.close()
    only_3d = info.get("views") == "3D network"
    return SegmentResult(
        labels=labels,
        probabilities=probs,
        class_names=list(model.meta.get("class_names", [])),
        mode=str(model.meta.get("mode", "instance3")),
        num_objects=count_objects(labels),
        # the 3D U-Net alone made the labels: in float32 on a CPU, not in the 2D network's tiles
        device=describe_device(device, bf16=False) if only_3d else str(info.get("device", describe_device(device))),
        tile_size=None if only_3d else info.get("tile_size"),
        seconds=time.perf_counter() - t0,
        diameter=info.get("diameter"),
        zoom=float(info.get("zoom", 1.0)),
        notes=notes,
        volume={k: info[k] for k in ("anisotropy", "anisotropy_source", "method", "views") if k in info},
        model_name=facts.model_name,
    )


class SegmentWidget(Container):
    """Segment the chosen image layer with a U-Net (bundled model or a model file).

    Child widgets are attributes (``image``, ``model``, ``device``, ``tile_size``,
    ``axes``, ``cell_size``, ``diameter``, ``min_size``, ``probabilities``, ``run_button``, ``cancel_button``,
    ``progress``, ``status``) so scripts and tests can set values and press buttons.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        self._viewer = napari_viewer
        self.model = ModelPicker()
        self.device = DevicePicker()
        controls = RunControls("Segment", "Run the U-Net on the image (in the background)",
                               "Stop after the current tile; no layer is changed", progress_tooltip="Tiles done")
        self.run_button, self.cancel_button = controls.run_button, controls.cancel_button
        self.progress, self.status = controls.progress, controls.status
        self.form = Container(
            widgets=[
                header("Input"), *self._input_section(),
                header("Model"), *self.model.widgets, *self.device.widgets, self._tile_row(),
                header("Output"), *self._output_section(),
                *controls.widgets,
            ],
            labels=True,
        )
        super().__init__(widgets=[self.form], labels=False)
        self.runner = controls.make_runner()
        self.run_button.changed.connect(self.run)
        self.image.changed.connect(self._image_changed)
        self.axes.changed.connect(self._describe_image)
        self.model.source.changed.connect(self._describe_image)
        self.model.file.changed.connect(self._describe_image)
        self.as_z_stack.changed.connect(lambda *_: setattr(self.axes, "value", "ZYX"))
        self.form.native.setMinimumWidth(320)
        self.scroll = scroll_form(self, self.form)
        self._describe_image()
        self.reset_choices()

    # -- sections ---------------------------------------------------------------------

    def _input_section(self) -> list[Any]:
        """The image, what its axes are, and the cells' size."""
        self.image = layer_picker("Image", "Image", "The image layer to segment (2D, 3D stack, time series, "
                                  "multichannel, RGB, or a lazy dask/zarr layer)")
        self.axes = LineEdit(
            label="Axes",
            value="auto",
            tooltip="What the image's dimensions are, one letter each: T (time, segmented one by "
            "one), Z (a stack: 3D cells), C (channels fed to the network together), "
            "S (RGB colour), Q (any other axis: planes segmented one by one), Y, X; e.g. 'ZYX', 'CYX', 'TZYX'. "
            "'auto': the axes the image's file records; else as napari shows the layer (the last axis "
            "of an RGB layer is colour; a 3D layer with a first axis of up to 4 is channels, a longer one "
            "ZYX; a 4D one TZYX). Channels the model does not read together are segmented one by one",
        )
        self.as_z_stack = PushButton(
            text="Treat as a Z stack instead",
            visible=False,
            tooltip="The image's first axis was taken as channels because it is short; press this if it is a Z "
            "stack (sets Axes to ZYX: 3D cells)",
        )
        self.cell_size = ComboBox(
            label="Cell size",
            choices=["auto", "as is", "diameter"],
            value="auto",
            tooltip="auto: measure the cells' size with the model (about a second) and, when it "
            "differs from the size the model knows best by more than 25%, segment a zoomed copy. "
            "as is: segment the image unchanged. diameter: give the cells' diameter below",
        )
        self.diameter = FloatSpinBox(
            label="Diameter (px)", value=20.0, min=1.0, max=5000.0, step=1.0, enabled=False,
            tooltip="The cells' typical diameter in pixels (used when Cell size is 'diameter')",
        )
        self.cell_size.changed.connect(lambda v: setattr(self.diameter, "enabled", v == "diameter"))
        return [self.image, self.axes, self.as_z_stack, self.cell_size, self.diameter]

    def _tile_row(self) -> SpinBox:
        self.tile_size = SpinBox(
            label="Tile (0 = auto)",
            value=0,
            min=0,
            max=16384,
            step=16,
            tooltip="Edge of the output tile in pixels (rounded to a size the network "
            "accepts); 0 = auto, chosen from the free memory of the device. The result "
            "does not depend on it; only speed and memory do",
        )
        return self.tile_size

    def _output_section(self) -> list[Any]:
        """Small-object removal, the probabilities layer and how Z stacks are labelled."""
        self.min_size = SpinBox(
            label="Min. size",
            value=DEFAULT_MIN_SIZE,
            min=0,
            max=10**7,
            tooltip="Objects smaller than this many pixels are removed (0 keeps everything)",
        )
        self.probabilities = CheckBox(
            text="Also output class probabilities",
            value=False,
            tooltip="Add an Image layer '<image> probabilities' with one plane per class "
            "(e.g. background / interior / boundary), to see what the network thinks",
        )
        self.plane_by_plane = CheckBox(
            text="Z stacks: plane by plane",
            value=False,
            tooltip="Label each plane of a Z stack on its own (unrelated sections). Off: one id per "
            "cell in 3D, with the Z step from the layer's scale (or estimated when it is unset)",
        )
        self.z_method = ComboBox(
            label="Z stacks by",
            choices=[("3D U-Net", "auto"), ("3D U-Net + 2D views", "3d+xyz"), ("2D network, 3 views", "xyz")],
            value="auto",
            tooltip="How a Z stack's cells are found in 3D. 3D U-Net: the bundled 3D network (or a 3D model "
            "file chosen above) reads the stack resampled to cubic voxels. 3D U-Net + 2D views: its answer "
            "averaged with the 2D model's in the XY, XZ and YZ planes. 2D network, 3 views: the 2D model "
            "alone (what a 2D model file chosen above gets with the first choice too)",
        )
        return [self.min_size, self.probabilities, self.plane_by_plane, self.z_method]

    def _image_changed(self, *_: Any) -> None:
        """Another image: the Axes typed for the last one do not carry over."""
        if self.axes.value.strip().lower() != "auto":
            self.axes.value = "auto"  # describes the image (axes.changed)
        else:
            self._describe_image()

    def _model_channels(self) -> int:
        """Input channels of the chosen model (the bundled fluorescence model: 1)."""
        path = self.model.path
        if path is None:
            return 1
        try:
            return int(load_model_cached(path).config.in_channels)
        except Exception:  # noqa: BLE001 - a bad file is reported when Segment is pressed
            return 1

    def _axes(self, layer: Any) -> tuple[str, str]:
        """The axes to segment ``layer`` with, and how "auto" decided them ("" when typed)."""
        text = self.axes.value.strip().upper()
        if text and text != "AUTO":
            return text, ""
        return auto_axes(layer, self._model_channels())

    def _describe_image(self, *_: Any) -> None:
        layer = self.image.value
        self.as_z_stack.visible = False
        if layer is None:
            set_status(self.status, "Open an image (File ▸ Open Sample ▸ Synthetic nuclei for a demo)")
            return
        data = layer_data(layer)
        kind = "RGB " if layer.rgb else ""
        lazy = "" if isinstance(data, np.ndarray) else f", lazy ({type(data).__module__.split('.')[0]})"
        ms = f", multiscale: level 0 of {len(layer.data)}" if layer.multiscale else ""
        try:
            axes, how = self._axes(layer)
            z = anisotropy_text(layer, axes)
        except (ValueError, IndexError):
            axes, how, z = "", "", ""
        self.as_z_stack.visible = TAKEN_AS_CHANNELS in how
        how = f"; {how}" if how else ""
        set_status(self.status, f"{kind}image {tuple(data.shape)} {data.dtype}{lazy}{ms}{z}{how}")

    def _make_job(self) -> SegmentJob:
        layer = self.image.value
        if layer is None:
            raise ValueError(
                "No image layer: open an image first (or File ▸ Open Sample ▸ Synthetic nuclei)"
            )
        data = layer_data(layer)  # highest resolution
        if len(data.shape) < 2 or min(data.shape[-2:]) < 1:
            raise ValueError(f"Image '{layer.name}' has shape {tuple(data.shape)}; a 2D image or a stack of them is needed")
        from ..inputs import ChannelMismatch, choose_channel_map, parse_axes

        axes, how = self._axes(layer)
        layout = parse_axes(data.shape, axes)  # checked here, before any work starts; parsed once
        try:  # a channel count the model cannot take is said before any work starts
            choose_channel_map(layout, self._model_channels())
        except ChannelMismatch as exc:
            raise ValueError(channel_mismatch_text(exc, layer.name)) from None
        tile = int(self.tile_size.value) or None
        scale, translate = output_geometry(layer, layout.channel, len(layout.out_shape))
        notes = [how] if how else []
        if layer.multiscale:
            notes.append(f"used the full-resolution level of {len(layer.data)}")
        return SegmentJob(
            data=data,
            image_name=layer.name,
            model_path=self.model.path,
            device=self.device.value,
            tile_size=tile,
            axes=axes,
            min_size=int(self.min_size.value),
            want_probabilities=bool(self.probabilities.value),
            scale=scale,
            translate=translate,
            notes=notes,
            diameter={"auto": "auto", "as is": "as is"}.get(self.cell_size.value, float(self.diameter.value)),
            model_tag=model_tag(self.model.path),
            voxel_size=layer_voxel_size(layer, layout.axes),
            plane_by_plane=bool(self.plane_by_plane.value),
            views=str(self.z_method.value),
            layout=layout,
        )

    def run(self, *_: Any) -> Any:
        """Start segmenting (returns the worker, or None when the input is refused)."""
        job = self.runner.make_job(self._make_job)
        if job is None:
            return None
        return self.runner.start(
            lambda: run_segment(job),
            lambda result: self._show_result(job, result),
            message=f"Segmenting '{job.image_name}'...",
        )

    def cancel(self) -> None:
        self.runner.cancel()

    def _show_result(self, job: SegmentJob, result: SegmentResult) -> None:
        viewer = self._viewer
        scale, translate = job.scale, job.translate
        if len(scale) != result.labels.ndim:  # core chose other axes than we assumed
            scale, translate = scale[-result.labels.ndim :], translate[-result.labels.ndim :]
            if len(scale) != result.labels.ndim:
                scale = translate = None
        geo = {} if scale is None else {"scale": scale, "translate": translate}
        notes = list(job.notes) + list(result.notes)
        kept = []  # why a layer was not updated in place (the person's layer, edited, ...)
        if result.diameter is not None:
            zoomed = f": segmented zoomed {result.zoom:.2f}x" if result.zoom != 1 else ""
            notes.append(f"cells ~{result.diameter:.0f} px{zoomed}")
            if job.diameter == "auto":  # show what was measured, ready to adjust by hand
                self.diameter.value = round(float(result.diameter), 1)
        v = result.volume
        if v.get("method"):
            # in the image's pixels, as before the run (the core reports it in the zoomed copy's)
            a = v.get("anisotropy") and v["anisotropy"] / result.zoom
            source = {"voxel size": "voxel size from the layer scale",
                      "estimated": "estimated, taking the nuclei as about as deep as wide: set the layer's scale "
                                   "for flat ones"}.get(v.get("anisotropy_source"), v.get("anisotropy_source"))
            method = _METHOD_WORDS.get(v["method"], v["method"])
            if v.get("views"):
                method = f"{_VIEW_WORDS.get(v['views'], v['views'])}, {method}"
            notes.append(f"3D: {method}" + (f", Z step {a:.2g}x the pixel ({source})" if a else ""))
        if result.probabilities is not None:
            p = result.probabilities
            pgeo = {} if scale is None else {"scale": (1.0, *scale), "translate": (0.0, *translate)}
            w = add_or_update_layer(
                viewer,
                p,
                result_name(job.image_name, "probabilities", result.model_name),
                "image",
                writer="segment",
                colormap="magma",
                contrast_limits=(0.0, 1.0),
                blending="additive",
                visible=False,  # shown on request; the labels are what people look at first
                metadata={"class_names": result.class_names},
                **pgeo,
            )
            if w.note:
                kept.append(w.note)
        w = add_or_update_layer(
            viewer, result.labels, result_name(job.image_name, job.labels_what, result.model_name), "labels",
            writer="segment", **geo,
        )
        if w.note:
            kept.append(w.note)
        notes += kept
        viewer.layers.selection.active = w.layer
        t = result.tile_size
        tile = f"{t[0]}x{t[1]} px tiles" if isinstance(t, (tuple, list)) else f"{t} px tiles" if t else ""
        text = (
            (f"{result.num_objects} classes" if result.mode == "semantic" else f"{result.num_objects} cells")
            + f" in {result.seconds:.1f} s on {result.device}"
            + (f", {tile}" if tile else "")
            + f" → '{w.layer.name}'"
        )
        if notes:
            text += " (" + "; ".join(notes) + ")"
        set_status(self.status, text, "warning" if kept else "ok")
