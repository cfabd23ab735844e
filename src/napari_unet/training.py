"""Fine-tuning as a generator: progress records out, the trained model returned.

:func:`train_iter` yields a :class:`~napari_unet._progress.Progress` record after every
training step (so ``worker.quit()`` in a widget, or closing the generator, stops within
one step) and *returns* the trained model: the best by validation score when there is
validation data, otherwise the last. :func:`fine_tune` drains it for scripts.

Data path (no worker processes, which break in GUIs on Windows/macOS): every image is
normalised once with the model's rule, its class targets, loss mask and weight map are
computed once, and the arrays are reflect-padded once. Each step cuts random source crops
(larger than the tile, to leave room for rotation and elastic deformation) in the main
process -- a few array slices -- and :mod:`napari_unet.augment` transforms the whole batch
on the training device with one ``grid_sample`` per tensor kind.

Loss: pixel-wise softmax cross-entropy times the weight map (eq. 2 of the paper), with
the ignore mask giving weight 0, normalised by the **sum of the weights** of the counted
pixels (a weighted mean), so the loss scale and the useful learning rate do not depend on
``w0``. :func:`weighted_cross_entropy` is the one place where targets, weights and mask
are cropped to the network's (valid-convolution) output.

Optimiser (measured with ``benchmarks/bench_optim.py``): AdamW (weight decay 1e-4), linear
warm-up over the first 5% of the run, then cosine decay to 1% of the peak. Peak learning
rate 3e-3 from scratch, 3e-4 when fine-tuning a trained model (it starts close to a good
solution; the pretraining script uses 1e-3 over its long schedule).

Fine-tuning rate: the bundled model (and a second-stage variant) fine-tuned for 120 s
on the top half of a real DSB 2018 nuclei crop, scored on the bottom half (AP@0.5;
before fine-tuning 0.808 and 0.845): lr 1e-3 gave 0.833 / 0.884, **3e-4 gave 0.884 /
0.899**, 1e-4 gave 0.845 / 0.884.

Evidence: depth-3, width-8 U-Net from scratch, instance3, 8 synthetic 192x192 images,
batch 4, 64-px output tiles, all augmentations, 300 iterations, AP@0.5 on 4 held-out
synthetic images (one seed; differences below ~0.05 are noise)::

    optimizer  schedule  peak lr  final AP50  best AP50  train loss (last 30)
    AdamW      cosine    3e-3     0.726       0.726      0.260
    AdamW      cosine    1e-3     0.638       0.735      0.362
    AdamW      cosine    3e-4     0.349       0.349      0.694
    Adam       constant  1e-3     0.763       0.763      0.288
    SGD m=0.99 cosine    1e-2     0.705       0.705      0.302   (the paper's optimiser)
    SGD m=0.99 cosine    1e-3     0.512       0.512      0.374

Adam-type optimisers at 1e-3..3e-3 train fastest; 3e-4 is far too slow for a short run;
the paper's SGD with momentum 0.99 works at 1e-2 but is more sensitive to the rate.
AdamW at 3e-3 reached the lowest training loss; the cosine decay ends a run at a low
rate so the last (and best) checkpoints are not taken mid-oscillation, which a
constant rate does not guarantee.

Checkpoints (``checkpoint_dir``): ``last.pt`` and ``best.pt`` are ordinary model files
(:func:`napari_unet.model.save_model`, atomic); ``state.pt`` holds the optimiser, scaler,
random generators and counters, loaded with ``weights_only=True``. ``resume=DIR``
continues from the saved iteration.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
import uuid
import warnings
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._progress import Progress, ProgressBar, drain
from .augment import AugmentConfig, augment_batch
from .device import autocast, describe_device, is_out_of_memory, resolve_device
from .image_checks import modality_of
from .metrics import average_precision
from .model import MODES, ModelFileError, UNet, center_crop, clone_model, load_model, save_atomic
from .normalize import apply_normalization, normalization_params
from .targets import DEFAULT_MARGIN, check_labels, labels_to_targets

#: architecture of a fresh model when no trained one is given (the bundled model's)
FRESH_ARCHITECTURE = {"depth": 3, "base_width": 16, "dropout": 0.1}
DEFAULT_ITERATIONS = 500
LR_SCRATCH = 3e-3
LR_FINE_TUNE = 3e-4
#: a 1-channel model widened to colour in this run (it never saw colour): the fluorescence
#: model fine-tuned on three H&E tiles for 120 CPU-s, scored on two others, AP@0.5 0.19 at
#: 3e-4 and 0.29 at 1e-3 (the stained model, which knows colour: 0.42 at 3e-4)
LR_WIDENED = 1e-3
WARMUP_FRACTION = 0.05
FINAL_LR_FRACTION = 0.01
#: validation images are cut to at most this edge (their centre), to bound its cost
MAX_VAL_EDGE = 768
#: ... for membrane data, whose validation runs a watershed over the whole image: a
#: 512² ISBI slice cost 2 s (forward + watershed) per validation, a 256² centre a quarter
MAX_VAL_EDGE_MEMBRANES = 256
PRESETS = ("membranes", "membrane-mask")
#: the weight map (eq. 2): w0, sigma (px) and the class balance
RECIPE = {"w0": 10.0, "sigma": 5.0, "class_weights": None}
#: ... of the membrane preset, measured on ISBI 2012 (train on slices 0-14, score 15-19,
#: 500 steps; the table is in benchmarks/bench_em.py's docstring)
MEMBRANE_RECIPE = dict(RECIPE)
#: ... for stained-tissue (H&E) images: no border term. Dense nuclei touch everywhere, and
#: w0 10 made fine-tuning the stained model score *below* the model itself on unseen tiles
#: (issue 11, he11b: 3 tiles, 120 s, tiles 01 + 08, AP@0.5: zero-shot 0.52; w0 10 0.43,
#: 3 0.49, 0 0.54; the table is in benchmarks/real_he.py's docstring)
STAINED_RECIPE = dict(RECIPE, w0=0.0)


# -- loss --------------------------------------------------------------------------------


def weighted_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pixel-wise softmax cross-entropy weighted by a weight map, ignoring masked pixels.

    ``targets``/``weights``/``mask`` may be larger than ``logits`` (the network's input
    tile): they are centre-cropped to the output size here -- the one place where the
    valid-convolution geometry meets the loss.

    Args:
        logits: (B, K, h, w) network output.
        targets: (B, H, W) int64 classes, H >= h, W >= w.
        weights: optional (B, H, W) per-pixel weights (default 1).
        mask: optional (B, H, W) bool; False pixels have weight 0.

    Returns:
        Scalar: sum(w * ce) / sum(w) over counted pixels (0 when none counts).
    """
    size = logits.shape[-2:]
    targets = center_crop(targets, size)
    w = torch.ones(targets.shape, device=logits.device) if weights is None else center_crop(weights, size).float()
    if mask is not None:
        m = center_crop(mask, size)
        w = w * m
        # ignored pixels may hold any value (e.g. a class the model does not know)
        targets = torch.where(m, targets, torch.zeros_like(targets))
    ce = F.cross_entropy(logits.float(), targets, reduction="none")
    total = w.sum()
    return (ce * w).sum() / total.clamp_min(1e-12)


# -- inputs ------------------------------------------------------------------------------


def _as_chw(image: Any, in_channels: int, index: int) -> np.ndarray:
    """(C, H, W) float32 from a 2D image or a 3D image with a channel axis."""
    arr = np.asarray(image)
    if arr.ndim == 2 and in_channels == 1:
        return arr[None].astype(np.float32, copy=False)
    if arr.ndim == 3 and in_channels > 1:
        if arr.shape[0] == in_channels:
            return arr.astype(np.float32, copy=False)
        if arr.shape[-1] == in_channels:
            return np.moveaxis(arr, -1, 0).astype(np.float32, copy=False)
    want = "a 2D (y, x) image" if in_channels == 1 else f"a 3D image with {in_channels} channels first or last"
    raise ValueError(f"training image {index} has shape {arr.shape}, but the model expects {want}")


def _normalised_whole(image: Any, in_channels: int, index: int, rule: dict[str, Any]) -> np.ndarray:
    """An image normalised by its model's rule with the WHOLE image's statistics (as
    inference does), before any strip or crop is cut from it; 2D for 1-channel models."""
    chw = _as_chw(image, in_channels, index)
    _check_finite(chw, index)
    lo, hi = normalization_params(chw, rule, channel_axis=0)
    norm = apply_normalization(chw, lo, hi, channel_axis=0)
    return norm[0] if in_channels == 1 else norm


def _check_finite(image: np.ndarray, index: int) -> None:
    bad = int(np.count_nonzero(~np.isfinite(image)))
    if bad:
        raise ValueError(
            f"training image {index} holds {bad} NaN/inf pixel(s); replace them "
            "(e.g. numpy.nan_to_num) or crop them away before training"
        )


def _weights_for(labels: np.ndarray, targets: np.ndarray, mode: str, w0: float, sigma: float, class_weights: Any) -> np.ndarray:
    """The loss weight map of one image (eq. 2 for instance modes)."""
    if mode == "semantic":
        w = np.ones(labels.shape, np.float32)
        if class_weights == "balanced":
            counts = np.bincount(targets.ravel()).astype(np.float64)
            freq = counts / counts.sum()
            inv = np.where(counts > 0, 1.0 / np.maximum(freq, 1e-12), 0.0)
            inv /= (inv * freq).sum()  # mean weight 1
            w = inv[targets].astype(np.float32)
        return w
    from .weights import weight_map

    if mode == "instance2":
        # the carved-out touching borders are background to learn: they must get the
        # border term (its peak is exactly there), so weigh the carved labels
        labels = np.where(targets == 0, 0, labels)
    return np.asarray(weight_map(labels, w0=w0, sigma=sigma, class_weights=class_weights), np.float32)


@dataclass
class _Item:
    """One training image, normalised, with targets/weights/mask, reflect-padded once."""

    image: np.ndarray  # (C, H + 2p, W + 2p) float32
    targets: np.ndarray  # (H + 2p, W + 2p) int16
    weights: np.ndarray  # float32
    mask: np.ndarray  # bool, False in the padding
    pad: int
    centres: np.ndarray  # (N, 2) candidate crop centres (unpadded coordinates)
    counted: int


class TrainingData:
    """Precomputed training arrays and a random crop sampler (main process, no workers).

    Args:
        images: list of raw images.
        labels: list of label images (same spatial shapes).
        regions: list of annotated-region masks / None / "all", or None.
        mode: class meaning (``instance3``, ``instance2``, ``semantic``).
        normalization: the model's normalisation rule.
        in_channels: channels the model expects.
        source_size: edge of the source crops handed to the augmentation.
        w0, sigma, class_weights: weight-map parameters (eq. 2).
        margin: annotated margin around labelled cells when a region is None.
        num_classes: classes of the model (checked against semantic labels).
    """

    MAX_CENTRES = 50_000

    def __init__(
        self,
        images: Sequence[Any],
        labels: Sequence[Any],
        regions: Sequence[Any] | None,
        *,
        mode: str,
        normalization: dict[str, Any],
        in_channels: int,
        source_size: int,
        w0: float = 10.0,
        sigma: float = 5.0,
        class_weights: Any = None,
        margin: int = DEFAULT_MARGIN,
        num_classes: int | None = None,
        rng: np.random.Generator | None = None,
        first_index: int = 0,
    ) -> None:
        rng = rng or np.random.default_rng(0)
        self.source_size = int(source_size)
        self.items: list[_Item] = []
        pad = self.source_size // 2 + 1
        n_flat = 0
        for k, (img, lab) in enumerate(zip(images, labels)):
            idx = first_index + k
            chw = _as_chw(img, in_channels, idx)
            _check_finite(chw, idx)
            lab = check_labels(lab, f"labels {idx}")
            if lab.shape != chw.shape[1:]:
                raise ValueError(f"labels {idx} have shape {lab.shape} but image {idx} is {chw.shape[1:]} (y, x)")
            flat = chw.size > 0 and chw.min() == chw.max()
            n_flat += flat
            if flat and lab.max(initial=0) > 0:
                # an all-zero image (a wrong channel or an empty file) would train its whole budget on nothing
                raise ValueError(f"training image {idx} is constant (every pixel is {chw.flat[0]:g}) but its labels "
                                 "hold cells: nothing in the image shows them; check the file or channel")
            region = regions[k] if regions is not None else None
            try:
                targets, mask = labels_to_targets(lab, mode, region, margin)
            except ValueError as exc:
                raise ValueError(f"training image {idx}: {exc}") from exc
            if mode == "semantic" and num_classes is not None and int(targets[mask].max(initial=0)) >= num_classes:
                raise ValueError(
                    f"labels {idx} hold class {int(targets[mask].max())} but the model has only "
                    f"{num_classes} classes (0..{num_classes - 1})"
                )
            counted = int(mask.sum())
            if counted == 0:
                raise ValueError(f"training image {idx}: the annotated region is empty; nothing to learn from")
            weights = _weights_for(lab, targets, mode, w0, sigma, class_weights)
            lo, hi = normalization_params(chw, normalization, channel_axis=0)
            norm = apply_normalization(chw, lo, hi, channel_axis=0)
            yx = np.argwhere(mask)
            if len(yx) > self.MAX_CENTRES:
                yx = yx[rng.choice(len(yx), self.MAX_CENTRES, replace=False)]
            pw = ((pad, pad), (pad, pad))
            self.items.append(
                _Item(
                    image=np.pad(norm, ((0, 0),) + pw, mode="reflect"),
                    # class ids are small: int16 keeps the padded pool light
                    targets=np.pad(targets.astype(np.int16), pw, mode="reflect"),
                    weights=np.pad(weights, pw, mode="reflect"),
                    mask=np.pad(mask, pw, mode="constant", constant_values=False),
                    pad=pad,
                    centres=yx.astype(np.int32),
                    counted=counted,
                )
            )
        if not self.items:
            raise ValueError("no training images given")
        if n_flat == len(self.items):
            warnings.warn("Every training image is constant (all its pixels the same), so training can only learn "
                          "that flat images hold no cells; check the files or channels.", UserWarning, stacklevel=2)
        counts = np.array([it.counted for it in self.items], np.float64)
        # images are drawn in proportion to their annotated area
        self._p = counts / counts.sum()

    def __len__(self) -> int:
        return len(self.items)

    def sample(self, batch: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        """``batch`` random source crops centred on annotated pixels.

        Returns:
            (image (B, C, S, S) float32, targets (B, S, S) int16, weights, mask) arrays.
        """
        s = self.source_size
        which = rng.choice(len(self.items), size=batch, p=self._p)
        out: list[list[np.ndarray]] = [[], [], [], []]
        for i in which:
            it = self.items[i]
            cy, cx = it.centres[rng.integers(len(it.centres))]
            top, left = cy + it.pad - s // 2, cx + it.pad - s // 2
            sl = (slice(top, top + s), slice(left, left + s))
            out[0].append(it.image[(slice(None), *sl)])
            out[1].append(it.targets[sl])
            out[2].append(it.weights[sl])
            out[3].append(it.mask[sl])
        return tuple(np.stack(o) for o in out)  # type: ignore[return-value]


@dataclass
class _ValItem:
    image: np.ndarray  # (C, H, W) normalised
    gt: np.ndarray  # instance (or class) labels restricted to the annotated region
    targets: np.ndarray
    weights: np.ndarray
    mask: np.ndarray


def _split_for_validation(
    images: list[Any], labels: list[Any], regions: list[Any] | None, val_fraction: float
) -> tuple[list[Any], list[Any], list[Any] | None, list[Any], list[Any], list[Any] | None]:
    """Hold out whole images (4 or more images) or a strip of each image (fewer)."""
    n = len(images)
    if val_fraction <= 0:
        return images, labels, regions, [], [], None
    if n >= 4:
        k = max(1, int(round(n * val_fraction)))
        k = min(k, n - 1)
        tr, va = list(range(n - k)), list(range(n - k, n))
        pick = lambda seq, ids: [seq[i] for i in ids] if seq is not None else None  # noqa: E731
        return (pick(images, tr), pick(labels, tr), pick(regions, tr), pick(images, va), pick(labels, va), pick(regions, va))
    tr_i, tr_l, tr_r, va_i, va_l, va_r = [], [], [], [], [], []
    for k in range(n):
        img, lab = images[k], np.asarray(labels[k])
        reg = regions[k] if regions is not None else None
        h, w = lab.shape
        axis = 0 if h >= w else 1
        length = lab.shape[axis]
        cut = length - int(round(length * val_fraction))
        if length - cut < 48 or cut < 48:
            # too small to cut: train on all of it, validate on nothing from this image
            tr_i.append(img), tr_l.append(lab), tr_r.append(reg)
            continue
        sl_tr = (slice(None), slice(0, cut)) if axis == 1 else (slice(0, cut), slice(None))
        sl_va = (slice(None), slice(cut, None)) if axis == 1 else (slice(cut, None), slice(None))
        arr = np.asarray(img)
        # the image may carry a channel axis first (C, H, W) or last (H, W, C)
        if arr.ndim == 3 and arr.shape[1:] == lab.shape:
            ti, vi = arr[(slice(None), *sl_tr)], arr[(slice(None), *sl_va)]
        else:
            ti, vi = arr[sl_tr], arr[sl_va]
        tr_i.append(ti), va_i.append(vi)
        tr_l.append(lab[sl_tr]), va_l.append(lab[sl_va])
        if isinstance(reg, np.ndarray):
            tr_r.append(reg[sl_tr]), va_r.append(reg[sl_va])
        else:
            tr_r.append(reg), va_r.append(reg)
    return tr_i, tr_l, tr_r, va_i, va_l, va_r


# -- the run's state, shared with callers through Progress.info["run"] -------------------


@dataclass
class TrainingRun:
    """Live state of a run; every Progress record carries it as ``info["run"]``.

    A widget that cancels (``worker.quit()``) loses the generator's return value; it
    calls :meth:`best_model` on the last record's run instead.
    """

    model: UNet
    iteration: int = 0
    total: int = 0
    best_score: float = -math.inf
    best_loss: float = math.inf
    best_iteration: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    curve: list[dict[str, float]] = field(default_factory=list)
    #: the model's history with this run's record so far (set by ``train_iter``)
    history: Callable[[], list[dict[str, Any]]] | None = None
    #: the training arrays (normalised with each whole image's statistics)
    data: TrainingData | None = None

    def best_model(self) -> UNet:
        """A CPU copy of the best model so far (the current one when never validated),
        with this run's record in its history (marked as not finished)."""
        model = clone_model(self.model)
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        if self.history is not None:
            model.meta["history"] = self.history()
        return model.eval()


def _resolve_model(model: Any, mode: str | None, in_channels: int, labels: Sequence[Any],
                   first_image: Any = None) -> tuple[UNet, bool]:
    """The starting model (a copy) and whether it is freshly initialised."""
    if isinstance(model, UNet):
        return clone_model(model), False
    from .channels import bundled_path, pick_bundled

    if model is None and in_channels == 3 and pick_bundled(True, first_image) == "stained":
        return load_model(bundled_path("stained")), False  # RGB slides: the stained-tissue model
    if isinstance(model, str) and model in ("fluorescence", "stained"):
        return load_model(bundled_path(model)), False
    if model is None or (isinstance(model, str) and model == "bundled"):
        try:
            return load_model(), False
        except ModelFileError:
            if model == "bundled":
                raise
            warnings.warn(
                "the bundled model is not installed yet; training a fresh U-Net from scratch "
                "(pass model='scratch' to silence this warning)",
                RuntimeWarning,
                stacklevel=3,
            )
            model = "scratch"
    if isinstance(model, str) and model == "scratch":
        mode = mode or "instance3"
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if mode == "semantic":
            k = max(2, max(int(np.asarray(lab).max(initial=0)) for lab in labels) + 1)
        else:
            k = 3 if mode == "instance3" else 2
        fresh = UNet(in_channels=in_channels, num_classes=k, **FRESH_ARCHITECTURE)
        fresh.meta["mode"] = mode
        if mode == "semantic":
            fresh.meta["class_names"] = [f"class {i}" for i in range(k)]
        return fresh, True
    if isinstance(model, (str, os.PathLike)):
        return load_model(model), False
    raise ValueError(f"model must be a UNet, a model file path, 'bundled', 'scratch' or None, got {type(model).__name__}")


def _in_channels_of(images: Sequence[Any]) -> int:
    arr = np.asarray(images[0]) if not hasattr(images[0], "shape") else images[0]
    if arr.ndim == 2:
        return 1
    if arr.ndim == 3:
        return int(arr.shape[-1]) if arr.shape[-1] <= 4 else int(arr.shape[0])
    raise ValueError(f"training images must be 2D (optionally with a channel axis), got shape {arr.shape}")


def _image_axes(arr: Any, yx: tuple[int, ...]) -> str:
    """Axis letters of a training image whose labels have shape ``yx``."""
    shape = tuple(np.shape(arr))
    if len(shape) == 2:
        return "YX"
    if len(shape) == 3 and shape[1:] == tuple(yx):
        return "CYX"
    if len(shape) == 3 and shape[:2] == tuple(yx):
        return "YXC"
    raise ValueError(f"a training image of shape {shape} does not match its labels of shape {tuple(yx)}")


def _zoom_to_model(net: UNet, fresh: bool, enabled: bool, imgs: list, labs: list, regs: list | None,
                   va_i: list, va_l: list, va_r: list | None) -> tuple:
    """Training data zoomed to the starting model's cell size (see ``zoom_to_model``), and
    the model's ``meta["diameter"]`` set to the size it will know best afterwards.

    Returns the (possibly zoomed) lists, the zoom and the data's median cell diameter.
    """
    from .diameter import label_diameter, resize_image, resize_nearest, zoom_for, zoomed_shape

    data_d = label_diameter([*labs, *va_l])
    if not math.isfinite(data_d):
        return imgs, labs, regs, va_i, va_l, va_r, 1.0, data_d
    target = None if fresh else net.meta.get("diameter")
    if enabled and net.meta.get("zoom_each") and isinstance(target, (int, float)) and target > 0:
        return (*_zoom_each(float(target), imgs, labs, regs, va_i, va_l, va_r), data_d)
    known = net.meta.get("diameter_range")  # a model pretrained on many sizes (e.g. 20x and 40x)
    if known and not fresh and known[0] <= data_d <= known[1]:
        target = None  # it knows this size already: train at the data's own scale
    if not (enabled and isinstance(target, (int, float)) and target > 0):
        net.meta["diameter"] = round(data_d, 2)  # the data's own size is what it will know
        return imgs, labs, regs, va_i, va_l, va_r, 1.0, data_d
    zoom = zoom_for(float(target), data_d)
    if zoom == 1.0:
        return imgs, labs, regs, va_i, va_l, va_r, 1.0, data_d

    def zoom_set(images: list, labels: list, regions: list | None) -> tuple[list, list, list | None]:
        out_i, out_l, out_r = [], [], None if regions is None else []
        for k, (img, lab) in enumerate(zip(images, labels)):
            lab = np.asarray(lab)
            yx = zoomed_shape(lab.shape[-2:], zoom)
            out_i.append(resize_image(np.asarray(img), _image_axes(img, lab.shape), yx))
            out_l.append(resize_nearest(lab, "YX", yx))
            if out_r is not None:
                r = regions[k]
                out_r.append(resize_nearest(np.asarray(r), "YX", yx) if isinstance(r, np.ndarray) else r)
        return out_i, out_l, out_r

    imgs, labs, regs = zoom_set(imgs, labs, regs)
    if va_i:
        va_i, va_l, va_r = zoom_set(va_i, va_l, va_r)
    return imgs, labs, regs, va_i, va_l, va_r, zoom, data_d


def _zoom_each(target: float, imgs: list, labs: list, regs: list | None, va_i: list, va_l: list,
               va_r: list | None) -> tuple:
    """A model that records ``meta["zoom_each"]`` (stained tissue at 20x and 40x): every
    image zoomed so that *its own* cells have the model's diameter ``target``, as
    ``segment`` (``diameter="auto"`` by default for such a model) zooms each image.

    Returns the zoomed lists and the median of the zooms.
    """
    from .diameter import label_diameter, resize_image, resize_nearest, zoom_for, zoomed_shape

    zooms = []

    def one(img: Any, lab: Any, reg: Any) -> tuple:
        lab = np.asarray(lab)
        d = label_diameter([lab])
        z = zoom_for(target, d) if math.isfinite(d) else 1.0
        zooms.append(z)
        if z == 1.0:
            return img, lab, reg
        yx = zoomed_shape(lab.shape[-2:], z)
        if isinstance(reg, np.ndarray):
            reg = resize_nearest(reg, "YX", yx)
        return resize_image(np.asarray(img), _image_axes(img, lab.shape), yx), resize_nearest(lab, "YX", yx), reg

    def each(images: list, labels: list, regions: list | None) -> tuple[list, list, list | None]:
        done = [one(i, lab, None if regions is None else regions[k]) for k, (i, lab) in enumerate(zip(images, labels))]
        return [d[0] for d in done], [d[1] for d in done], None if regions is None else [d[2] for d in done]

    imgs, labs, regs = each(imgs, labs, regs)
    va_i, va_l, va_r = each(va_i, va_l, va_r)
    return imgs, labs, regs, va_i, va_l, va_r, float(np.median(zooms))


def lr_factor(fraction: float) -> float:
    """Schedule: linear warm-up over WARMUP_FRACTION, then cosine to FINAL_LR_FRACTION."""
    f = min(max(fraction, 0.0), 1.0)
    if f < WARMUP_FRACTION:
        return max(f / WARMUP_FRACTION, 0.01)
    t = (f - WARMUP_FRACTION) / (1 - WARMUP_FRACTION)
    return FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * t))


def _postprocess(probs: np.ndarray, mode: str, membranes: bool = False) -> np.ndarray:
    """Probabilities → labels with the package's post-processing (as ``segment`` does)."""
    from .postprocess import probabilities_to_labels

    return np.asarray(probabilities_to_labels(probs, mode, membranes=membranes))


def _membrane_preset(preset: str | None, net: UNet, fresh: bool, labels: Sequence[Any],
                     val_labels: Sequence[Any] | None) -> tuple:
    """The preset in force and the labels (and validation labels) as cell ids.

    ``"membranes"``: cells separated by membranes (0), as ids or a 0/1 interior mask;
    ``"membrane-mask"``: painted membranes (nonzero), the cells are what they enclose.
    With no preset, an ``instance2`` model trained with the preset, or a fresh one on
    labels that look like membrane data, gets ``"membranes"``.
    """
    from .targets import cells_between_membranes, looks_like_membranes, membrane_mask_to_cells

    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)} (or None)")
    mode = net.meta.get("mode", "instance3")
    if preset is not None and mode != "instance2":
        raise ValueError(f"preset {preset!r} trains mode 'instance2', but the model's mode is {mode!r}")
    if preset is None and mode == "instance2":
        never_trained = fresh or not net.meta.get("history")
        if net.meta.get("preset") == "membranes" or (never_trained and all(looks_like_membranes(lab) for lab in labels)):
            preset = "membranes"
    if preset is None:
        return None, labels, val_labels
    convert = membrane_mask_to_cells if preset == "membrane-mask" else cells_between_membranes
    labels = [convert(lab) for lab in labels]
    if val_labels is not None:
        val_labels = [convert(lab) for lab in val_labels]
    return "membranes", labels, val_labels


def _restrict_to_region(pred: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Drop predicted objects lying mostly outside the annotated region."""
    if region.all():
        return pred
    ids = pred.ravel()
    n = int(ids.max(initial=0)) + 1
    inside = np.bincount(ids[region.ravel()], minlength=n)
    total = np.bincount(ids, minlength=n)
    keep = inside * 2 >= total
    keep[0] = True
    out = np.where(keep[pred], pred, 0)
    return out


# -- the loop ----------------------------------------------------------------------------


def train_iter(
    images: Sequence[Any],
    labels: Sequence[Any],
    model: UNet | str | os.PathLike | None = None,
    *,
    regions: Sequence[Any] | None = None,
    iterations: int | None = None,
    max_time: float | None = None,
    device: str | torch.device | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    tile_size: int | None = None,
    augment: AugmentConfig = AugmentConfig(),
    val_fraction: float = 0.2,
    val_images: Sequence[Any] | None = None,
    val_labels: Sequence[Any] | None = None,
    val_regions: Sequence[Any] | None = None,
    val_every: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: str | os.PathLike | None = None,
    mode: str | None = None,
    preset: str | None = None,
    w0: float | None = None,
    sigma: float | None = None,
    class_weights: Any = None,
    margin: int = DEFAULT_MARGIN,
    early_stopping: int | None = None,
    weight_decay: float = 1e-4,
    amp: bool | None = None,
    seed: int = 0,
    schedule_iterations: int | None = None,
    wrap_network: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    optimizer: str = "adamw",
    schedule: str = "cosine",
    zoom_to_model: bool = True,
    oom_retry: bool = True,
    voxel_size: Any = None,
) -> Generator[Progress, None, UNet]:
    """Train a U-Net on labelled images; yields progress, returns the trained model.

    Args:
        images: list of images (2D, or with a channel axis for multi-channel models).
        labels: list of label images of the same (y, x) shapes (instance ids, or class
            values in semantic mode; 0 = background).
        model: starting model: a :class:`UNet` (copied, never modified), a model file
            path, ``"bundled"``, ``"scratch"`` (fresh network), or None = the bundled
            model (a fresh network with a warning while none is installed).
        regions: per image, the annotated area: a bool mask, ``"all"`` (complete labels)
            or None (labelled cells plus ``margin`` pixels; the rest is ignored).
        iterations: training steps (default 500 unless ``max_time`` alone is given).
        max_time: stop cleanly after this many seconds (of the whole run: a resumed run
            counts the time it trained before, and its learning-rate schedule goes on
            where it stopped).
        device: ``None``/``"auto"``, ``"cuda"``, ``"mps"`` or ``"cpu"``.
        lr: peak learning rate (default 3e-3 from scratch, 3e-4 from a trained model,
            1e-3 from a 1-channel model widened to the images' channels, see LR_WIDENED).
        batch_size: tiles per step (default 2 on the CPU, 4 on a GPU).
        tile_size: edge of the network's *output* tile in pixels (as in ``predict``),
            rounded up to a valid size; default 192. With valid convolutions a depth-3
            network computes a 44-px halo around every tile: a 96-px tile is 28% of its
            input, a 192-px tile 48%: a step cost 1.3-1.7x less per output pixel on the
            shared 2-core CPU (``benchmarks/bench_train_step.py``, two noisy runs).
            Fine-tuning the stained model on three H&E tiles for 120 CPU-seconds, scored on two others (``benchmarks/real_he.py``
            split, AP@0.5): 96 px x 4 0.42, 192 px x 2 0.44 (lr 1e-3: 0.49), 192 px x 4 0.42,
            256 px x 2 (lr 1e-3) 0.40; one seed, about +-0.05 noise.
        augment: augmentation switches and strengths.
        val_fraction: share held out for validation when no ``val_images`` are given
            (whole images from 4 images up, else a strip of each image); 0 = none.
        val_images, val_labels, val_regions: explicit validation data.
        val_every: validate every this many steps (default: 20 times per run).
        checkpoint_dir: where ``last.pt``, ``best.pt`` and ``state.pt`` are written.
        checkpoint_every: steps between checkpoints (default: at every validation).
        resume: a checkpoint directory to continue from (its model replaces ``model``).
        mode: class meaning for a fresh model; must match a trained model's.
        preset: ``"membranes"`` (EM-like data: cells separated by thin membranes, given
            as cell ids or a 0/1 interior mask, 0 = membrane) or ``"membrane-mask"``
            (painted membranes, nonzero = membrane; the cells are what they enclose).
            Both train ``mode="instance2"`` with :data:`MEMBRANE_RECIPE` and validation
            by the adapted Rand error (``val_ap`` is then 1 - that error), and mark the model so that ``segment`` uses the
            membrane watershed. None: ``mode="instance2"`` from scratch on labels that
            look like membrane data (:func:`napari_unet.targets.looks_like_membranes`)
            gets ``"membranes"``, as does fine-tuning a model trained with it.
        w0, sigma, class_weights: the weight map (eq. 2); None = 10 and 5 px (0 for
            stained-tissue images, :data:`STAINED_RECIPE`; or the
            membrane recipe's); ``class_weights=None`` = the recipe's (no balance
            outside the membrane preset), ``"none"`` = no balance in any case.
        margin: annotated margin around labelled cells when a region is None.
        early_stopping: stop after this many validations without improvement (None: off).
        weight_decay: AdamW weight decay.
        amp: mixed precision (None: on for CUDA; on for a CPU with bfloat16 units).
        seed: seeds the crop sampler, the augmentation and torch's global generator.
        schedule_iterations: length of the learning-rate schedule when it differs from
            ``iterations`` (a run split into several calls, e.g. pretraining on
            regenerated data pools).
        optimizer: ``"adamw"`` (default, measured best), ``"adam"`` or ``"sgd"`` (the
            paper's: momentum 0.99).
        schedule: ``"cosine"`` (warm-up then cosine decay, default) or ``"constant"``.
        zoom_to_model: when the starting model records the cell diameter it knows best
            (``meta["diameter"]``) and the training cells' median diameter differs from it
            by more than 25%, train on copies zoomed to the model's size (as
            ``segment(..., diameter="auto")`` segments), so that fine-tuning builds on what
            the model knows instead of relearning the scale. Measured on the real crop
            zoomed 2x, 90 s from the bundled model: AP@0.5 0.87 zoomed vs 0.67 unzoomed
            (0.83 before; ``benchmarks/bench_finetune_scale.py``). False: train at the
            data's own scale and record its diameter. A model that records
            ``meta["zoom_each"]`` (the stained model: slides at 20x and 40x) gets *each*
            image zoomed to the model's size by its own cells' diameter, as ``segment``
            then zooms each image; one that records ``meta["diameter_range"]`` (pretrained
            on many sizes) is not zoomed for data whose diameter lies inside that range.
        oom_retry: on running out of memory, halve the batch and retry the step (default).
            False: stop with a clear error instead, as under DistributedDataParallel, where
            one process halving alone would leave the others waiting for it forever.
        voxel_size: for labelled 3D stacks (an image and labels of the same (Z, Y, X)
            shape, which train on XY, XZ and YZ planes, see
            :func:`napari_unet.volume.stack_planes`): ``(z, y, x)`` or Z step / pixel
            size; None = estimated from the labels.
        wrap_network: called once with the network (on its device) before training; the
            module it returns runs the training forward passes (e.g. a
            ``DistributedDataParallel`` wrapper, see :mod:`napari_unet.ddp`).

    Yields:
        :class:`Progress` after every step; ``info`` holds ``iteration``, ``train_loss``,
        ``val_loss``/``val_ap`` (when computed), ``eta`` (s), ``lr``, ``device``,
        ``phase`` and ``run`` (a :class:`TrainingRun`).

    Returns:
        The trained model (CPU, eval mode): the best by validation AP, else the last.
    """
    if len(images) != len(labels):
        raise ValueError(f"got {len(images)} images but {len(labels)} label images")
    if len(images) == 0:
        raise ValueError("no training images given")
    if regions is not None and len(regions) != len(images):
        raise ValueError(f"got {len(regions)} regions for {len(images)} images")
    for k, (img, lab) in enumerate(zip(images, labels)):
        stack = np.ndim(lab) == 3 and tuple(np.shape(img)[:3]) == tuple(np.shape(lab))  # a labelled (Z, Y, X) stack
        if np.ndim(lab) != 2 and not stack:
            raise ValueError(f"labels {k} have shape {np.shape(lab)} but training takes 2D (Y, X) labels, "
                             f"one per 2D image, or (Z, Y, X) labels of a stack of that shape "
                             f"(image {k} has shape {np.shape(img)})")
    if iterations is not None and int(iterations) < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    if max_time is not None and float(max_time) <= 0:
        raise ValueError(f"max_time must be positive, got {max_time}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    total = int(iterations) if iterations is not None else (DEFAULT_ITERATIONS if max_time is None else 10**9)
    if any(np.ndim(lab) == 3 for lab in list(labels) + list(val_labels or [])):
        from .volume import expand_stacks  # labelled 3D stacks -> planes of all orientations

        images, labels, regions = expand_stacks(images, labels, regions, voxel_size)
        if val_images is not None and val_labels is not None:
            val_images, val_labels, val_regions = expand_stacks(val_images, val_labels, val_regions, voxel_size)

    dev = resolve_device(device)
    in_ch = _in_channels_of(images)
    state: dict[str, Any] | None = None
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    settings = _run_settings(images, labels, regions, val_images, val_labels, mode=mode, batch_size=batch_size,
                             tile_size=tile_size, augment=augment, val_fraction=val_fraction, w0=w0, sigma=sigma,
                             class_weights=class_weights, margin=margin, seed=seed, optimizer=optimizer,
                             schedule=schedule, zoom_to_model=zoom_to_model, preset=preset)
    if resume is None and ckpt is not None:
        found = [n for n in CHECKPOINT_FILES if (ckpt / n).exists()]
        if found:
            # their best.pt would pass for this run's: refuse rather than mix two runs in one folder
            raise ValueError(f"{ckpt} holds checkpoints of an earlier run ({', '.join(found)}); resume it, or choose "
                             "an empty checkpoint folder (napari-unet train --overwrite replaces them)")
    if resume is not None:
        rdir = Path(resume)
        if rdir.is_file():
            rdir = rdir.parent
        if not (rdir / "last.pt").is_file() or not (rdir / "state.pt").is_file():
            raise ValueError(f"cannot resume from {rdir}: it holds no last.pt and state.pt checkpoint")
        net = load_model(rdir / "last.pt")
        fresh = False
        try:
            state = torch.load(rdir / "state.pt", map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a bad file
            raise ModelFileError(f"{rdir / 'state.pt'} is not a readable training state ({exc})") from exc
        if ckpt is None:
            ckpt = rdir
        differ = sorted(k for k, v in settings.items() if state.get("settings", {}).get(k, v) != v)
        if differ:
            raise ValueError(f"cannot resume from {rdir}: that run was started with other {', '.join(differ)}; "
                             "resume with the same images and settings, or start a new run in another folder")
    else:
        if preset is not None and mode is None:
            mode = "instance2"
        net, fresh = _resolve_model(model, mode, in_ch, labels, images[0])
    preset, labels, val_labels = _membrane_preset(preset, net, fresh, labels, val_labels)
    # what the trained model will know: its images' kind (the modality check reads it)
    modality = modality_of(images, in_ch, net.meta.get("modality", "fluorescence"))
    recipe = MEMBRANE_RECIPE if preset == "membranes" else STAINED_RECIPE if modality == "stained" else RECIPE
    w0 = recipe["w0"] if w0 is None else w0
    sigma = recipe["sigma"] if sigma is None else sigma
    class_weights = recipe["class_weights"] if class_weights is None else class_weights
    if preset is not None:
        net.meta["preset"] = preset
    picked = None
    if model is None and resume is None and not fresh:
        stained = net.meta.get("modality") == "stained"
        picked = f"the {'stained' if stained else 'fluorescence'} bundled model (picked for " + (
            "brightfield RGB images)" if stained else f"{in_ch}-channel images)")
    norm_rule = net.meta.get("normalization", {"kind": "percentile", "low": 1.0, "high": 99.8})
    widened = net.config.in_channels != in_ch
    if widened:
        from .channels import fit_channels

        rgb = in_ch == 3 and np.shape(images[0])[-1] == 3
        net = fit_channels(net, in_ch, _as_chw(images[0], in_ch, 0), norm_rule, rgb=rgb)
    net.meta["modality"] = modality
    net_mode = net.meta.get("mode", "instance3")
    if mode is not None and mode != net_mode:
        raise ValueError(
            f"the starting model segments in mode {net_mode!r}, not {mode!r}; start from "
            f"model='scratch' to train a {mode!r} model"
        )
    mode = net_mode
    if lr is None:
        lr = LR_SCRATCH if fresh else LR_WIDENED if widened else LR_FINE_TUNE
    cfg = net.config
    if tile_size is None:
        tile_size = 192
    if batch_size is None:
        batch_size = 2 if dev.type == "cpu" else 4
    in_size = cfg.input_size_for_output(int(tile_size))
    out_size = cfg.output_size(in_size)
    source = augment.source_size(in_size)

    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)

    # normalise every image once, with its whole statistics, before strips and crops are cut
    imgs = [_normalised_whole(img, in_ch, k, norm_rule) for k, img in enumerate(images)]
    labs = list(labels)
    regs = list(regions) if regions is not None else None
    if val_images is not None:
        if val_labels is None or len(val_labels) != len(val_images):
            raise ValueError("val_images need val_labels of the same length")
        va_i = [_normalised_whole(img, in_ch, k, norm_rule) for k, img in enumerate(val_images)]
        va_l = list(val_labels)
        va_r = list(val_regions) if val_regions is not None else None
    else:
        imgs, labs, regs, va_i, va_l, va_r = _split_for_validation(imgs, labs, regs, val_fraction)
    zoom, data_diameter = 1.0, math.nan
    if mode != "semantic":
        imgs, labs, regs, va_i, va_l, va_r, zoom, data_diameter = _zoom_to_model(
            net, fresh, zoom_to_model, imgs, labs, regs, va_i, va_l, va_r
        )
    done = {"kind": "fixed", "lo": [0.0] * in_ch, "hi": [1.0] * in_ch}  # already normalised
    data = TrainingData(
        imgs, labs, regs, mode=mode, normalization=done, in_channels=in_ch, source_size=source,
        w0=w0, sigma=sigma, class_weights=class_weights, margin=margin, num_classes=cfg.num_classes, rng=rng,
    )
    val = _prepare_validation(va_i, va_l, va_r, mode, done, in_ch, cfg.min_input_size, w0, sigma, class_weights, margin,
                              MAX_VAL_EDGE_MEMBRANES if preset == "membranes" else MAX_VAL_EDGE)

    net.to(dev)
    channels_last = dev.type != "mps"
    if channels_last:
        net.to(memory_format=torch.channels_last)
    use_amp = (dev.type == "cuda") if amp is None else bool(amp)
    if amp is None and dev.type == "cpu":
        from .device import cpu_supports_bf16

        use_amp = cpu_supports_bf16()
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and dev.type == "cuda" and not torch.cuda.is_bf16_supported())
    # the wrapper shares the network's parameters (DDP adds gradient all-reduce hooks)
    forward_net = wrap_network(net) if wrap_network is not None else net
    if optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    elif optimizer == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=lr)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.99)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose 'adamw', 'adam' or 'sgd'")
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"unknown schedule {schedule!r}; choose 'cosine' or 'constant'")

    run = TrainingRun(model=net, total=total, data=data)
    run_id = state.get("run_id") if state is not None else uuid.uuid4().hex
    base_history = list(net.meta.get("history", []))
    start_it = 0
    elapsed_before = 0.0
    stale = 0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_it = int(state["iteration"])
        elapsed_before = float(state.get("elapsed", 0.0))
        run.best_score = float(state.get("best_score", -math.inf))
        run.best_loss = float(state.get("best_loss", math.inf))
        run.best_iteration = int(state.get("best_iteration", 0))
        run.curve = [dict(c) for c in state.get("curve", [])]
        stale = int(state.get("stale", 0))
        base_history = base_history[: int(state.get("base_history_len", len(base_history)))]
        if "numpy_rng" in state:
            rng.bit_generator.state = state["numpy_rng"]
        if "torch_gen" in state:
            gen.set_state(state["torch_gen"])
        if iterations is None and max_time is None:
            total = int(state.get("total", total))
        best_file = (Path(resume) if Path(resume).is_dir() else Path(resume).parent) / "best.pt"
        if best_file.is_file():
            best_model = load_model(best_file)
            # a best.pt of another run in this folder is not this run's best
            if best_model.meta.get("checkpoint_run") == run_id:
                run.best_state = {k: v.clone() for k, v in best_model.state_dict().items()}
        for g in opt.param_groups:
            lr = float(g.get("initial_lr", lr))
    for g in opt.param_groups:
        g["initial_lr"] = lr
    run.iteration = start_it
    run.total = total
    if val_every is None:
        val_every = max(10, total // 20) if total < 10**9 else 50
    if checkpoint_every is None:
        checkpoint_every = val_every
    dev_text = describe_device(dev)
    entry: dict[str, Any] = {
        "kind": "train",
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "images": len(data),
        "val_images": len(val),
        "mode": mode,
        "preset": preset,
        "optimizer": optimizer,
        "lr": lr,
        "schedule": f"warmup {WARMUP_FRACTION:g} + cosine to {FINAL_LR_FRACTION:g}" if schedule == "cosine" else "constant",
        "batch_size": batch_size,
        "tile_size": out_size,
        "w0": w0,
        "sigma": sigma,
        "augment": {f: getattr(augment, f) for f in augment.__dataclass_fields__},
        "device": dev_text,
        "amp": use_amp,
        "data_diameter": None if not math.isfinite(data_diameter) else round(data_diameter, 2),
        "zoom": round(zoom, 4),
    }
    if picked:
        entry["start_model"] = picked
    if net.meta.get("input"):
        entry["input"] = dict(net.meta["input"])

    def history(it: int, final: bool, stopped: str | None = None) -> list[dict[str, Any]]:
        rec = dict(entry, iterations=it, seconds=round(elapsed_before + time.perf_counter() - t0, 1), finished=final)
        if stopped is not None:
            rec["stopped"] = stopped
        rec.update(_summary(run))
        return base_history + [rec]

    # what a widget that cancels keeps (the generator's own return is lost on quit)
    run.history = lambda: history(run.iteration, False, "cancelled")

    def checkpoint(it: int, final: bool = False) -> None:
        if ckpt is None:
            return
        net.meta["history"] = history(it, final)
        from .model import save_model

        was_training = net.training
        net.meta["checkpoint_run"] = run_id  # ties last.pt and best.pt to this run's state.pt
        save_model(net, ckpt / "last.pt")
        if run.best_state is not None and run.best_iteration == it:
            best = clone_model(net)
            best.load_state_dict(run.best_state)
            save_model(best, ckpt / "best.pt")
        del net.meta["checkpoint_run"]
        net.train(was_training)
        save_atomic(
            {
                "iteration": it,
                "total": total,
                "elapsed": elapsed_before + time.perf_counter() - t0,
                "optimizer": opt.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                "best_score": run.best_score,
                "best_loss": run.best_loss,
                "best_iteration": run.best_iteration,
                "curve": run.curve,
                "stale": stale,
                "base_history_len": len(base_history),
                "numpy_rng": rng.bit_generator.state,
                "torch_gen": gen.get_state(),
                "run_id": run_id,
                "settings": settings,
            },
            ckpt / "state.pt",
        )

    t0 = time.perf_counter()
    step_times: list[float] = []
    loss_ema: float | None = None
    info_common = {"device": dev_text, "run": run, "tile_size": out_size, "mode": mode}
    shown_total = total if total < 10**9 else 0  # a time budget: no step count to show yet
    start_msg = f"training on {dev_text}" + (f" from {picked}" if picked else "")
    yield Progress(start_it, shown_total, start_msg, dict(info_common, phase="start", iteration=start_it,
                                                          start_model=picked))

    it = start_it
    stop_reason = "done"
    last_val: dict[str, float] = {}
    if val and start_it == 0 and not fresh:
        # the starting model is the first candidate: a run that never beats it returns it
        start_val = _validate(net, val, dev, use_amp, mode, cfg, preset == "membranes")
        run.best_score, run.best_loss, run.best_iteration = start_val["val_ap"], start_val["val_loss"], 0
        run.best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        entry["start_val_ap"] = round(start_val["val_ap"], 5)
    while it < total:
        # a resumed run's time budget counts the time it trained before
        elapsed = elapsed_before + time.perf_counter() - t0
        if max_time is not None and elapsed >= max_time:
            stop_reason = "time"
            break
        ts = time.perf_counter()
        if schedule_iterations is not None:
            frac = it / schedule_iterations
        elif iterations is not None or max_time is None:
            frac = it / total
        else:
            frac = elapsed / max_time
        cur_lr = lr * lr_factor(frac) if schedule == "cosine" else lr
        for g in opt.param_groups:
            g["lr"] = cur_lr
        x, t, w, m = data.sample(batch_size, rng)
        try:
            xt = torch.from_numpy(x).to(dev, non_blocking=True)
            tt = torch.from_numpy(t).to(dev, non_blocking=True)
            wt = torch.from_numpy(w).to(dev, non_blocking=True)
            mt = torch.from_numpy(m).to(dev, non_blocking=True)
            batch = augment_batch(xt, tt, wt, mt, out_size=in_size, config=augment, generator=gen)
            xin = batch.image.contiguous(memory_format=torch.channels_last) if channels_last else batch.image
            net.train()
            with autocast(dev, use_amp):
                logits = forward_net(xin)
            loss = weighted_cross_entropy(logits, batch.targets.long(), batch.weights, batch.mask)
            if not torch.isfinite(loss):
                raise ValueError(
                    f"training diverged at iteration {it + 1}: the loss is {loss.item()}. Likely causes: "
                    f"a learning rate too high (now {cur_lr:.3g}; try 10x lower), images holding NaN/inf "
                    "values, labels with no annotated pixels, or a model file with broken weights"
                )
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
        except Exception as exc:  # torch reports out-of-memory as several exception types
            if not is_out_of_memory(exc):
                raise
            if not oom_retry:
                raise MemoryError(
                    f"out of memory on {describe_device(dev)} with batch size {batch_size} and tile {out_size}; "
                    f"not retried (all processes must take the same steps): rerun with batch size "
                    f"{max(1, batch_size // 2)} or a smaller tile"
                ) from exc
            if batch_size == 1:
                raise MemoryError(
                    f"out of memory on {describe_device(dev)} even with batch size 1; use a smaller "
                    f"tile_size (now {out_size}), free memory, or train on another device"
                ) from exc
            # drop what the failed step holds, then retry the same step with half the batch
            opt.zero_grad(set_to_none=True)
            xt = tt = wt = mt = batch = xin = logits = loss = None  # noqa: F841
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            batch_size = max(1, batch_size // 2)
            entry["batch_size"] = batch_size
            yield Progress(it, total, f"out of memory: retrying with batch size {batch_size}",
                           dict(info_common, phase="train", iteration=it, batch_size=batch_size))
            continue
        scaler.step(opt)
        scaler.update()
        it += 1
        run.iteration = it
        lv = float(loss.detach())
        loss_ema = lv if loss_ema is None else 0.9 * loss_ema + 0.1 * lv
        step_times.append(time.perf_counter() - ts)
        point: dict[str, float] = {"iteration": it, "train_loss": lv}
        info = dict(info_common, phase="train", iteration=it, train_loss=lv, train_loss_smooth=loss_ema, lr=cur_lr)
        if val and (it % val_every == 0 or it == total):
            yield Progress(it, total if total < 10**9 else run.total, "validating",
                           dict(info_common, phase="validate", iteration=it))
            last_val = _validate(net, val, dev, use_amp, mode, cfg, preset == "membranes")
            point.update(last_val)
            info.update(last_val)
            score = last_val["val_ap"]
            if score > run.best_score or (score == run.best_score and last_val["val_loss"] < run.best_loss):
                run.best_score, run.best_loss, run.best_iteration = score, last_val["val_loss"], it
                run.best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
                stale = 0
            else:
                stale += 1
        run.curve.append(point)
        if ckpt is not None and (it % checkpoint_every == 0 or it == total):
            checkpoint(it)
        mean_step = float(np.mean(step_times[-50:]))
        eta = (total - it) * mean_step
        if max_time is not None:
            eta = min(eta, max(0.0, max_time - (elapsed_before + time.perf_counter() - t0)))
            if iterations is None:
                total_est = it + int(eta / max(mean_step, 1e-9))
                run.total = total_est
        info["eta"] = eta
        shown_total = total if total < 10**9 else run.total
        yield Progress(it, shown_total, f"iteration {it}: loss {lv:.4f}", info)
        if early_stopping is not None and stale >= early_stopping:
            stop_reason = "early stopping"
            break

    entry["stopped"] = stop_reason
    if ckpt is not None:
        checkpoint(it, final=True)
    result = clone_model(net)
    if run.best_state is not None:
        result.load_state_dict(run.best_state)
    result.meta["history"] = history(it, True)
    result.eval()
    yield Progress(it, it, f"finished ({stop_reason})", dict(info_common, phase="done", iteration=it, **last_val))
    return result


#: the files a training run writes into its checkpoint folder
CHECKPOINT_FILES = ("last.pt", "best.pt", "state.pt")


def _run_settings(images: Sequence[Any], labels: Sequence[Any], regions: Sequence[Any] | None,
                  val_images: Sequence[Any] | None, val_labels: Sequence[Any] | None, **options: Any) -> dict[str, Any]:
    """What a resumed run must share with the run it continues: a hash of the data and the settings."""
    data = hashlib.sha1()
    for group in (images, labels, regions or [], val_images or [], val_labels or []):
        for a in group:
            if isinstance(a, str) or a is None:
                data.update(repr(a).encode())
                continue
            arr = np.ascontiguousarray(np.asarray(a))
            data.update(f"{arr.shape}{arr.dtype}".encode())
            data.update(arr.tobytes())
        data.update(b"|")
    out: dict[str, Any] = {"images": data.hexdigest()}
    for k, v in options.items():
        if isinstance(v, AugmentConfig):
            v = repr(v)
        elif v is not None and not isinstance(v, (str, int, float, bool)):
            v = repr(np.asarray(v).tolist())
        out[k.replace("_", " ")] = v
    return out


def _summary(run: TrainingRun) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if run.best_state is not None:
        out["best_val_ap"] = run.best_score
        out["best_iteration"] = run.best_iteration
    losses = [c["train_loss"] for c in run.curve[-50:]]
    if losses:
        out["final_train_loss"] = float(np.mean(losses))
    # a light loss curve: validation points only (every val_every steps)
    out["curve"] = [
        {k: round(float(v), 5) for k, v in c.items()} for c in run.curve if "val_ap" in c
    ]
    return out


def _prepare_validation(
    images: list[Any], labels: list[Any], regions: list[Any] | None, mode: str, rule: dict[str, Any],
    in_ch: int, min_size: int, w0: float, sigma: float, class_weights: Any, margin: int,
    max_edge: int = MAX_VAL_EDGE,
) -> list[_ValItem]:
    out: list[_ValItem] = []
    for k, (img, lab) in enumerate(zip(images, labels)):
        chw = _as_chw(img, in_ch, k)
        _check_finite(chw, k)
        lab = check_labels(lab, f"validation labels {k}")
        if lab.shape != chw.shape[1:]:
            raise ValueError(f"validation labels {k} have shape {lab.shape} but the image is {chw.shape[1:]}")
        lo, hi = normalization_params(chw, rule, channel_axis=0)
        norm = apply_normalization(chw, lo, hi, channel_axis=0)
        region = regions[k] if regions is not None else None
        if isinstance(region, np.ndarray):
            region = np.asarray(region, bool)
        # cut big validation images to their centre: validation must stay cheap
        h, w = lab.shape
        sy = slice(max(0, (h - max_edge) // 2), max(0, (h - max_edge) // 2) + min(h, max_edge))
        sx = slice(max(0, (w - max_edge) // 2), max(0, (w - max_edge) // 2) + min(w, max_edge))
        norm, lab = norm[:, sy, sx], lab[sy, sx]
        if isinstance(region, np.ndarray):
            region = region[sy, sx]
        if region is None and not (lab > 0).any():
            continue  # an unlabelled strip teaches nothing about AP
        targets, mask = labels_to_targets(lab, mode, region, margin)
        weights = _weights_for(lab, targets, mode, w0, sigma, class_weights)
        gt = np.where(mask, lab, 0) if mode != "semantic" else lab
        out.append(_ValItem(norm, gt, targets, weights, mask))
    return out


def _forward_whole(net: UNet, image: np.ndarray, dev: torch.device, use_amp: bool) -> torch.Tensor:
    """Logits over a whole (small) image: mirror-pad by the halo, one forward pass."""
    cfg = net.config
    _, h, w = image.shape
    in_h = cfg.input_size_for_output(h)
    in_w = cfg.input_size_for_output(w)
    top = left = cfg.halo
    bottom, right = in_h - h - top, in_w - w - left
    x = torch.from_numpy(np.ascontiguousarray(image))[None].to(dev)
    # torch's reflect pad needs pad < size; repeat reflection for tiny images via numpy
    if max(top, bottom) >= h or max(left, right) >= w:
        arr = np.pad(image, ((0, 0), (top, bottom), (left, right)), mode="symmetric")
        x = torch.from_numpy(arr)[None].to(dev)
    else:
        x = F.pad(x, (left, right, top, bottom), mode="reflect")
    with torch.no_grad(), autocast(dev, use_amp):
        logits = net(x)
    return logits[..., :h, :w].float()


def _validate(net: UNet, val: list[_ValItem], dev: torch.device, use_amp: bool, mode: str, cfg: Any,
              membranes: bool = False) -> dict[str, float]:
    """Validation loss and score (AP at IoU 0.5; mean IoU of the classes in semantic mode;
    1 - adapted Rand error for membrane data)."""
    net.eval()
    losses, scores = [], []
    for v in val:
        logits = _forward_whole(net, v.image, dev, use_amp)
        tt = torch.from_numpy(v.targets)[None].to(dev)
        wt = torch.from_numpy(v.weights)[None].to(dev)
        mt = torch.from_numpy(v.mask)[None].to(dev)
        losses.append(float(weighted_cross_entropy(logits, tt, wt, mt)))
        probs = torch.softmax(logits[0], 0).cpu().numpy()
        pred = _postprocess(probs, mode, membranes)
        if membranes:
            from .metrics import adapted_rand_error

            scores.append(1.0 - adapted_rand_error(v.gt, pred)[0] if (v.gt > 0).any() else 1.0)
        elif mode == "semantic":
            cls = probs.argmax(0)
            ious = []
            for c in range(1, probs.shape[0]):
                a, b = (cls == c) & v.mask, (v.gt == c) & v.mask
                union = (a | b).sum()
                if union:
                    ious.append((a & b).sum() / union)
            scores.append(float(np.mean(ious)) if ious else 1.0)
        else:
            pred = _restrict_to_region(np.asarray(pred), v.mask)
            scores.append(average_precision(v.gt, pred, 0.5)[0.5])
    net.train()
    return {"val_loss": float(np.mean(losses)), "val_ap": float(np.mean(scores))}


def fine_tune(
    images: Sequence[Any],
    labels: Sequence[Any],
    model: UNet | str | os.PathLike | None = None,
    *,
    regions: Sequence[Any] | None = None,
    iterations: int | None = None,
    max_time: float | None = None,
    device: str | torch.device | None = None,
    progress: ProgressBar | None = None,
    **kwargs: Any,
) -> UNet:
    """Fine-tune ``model`` on labelled images and return the trained copy.

    The same as draining :func:`train_iter` (see there for every keyword), with an
    optional tqdm-like ``progress`` bar.

    Args:
        images: list of images.
        labels: list of label images.
        model: starting model (UNet, path, ``"bundled"``, ``"scratch"`` or None = bundled).
        regions: optional annotated-region masks (None = labelled cells + margin).
        iterations: training steps.
        max_time: stop after this many seconds.
        device: device name or None for automatic choice.
        progress: optional tqdm-like bar.
        **kwargs: further :func:`train_iter` options (lr, batch_size, tile_size, ...).

    Returns:
        The trained model (best by validation AP when validation data exists).
    """
    gen = train_iter(
        images, labels, model, regions=regions, iterations=iterations, max_time=max_time, device=device, **kwargs
    )
    return drain(gen, progress)


__all__ = [
    "AugmentConfig",
    "TrainingData",
    "TrainingRun",
    "fine_tune",
    "lr_factor",
    "train_iter",
    "weighted_cross_entropy",
]
