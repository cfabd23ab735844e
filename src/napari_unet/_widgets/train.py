"""The Train dock widget: fine-tune (or train from scratch) a U-Net on annotated layers.

The work is the core's ``training.train_iter`` generator, run in a napari
``thread_worker`` through :class:`~._common.TaskRunner`, so the viewer stays responsive.
Every training step yields a record; the GUI thread only appends its numbers to the
:class:`~._lossplot.LossPlot` (which redraws a few times a second) and updates the
progress bar, ETA and status line.

Training data: (image, Labels [, Shapes region]) layer pairs added to a list (or the pair
chosen in the pickers, if the list is empty), plus a training set loaded from a folder or
handed over by the Annotate widget (:meth:`TrainWidget.set_training_set`). A Shapes layer
marks the annotated region (rectangles/polygons rasterised to a mask); without one, the
labelled cells plus a margin count and the rest is ignored -- unless *labels are complete*
is on (the default for a mask read from a file): then the whole image counts. A line
under the list says exactly what will be trained on; training warns (status line) when
most pixels would be ignored. Apply writes ``"<image> labels (trained)"``; Export runs in
the worker; closing the dock stops training and removes temporary checkpoint folders.

Cancel stops at the next training step (well within a second) and keeps the best model
so far: the generator's return value is lost when a worker is quit, so the widget keeps
the ``TrainingRun`` that every record carries (``info["run"]``) and asks it for
``best_model()``. Checkpoints (``best.pt``, ``last.pt``, ``state.pt``) go to the chosen
folder or a temporary one; "resume" continues from such a folder.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
import warnings
from collections.abc import Generator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    FloatSpinBox,
    Label,
    PushButton,
    Select,
    SpinBox,
)

from .._progress import Progress, relay
from ..annotate import count_cells
from ..modes import MODES
from ._common import (
    add_or_update_layer,
    bundled_model_available,
    header,
    layer_data,
    loaded_from_file,
    on_close,
    result_name,
    row,
    scroll_form,
    segment_at_model_size,
    set_status,
    show_error_in,
    wrapped,
)
from ._sections import DevicePicker, LossPlotSection, RunControls, folded, layer_picker

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from ..model import UNet

WRITER = "train"
#: the modes in a biologist's words (the name the CLI and the model file use in brackets)
MODE_WORDS = {"instance3": "touching cells (instance3)", "instance2": "separate cells (instance2)",
              "semantic": "classes (semantic)"}
#: Mode choices for EM-like data: instance2 with a training preset (see training.PRESETS)
MEMBRANE_MODES = {"membranes (EM cells)": "membranes", "membrane mask (EM)": "membrane-mask"}


# -- data from layers ---------------------------------------------------------------------


@dataclass
class LayerPair:
    """An (image, labels, optional region) triple of layers the person chose."""

    image: Any
    labels: Any
    region: Any = None  # a Shapes layer or None
    complete: bool = False  # without a region: every cell is labelled (the rest is background)

    def describe(self) -> str:
        text = f"{self.image.name} + {self.labels.name}"
        if self.region is not None:
            text += f" [region: {self.region.name}]"
        elif self.complete:
            text += " [complete]"
        return text


def _layer_array(layer: Any) -> np.ndarray:
    return np.asarray(layer_data(layer))


def shapes_to_mask(shapes: Any, like: Any, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise a Shapes layer into a bool mask on the grid of the layer ``like``.

    Shapes drawn in the viewer live in world coordinates; when the Shapes layer and the
    labels layer are placed differently (scale/translate), the vertices are first mapped
    into the labels layer's pixel grid, so the region covers what the person saw.
    """
    import napari

    if len(shapes.data) == 0:
        return np.zeros(shape, bool)
    s_sh, t_sh = np.asarray(shapes.scale)[-2:], np.asarray(shapes.translate)[-2:]
    s_l, t_l = np.asarray(like.scale)[-2:], np.asarray(like.translate)[-2:]
    layer = shapes
    if not (np.allclose(s_sh, s_l) and np.allclose(t_sh, t_l)):
        data = [((np.asarray(d)[:, -2:] * s_sh + t_sh) - t_l) / s_l for d in shapes.data]
        layer = napari.layers.Shapes(data, shape_type=list(shapes.shape_type))
    masks = np.asarray(layer.to_masks(mask_shape=shape))
    if masks.ndim == 3:
        masks = masks.reshape((-1, *masks.shape[-2:]))[:, : shape[0], : shape[1]]
        return masks.any(axis=0)
    return masks.astype(bool)


def pair_arrays(pair: LayerPair) -> tuple[list[np.ndarray], list[np.ndarray], list[Any]]:
    """Copy the data of a layer pair into training arrays (GUI thread; cheap checks only).

    A 2D image (or RGB, or channels-first ``CYX`` with 2D labels) gives one training
    image; a stack with labels of the same shape gives one per plane that holds labels.

    Raises:
        ValueError: shapes that do not fit, or nothing annotated.
    """
    img, lab = _layer_array(pair.image), _layer_array(pair.labels)
    name_i, name_l = pair.image.name, pair.labels.name
    rgb = bool(getattr(pair.image, "rgb", False))
    spatial = img.shape[:-1] if rgb else img.shape
    if lab.ndim != 2 and not (lab.ndim == 3 and tuple(lab.shape) == tuple(spatial)):
        raise ValueError(
            f"Labels '{name_l}' have shape {lab.shape}: training needs 2D labels (or a stack "
            f"matching the image '{name_i}' {tuple(img.shape)})"
        )
    if lab.ndim == 2:
        ok = tuple(spatial[-2:]) == tuple(lab.shape) and (len(spatial) == 2 or (len(spatial) == 3 and spatial[0] <= 8))
        if not ok:
            raise ValueError(
                f"Image '{name_i}' {tuple(img.shape)} and labels '{name_l}' {tuple(lab.shape)} "
                "do not have the same (y, x) size: pick the Labels layer drawn on this image"
            )
        planes = [(img, lab)]
    else:  # a stack: one training image per plane with annotations
        planes = [(img[z], lab[z]) for z in range(lab.shape[0])]
    if pair.complete and pair.region is None and not np.any(lab):
        raise ValueError(
            f"Labels '{name_l}' are empty, yet 'labels are complete' is ticked: training would teach that "
            f"'{name_i}' holds no cells at all. Paint the cells, or untick it and draw a Region around truly "
            "empty background"
        )
    region_all = np.ones(tuple(lab.shape[-2:]), bool) if pair.complete else None
    if pair.region is not None:
        region_all = shapes_to_mask(pair.region, pair.labels, tuple(lab.shape[-2:]))
        if not region_all.any():
            raise ValueError(
                f"The region layer '{pair.region.name}' holds no rectangle or polygon: draw the "
                "annotated area, or choose no region layer"
            )
    images, labels, regions = [], [], []
    for im, lb in planes:
        if region_all is None and not np.any(lb):
            continue
        images.append(np.array(im, copy=True))
        labels.append(np.array(lb, copy=True))
        regions.append(None if region_all is None else region_all.copy())
    if not images:
        raise ValueError(
            f"Labels '{name_l}' are empty and no region layer marks an annotated area: "
            "paint some cells (or draw a Shapes region around truly empty background)"
        )
    return images, labels, regions


def pair_stack(pair: LayerPair) -> tuple[np.ndarray, np.ndarray, Any, tuple[float, float, float]]:
    """(stack, its 3D labels, what is annotated, voxel size) of a layer pair, for the 3D U-Net
    (GUI thread; cheap checks only). What is annotated: ``"all"`` (labels are complete), a
    (Y, X) mask for every plane (a region layer), or None (the labelled cells and a margin).

    Raises:
        ValueError: not a single-channel stack with labels of its shape, no voxel size, or
            nothing labelled.
    """
    from .segment import layer_voxel_size

    img, lab = _layer_array(pair.image), _layer_array(pair.labels)
    name_i, name_l = pair.image.name, pair.labels.name
    if getattr(pair.image, "rgb", False) or img.ndim != 3 or tuple(lab.shape) != tuple(img.shape):
        raise ValueError(f"The 3D U-Net learns from Z stacks: '{name_i}' {tuple(img.shape)} with 3D labels of its "
                         f"shape ('{name_l}' is {tuple(lab.shape)}); for 2D images start from the bundled model")
    voxel = layer_voxel_size(pair.image, "ZYX")
    if voxel is None:
        raise ValueError(f"Set the scale of '{name_i}' to its voxel size (Z, Y, X; Layer ▸ properties or "
                         "layer.scale): the 3D U-Net learns a stack in cubic voxels")
    if not np.any(lab):
        raise ValueError(f"Labels '{name_l}' are empty: paint some cells through the stack first")
    region: Any = "all" if pair.complete else None
    if pair.region is not None:
        region = shapes_to_mask(pair.region, pair.labels, tuple(lab.shape[-2:]))
    return np.array(img, copy=True), np.array(lab, copy=True), region, voxel


def _channels(image: Any) -> int:
    """Input channels of a training image, by the core's rule."""
    from ..training_data import in_channels_of

    return in_channels_of([image])


def _check_channels(images: list[Any], listed: list[tuple[str, Any]]) -> None:
    """Refuse a pair whose channels differ from the data already listed (Train would).

    Raises:
        ValueError: naming both.
    """
    if not images or not listed:
        return
    n = _channels(images[0])
    for name, other in listed:
        m = _channels(other)
        if m != n:
            raise ValueError(
                f"This image has {n} channel(s) but '{name}' has {m}: one training run needs images with the "
                "same channels"
            )


def training_set_arrays(ts: Any) -> tuple[list[Any], list[Any], list[Any]]:
    """(images, labels, regions) of a :class:`napari_unet.data.TrainingSet`-like object.

    Accepts an object with ``samples`` (each with ``image``, ``labels`` and ``region``)
    or with parallel ``images``/``labels``/``regions`` sequences.
    """
    samples = getattr(ts, "samples", None)
    if samples is None and hasattr(ts, "__iter__") and not hasattr(ts, "images"):
        samples = list(ts)
    if samples is not None:
        images = [s.image for s in samples]
        labels = [s.labels for s in samples]
        regions = [getattr(s, "region", None) for s in samples]
    else:
        images, labels = list(ts.images), list(ts.labels)
        regs = getattr(ts, "regions", None)
        regions = list(regs) if regs is not None else [None] * len(images)
    if len(images) != len(labels):
        raise ValueError(f"the training set has {len(images)} images but {len(labels)} label images")
    return images, labels, regions


# -- the job --------------------------------------------------------------------------


@dataclass
class TrainJob:
    """Everything the worker needs, read from the widgets in the GUI thread."""

    images: list[Any]
    labels: list[Any]
    regions: list[Any]
    start: str  # "bundled", "file", "scratch", "current", "resume"
    model_path: Path | None = None
    model: Any = None  # a UNet ("current")
    resume: Path | None = None
    mode: str = "instance3"
    depth: int = 3
    width: int = 16
    iterations: int | None = None
    max_time: float | None = None
    lr: float | None = None
    tile_size: int | None = None
    batch_size: int = 4
    augment: Any = None
    device: str = "auto"
    val_fraction: float = 0.2
    checkpoint_dir: Path | None = None
    preview: Any = None  # image array for the live preview, or None
    preview_axes: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    three_d: bool = False  # the 3D U-Net, on whole stacks
    voxel_sizes: list[Any] | None = None  # the 3D U-Net: each stack's (z, y, x)


def _starting_model(job: TrainJob) -> tuple[Any, float | None]:
    """The ``model`` argument for ``train_iter`` and the learning rate to use."""
    from .. import training
    from ..training_data import in_channels_of

    lr = job.lr
    if job.start == "scratch":
        model = training.fresh_model(in_channels_of(job.images), job.mode, job.labels, depth=job.depth,
                                     base_width=job.width)
        return model, lr if lr is not None else training.LR_SCRATCH
    if job.start == "file":
        return job.model_path, lr
    if job.start == "current":
        return job.model, lr
    if job.start == "resume":
        return None, lr
    return None, lr  # "bundled": train_iter picks the one that suits the images (RGB -> stained)


def run_training(job: TrainJob) -> Generator[Progress, None, Any]:
    """The worker's generator: ``train_iter`` plus the optional live preview.

    The preview (segmenting the chosen image with the current weights after each
    validation) runs here, in the worker, never in the GUI thread.
    """
    from ..training import train_iter

    if job.three_d:
        return (yield from _run_training_3d(job))
    _warn_if_mostly_ignored(job.labels, job.regions)
    model, lr = _starting_model(job)
    gen = train_iter(
        job.images,
        job.labels,
        model,
        regions=job.regions,
        iterations=job.iterations,
        max_time=job.max_time,
        device=job.device,
        lr=lr,
        batch_size=job.batch_size,
        tile_size=job.tile_size,
        augment=job.augment,
        val_fraction=job.val_fraction,
        checkpoint_dir=job.checkpoint_dir,
        resume=job.resume,
        **job.kwargs,
    )
    while True:
        try:
            rec = next(gen)
        except StopIteration as stop:
            return stop.value
        info = rec.info or {}
        words = _STATUS_WORDS.get(info.get("phase", ""))  # the step and loss are on the line above the plot
        yield rec if words is None or rec.message.startswith("out of memory") else replace(rec, message=words)
        if job.preview is not None and "val_ap" in info and info.get("phase") == "train" and "run" in info:
            yield _preview(job, info["run"].model, rec)


def _run_training_3d(job: TrainJob) -> Generator[Progress, None, Any]:
    """The 3D U-Net fine-tuned on whole stacks (``training_3d``); no validation: the last weights."""
    from ..training_3d import LR_FINE_TUNE, fine_tune_3d_iter

    model = {"file": job.model_path, "current": job.model}.get(job.start)  # else the bundled 3D U-Net
    gen = fine_tune_3d_iter(job.images, job.labels, model, voxel_size=job.voxel_sizes, regions=job.regions,
                            iterations=job.iterations or 10**9, max_time=job.max_time, lr=job.lr or LR_FINE_TUNE,
                            device=job.device)
    words = ("Training the 3D U-Net on whole stacks: the plot shows how it goes. Cancel stops it and keeps "
             "the model as it is then")
    return (yield from relay(gen, lambda rec: replace(rec, message=words)))


#: the status line while training (the core's "iteration 52: loss 0.4127" repeats the line above the plot)
_STATUS_WORDS = {"train": "Training: the plot shows how it goes. Cancel stops it and keeps the best model so far",
                 "validate": "Scoring the model on the held-out validation images..."}


def _warn_if_mostly_ignored(labels: list[Any], regions: list[Any], threshold: float = 0.5) -> float:
    """Warn (``UserWarning``, shown in the status line) when training would ignore most
    pixels: labels without a region teach only "labelled cells plus a margin". Returns
    the share of pixels learnt from."""
    from ..annotate import default_region
    from ..targets import DEFAULT_MARGIN

    used = total = 0
    for lab, reg in zip(labels, regions):
        lab = np.asarray(lab)
        total += lab.size
        used += int(np.count_nonzero(default_region(lab, DEFAULT_MARGIN) if reg is None else np.asarray(reg)))
    share = used / max(total, 1)
    if share < threshold:
        warnings.warn(
            f"Training learns from only {share:.0%} of the pixels (labelled cells plus {DEFAULT_MARGIN} px; the rest "
            "is ignored). If every cell is labelled, tick 'labels are complete'; else draw a Region",
            UserWarning, stacklevel=2,
        )
    return share


def _preview(job: TrainJob, net: Any, rec: Progress) -> Progress:
    """Segment the preview image with the current weights (in the worker thread)."""
    from ..model import clone_model
    from ..segmentation import segment

    model = clone_model(net).eval()
    labels = np.asarray(segment(job.preview, model, device="cpu", axes=job.preview_axes))
    return Progress(rec.done, rec.total, rec.message, {"phase": "preview", "preview": labels})


def run_export(model: Any, path: Path) -> Generator[Progress, None, Path]:
    """Write a bioimage.io package (in the worker: TorchScript and test tensors take seconds)."""
    from ..export import export_bioimageio

    yield Progress(0, 0, f"Exporting to {path.name}...")
    return export_bioimageio(model, path, overwrite=True)  # the dialog asked already


@dataclass
class ApplyResult:
    labels: np.ndarray
    seconds: float
    device: str


def run_apply(model: Any, data: Any, axes: str | None, device: str) -> Generator[Progress, None, ApplyResult]:
    """Segment ``data`` with ``model`` tile by tile, at the model's cell size (the Segment
    widget's path with Cell size "auto")."""
    t0 = time.perf_counter()
    info: dict[str, Any] = {}
    gen = segment_at_model_size(data, model, device=device, axes=axes)
    labels = yield from relay(gen, lambda rec: info.update(rec.info) or rec)
    return ApplyResult(np.asarray(labels), time.perf_counter() - t0, str(info.get("device", device)))


def _fmt_time(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


# -- the widget's sections ----------------------------------------------------------------
#
# Each section below makes the rows of one part of the Train form (``_<name>_section``),
# wires them (``_connect_<name>``) and holds what they do. They are mixins of
# :class:`TrainWidget`: the form is one labelled container (its labels line up), and the
# sections read each other's values through the widget (e.g. the run reads the settings).


class _TrainingPairs:
    """Training data, first part: the image / labels / region pickers and the list of
    layer pairs to train on."""

    def _pairs_section(self) -> list[Any]:
        self._pairs: list[LayerPair] = []
        self.image = layer_picker("Image", "Image", "An image you annotated")
        self.labels_layer = layer_picker("Labels", "Labels", "Its Labels layer (instance ids; 0 = background)")
        self.region = layer_picker(
            "Shapes", "Region", "Optional Shapes layer (rectangles/polygons) marking where the labels "
            "are complete; unlabelled pixels inside count as background. Without one, the "
            "labelled cells plus a margin count and the rest is ignored", nullable=True, empty=True,
        )
        self.complete = CheckBox(
            text="labels are complete (unlabelled = background)", value=False,
            tooltip="On: every cell in the image is labelled, so every unlabelled pixel is taught as "
            "background. Off (sparse labels): only the labelled cells plus a margin are learnt from and "
            "the rest is ignored. A Region layer, when chosen, decides instead. On by default for "
            "labels read from a file",
        )
        self.add_pair_button = PushButton(text="Add pair to list",
                                          tooltip="Add this image + labels (+ region) to the training data")
        self.remove_pair_button = PushButton(text="Remove selected", tooltip="Remove the selected pairs")
        self.pairs = Select(label="Pairs", choices=[], tooltip="Layer pairs used for training. If the "
                            "list is empty, the pair chosen above is used")
        self.pairs.native.setMaximumHeight(80)
        return [self.image, self.labels_layer, self.region, self.complete,
                row(self.add_pair_button, self.remove_pair_button), self.pairs]

    def _connect_pairs(self) -> None:
        self.add_pair_button.changed.connect(self.add_pair)
        self.remove_pair_button.changed.connect(self.remove_selected_pairs)
        self.labels_layer.changed.connect(self._labels_chosen)
        for w in (self.image, self.labels_layer, self.region, self.complete):
            w.changed.connect(self._update_set_info)

    def add_pair(self, *_: Any) -> LayerPair | None:
        """Add the chosen image + labels (+ region) to the list (checked first)."""
        try:
            pair = self._current_pair()
            images, _, _ = pair_arrays(pair)  # refuse now what training would refuse later
            _check_channels(images, self._listed_images())
        except ValueError as exc:
            show_error_in(self.status, exc)
            return None
        if any(p.image is pair.image and p.labels is pair.labels for p in self._pairs):
            set_status(self.status, f"'{pair.describe()}' is already in the list", "warning")
            return None
        self._pairs.append(pair)
        self._refresh_pairs()
        set_status(self.status, f"Added '{pair.describe()}' ({len(self._pairs)} pair(s))")
        return pair

    def remove_selected_pairs(self, *_: Any) -> None:
        chosen = set(self.pairs.value)
        self._pairs = [p for p in self._pairs if p.describe() not in chosen]
        self._refresh_pairs()

    def _listed_images(self) -> list[tuple[str, Any]]:
        """(name, first training image) of each listed pair and of the loaded set."""
        out = [(p.describe(), _layer_array(p.image)) for p in self._pairs]
        if self.training_set is not None:
            images = training_set_arrays(self.training_set)[0]
            if images:
                out.append((self.training_set_source, np.asarray(images[0])))
        return out

    @property
    def layer_pairs(self) -> list[LayerPair]:
        return list(self._pairs)

    def _refresh_pairs(self) -> None:
        names = [p.describe() for p in self._pairs]
        self.pairs.choices = names
        self.pairs.value = []
        self._update_set_info()

    def _forget_removed_layers(self) -> bool:
        """Drop listed pairs whose layers were removed; True when the list changed."""
        if not getattr(self, "_pairs", None):
            return False
        layers = list(self._viewer.layers)
        keep = [p for p in self._pairs if p.image in layers and p.labels in layers
                and (p.region is None or p.region in layers)]
        if len(keep) != len(self._pairs):
            self._pairs = keep
            self._refresh_pairs()
            return True
        return False

    def _current_pair(self) -> LayerPair:
        image, labels = self.image.value, self.labels_layer.value
        if image is None:
            raise ValueError("No image layer: open the image you annotated (or File ▸ Open Sample ▸ Synthetic nuclei)")
        if labels is None:
            raise ValueError(
                "No Labels layer: add one (layer list ▸ new Labels layer) and paint some cells, "
                "or load a training-set folder"
            )
        return LayerPair(image, labels, self.region.value, complete=bool(self.complete.value))

    def _labels_chosen(self, *_: Any) -> None:
        """A mask read from a file (or the sample's ground truth) labels every cell."""
        layer = self.labels_layer.value
        if layer is not None:
            self.complete.value = loaded_from_file(layer)


class _TrainingSetSection:
    """Training data, second part: a training set read from a folder or handed over by the
    Annotate widget, and the line saying exactly what Train will train on."""

    HINT_CHOOSE = "Choose an image and its Labels layer (or load a training set), then press Train"
    HINT_READY = "Ready: press Train to train on what 'Trains on' says"

    def _set_section(self) -> list[Any]:
        self.training_set: Any = None
        self.training_set_source = ""
        self.folder = FileEdit(label="Set folder", mode="d",
                               tooltip="A training-set folder (saved by the Annotate widget)")
        self.load_folder_button = PushButton(text="Load folder", tooltip="Read the training-set folder")
        self.clear_set_button = PushButton(text="Clear set", tooltip="Stop using the loaded training set")
        self.set_info = wrapped(Label(value=""))
        return [self.folder, row(self.load_folder_button, self.clear_set_button), self.set_info]

    def _connect_set(self) -> None:
        self.load_folder_button.changed.connect(self._load_folder_clicked)
        self.clear_set_button.changed.connect(self.clear_training_set)

    def set_training_set(self, ts: Any, source: str = "Annotate widget", only: bool = False) -> None:
        """Use a :class:`napari_unet.data.TrainingSet` (e.g. handed over by the Annotate widget).

        It is used together with the layer pairs of the *list*; the pair chosen in the
        pickers is not added implicitly while a set is loaded (it could hold entries the
        Annotate widget keeps out of training for scoring). ``only`` is accepted for the
        Annotate widget's "Train on this" call; that behaviour is now always the case.
        """
        images, _, _ = training_set_arrays(ts)  # fail now on a malformed set
        self.training_set = ts
        self.training_set_source = source
        self._update_set_info()
        set_status(self.status, f"Training set from {source}: {len(images)} image(s)")

    def clear_training_set(self, *_: Any) -> None:
        self.training_set = None
        self.training_set_source = ""
        self._update_set_info()

    def load_training_set(self, folder: str | Path) -> None:
        """Read a training-set folder (``TrainingSet.load``) and use it."""
        from ..data import TrainingSet

        ts = TrainingSet.load(folder)
        self.set_training_set(ts, source=f"folder {Path(folder).name}")

    def _load_folder_clicked(self, *_: Any) -> None:
        value = self.folder.value
        if value is None or str(value) in ("", "."):
            show_error_in(self.status, "No training-set folder chosen: pick one first")
            return
        try:
            self.load_training_set(value)
        except (ValueError, OSError, ImportError) as exc:
            show_error_in(self.status, exc)

    def _update_set_info(self, *_: Any) -> None:
        """Say exactly what Train will train on (the same rule as :meth:`collect_data`)."""
        if not hasattr(self, "clear_set_button"):
            return  # still being built
        self.clear_set_button.enabled = self.training_set is not None
        parts = []
        if self._pairs:
            parts.append(f"the {len(self._pairs)} listed pair(s)")
        if self.training_set is not None:
            n = len(training_set_arrays(self.training_set)[0])
            parts.append(f"{n} image(s) from {self.training_set_source}")
        if not parts:
            image, labels = self.image.value, self.labels_layer.value
            if image is None or labels is None:
                self.set_info.value = "Trains on: nothing yet (choose an image and its labels, or load a set)"
            else:
                self.set_info.value = f"Trains on: {self._current_pair().describe()} (the pair above)"
        else:
            text = "Trains on: " + " + ".join(parts)
            if self._pairs or self.training_set is not None:
                text += " (not the pair above unless listed: Add pair to list)"
            self.set_info.value = text
        hint = self.HINT_CHOOSE if self.set_info.value.startswith("Trains on: nothing") else self.HINT_READY
        if self.status.value in ("", self.HINT_CHOOSE, self.HINT_READY):  # the status line says nothing else yet
            set_status(self.status, hint)

    def collect_data(self) -> tuple[list[Any], list[Any], list[Any], list[str]]:
        """(images, labels, regions, sources) from the pair list (or the chosen pair) and the set."""
        images: list[Any] = []
        labels: list[Any] = []
        regions: list[Any] = []
        sources: list[str] = []
        pairs = list(self._pairs)
        if not pairs and self.training_set is None:
            # nothing listed and no set: the pair chosen in the pickers. With a set, the
            # pickers' pair is never added implicitly (it may hold the Annotate widget's
            # held-out entries); add it to the list to train on both.
            pairs = [self._current_pair()]
        for pair in pairs:
            i, lab, r = pair_arrays(pair)
            images += i
            labels += lab
            regions += r
            sources.append(pair.describe())
        if self.training_set is not None:
            i, lab, r = training_set_arrays(self.training_set)
            images += i
            labels += lab
            regions += r
            sources.append(f"{len(i)} from {self.training_set_source}")
        if not images:
            raise ValueError("No training data: choose an image and its Labels layer, or load a training set")
        return images, labels, regions, sources


class _StartModelSection:
    """The model training starts from (bundled, a file, scratch, the current model, a
    checkpoint folder) and, from scratch, the network's mode and size."""

    BUNDLED = "bundled model"
    BUNDLED_3D = "bundled 3D U-Net (Z stacks)"
    FILE = "model file"
    SCRATCH = "from scratch"
    CURRENT = "current model (continue)"
    RESUME = "resume checkpoint folder"

    def _model_section(self) -> list[Any]:
        from .. import training

        start_choices = [self.BUNDLED, self.BUNDLED_3D, self.FILE, self.SCRATCH, self.CURRENT, self.RESUME]
        self.start = ComboBox(label="Start from", choices=start_choices,
                              value=self.BUNDLED if bundled_model_available() else self.SCRATCH,
                              tooltip="Fine-tune the bundled model or a model file, train a fresh "
                              "network, continue the model trained here, or resume a checkpoint. The bundled 3D "
                              "U-Net (or a 3D model file) learns from whole labelled Z stacks, with the image "
                              "layer's scale as the voxel size")
        self.model_file = FileEdit(label="Model file", mode="r", filter="napari-unet models (*.pt);;All files (*)",
                                   tooltip="The napari-unet model file (.pt) to fine-tune; it is not changed")
        self.resume_dir = FileEdit(label="Checkpoint", mode="d",
                                   tooltip="A folder with last.pt and state.pt from an earlier run")
        choices = [*((MODE_WORDS[m], m) for m in MODES), *((m, m) for m in MEMBRANE_MODES)]
        self.mode = ComboBox(label="Mode", choices=choices, value="instance3",
                             tooltip="What the network learns. touching cells: background, cell interior and "
                             "the border between touching cells, so touching cells come out apart (instance3); "
                             "separate cells: background or cell (instance2); classes: one class per label "
                             "value (semantic); membranes: EM cells labelled, 0 = the membrane between them; "
                             "membrane mask: the membranes painted (nonzero), cells are what they enclose")
        arch = training.FRESH_ARCHITECTURE
        self.depth = SpinBox(label="Depth", value=int(arch["depth"]), min=1, max=5,
                             tooltip="Poolings of a fresh network (the paper: 4)")
        self.base_width = SpinBox(label="Width", value=int(arch["base_width"]), min=2, max=128,
                             tooltip="Channels of the first level of a fresh network (the paper: 64)")
        return [self.start, self.model_file, self.resume_dir, self.mode, self.depth, self.base_width]

    def _sync_model(self) -> None:
        start = self.start.value
        self.model_file.visible = start == self.FILE
        self.resume_dir.visible = start == self.RESUME
        for w in (self.mode, self.depth, self.base_width):
            w.visible = start == self.SCRATCH

    def _start_key(self) -> str:
        return {self.BUNDLED: "bundled", self.BUNDLED_3D: "bundled3d", self.FILE: "file", self.SCRATCH: "scratch",
                self.CURRENT: "current", self.RESUME: "resume"}[self.start.value]

    def _starts_3d(self) -> bool:
        """Whether the chosen start is a 3D U-Net (the bundled one, a 3D model file, or the
        current model when it is one)."""
        start = self.start.value
        if start == self.BUNDLED_3D:
            return True
        if start == self.CURRENT and self.trained_model is not None:
            return self.trained_model.config.spatial_dims == 3
        value = self.model_file.value
        if start != self.FILE or value is None or not Path(value).is_file():
            return False
        from ..model import ModelFileError, load_model

        try:
            return load_model(value).config.spatial_dims == 3
        except ModelFileError:
            return False  # said when the file is loaded for training

    def _model_job(self, job: TrainJob) -> None:
        """Fill in the starting model of ``job`` (checked: a file chosen, a checkpoint there)."""
        start = job.start
        if start == "bundled" and not bundled_model_available():
            raise ValueError("The bundled model is not installed: start from scratch or from a model file")
        if start == "file":
            value = self.model_file.value
            if value is None or str(value) in ("", ".") or Path(value).is_dir():
                raise ValueError("No model file chosen: pick a .pt file, or start from the bundled model")
            job.model_path = Path(value)
        elif start == "current":
            if self.trained_model is None:
                raise ValueError("There is no current model yet: train or load one first")
            job.model = self.trained_model
        elif start == "resume":
            value = self.resume_dir.value
            folder = Path(value) if value is not None and str(value) not in ("", ".") else None
            if folder is None or not (folder / "last.pt").is_file() or not (folder / "state.pt").is_file():
                raise ValueError(
                    f"Cannot resume: choose a checkpoint folder holding last.pt and state.pt "
                    f"(got {str(value) or 'nothing'})"
                )
            job.resume = folder
        job.mode = self.mode.value
        if job.mode in MEMBRANE_MODES:
            if start == "scratch":
                job.kwargs["preset"] = MEMBRANE_MODES[job.mode]
            job.mode = "instance2"
        job.depth, job.width = int(self.depth.value), int(self.base_width.value)


class _SettingsSection:
    """How long to train, and the settings folded away (learning rate, tile, batch,
    validation, checkpoints; augmentation)."""

    ITERATIONS = "iterations"
    MINUTES = "time (minutes)"

    def _budget_section(self) -> list[Any]:
        from .. import training

        self.budget = ComboBox(label="Stop after", choices=[self.ITERATIONS, self.MINUTES], value=self.ITERATIONS,
                               tooltip="How long to train: a number of training steps, or a time")
        self.iterations = SpinBox(label="Iterations", value=training.DEFAULT_ITERATIONS, min=1, max=10**7,
                                  tooltip="Training steps (one batch of tiles each)")
        self.minutes = FloatSpinBox(label="Minutes", value=10.0, min=0.1, max=10**5, step=1.0,
                                    tooltip="Stop cleanly after this much time")
        return [self.budget, self.iterations, self.minutes]

    def _advanced_section(self) -> Container:
        from .. import training

        self.lr = FloatSpinBox(label="Learning rate", value=0.0, min=0.0, max=1.0, step=0.0001,
                               tooltip=f"Peak learning rate (AdamW, warm-up + cosine). 'auto': "
                               f"{training.LR_SCRATCH:g} from scratch, {training.LR_FINE_TUNE:g} when fine-tuning on "
                               f"whole images, {training.LR_PARTIAL:g} on partly annotated ones")
        self.lr.native.setDecimals(5)
        self.lr.native.setSpecialValueText("auto")
        self.tile_size = SpinBox(label="Tile (0 = auto)", value=0, min=0, max=4096, step=16,
                                 tooltip="Edge of the output tile per sample (0 = auto: 96 on the CPU, 192 on a GPU)")
        self.batch_size = SpinBox(label="Batch size", value=4, min=1, max=256, tooltip="Tiles per step")
        self.val_fraction = FloatSpinBox(label="Validation", value=0.2, min=0.0, max=0.5, step=0.05,
                                         tooltip="Share of the annotated data held out (never trained on) to "
                                         "score the model as it trains, so that the best model is kept: whole "
                                         "images from 8 images up, else a strip of each; 0 = none")
        self.val_every = SpinBox(label="Validate every", value=0, min=0, max=10**6,
                                 tooltip="How often, in training steps, the model is scored on the held-out "
                                 "validation images (0 = auto: 20 times per run; every 50 steps and at the end "
                                 "on a time budget). The best-scoring model is the one kept")
        self.val_every.native.setSpecialValueText("auto")
        self.zoom_to_model = CheckBox(
            text="train at the model's cell size", value=True,
            tooltip="When your cells' size differs from the size the starting model knows by more than "
            "25%, train on copies zoomed to the model's size (what Segment's Cell size 'auto' does at "
            "inference). Off: the model learns your images' own scale",
        )
        from ..training import KEEP_START, KEEP_START_TOLERANCE

        self.keep_start = FloatSpinBox(
            label="Starting model kept", value=KEEP_START, min=0.0, max=1.0, step=0.05,
            tooltip="Share of the starting model's weights mixed into the fine-tuned ones, so that the "
            "model keeps part of what it knew about images unlike yours (used only when validation says "
            f"it costs at most {KEEP_START_TOLERANCE:g}; 0 = the fine-tuned weights as they are)",
        )
        self.checkpoint_dir = FileEdit(label="Checkpoints", mode="d",
                                       tooltip="Where best.pt/last.pt/state.pt are kept (empty: a "
                                       "temporary folder, shown when training ends)")
        self.advanced = Container(
            widgets=[self.lr, self.tile_size, self.batch_size, self.val_fraction, self.val_every,
                     self.zoom_to_model, self.keep_start, self.checkpoint_dir],
            labels=True,
        )
        return self.advanced

    def _augmentation_section(self) -> Container:
        self.aug_elastic = CheckBox(text="elastic", value=True, tooltip="The paper's elastic deformation")
        self.aug_rotate = CheckBox(text="rotation", value=True, tooltip="Rotation by any angle, and zoom")
        self.aug_flip = CheckBox(text="flips", value=True, tooltip="Flips and 90° turns")
        self.aug_gray = CheckBox(text="gray values", value=True, tooltip="Brightness, contrast, gamma")
        self.aug_noise = CheckBox(text="noise", value=True, tooltip="Additive Gaussian noise")
        self.aug_strength = FloatSlider(label="Aug. strength", value=1.0, min=0.0, max=2.0, step=0.1,
                                        tooltip="Scales every augmentation's range (1 = defaults)")
        self.aug_strength.native.setToolTip(self.aug_strength.tooltip)  # also over its number box
        self.augmentation = Container(
            widgets=[row(self.aug_elastic, self.aug_rotate, self.aug_flip),
                     row(self.aug_gray, self.aug_noise), self.aug_strength],
            labels=True,
        )
        return self.augmentation

    def _folded_settings(self) -> Container:
        """Rarely changed settings fold away, so the loss plot stays in view."""
        self.settings_box = folded([("Advanced: learning rate, tile, batch", self._advanced_section()),
                                    ("Augmentation", self._augmentation_section())])
        return self.settings_box

    def _sync_budget(self) -> None:
        self.iterations.visible = self.budget.value == self.ITERATIONS
        self.minutes.visible = self.budget.value == self.MINUTES

    def augment_config(self) -> Any:
        """The :class:`~napari_unet.augment.AugmentConfig` the switches and strength describe."""
        base = self._AugmentConfig()
        s = float(self.aug_strength.value)
        rotate = bool(self.aug_rotate.value)
        gray = bool(self.aug_gray.value)

        def around_one(rng: tuple[float, float]) -> tuple[float, float]:
            lo, hi = rng
            return (lo**s, hi**s)  # strength 0 → (1, 1): the identity

        return base.replace(
            enabled=s > 0 and any(bool(c.value) for c in (self.aug_elastic, self.aug_rotate, self.aug_flip,
                                                            self.aug_gray, self.aug_noise)),
            elastic=bool(self.aug_elastic.value),
            elastic_sigma=base.elastic_sigma * s,
            rotate=rotate,
            max_rotation=min(180.0, base.max_rotation * s),
            scale=rotate,
            scale_range=around_one(base.scale_range),
            shift=True,
            max_shift=base.max_shift * s,
            flip=bool(self.aug_flip.value),
            rot90=bool(self.aug_flip.value),
            gamma=gray,
            gamma_range=around_one(base.gamma_range),
            contrast=gray,
            contrast_range=around_one(base.contrast_range),
            brightness=gray,
            max_brightness=base.max_brightness * s,
            noise=bool(self.aug_noise.value),
            max_noise=base.max_noise * s,
        )


    def _settings_job(self, job: TrainJob) -> None:
        """Fill in the budget, the settings and the checkpoint folder of ``job``."""
        if self.budget.value == self.MINUTES:
            job.max_time = float(self.minutes.value) * 60.0
        else:
            job.iterations = int(self.iterations.value)
        job.lr = float(self.lr.value) or None
        job.tile_size = int(self.tile_size.value) or None
        job.batch_size = int(self.batch_size.value)
        job.augment = self.augment_config()
        job.device = self.device.value
        job.val_fraction = float(self.val_fraction.value)
        job.kwargs["zoom_to_model"] = bool(self.zoom_to_model.value)
        job.kwargs["keep_start"] = float(self.keep_start.value)
        if int(self.val_every.value) > 0:
            job.kwargs["val_every"] = int(self.val_every.value)
        ck = self.checkpoint_dir.value
        if ck is not None and str(ck) not in ("", "."):
            job.checkpoint_dir = Path(ck)
        elif job.resume is None:
            job.checkpoint_dir = Path(tempfile.mkdtemp(prefix="napari-unet-train-"))
            self.temp_dirs.append(job.checkpoint_dir)
            atexit.register(shutil.rmtree, job.checkpoint_dir, True)  # also if napari just quits


class _TrainingRunSection:
    """Train / Cancel, the progress bar, the ETA line, the loss plot and the status line;
    what a run does while it trains, when it ends and when it is cancelled."""

    def _run_section(self, dark: bool) -> RunControls:
        self._run: Any = None  # TrainingRun of the current/last run
        self._job: TrainJob | None = None
        self._task = ""  # "train", "apply" or "export"
        self._last_info: dict[str, Any] = {}
        self._start_it = 0  # the iteration this run started at (resume: later than 0)
        self.temp_dirs: list[Path] = []  # temporary checkpoint folders made here (removed on close)
        self.controls = RunControls("Train", "Start training (in the background)",
                                    "Stop at the next step and keep the best model so far", status_text="")
        self.run_button, self.cancel_button = self.controls.run_button, self.controls.cancel_button
        self.progress, self.status = self.controls.progress, self.controls.status
        plot = LossPlotSection(dark)
        self.eta, self.plot, self.plot_box = plot.eta, plot.plot, plot.box
        return self.controls

    def _run_rows(self) -> list[Any]:
        return [self.controls.buttons, self.progress, self.eta, self.plot_box, self.status]

    def run(self, *_: Any) -> Any:
        """Start training (returns the worker, or None when the input is refused)."""
        job = self.runner.make_job(self._make_job)
        if job is None:
            return None
        sources = job.kwargs.pop("_sources")
        self._job = job
        self._run = None
        self._task = "train"
        self._last_info = {}
        self._t0 = time.perf_counter()
        self.plot.clear()
        self.eta.value = ""
        worker = self.runner.start(
            lambda: run_training(job),
            self._training_done,
            on_progress=self._on_train_progress,
            on_cancelled=self._training_cancelled,
            message=f"Preparing {len(job.images)} training image(s) ({'; '.join(sources)})...",
        )
        self._after_start(worker)
        if worker is not None:  # on a small screen: Train, the progress and the plot in view
            from qtpy.QtCore import QPoint

            top = self.run_button.native.mapTo(self.form.native, QPoint(0, 0)).y()
            self.scroll.verticalScrollBar().setValue(top - 8)
        return worker

    def cancel(self) -> None:
        self.runner.cancel()

    def _after_start(self, worker: Any) -> None:
        if worker is None:
            return
        self._sync()
        worker.finished.connect(self._sync)

    def _on_train_progress(self, rec: Progress) -> None:
        info = rec.info or {}
        if info.get("phase") == "preview":
            self._show_preview(info["preview"])
            return
        run = info.get("run")
        if run is not None:
            self._run = run
        if info.get("phase") == "start":
            self._start_it = int(info.get("iteration", 0))
        self.plot.add(info)
        self._last_info.update({k: v for k, v in info.items() if k != "run"})
        job = self._job
        if job is not None and job.max_time is not None and info.get("phase") == "train":
            # a time budget: the bar shows time, not an estimated step count
            self.progress.max = int(job.max_time)
            self.progress.value = min(int(time.perf_counter() - self._t0), int(job.max_time))
        parts = []
        last = self._last_info
        on_time = job is not None and job.max_time is not None
        if "iteration" in last and (rec.total or on_time):
            # a time budget has no step count: the steps done, and the time left
            parts.append(f"step {last['iteration']}" if on_time else f"step {last['iteration']}/{rec.total}")
        if info.get("phase") == "done":
            parts.append("finished")
        elif "eta" in last:
            parts.append(f"{_fmt_time(last['eta'])} left" if on_time else f"ETA {_fmt_time(last['eta'])}")
        if "val_ap" in last:
            run = self._run
            best = f" (best {run.best_score:.2f})" if run is not None and run.best_state is not None else ""
            parts.append(f"val. {last['score']} {last['val_ap']:.2f}{best}")
        if parts:
            self.eta.value = " · ".join(parts)

    def _finish_text(self, model: Any, how: str) -> str:
        from ..training import describe_outcome

        run = self._run
        it = run.iteration if run is not None else self._last_info.get("iteration", 0)
        took = f"{it} iteration(s) in {_fmt_time(time.perf_counter() - self._t0)}"
        hist = (model.meta.get("history") or [{}])[-1] if model is not None else {}
        if hist.get("improved") is False:
            outcome = describe_outcome(hist)
            text = f"{outcome[0].upper()}{outcome[1:]} ({took}). Save, Export and Apply use it unchanged"
            if self.model_tag != "trained":
                text += f" (as '{self.model_tag}')"
        else:
            text = f"{how} after {took}; "
            text += describe_outcome(hist)
        if hist.get("start_model"):
            text += f"; started from {hist['start_model']}"
        if model is not None and model.meta.get("input"):
            from ..channels import describe_input

            text += f"; input: {describe_input(model.meta, model.config.in_channels)}"
        job = self._job
        folder = job.checkpoint_dir or job.resume if job is not None else None
        if folder is not None:
            temporary = " (temporary: removed when this widget closes)" if folder in self.temp_dirs else ""
            text += f". Checkpoints: {folder}{temporary}"
        return text

    def _keep_result(self, model: Any) -> bool:
        """Make ``model`` (a finished or cancelled run's) the current model; False when the run
        did not improve on its starting model, which then keeps its own name."""
        improved = (model.meta.get("history") or [{}])[-1].get("improved") is not False
        job = self._job
        if improved or job is None:
            self.model_tag = "trained"
        elif job.start == "file" and job.model_path is not None:
            self.model_tag = Path(job.model_path).stem
        elif job.start == "bundled":
            self.model_tag = "bundled"
        # "current": the model continued from keeps the name it had
        self.trained_model = model
        self.start.value = self.CURRENT
        self._sync()
        return improved

    def _training_done(self, model: Any) -> None:
        improved = self._keep_result(model)
        set_status(self.status, self._finish_text(model, "Trained"), "ok" if improved else "warning")
        self.plot.redraw()

    def _training_cancelled(self) -> None:
        if self._task != "train":
            return
        run = self._run
        if run is None or run.iteration <= self._start_it:
            # no step was made: the starting model is not a result
            self.eta.value = ""
            set_status(self.status, "Cancelled before the first training step; no model was changed", "warning")
            return
        self.eta.value = f"stopped at step {run.iteration}"  # no ETA left on screen
        # the generator's return value is lost on quit: take the best weights from the run
        model = run.best_model()
        self._keep_result(model)
        set_status(self.status, "Cancelled. " + self._finish_text(model, "Stopped"), "warning")
        self.plot.redraw()

    def _closed(self) -> None:
        """The dock was closed: stop training (it would run on unseen for its whole budget)
        and remove the temporary checkpoint folders once the worker has let go of them."""
        worker = self.runner.worker
        if worker is None:
            self.remove_temp_dirs()
            return
        worker.finished.connect(self.remove_temp_dirs)
        self.runner.cancel()

    def remove_temp_dirs(self, *_: Any) -> None:
        """Delete the temporary checkpoint folders this widget made (not chosen ones)."""
        for folder in self.temp_dirs:
            shutil.rmtree(folder, ignore_errors=True)
        self.temp_dirs = []

    def _show_preview(self, labels: np.ndarray) -> None:
        layer = self.apply_image.value
        if layer is None:
            return
        n = labels.ndim
        w = add_or_update_layer(self._viewer, labels, f"{layer.name} preview", "labels", writer=WRITER,
                                scale=tuple(layer.scale)[-n:], translate=tuple(layer.translate)[-n:])
        w.layer.metadata.setdefault("napari_unet_preview", True)


class _ResultSection:
    """The trained model: save, load, export for bioimage.io, apply to an image, and the
    live preview during training."""

    def _result_section(self) -> list[Any]:
        self.trained_model: UNet | None = None
        self.model_tag = "trained"  # names Apply's layer: "<image> labels (<model_tag>)"
        self.exported: Path | None = None  # the last bioimage.io package written
        self.save_button = PushButton(text="Save model...", tooltip="Write the trained model to a .pt file")
        self.load_button = PushButton(text="Load model...", tooltip="Make a model file the current model")
        self.export_button = PushButton(
            text="Export for bioimage.io...",
            tooltip="Write the current model as a bioimage.io model package (.zip), to run it in "
            "other tools (deepImageJ, ilastik, bioimage.io)",
        )
        self.apply_image = layer_picker("Image", "Apply to", "Image to segment with the current model")
        self.apply_button = PushButton(text="Apply to image",
                                       tooltip="Segment it with the current model → '<image> labels (trained)'")
        self.preview = CheckBox(text="Live preview at each validation", value=False,
                                tooltip="Segment the 'Apply to' image with the current weights after "
                                "each validation (slows training a little)")
        return [row(self.save_button, self.load_button), row(self.export_button),
                self.apply_image, self.apply_button, self.preview]

    def _connect_result(self) -> None:
        self.save_button.changed.connect(self._save_clicked)
        self.load_button.changed.connect(self._load_clicked)
        self.export_button.changed.connect(self._export_clicked)
        self.apply_button.changed.connect(self.apply)

    def _sync_result(self) -> None:
        has_model = self.trained_model is not None
        busy = self.runner.running if hasattr(self, "runner") else False
        for b in (self.save_button, self.apply_button, self.export_button):
            b.enabled = has_model and not busy
        self.load_button.enabled = not busy
        # name the model they write ("trained": the model trained here; else the one kept unchanged or loaded)
        what = f"the current model ('{self.model_tag}')" if has_model else "the current model (none yet)"
        self.save_button.tooltip = f"Write {what} to a .pt file"
        self.export_button.tooltip = (f"Write {what} as a bioimage.io model package (.zip), to run it in other "
                                      "tools (deepImageJ, ilastik, bioimage.io)")
        self.apply_button.tooltip = f"Segment the 'Apply to' image with {what} → '<image> labels ({self.model_tag})'"

    def _preview_job(self, job: TrainJob) -> None:
        if self.preview.value and self.apply_image.value is not None:
            from .segment import layer_axes

            layer = self.apply_image.value
            job.preview = _layer_array(layer)
            job.preview_axes = layer_axes(layer, "auto")

    def save_model_to(self, path: str | Path) -> Path:
        """Write the current model to ``path`` (atomically; ``.pt`` added if missing)."""
        from ..model import save_model

        if self.trained_model is None:
            raise ValueError("There is no trained model to save yet: train or load one first")
        p = Path(path)
        if p.suffix == "":
            p = p.with_suffix(".pt")
        out = save_model(self.trained_model, p)
        set_status(self.status, f"Saved the model to {out}")
        return out

    def export_model_to(self, path: str | Path) -> Any:
        """Write the current model as a bioimage.io package (``.zip`` added if missing), in
        the background; returns the worker (None when busy). The written path is
        :attr:`exported` when it ends."""
        if self.trained_model is None:
            raise ValueError("There is no trained model to export yet: train or load one first")
        p = Path(path)
        if p.suffix.lower() != ".zip":
            p = p.with_suffix(".zip")
        if self.runner.running:
            return None
        model = self.trained_model
        self._task = "export"
        self.exported = None

        def done(out: Path) -> None:
            self.exported = Path(out)
            set_status(self.status, f"Exported the model as a bioimage.io package: {out}")

        worker = self.runner.start(lambda: run_export(model, p), done, message=f"Exporting to {p.name}...")
        self._after_start(worker)
        return worker

    def load_model_from(self, path: str | Path) -> Any:
        """Make a model file the current model (for Apply, or to continue training)."""
        from ..model import load_model

        self.trained_model = load_model(path)
        self.model_tag = Path(path).stem
        self.start.value = self.CURRENT
        self._sync()
        mode = self.trained_model.meta.get("mode", "?")
        set_status(self.status, f"Loaded {Path(path).name} ({mode}); it is now the current model")
        return self.trained_model

    def _with_file(self, save: bool, title: str, default: str, filters: str, action: Any) -> None:
        """Ask for a file (to write or to read) and run ``action(path)``; errors go to the status."""
        from qtpy.QtWidgets import QFileDialog

        ask = QFileDialog.getSaveFileName if save else QFileDialog.getOpenFileName
        path, _ = ask(self.native, title, default, filters)
        if not path:
            return
        try:
            action(path)
        except (ValueError, OSError) as exc:
            show_error_in(self.status, exc)

    def _save_clicked(self, *_: Any) -> None:
        self._with_file(True, "Save model", "unet_model.pt", "napari-unet models (*.pt)", self.save_model_to)

    def _export_clicked(self, *_: Any) -> None:
        self._with_file(True, "Export for bioimage.io", "unet_model.bioimageio.zip",
                        "bioimage.io model packages (*.zip)", self.export_model_to)

    def _load_clicked(self, *_: Any) -> None:
        self._with_file(False, "Load model", "", "napari-unet models (*.pt);;All files (*)", self.load_model_from)

    def apply(self, *_: Any) -> Any:
        """Segment the 'Apply to' image with the current model → '<image> labels (<model>)'
        (a layer of the person's own under that name is kept; the result goes beside it)."""
        if self.runner.running:
            return None
        layer = self.apply_image.value
        if self.trained_model is None:
            show_error_in(self.status, "There is no current model yet: train or load one first")
            return None
        if layer is None:
            show_error_in(self.status, "No image to apply the model to: choose one in 'Apply to'")
            return None
        from .segment import layer_axes, output_geometry

        from ..tiling import parse_axes

        data = _layer_array(layer)
        try:
            axes = layer_axes(layer, "auto")
            layout = parse_axes(data.shape, axes)
        except ValueError as exc:
            show_error_in(self.status, exc)
            return None
        scale, translate = output_geometry(layer, layout.channel, len(layout.out_shape))
        model, device, name, tag = self.trained_model, self.device.value, layer.name, self.model_tag
        self._task = "apply"

        def done(result: ApplyResult) -> None:
            geo = {"scale": scale, "translate": translate} if len(scale) == result.labels.ndim else {}
            w = add_or_update_layer(self._viewer, result.labels, result_name(name, "labels", tag), "labels",
                                    writer=WRITER, **geo)
            n = count_cells(result.labels)
            text = f"{n} cells in {result.seconds:.1f} s → '{w.layer.name}'"
            if w.note:
                text += f" ({w.note})"
            set_status(self.status, text, "warning" if w.note else "ok")

        worker = self.runner.start(lambda: run_apply(model, data, axes, device), done,
                                   message=f"Segmenting '{name}' with the current model...")
        self._after_start(worker)
        return worker


class TrainWidget(
    _TrainingPairs, _TrainingSetSection, _StartModelSection, _SettingsSection, _TrainingRunSection, _ResultSection,
    Container,
):
    """Train a U-Net on annotated layers and/or a training-set folder.

    Child widgets are attributes so scripts and tests can set values and press buttons:
    data (``image``, ``labels``, ``region``, ``add_pair_button``, ``pairs``,
    ``remove_pair_button``, ``folder``, ``load_folder_button``), model (``start``,
    ``model_file``, ``resume_dir``, ``mode``, ``depth``, ``width``), settings
    (``budget``, ``iterations``, ``minutes``, ``lr``, ``tile_size``, ``batch_size``,
    ``val_fraction``, ``keep_start``, ``device``, ``checkpoint_dir``, augmentation check boxes and
    ``aug_strength``), run (``run_button``, ``cancel_button``, ``progress``, ``eta``,
    ``plot``, ``status``) and result (``save_button``, ``load_button``, ``export_button``,
    ``apply_image``, ``apply_button``, ``preview``). The trained model is
    :attr:`trained_model`.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        from ..augment import AugmentConfig

        self._viewer = napari_viewer
        self._AugmentConfig = AugmentConfig
        self.device = DevicePicker()
        self._run_section(dark=_is_dark(napari_viewer))
        # the form scrolls inside the dock: it is taller than a 1280x800 screen
        self.form = Container(
            widgets=[
                header("Training data", rule=False), *self._pairs_section(), *self._set_section(),
                header("Model", rule=False), *self._model_section(),
                header("Training", rule=False), *self._budget_section(), *self.device.widgets,
                self._folded_settings(), *self._run_rows(),
                header("Result", rule=False), *self._result_section(),
            ],
            labels=True,
        )
        super().__init__(widgets=[self.form], labels=False)
        self.runner = self.controls.make_runner()
        self.run_button.changed.connect(self.run)
        self._connect_pairs()
        self._connect_set()
        self._connect_result()
        self.start.changed.connect(self._sync)
        self.budget.changed.connect(self._sync)
        self._connect_close()
        self.form.native.setMinimumWidth(320)
        self.scroll = scroll_form(self, self.form, self.advanced, self.augmentation)
        self._sync()
        self.reset_choices()
        self._update_set_info()  # also the first status line: what to do with what is chosen
        self._labels_chosen()

    def _connect_close(self) -> None:
        on_close(self, self._closed)
        # the viewer closing deletes the widget: stop the worker, touching no child widget
        runner = self.runner
        self.native.destroyed.connect(lambda *_: runner.worker.quit() if runner.worker is not None else None)

    def reset_choices(self, *_: Any) -> None:
        region = self.region.value
        chosen = list(self.pairs.value)
        super().reset_choices()
        if region is None:  # a new Shapes layer (e.g. a new annotation) is not a region yet
            self.region.value = None
        if not self._forget_removed_layers():
            # magicgui resets the pair list to its initial (empty) choices with the layer
            # pickers: show the pairs that train again, so the list never hides one
            self._refresh_pairs()
            self.pairs.value = [c for c in chosen if c in self.pairs.choices]


    def _sync(self, *_: Any) -> None:
        self._sync_model()
        self._sync_budget()
        self._sync_result()
        three_d = self.start.value == self.BUNDLED_3D
        if self.device.bf16 == three_d:  # the 3D U-Net trains in float32
            self.device.bf16 = not three_d
            self.device.refresh()

    def _make_job(self) -> TrainJob:
        if self._starts_3d():
            return self._make_job_3d()
        images, labels, regions, sources = self.collect_data()
        job = TrainJob(images=images, labels=labels, regions=regions, start=self._start_key())
        self._model_job(job)
        self._settings_job(job)
        self._preview_job(job)
        job.kwargs["_sources"] = sources  # popped before train_iter (shown in the status)
        return job


    def _make_job_3d(self) -> TrainJob:
        """A job for the 3D U-Net: whole stacks from the pair list (or the pickers' pair)."""
        if self.training_set is not None and not self._pairs:
            raise ValueError("The 3D U-Net learns from whole labelled stacks, not from a training set of planes: "
                             "choose the stack and its 3D Labels layer above")
        pairs = list(self._pairs) or [self._current_pair()]
        stacks = [pair_stack(pair) for pair in pairs]
        job = TrainJob(images=[t[0] for t in stacks], labels=[t[1] for t in stacks],
                       regions=[t[2] for t in stacks], start=self._start_key(), three_d=True,
                       voxel_sizes=[t[3] for t in stacks])
        self._model_job(job)
        self._settings_job(job)
        job.kwargs["_sources"] = [f"{pair.describe()} (3D)" for pair in pairs]
        return job


def _is_dark(viewer: Any) -> bool:
    try:
        from napari.utils.theme import get_theme

        bg = get_theme(viewer.theme).background.as_rgb_tuple()
        return sum(bg[:3]) < 3 * 128
    except (AttributeError, KeyError, ValueError, TypeError):
        return True


__all__ = ["LayerPair", "TrainJob", "TrainWidget", "pair_arrays", "run_training", "shapes_to_mask",
           "training_set_arrays"]
