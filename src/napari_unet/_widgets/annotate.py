"""The Annotate dock widget: label cells quickly, build a training set, train, look, repeat.

A thin skin over :mod:`napari_unet.annotate` (label-editing helpers that return
:class:`~napari_unet.annotate.Edit` objects) and :mod:`napari_unet.data` (training sets):

* **Labels layer** ``"<image> annotations"`` with cell-painting defaults: brush size,
  ``preserve_labels`` (painting never overwrites another cell), a fresh id selected after
  every stroke, an outline (contour) display switch.
* **Predict to annotate** fills empty pixels (or replaces what is inside the area) with
  the current model's cells -- in the field of view, or in the annotated region once one
  is drawn -- in a worker, so the person corrects rather than draws. Every
  change to the Labels layer -- prediction and helpers alike -- goes through
  ``Labels.data_setitem`` inside ``block_history``, so one Ctrl+Z undoes it.
* **Annotated region**: a Shapes layer ``"<image> annotated region"``; without one,
  "labelled cells plus a margin" is what training uses, and the *training area* overlay
  shows it -- unless *labels are complete* (the default for a mask read from a file): then
  the whole plane. Adding mostly-ignored images to the set is said in the status line.
* **Training set**: add the (image, labels, region) -- cropped to the region's bounding box
  -- for a 2D image, or each labelled plane of a stack; list, show, hold out, remove; save
  to and load from a folder.
* **Train on this** hands the set (minus held-out entries) to the Train widget and starts
  it; when training ends, the open image is segmented again with the new model (into
  ``"<image> labels (trained)"``) and a before/after score (AP@0.5 on the held-out entries)
  is shown here. A cancelled training changes nothing here.

Z stacks (a 3D image layer) are annotated as 3D cells by default ("3D cells" switch): the
brush paints a ball through neighbouring planes (napari's ``n_edit_dimensions = 3``, shaped
by the layer's scale), the helpers, Split and Merge act on the whole stack, and
predict-to-annotate segments every plane of the area as one volume (3D ids; the Z step from
the layer's scale, as in the Segment widget). With the switch off (stacks of unrelated
planes, time series) they act on the plane shown in the viewer. "Add to training set" adds
each labelled XY plane and, for 3D cells, XZ and YZ side views resampled along Z by the
layer's scale, as 3D training does (``volume.stack_planes``).
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton, Select, SpinBox
from napari.layers import Labels

from .._progress import Progress
from ..annotate import (
    Edit,
    bounding_box,
    count_cells,
    default_region,
    fill_from_prediction,
    fill_holes,
    merge_labels,
    next_free_id,
    region_from_shapes,
    region_score,
    remove_small_pieces,
    split_label,
)
from ..targets import DEFAULT_MARGIN
from ._common import (
    AP_HELP,
    META_KEY,
    add_or_update_layer,
    dock_of,
    header,
    is_ours,
    layer_data,
    load_model_cached,
    loaded_from_file,
    result_name,
    row,
    scroll_form,
    segment_at_model_size,
    set_status,
    show_error_in,
    status_kind,
    unique_name,
    wrapped,
)
from ._live import LiveSection
from ._sections import DevicePicker, ModelPicker, RunControls, layer_picker

if TYPE_CHECKING:  # pragma: no cover
    import napari

WRITER = "annotate"
#: context (pixels) read around a region when predicting inside it, so cells at the
#: region's edge are predicted as they would be in the whole image
CONTEXT = 32
AREA_REGION = "annotated region"
AREA_VIEW = "field of view"
AREA_PLANE = "whole image / plane"


def spatial_shape(layer: Any) -> tuple[int, ...]:
    """Shape of an image layer without its RGB axis (= the shape of its labels)."""
    shape = tuple(int(s) for s in layer_data(layer).shape)
    return shape[:-1] if layer.rgb else shape


def shapes_in_layer_grid(shapes: Any, like: Any) -> list[np.ndarray]:
    """Vertices of a Shapes layer in the pixel grid of the layer ``like`` (scale/translate)."""
    ndim = like.ndim
    s_sh, t_sh = np.asarray(shapes.scale, float), np.asarray(shapes.translate, float)
    s_l, t_l = np.asarray(like.scale, float), np.asarray(like.translate, float)
    out = []
    for verts in shapes.data:
        v = np.asarray(verts, float)
        d = min(v.shape[1], ndim)
        v = v[:, -d:]
        world = v * s_sh[-d:] + t_sh[-d:]
        out.append((world - t_l[-d:]) / s_l[-d:])
    return out


@dataclass
class PredictJob:
    """What the predict-to-annotate worker needs (read in the GUI thread)."""

    image: np.ndarray  # the crop of the plane (or of the stack: 3D cells) to predict (with context)
    axes: str
    model: Any  # path, None (bundled) or a UNet
    device: str
    plane: tuple[int, ...]  # () for a 2D layer and for 3D cells
    box: tuple[slice, ...]  # the crop inside the plane, or (all planes, rows, columns) of the stack
    region: np.ndarray | None  # plane- (or stack-) sized mask where to write (None: everywhere)
    replace: bool
    voxel_size: tuple[float, float, float] | None = None  # 3D cells: the layer's scale (None: estimated)


def _resolve_model(spec: Any) -> Any:
    """A model to run: a copy of a UNet, or the (cached) model file / bundled model."""
    from ..model import UNet, clone_model

    if isinstance(spec, UNet):
        return clone_model(spec).eval()  # never move/modify the Train widget's own model
    return load_model_cached(spec)


def run_predict(job: PredictJob) -> Generator[Progress, None, np.ndarray]:
    """Worker: segment the crop with the model (at the model's cell size); returns its labels."""
    yield Progress(0, 0, "Loading the model...")
    model = _resolve_model(job.model)
    kwargs = {"voxel_size": job.voxel_size} if "Z" in job.axes else {}
    labels = yield from segment_at_model_size(job.image, model, device=job.device, axes=job.axes, **kwargs)
    return np.asarray(labels)


@dataclass
class ScoreJob:
    """Score entries (and optionally segment the open image) with one model."""

    model: Any
    device: str
    entries: list[Any]  # TrainingSample
    image: Any = None  # open image to segment afterwards (or None)
    image_axes: str | None = None


@dataclass
class ScoreResult:
    score: float | None
    per_entry: list[float] = field(default_factory=list)
    labels: np.ndarray | None = None


def run_scores(job: ScoreJob) -> Generator[Progress, None, ScoreResult]:
    """Worker: AP@0.5 of the model on each entry (inside its region), then the open image."""
    yield Progress(0, 0, "Loading the model...")
    model = _resolve_model(job.model)
    scores = []
    for i, s in enumerate(job.entries):
        yield Progress(i, len(job.entries) + (job.image is not None), f"Scoring '{s.name}'...")
        axes = "YXS" if np.asarray(s.image).ndim == 3 else "YX"
        pred = yield from segment_at_model_size(np.asarray(s.image), model, device=job.device, axes=axes)
        scores.append(region_score(s.labels, np.asarray(pred), s.region))
    labels = None
    if job.image is not None:
        yield Progress(len(job.entries), len(job.entries) + 1, "Segmenting the open image with the new model...")
        labels = np.asarray(
            (yield from segment_at_model_size(job.image, model, device=job.device, axes=job.image_axes))
        )
    score = float(np.mean(scores)) if scores else None
    return ScoreResult(score, scores, labels)


def _improved(model: Any) -> bool:
    """False when the training run that made ``model`` did not improve on its starting model."""
    history = model.meta.get("history") if model is not None else None
    return not history or history[-1].get("improved") is not False


def _painted_max(event: Any) -> int:
    """Largest label value written by a paint event's history atoms (0 if unknown)."""
    top = 0
    for atom in getattr(event, "value", None) or []:
        value = getattr(atom, "new_value", None)
        if value is None and isinstance(atom, tuple) and len(atom) == 3:
            value = atom[2]
        if value is not None and np.size(value):
            top = max(top, int(np.max(value)))
    return top


# -- the widget's sections ----------------------------------------------------------------
#
# Each section below makes the rows of one part of the Annotate form (``_<name>_section``),
# wires them (``_connect_<name>``) and holds what they do. They are mixins of
# :class:`AnnotateWidget`: the form is one labelled container (its labels line up), and the
# sections read each other's values through the widget (e.g. prediction reads the layers).


class _LayersSection:
    """The image and its annotation layer: pickers, a new layer with cell-painting
    defaults, brush and display settings, 3D cells, and where the viewer is."""

    def _layers_section(self) -> list[Any]:
        self._watched: list[Any] = []  # Labels layers whose paint events we follow
        self.image = layer_picker("Image", "Image", "The image you annotate (2D, or a stack: one plane at a time)")
        self.annotations = layer_picker("Labels", "Labels", "Where you paint cells, one id each", nullable=True)
        self.new_labels_button = PushButton(text="New annotation layer",
                                            tooltip="Add '<image> annotations', an empty Labels layer with "
                                            "painting defaults (or pick it if it exists)")
        self.brush_size = SpinBox(label="Brush (px)", value=8, min=1, max=200,
                                  tooltip="Brush size of the annotation layer")
        self.contour = CheckBox(text="outlines only", value=False,
                                tooltip="Show cells as outlines, to see the image beneath")
        self.cells_3d = CheckBox(text="3D cells (Z stack)", value=False,
                                 tooltip="On: the brush paints through neighbouring planes, the helpers, Split "
                                 "and Merge act on the whole stack and predictions are 3D cells. Off: one plane "
                                 "at a time (stacks of unrelated planes). On by default for a 3D image")
        self.auto_next = CheckBox(text="new id after each stroke", value=True,
                                  tooltip="After every brush stroke or fill, select a fresh id so the next "
                                  "cell gets its own (pick an id with the color picker to extend a cell)")
        return [self.image, self.annotations, self.new_labels_button, self.brush_size,
                row(self.contour, self.auto_next), self.cells_3d]

    def _connect_layers(self) -> None:
        self.new_labels_button.changed.connect(self.new_labels_layer)
        self.brush_size.changed.connect(self._apply_layer_settings)
        self.contour.changed.connect(self._apply_layer_settings)
        self.cells_3d.changed.connect(self._apply_layer_settings)
        self.annotations.changed.connect(self._labels_changed)
        self.image.changed.connect(self._image_changed)

    def _image_changed(self, *_: Any) -> None:
        from .segment import layer_axes

        layer = self.image.value
        # a Z stack is annotated as 3D cells (as the Segment widget segments it), a plane otherwise
        stack = layer is not None and layer_axes(layer, "auto") == "ZYX"
        self.cells_3d.visible = stack
        self.cells_3d.value = stack
        self._pick_annotation_layer()
        if layer is None:
            set_status(self.status, "Open an image (File ▸ Open Sample ▸ Synthetic nuclei for a demo)")

    def _pick_annotation_layer(self) -> None:
        """Select '<image> annotations' and '<image> annotated region' when they exist."""
        image = self.image.value
        if image is None:
            return
        layers = self._viewer.layers
        name = f"{image.name} annotations"
        if name in layers and self.annotations.value is not layers[name]:
            self.annotations.value = layers[name]
        rname = f"{image.name} annotated region"
        if rname in layers and self.region.value is None:
            self.region.value = layers[rname]

    def _labels_changed(self, *_: Any) -> None:
        layer = self.annotations.value
        if layer is not None:
            self._watch(layer)
            self._sync_edit_dims(layer)
            # a mask read from a file (or the sample's truth) labels every cell
            self.complete.value = loaded_from_file(layer)
        self.update_area_overlay()

    def _watch(self, layer: Any) -> None:
        if any(w is layer for w in self._watched):
            return
        self._watched.append(layer)
        layer.events.paint.connect(self._on_paint)

    def _on_paint(self, event: Any) -> None:
        layer = event.source
        if layer is not self.annotations.value:
            return
        if status_kind(self.status) == "error":  # an old error must not stay while painting
            set_status(self.status, f"Painting in '{layer.name}'")
        if self.auto_next.value:
            try:
                # napari records a brush stroke (and emits this event) before it writes the
                # pixels, so the stroke's own value is taken from the event too
                layer.selected_label = max(next_free_id(layer.data), _painted_max(event) + 1)
            except ValueError as exc:
                show_error_in(self.status, exc)
        if self.show_area.value:
            from qtpy.QtCore import QTimer

            # after napari has written the stroke's pixels (see above)
            QTimer.singleShot(0, self.update_area_overlay)

    def _apply_layer_settings(self, *_: Any) -> None:
        layer = self.annotations.value
        if layer is None:
            return
        layer.brush_size = int(self.brush_size.value)
        layer.contour = 2 if self.contour.value else 0
        self._sync_edit_dims(layer)

    def _sync_edit_dims(self, layer: Any) -> None:
        """3D cells: the brush paints through planes (napari's ``n_edit_dimensions``)."""
        layer.n_edit_dimensions = 3 if self.in_3d(layer) else 2

    def new_labels_layer(self, *_: Any) -> Any:
        """Create (or pick) '<image> annotations' with cell-painting defaults."""
        image = self.image.value
        if image is None:
            show_error_in(self.status, "No image layer: open an image first")
            return None
        name = f"{image.name} annotations"
        layers = self._viewer.layers
        if name in layers and isinstance(layers[name], Labels):
            layer = layers[name]
        else:
            shape = spatial_shape(image)
            lead = len(image.scale) - len(shape)
            layer = self._viewer.add_labels(
                np.zeros(shape, np.int32), name=name, opacity=0.6,
                scale=tuple(image.scale)[lead:], translate=tuple(image.translate)[lead:],
            )
            layer.metadata[META_KEY] = {"writer": WRITER, "role": "annotations"}
        self.reset_choices()  # also when the widget is not docked (napari would call it)
        self.annotations.value = layer
        layer.preserve_labels = True  # painting a cell never eats into its neighbours
        layer.selected_label = next_free_id(layer.data)
        self._apply_layer_settings()
        self._watch(layer)
        layer.mode = "paint"
        self._viewer.layers.selection.active = layer
        set_status(self.status, f"Paint cells in '{layer.name}' (one id each; a new id is picked after every "
                   "stroke). Or press 'Predict to annotate' and correct")
        return layer

    def _labels_or_error(self) -> Any:
        layer = self.annotations.value
        if layer is None:
            show_error_in(self.status, "No annotation layer: press 'New annotation layer' (or pick a Labels layer)")
        return layer

    def in_3d(self, layer: Any) -> bool:
        """Whether edits of ``layer`` act on 3D cells (a (Z, Y, X) layer with "3D cells" on)."""
        return bool(self.cells_3d.value) and layer.ndim == 3

    def edit_plane(self, layer: Any) -> tuple[int, ...]:
        """Leading indices of what the helpers edit: () for the whole layer (2D, or 3D cells),
        else the plane shown (:meth:`current_plane`)."""
        return () if self.in_3d(layer) else self.current_plane(layer)

    def current_plane(self, layer: Any) -> tuple[int, ...]:
        """Leading indices of the plane shown for ``layer`` (() for a 2D layer).

        Raises:
            ValueError: a stack seen in 3D (annotation works plane by plane).
        """
        if layer.ndim <= 2:
            return ()
        if self._viewer.dims.ndisplay != 2:
            raise ValueError("Switch the viewer to 2D (annotation works one plane at a time)")
        point = np.asarray(layer.world_to_data(self._viewer.dims.point), float)
        lead = np.round(point[: layer.ndim - 2]).astype(int)
        return tuple(int(np.clip(p, 0, n - 1)) for p, n in zip(lead, layer.data.shape[:-2]))

    def view_box(self, layer: Any) -> tuple[slice, slice]:
        """The (rows, columns) of ``layer``'s pixels visible in the canvas."""
        scene = getattr(self._viewer, "scene", None)  # napari >= 0.9 (viewer.camera is deprecated)
        cam = scene.camera if scene is not None else self._viewer.camera
        h, w = self._viewer.canvas.size
        cy, cx = cam.center[-2], cam.center[-1]
        half = np.array([h, w], float) / (2.0 * cam.zoom)
        world = np.array(self._viewer.dims.point, float)
        lo_w, hi_w = world.copy(), world.copy()
        lo_w[-2:] = (cy - half[0], cx - half[1])
        hi_w[-2:] = (cy + half[0], cx + half[1])
        lo = np.asarray(layer.world_to_data(lo_w))[-2:]
        hi = np.asarray(layer.world_to_data(hi_w))[-2:]
        H, W = layer.data.shape[-2:]
        r0, c0 = (int(np.clip(np.floor(min(a, b) + 0.5), 0, n)) for a, b, n in zip(lo, hi, (H, W)))
        r1, c1 = (int(np.clip(np.ceil(max(a, b) + 0.5), 0, n)) for a, b, n in zip(lo, hi, (H, W)))
        if r1 <= r0 or c1 <= c0:
            raise ValueError("The image is not in view: pan to the cells you want to annotate")
        return slice(r0, r1), slice(c0, c1)


class _RegionSection:
    """The annotated region (a Shapes layer) and the training-area overlay: what training
    learns from when no region is drawn."""

    def _region_section(self) -> list[Any]:
        self.region = layer_picker(
            "Shapes", "Region", "Shapes layer (rectangles/polygons) marking where the labels are complete. "
            "None: labelled cells plus a margin", nullable=True, empty=True,
        )
        self.new_region_button = PushButton(text="Draw region", tooltip="Add '<image> annotated region' and "
                                            "start drawing rectangles (polygon tool also works)")
        self.margin = SpinBox(label="Margin (px)", value=DEFAULT_MARGIN, min=0, max=500,
                              tooltip="Without a region: how far around labelled cells the "
                              "background counts as annotated")
        self.show_area = CheckBox(text="show training area", value=True,
                                  tooltip="Overlay the pixels training will learn from (the region, or "
                                  "labelled cells plus the margin); the rest is ignored")
        return [self.region, self.new_region_button, self.margin, self.show_area]

    def _connect_region(self) -> None:
        self.new_region_button.changed.connect(self.new_region_layer)
        self.region.changed.connect(self.update_area_overlay)
        self.margin.changed.connect(self.update_area_overlay)
        self.show_area.changed.connect(self.update_area_overlay)
        self.region.changed.connect(self._region_changed)

    def _region_changed(self, *_: Any) -> None:
        """Predict where the person marked the area, once there is one to predict in."""
        if self.region.value is not None:
            self.where.value = AREA_REGION
        elif self.where.value == AREA_REGION:
            self.where.value = AREA_VIEW

    def new_region_layer(self, *_: Any) -> Any:
        """Create (or pick) '<image> annotated region' and start drawing rectangles."""
        labels = self._labels_or_error()
        if labels is None:
            return None
        image = self.image.value
        name = f"{image.name if image is not None else labels.name} annotated region"
        layers = self._viewer.layers
        if name in layers:
            layer = layers[name]
        else:
            layer = self._viewer.add_shapes(
                name=name, ndim=labels.ndim, edge_color="yellow", face_color="transparent",
                edge_width=2, opacity=1.0, scale=labels.scale, translate=labels.translate,
            )
            layer.metadata[META_KEY] = {"writer": WRITER, "role": "region"}
            layer.events.data.connect(self.update_area_overlay)
        self.reset_choices()
        self.region.value = layer
        layer.mode = "add_rectangle"
        self._viewer.layers.selection.active = layer
        set_status(self.status, "Draw rectangles (or polygons) around the areas where every cell is labelled")
        return layer

    def region_mask(self, plane: tuple[int, ...] | None = None) -> np.ndarray | None:
        """The explicit annotated region (None without a region layer or shapes).

        Args:
            plane: a plane of a stack (2D mask), or None for the whole labels shape.
        """
        labels, shapes = self.annotations.value, self.region.value
        if labels is None or shapes is None or len(shapes.data) == 0:
            return None
        verts = shapes_in_layer_grid(shapes, labels)
        return region_from_shapes(verts, list(shapes.shape_type), labels.data.shape, plane=plane)

    def training_area(self, plane: tuple[int, ...] = ()) -> np.ndarray:
        """What training learns from on this plane: the region; the whole plane when the
        labels are complete; else the labelled cells plus the margin."""
        labels = self.annotations.value
        region = self.region_mask(plane if plane else None)
        if region is not None:
            return region
        if self.complete.value:
            return np.ones(labels.data.shape[-2:], bool)
        return default_region(np.asarray(labels.data[plane]), int(self.margin.value))

    def update_area_overlay(self, *_: Any) -> None:
        """Show the assumed training area (labelled cells + margin) as a translucent overlay.

        Hidden when the switch is off, and when a region layer marks the area explicitly.
        """
        labels = self.annotations.value
        if labels is None:
            return
        name = f"{labels.name} training area"
        layers = self._viewer.layers
        if name in layers and not is_ours(layers[name]):
            return  # the person's own layer of that name: never touched
        if not self.show_area.value:
            if name in layers:
                layers[name].visible = False
            return
        try:
            has_region = self.region_mask() is not None or bool(self.complete.value)
            # an explicit region shows itself (its outline), complete labels cover everything:
            # only the assumed area needs showing
            region = None if has_region else default_region(np.asarray(labels.data), int(self.margin.value))
        except ValueError as exc:
            show_error_in(self.status, exc)
            return
        if region is None:
            if name in layers:
                layers[name].visible = False
            return
        if name in layers:
            layer = layers[name]
            layer.data = region.astype(np.uint8)
            layer.visible = True
        else:
            active = layers.selection.active
            layer = self._viewer.add_image(
                region.astype(np.uint8), name=name, colormap="cyan", blending="additive", opacity=0.2,
                contrast_limits=(0, 1), scale=labels.scale, translate=labels.translate,
            )
            layer.metadata[META_KEY] = {"writer": WRITER, "role": "training area"}
            # keep the overlay under the labels, and keep painting on the labels
            layers.move(layers.index(layer), layers.index(labels))
            if active is not None:
                layers.selection.active = active


class _PredictSection:
    """Predict to annotate: the model, the device, where to predict and whether to
    replace labels there; Predict / Cancel."""

    TRAINED = "Train widget's model"

    def _predict_section(self, controls: RunControls) -> list[Any]:
        self.model = ModelPicker()
        self.model.source.choices = [*self.model.source.choices, self.TRAINED]
        self.device = DevicePicker()
        self.where = ComboBox(label="Predict in", choices=[AREA_REGION, AREA_VIEW, AREA_PLANE], value=AREA_VIEW,
                              tooltip="Where to fill in predicted cells: inside the annotated region, the "
                              "part of the image shown in the viewer, or everywhere (the annotated "
                              "region is chosen once you draw one)")
        self.replace = CheckBox(text="replace my labels there", value=False,
                                tooltip="Off: existing labels are kept and only empty pixels are filled. "
                                "On: the prediction replaces the labels in that area (undo with Ctrl+Z)")
        self.predict_button, self.cancel_button = controls.run_button, controls.cancel_button
        return [*self.model.widgets, *self.device.widgets, self.where, self.replace, controls.buttons]

    def model_spec(self) -> Any:
        """The model to predict with: a path, None (bundled) or the Train widget's UNet."""
        if self.model.source.value == self.TRAINED:
            train = self._train_widget
            model = getattr(train, "trained_model", None) if train is not None else None
            if model is None:
                raise ValueError("The Train widget has no trained model yet: train first, or choose another model")
            return model
        if self.model.source.value.endswith("(not installed)"):
            raise ValueError("The bundled model is not installed: choose a model file")
        return self.model.path

    def _make_predict_job(self) -> PredictJob:
        image, labels = self.image.value, self.annotations.value
        if image is None:
            raise ValueError("No image layer: open an image first")
        if labels is None:
            # the prediction needs a layer to go to; what is made here goes again if refused
            before = list(self._viewer.layers)
            labels = self.new_labels_layer()
            try:
                return self._predict_job(image, labels)
            except ValueError:
                for layer in [la for la in self._viewer.layers if la not in before]:
                    self._viewer.layers.remove(layer)
                raise
        return self._predict_job(image, labels)

    def _predict_job(self, image: Any, labels: Any) -> PredictJob:
        from .segment import layer_axes, layer_voxel_size

        if spatial_shape(image) != tuple(labels.data.shape):
            raise ValueError(f"Labels '{labels.name}' {tuple(labels.data.shape)} do not match image "
                             f"'{image.name}' {spatial_shape(image)}: pick its annotation layer")
        in_3d = self.in_3d(labels)
        # 3D cells: the area is a column through every plane of the stack
        plane = () if in_3d else self.current_plane(labels)
        H, W = labels.data.shape[-2:]
        lead = labels.data.shape[:1] if in_3d else ()
        region = None
        if self.where.value == AREA_REGION:
            region = self.region_mask(plane or None)
            if region is None:
                raise ValueError("No annotated region: press 'Draw region' and draw one, or predict in the "
                                 "field of view")
            if not region.any():
                raise ValueError("The annotated region is empty on this plane: draw a rectangle here")
            if in_3d:  # a rectangle drawn on one plane marks its column through the stack
                region = np.broadcast_to(region.any(axis=0), region.shape)
            box = bounding_box(region[0] if in_3d else region)
        elif self.where.value == AREA_VIEW:
            if self._viewer.dims.ndisplay != 2:
                raise ValueError("Switch the viewer to 2D to predict in the field of view (or predict in the "
                                 "annotated region or the whole stack)")
            box = self.view_box(labels)
            region = np.zeros(lead + (H, W), bool)
            region[(Ellipsis, *box)] = True
        else:
            box = (slice(0, H), slice(0, W))
        assert box is not None
        ctx = tuple(slice(max(s.start - CONTEXT, 0), min(s.stop + CONTEXT, n)) for s, n in zip(box, (H, W)))
        ctx = tuple(slice(0, n) for n in lead) + ctx
        data = layer_data(image)
        axes = layer_axes(image, "auto")
        if not in_3d:
            axes = axes[-3 if image.rgb else -2:]
        crop = np.asarray(data[plane + ctx])
        return PredictJob(image=crop, axes=axes, model=self.model_spec(), device=self.device.value,
                          plane=plane, box=ctx, region=region, replace=bool(self.replace.value),
                          voxel_size=layer_voxel_size(image, axes) if in_3d else None)

    def predict(self, *_: Any) -> Any:
        """Fill the annotation layer from the model (in a worker); returns the worker."""
        job = self.runner.make_job(self._make_predict_job)
        if job is None:
            return None
        return self.runner.start(lambda: run_predict(job), lambda pred: self._predicted(job, pred),
                                 message="Predicting cells...")

    def _predicted(self, job: PredictJob, pred: np.ndarray) -> None:
        layer = self.annotations.value
        if layer is None:
            return
        # read the labels now (the person may have painted while the model ran)
        current = np.asarray(layer.data[job.plane + job.box])
        region = None if job.region is None else job.region[job.box]
        edit = fill_from_prediction(current, pred, region, replace=job.replace)
        # new ids come after the crop's own: move them past every id of the layer, so a
        # predicted cell never takes the id of a cell outside the crop
        first, values = next_free_id(current), np.array(edit.values)
        values[values >= first] += next_free_id(layer.data) - first
        edit = Edit(tuple(i + s.start for i, s in zip(edit.indices, job.box)), values, edit.message)
        if self.apply_edit(layer, edit, job.plane):
            layer.selected_label = next_free_id(layer.data)
            self.update_area_overlay()


class _HelpersSection:
    """Label-editing helpers on the current plane (or the 3D stack), each one undoable
    step: next free id, remove small pieces, fill holes, split along a cut line, merge."""

    def _helpers_section(self) -> list[Any]:
        self.next_id_button = PushButton(text="Next free id", tooltip="Select an id no cell uses yet")
        self.min_size = SpinBox(label="Min. piece (px)", value=20, min=1, max=10**6,
                                tooltip="Pieces of cells smaller than this are removed")
        self.remove_small_button = PushButton(text="Remove small pieces",
                                              tooltip="Erase stray bits and tiny cells on this plane (undoable)")
        self.fill_holes_button = PushButton(text="Fill holes", tooltip="Fill background enclosed by one cell")
        self.cut_line_button = PushButton(text="Draw cut line", tooltip="Draw a line across a cell in "
                                          "'<image> cut lines', then press Split")
        self.split_button = PushButton(text="Split", tooltip="Split the cell under the last cut line in two")
        self.merge_a = SpinBox(label="Merge id", value=0, min=0, max=2**31 - 1,
                               tooltip="The id of the first cell (hover over a cell in the viewer: napari "
                               "shows its id in the status bar); the merged cell keeps this id")
        self.merge_b = SpinBox(label="with id", value=0, min=0, max=2**31 - 1,
                               tooltip="The id of the cell to join to the first one")
        self.merge_button = PushButton(text="Merge", tooltip="Give both cells the first id (undoable)")
        return [row(self.next_id_button, self.fill_holes_button), self.min_size, self.remove_small_button,
                row(self.cut_line_button, self.split_button), self.merge_a, self.merge_b, self.merge_button]

    def _connect_helpers(self) -> None:
        self.next_id_button.changed.connect(self.select_next_id)
        self.remove_small_button.changed.connect(self.remove_small)
        self.fill_holes_button.changed.connect(self.fill_holes)
        self.cut_line_button.changed.connect(self.new_cut_line_layer)
        self.split_button.changed.connect(self.split)
        self.merge_button.changed.connect(self.merge)

    def apply_edit(self, layer: Any, edit: Edit, plane: tuple[int, ...] = ()) -> bool:
        """Write an edit into the Labels layer as ONE undoable step; False when empty."""
        if not edit:
            set_status(self.status, f"Nothing to change ({edit.message})" if edit.message else "Nothing to change")
            return False
        e = edit.in_plane(plane) if plane else edit
        values = np.asarray(e.values).astype(layer.data.dtype, copy=False)
        with layer.block_history():  # one Ctrl+Z undoes the whole edit
            layer.data_setitem(e.indices, values)
        set_status(self.status, (edit.message[:1].upper() + edit.message[1:]) + " (Ctrl+Z to undo)")
        return True

    def _plane_edit(self, make: Any) -> bool:
        """Run ``make(plane_labels) -> Edit`` on the current plane and apply it."""
        layer = self._labels_or_error()
        if layer is None:
            return False
        try:
            plane = self.edit_plane(layer)
            edit = make(np.asarray(layer.data[plane]))
            return self.apply_edit(layer, edit, plane)
        except ValueError as exc:
            show_error_in(self.status, exc)
            return False

    def select_next_id(self, *_: Any) -> int | None:
        layer = self._labels_or_error()
        if layer is None:
            return None
        try:
            layer.selected_label = next_free_id(layer.data)
        except ValueError as exc:
            show_error_in(self.status, exc)
            return None
        set_status(self.status, f"Selected id {layer.selected_label} (not used by any cell)")
        return int(layer.selected_label)

    def remove_small(self, *_: Any) -> bool:
        n = int(self.min_size.value)
        return self._plane_edit(lambda lab: remove_small_pieces(lab, n))

    def fill_holes(self, *_: Any) -> bool:
        return self._plane_edit(fill_holes)

    def merge(self, *_: Any) -> bool:
        a, b = int(self.merge_a.value), int(self.merge_b.value)
        return self._plane_edit(lambda lab: merge_labels(lab, [a, b], into=a))

    def new_cut_line_layer(self, *_: Any) -> Any:
        """Create (or pick) '<image> cut lines' and start drawing a line."""
        labels = self._labels_or_error()
        if labels is None:
            return None
        name = f"{labels.name} cut lines"
        layers = self._viewer.layers
        if name in layers:
            layer = layers[name]
        else:
            layer = self._viewer.add_shapes(name=name, ndim=labels.ndim, edge_color="red", edge_width=1,
                                            scale=labels.scale, translate=labels.translate)
            layer.metadata[META_KEY] = {"writer": WRITER, "role": "cut lines"}
        layer.mode = "add_line"
        self._viewer.layers.selection.active = layer
        set_status(self.status, "Draw a line right across the cell to split, then press Split")
        return layer

    def split(self, *_: Any) -> bool:
        """Split the cell under the last line of '<labels> cut lines' along it."""
        layer = self._labels_or_error()
        if layer is None:
            return False
        name = f"{layer.name} cut lines"
        lines = self._viewer.layers[name] if name in self._viewer.layers else None
        if lines is None or not any(t in ("line", "path", "polyline") for t in lines.shape_type):
            show_error_in(self.status, "No cut line: press 'Draw cut line' and draw a line across the cell")
            return False
        idx = max(i for i, t in enumerate(lines.shape_type) if t in ("line", "path", "polyline"))
        verts = shapes_in_layer_grid(lines, layer)[idx]
        try:
            plane = self.edit_plane(layer)  # 3D cells: the line cuts the cell through all its planes
            if plane and verts.shape[1] == layer.ndim:
                # a line drawn on a stack lies on one plane: split there
                plane = tuple(int(np.clip(round(float(x)), 0, n - 1)) for x, n in zip(verts[0, :-2], layer.data.shape[:-2]))
            edit = split_label(np.asarray(layer.data[plane]), verts[:, -2:])
            done = self.apply_edit(layer, edit, plane)
        except ValueError as exc:
            show_error_in(self.status, exc)
            return False
        if done:
            lines.selected_data = {idx}
            lines.remove_selected()  # the line did its job; leave the layer empty for the next
        return done


class _TrainingSetSection:
    """The training set: add the annotated planes (cropped to the training area), list,
    show, hold out, remove; save to and load from a folder."""

    def _set_section(self) -> list[Any]:
        from ..data import TrainingSet

        self.training_set = TrainingSet()
        self.held_out: set[str] = set()  # names of entries kept out of training, for scoring
        self.complete = CheckBox(
            text="labels are complete (unlabelled = background)", value=False,
            tooltip="On: every cell of the image (or plane) is labelled, so unlabelled pixels are taught as "
            "background. Off (sparse labels): without a region only the labelled cells plus the margin "
            "are learnt from. A region, when drawn, decides instead. On by default for labels read "
            "from a file",
        )
        self.crop = CheckBox(text="crop to region", value=True,
                             tooltip="Store only the bounding box of the annotated area (smaller, faster)")
        self.add_button = PushButton(text="Add to training set",
                                     tooltip="Add the image, labels and region (each labelled plane of a stack)")
        self.entries = Select(label="Set", choices=[], tooltip="Entries: name, size, cells")
        self.entries.native.setMaximumHeight(90)
        self.show_button = PushButton(text="Show", tooltip="Add the selected entries as layers")
        self.holdout_button = PushButton(text="Hold out", tooltip="Keep the selected entries out of training and "
                                         "score the model on them (before/after); press again to include")
        self.remove_button = PushButton(text="Remove", tooltip="Remove the selected entries")
        self.folder = FileEdit(label="Folder", mode="d", tooltip="Training-set folder (TIFF pairs + index.json)")
        self.save_button = PushButton(text="Save set", tooltip="Write the set to the folder")
        self.load_button = PushButton(text="Load set", tooltip="Read a set from the folder (replaces this one)")
        return [self.complete, row(self.crop, self.add_button), self.entries,
                row(self.show_button, self.holdout_button, self.remove_button), self.folder,
                row(self.save_button, self.load_button)]

    def _connect_set(self) -> None:
        self.complete.changed.connect(self.update_area_overlay)
        self.add_button.changed.connect(self.add_to_set)
        self.show_button.changed.connect(self.show_entries)
        self.holdout_button.changed.connect(self.toggle_held_out)
        self.remove_button.changed.connect(self.remove_entries)
        self.save_button.changed.connect(self._save_clicked)
        self.load_button.changed.connect(self._load_clicked)

    def add_to_set(self, *_: Any) -> int:
        """Add the image + labels + training area (each labelled plane, and the side views of
        3D cells); returns how many."""
        image, labels = self.image.value, self.annotations.value
        try:
            if image is None or labels is None:
                raise ValueError("Choose an image and its annotation layer first")
            if spatial_shape(image) != tuple(labels.data.shape):
                raise ValueError(f"Labels '{labels.name}' {tuple(labels.data.shape)} do not match image "
                                 f"'{image.name}' {spatial_shape(image)}")
            data = layer_data(image)
            lab_all = labels.data
            planes = list(np.ndindex(*lab_all.shape[:-2])) if lab_all.ndim > 2 else [()]
            has_region = self.region_mask() is not None
            # (image, labels, training area, name) of every whole plane that may go in
            planes = [(data[plane], lab_all[plane], self.training_area(plane),
                       image.name + (" z=" + ",".join(map(str, plane)) if plane else "")) for plane in planes]
            if self.in_3d(labels):
                planes += self._side_views(image, planes)
            added, full = [], 0
            for img, lab, region, name in planes:
                lab = np.asarray(lab)
                if not region.any() or (not has_region and not lab.any()):
                    continue  # nothing annotated on this plane
                img = np.asarray(img)
                full += region.size
                if self.crop.value:
                    ys, xs = bounding_box(region)
                    if (ys.stop - ys.start, xs.stop - xs.start) != tuple(lab.shape):
                        name += f" [{ys.start}:{ys.stop}, {xs.start}:{xs.stop}]"
                    img, lab, region = img[ys, xs], lab[ys, xs], region[ys, xs]
                added.append((np.array(img, copy=True), np.array(lab, copy=True), region.copy(),
                              unique_name(name, {s.name for s in self.training_set.samples})))
            if not added:
                raise ValueError("Nothing annotated: paint some cells (or draw a region around truly empty "
                                 "background) first")
            for img, lab, region, name in added:
                self.training_set.add(img, lab, region, name=name)
        except ValueError as exc:
            show_error_in(self.status, exc)
            return 0
        self._refresh_entries()
        cells = sum(count_cells(a[1]) for a in added)
        text = (f"Added {len(added)} entr{'ies' if len(added) != 1 else 'y'} ({cells} cells); "
                f"the set has {len(self.training_set.samples)}")
        share = sum(int(np.count_nonzero(a[2])) for a in added) / max(1, full)
        if not has_region and not self.complete.value and share < 0.5:
            # sparse labels: say how little of the image teaches anything
            set_status(self.status, f"{text}. Only {share:.0%} of the image is learnt from (labelled cells plus "
                       f"{int(self.margin.value)} px); if every cell is labelled, tick 'labels are complete'",
                       "warning")
        else:
            set_status(self.status, text)
        return len(added)

    @staticmethod
    def _side_views(image: Any, xy: list[tuple]) -> list[tuple]:
        """XZ and YZ planes of a 3D annotation, resampled along Z by the layer's scale (or the
        cells' estimated Z step), as 3D training uses (``volume.stack_planes``)."""
        from ..volume import stack_planes
        from .segment import layer_voxel_size

        stack, lab, area = (np.stack([np.asarray(p[k]) for p in xy]) for k in range(3))
        ims, lbs, rgs = stack_planes(stack, lab, area, layer_voxel_size(image, "ZYX"))
        return [(i, lb, r, f"{image.name} side view {j + 1}")
                for j, (i, lb, r) in enumerate(zip(ims[len(xy):], lbs[len(xy):], rgs[len(xy):]))]

    def entry_text(self, i: int) -> str:
        s = self.training_set.samples[i]
        shape = "x".join(str(n) for n in np.asarray(s.labels).shape)
        held = " · held out" if s.name in self.held_out else ""
        return f"{i + 1}. {count_cells(s.labels)} cells, {shape}{held} — {s.name}"

    def _refresh_entries(self) -> None:
        self.entries.choices = [self.entry_text(i) for i in range(len(self.training_set.samples))]
        self.entries.value = []
        n = len(self.training_set.samples)
        for b in (self.show_button, self.holdout_button, self.remove_button, self.save_button, self.train_button):
            b.enabled = n > 0

    def selected_entries(self) -> list[int]:
        texts = [self.entry_text(i) for i in range(len(self.training_set.samples))]
        return sorted(texts.index(v) for v in self.entries.value if v in texts)

    def show_entries(self, *_: Any) -> None:
        """Add the selected entries (all, when none is selected) as layers."""
        idx = self.selected_entries() or list(range(len(self.training_set.samples)))
        for i in idx:
            s = self.training_set.samples[i]
            rgb = np.asarray(s.image).ndim == 3 and np.asarray(s.image).shape[-1] in (3, 4)
            add_or_update_layer(self._viewer, np.asarray(s.image), f"set: {s.name}", "image", writer=WRITER, rgb=rgb)
            w = add_or_update_layer(self._viewer, np.asarray(s.labels), f"set: {s.name} labels", "labels",
                                    writer=WRITER, opacity=0.5)
            if s.region is not None and not np.asarray(s.region).all():
                w.layer.contour = 0
        set_status(self.status, f"Showing {len(idx)} entr{'ies' if len(idx) != 1 else 'y'} of the set")

    def toggle_held_out(self, *_: Any) -> None:
        """Hold the selected entries out of training (for the before/after score), or back in."""
        idx = self.selected_entries()
        if not idx:
            show_error_in(self.status, "Select entries in the list first")
            return
        for i in idx:
            name = self.training_set.samples[i].name
            self.held_out.symmetric_difference_update({name})
        self._refresh_entries()
        set_status(self.status, f"{len(self.held_out)} entr{'ies' if len(self.held_out) != 1 else 'y'} held out "
                   "for scoring")

    def remove_entries(self, *_: Any) -> None:
        idx = self.selected_entries()
        if not idx:
            show_error_in(self.status, "Select entries in the list first")
            return
        for i in reversed(idx):
            self.held_out.discard(self.training_set.samples[i].name)
            self.training_set.remove(i)
        self._refresh_entries()
        set_status(self.status, f"Removed {len(idx)}; the set has {len(self.training_set.samples)}")

    def _folder(self) -> Path:
        value = self.folder.value
        if value is None or str(value) in ("", "."):
            raise ValueError("No folder chosen: pick a training-set folder first")
        return Path(value)

    def save_set(self, folder: str | Path | None = None) -> Path | None:
        """Write the set to ``folder`` (default: the Folder field)."""
        try:
            path = Path(folder) if folder is not None else self._folder()
            if not self.training_set.samples:
                raise ValueError("The training set is empty: add annotated images first")
            self.training_set.save(path)
        except (ValueError, OSError) as exc:
            show_error_in(self.status, exc)
            return None
        set_status(self.status, f"Saved {len(self.training_set.samples)} entries to {path}")
        return path

    def load_set(self, folder: str | Path | None = None) -> bool:
        """Read a set from ``folder``; on error the current set is kept and the reason shown."""
        from ..data import TrainingSet

        try:
            path = Path(folder) if folder is not None else self._folder()
            # broken samples are skipped and listed, so one bad file never loses the rest
            ts = TrainingSet.load(path, strict=False)
        except (ValueError, OSError) as exc:
            show_error_in(self.status, exc)  # the set in memory is kept
            return False
        self.training_set = ts
        self.held_out = {n for n in self.held_out if any(s.name == n for s in ts.samples)}
        self._refresh_entries()
        if ts.errors:
            show_error_in(self.status, f"Loaded {len(ts.samples)} entries from {path}; skipped "
                          f"{len(ts.errors)} broken: " + "; ".join(ts.errors))
            return False
        set_status(self.status, f"Loaded {len(ts.samples)} entries from {path}")
        return True

    def _save_clicked(self, *_: Any) -> None:
        self.save_set()

    def _load_clicked(self, *_: Any) -> None:
        self.load_set()


class _TrainOnThisSection:
    """Train on this: score the current model, hand the set to the Train widget, and when
    training ends segment the image again and show the before/after score."""

    def _train_section(self) -> list[Any]:
        self.last_scores: dict[str, Any] = {}
        self._train_widget: Any = None
        self._model_before: Any = None  # the Train widget's model when "Train on this" started it
        self._follow_result_until = 0.0  # keep the result in view while the form settles (monotonic time)
        self.train_button = PushButton(text="Train on this", tooltip="Open the Train widget with this set and "
                                       "start training; the open image is segmented again when it ends")
        self.score = wrapped(Label(value="", label="Score"))
        self.score.tooltip = AP_HELP
        return [self.train_button, self.score]

    def train_widget(self) -> Any:
        """The Train dock widget (opened if needed)."""
        if self._train_widget is None or self._train_widget.native is None:
            # a tab beside this dock (tab_when_docked does the same for a widget opened from the menu)
            _, widget = self._viewer.window.add_plugin_dock_widget("napari-unet", "Train", tabify=True)
            self._train_widget = widget
        return self._train_widget

    def _split_set(self) -> tuple[list[Any], list[Any]]:
        train = [s for s in self.training_set.samples if s.name not in self.held_out]
        held = [s for s in self.training_set.samples if s.name in self.held_out]
        return train, held

    def train_on_this(self, *_: Any) -> Any:
        """Score the current model, then hand the set to the Train widget and start it."""
        if self.runner.running:
            return None
        train_entries, held = self._split_set()
        if not train_entries:
            show_error_in(self.status, "Nothing to train on: add entries to the set (held-out entries are "
                          "only scored)")
            return None
        self.last_scores = {"before": None, "after": None, "on": "held-out entries" if held else "training entries",
                            "n": len(held or train_entries)}
        try:
            spec = self.model_spec()
        except ValueError:
            spec = "none"  # no model to compare with: the score starts from nothing
        score_on = held or train_entries
        if spec == "none":
            self._start_training(None)
            return self.runner.worker
        job = ScoreJob(model=spec, device=self.device.value, entries=score_on)
        return self.runner.start(lambda: run_scores(job), lambda r: self._start_training(r.score),
                                 message="Scoring the current model before training...")

    def _start_training(self, before: float | None) -> None:
        from ..data import TrainingSet

        self.last_scores["before"] = before
        self._show_score()
        train_entries, _ = self._split_set()
        ts = TrainingSet()
        for s in train_entries:
            ts.add(s.image, s.labels, s.region, name=s.name)
        train = self.train_widget()
        try:
            train.set_training_set(ts, source="Annotate widget", only=True)
        except ValueError as exc:
            show_error_in(self.status, exc)
            return
        self._model_before = train.trained_model  # a cancelled run replaces it with the run's best
        worker = train.run()
        if worker is None:
            show_error_in(self.status, f"The Train widget did not start: {train.status.value}")
            return
        worker.finished.connect(self._training_finished)
        set_status(self.status, f"Training on {len(train_entries)} entries in the Train widget...")

    def _training_finished(self, *_: Any) -> Any:
        train = self._train_widget
        model = getattr(train, "trained_model", None)
        outcome = getattr(train.runner, "last_outcome", None)
        if outcome == "cancelled":
            # no new predictions; say which model 'Predict to annotate' uses now
            text = "Training was cancelled (see the Train widget); the image was not segmented again"
            if model is self._model_before or self.model.source.value != self.TRAINED:
                text += " and 'Predict to annotate' keeps its model"
            elif _improved(model):
                text += (". 'Predict to annotate' uses the Train widget's model, which is now the one the cancelled "
                         "run kept")
            else:
                text += (". 'Predict to annotate' keeps the same weights: the cancelled run did not improve on "
                         "its starting model")
            set_status(self.status, text, "warning")
            return None
        if model is None or outcome != "done":
            show_error_in(self.status, "Training did not produce a model (see the Train widget)")
            return None
        if self.TRAINED in self.model.source.choices:
            self.model.source.value = self.TRAINED  # predict-to-annotate now uses the new model
        _, held = self._split_set()
        score_on = held or self._split_set()[0]
        image = self.image.value
        from .segment import layer_axes

        job = ScoreJob(model=model, device=self.device.value, entries=score_on,
                       image=None if image is None else layer_data(image),
                       image_axes=None if image is None else layer_axes(image, "auto"))
        name = None if image is None else result_name(image.name, "labels", train.model_tag)
        return self.runner.start(lambda: run_scores(job), lambda r: self._after_scored(r, name, image),
                                 message="Scoring the trained model and segmenting the image...")

    def _after_scored(self, result: ScoreResult, name: str | None, image: Any) -> None:
        self.last_scores["after"] = result.score
        self.last_scores["per_entry"] = result.per_entry
        where = ""
        if result.labels is not None and name is not None:
            lead = len(image.scale) - result.labels.ndim
            geo = {"scale": tuple(image.scale)[lead:], "translate": tuple(image.translate)[lead:]} if lead >= 0 else {}
            w = add_or_update_layer(self._viewer, result.labels, name, "labels", writer=WRITER, **geo)
            w.layer.contour = 2
            self.last_scores["layer"] = w.layer.name
            where = f" The new model's predictions are in '{w.layer.name}'" + (f" ({w.note})" if w.note else "") + ";"
        self._show_score()
        if _improved(self._train_widget.trained_model):
            set_status(self.status, f"Trained. {self.score.value}.{where} 'Predict to annotate' now uses the new model")
        else:
            set_status(self.status, f"Training did not improve on the starting model (see the Train widget), so it "
                       f"is kept. {self.score.value}.{where} 'Predict to annotate' uses it", "warning")
        self._raise_dock()

    def _raise_dock(self) -> None:
        """Bring this dock to the front (the Train dock may be tabbed over it)."""
        dock = dock_of(self.native)
        if dock is not None:
            dock.show()
            dock.raise_()
        # the score and the status line sit low in the form: scroll them into view, now and while
        # the form settles (a dock shown for the first time fits its texts, and rows move)
        self._follow_result_until = time.monotonic() + 1.0
        self._show_result()

    def _form_range_changed(self, *_: Any) -> None:
        if time.monotonic() < self._follow_result_until:
            self._show_result()

    def _show_result(self) -> None:
        self.scroll.ensureWidgetVisible(self.status.native, 0, 8)
        if self.score.native.visibleRegion().isEmpty():  # a long status: its start and the score
            self.scroll.ensureWidgetVisible(self.score.native, 0, 8)

    def _show_score(self) -> None:
        s = self.last_scores
        if not s:
            self.score.value = ""
            return

        def fmt(v: Any) -> str:
            return "—" if v is None else f"{v:.2f}"

        text = f"AP@0.5 before {fmt(s.get('before'))} → after {fmt(s.get('after'))} on {s.get('n')} {s.get('on')}"
        if s.get("on") == "training entries":
            text += " (no held-out entry: optimistic)"
        self.score.value = text
        self.score.tooltip = f"{text}. {AP_HELP}"


class AnnotateWidget(
    _LayersSection, _RegionSection, _PredictSection, _HelpersSection, _TrainingSetSection, _TrainOnThisSection,
    Container,
):
    """Annotate cells, build a training set and train on it, all in one viewer.

    Child widgets are attributes so scripts and tests can set values and press buttons:
    layers (``image``, ``annotations``, ``new_labels_button``, ``brush_size``, ``contour``,
    ``auto_next``, ``region``, ``new_region_button``, ``margin``, ``show_area``),
    prediction (``model``, ``device``, ``where``, ``replace``, ``predict_button``,
    ``cancel_button``), helpers (``next_id_button``, ``min_size``, ``remove_small_button``,
    ``fill_holes_button``, ``cut_line_button``, ``split_button``, ``merge_a``, ``merge_b``,
    ``merge_button``), training set (``crop``, ``add_button``, ``entries``,
    ``show_button``, ``holdout_button``, ``remove_button``, ``folder``, ``save_button``,
    ``load_button``), ``train_button``, ``score``, ``progress``, ``status``.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        self._viewer = napari_viewer
        controls = RunControls("Predict to annotate", "Pre-fill the annotation layer from the model, then correct it",
                               "Stop; nothing is changed")
        self.progress, self.status = controls.progress, controls.status
        self.live = LiveSection(self)
        # the form scrolls inside the dock: it is taller than a 1280x800 screen
        self.form = Container(
            widgets=[
                header("Layers"), *self._layers_section(), *self._region_section(),
                header("Predict to annotate"), *self._predict_section(controls),
                header("Live learning (the model learns as you annotate)"), *self.live.widgets,
                header("Helpers (current plane or 3D stack, undo: Ctrl+Z)"), *self._helpers_section(),
                header("Training set"), *self._set_section(), *self._train_section(),
                self.progress, self.status,
            ],
            labels=True,
        )
        super().__init__(widgets=[self.form], labels=False)
        self.runner = controls.make_runner()
        self._connect_layers()
        self._connect_region()
        self.predict_button.changed.connect(self.predict)
        self._connect_helpers()
        self._connect_set()
        self.train_button.changed.connect(self.train_on_this)
        self.live.connect()
        self.form.native.setMinimumWidth(320)
        self.scroll = scroll_form(self, self.form)
        self.scroll.verticalScrollBar().rangeChanged.connect(self._form_range_changed)
        self.reset_choices()
        self._image_changed()
        self._refresh_entries()

    def reset_choices(self, *_: Any) -> None:
        region, labels = self.region.value, self.annotations.value
        chosen = list(self.entries.value) if hasattr(self, "training_set") else []
        source = self.model.source.value if hasattr(self, "model") else None
        super().reset_choices()
        if hasattr(self, "model") and self.TRAINED not in self.model.source.choices:
            # magicgui resets every ComboBox to its initial choices: add ours back
            self.model.source.choices = [*self.model.source.choices, self.TRAINED]
            if source == self.TRAINED:
                self.model.source.value = source
        if hasattr(self, "training_set"):  # magicgui resets the entry list with the layer pickers
            self._refresh_entries()
            self.entries.value = [c for c in chosen if c in self.entries.choices]
        # a new Shapes layer (e.g. cut lines) does not become the region by itself
        if region is None or region not in self._viewer.layers:
            self.region.value = None
        if labels is None and self.image.value is not None:
            self._pick_annotation_layer()
