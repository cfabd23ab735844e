"""Fine-tuning as a generator: progress records out, the trained model returned.

:func:`train_iter` yields a :class:`~napari_unet._progress.Progress` record after every
training step (so ``worker.quit()`` in a widget, or closing the generator, stops within
one step) and *returns* the trained model: the best by validation score when there is
validation data, otherwise the last. :func:`fine_tune` drains it for scripts.

The work is a :class:`Trainer` (split as torch-em's ``DefaultTrainer``): setup (data,
model, optimiser, schedule), :meth:`~Trainer.step`, :meth:`~Trainer.validate`,
:meth:`~Trainer.checkpoint` and :meth:`~Trainer.resume`; :func:`train_iter` is a thin
generator over its :meth:`~Trainer.fit` loop.

Data path (no worker processes, which break in GUIs on Windows/macOS;
:mod:`napari_unet.training_data`): every image is normalised once with the model's rule,
its class targets, loss mask and weight map are computed once, and the arrays are
reflect-padded once. Each step cuts random source crops
(larger than the tile, to leave room for rotation and elastic deformation) in the main
process -- a few array slices -- and :mod:`napari_unet.augment` transforms the whole batch
on the training device with one ``grid_sample`` per tensor kind.

Loss: pixel-wise softmax cross-entropy times the weight map (eq. 2 of the paper), with
the ignore mask giving weight 0, normalised by the **sum of the weights** of the counted
pixels (a weighted mean), so the loss scale and the useful learning rate do not depend on
``w0``. :func:`weighted_cross_entropy` is the one place where targets, weights and mask
are cropped to the network's (valid-convolution) output.

Validation runs each (centre-cut) validation image in one forward pass, mirror-padded as
inference pads (:func:`napari_unet.tiling.padded_logits`), and post-processes it as
``segment`` does, so validation scores are inference scores.

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

Tile size: with valid convolutions a depth-3 network computes a 44-px halo around every
tile: a 96-px output tile is 28% of its input, a 192-px tile 48%; a step cost 1.3-1.7x
less per output pixel on the shared 2-core CPU (``benchmarks/bench_train_step.py``, two
noisy runs). Fine-tuning the stained model on three H&E tiles for 120 CPU-seconds, scored
on two others (``benchmarks/real_he.py`` split, AP@0.5): 96 px x 4 0.42, 192 px x 2 0.44
(lr 1e-3: 0.49), 192 px x 4 0.42, 256 px x 2 (lr 1e-3) 0.40; one seed, about +-0.05 noise.

Zoom to the model (``zoom_to_model``): the real crop zoomed 2x, fine-tuned 90 s from the
bundled model: AP@0.5 0.87 zoomed vs 0.67 unzoomed (0.83 before;
``benchmarks/bench_finetune_scale.py``).

Checkpoints (``checkpoint_dir``): ``last.pt`` and ``best.pt`` are ordinary model files
(:func:`napari_unet.model.save_model`, atomic); ``state.pt`` holds the optimiser, scaler,
random generators and counters, loaded with ``weights_only=True``. ``resume=DIR``
continues from the saved iteration.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import math
import os
import time
import uuid
import warnings
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._progress import Progress, ProgressBar, drain
from .augment import AugmentConfig, augment_batch
from .device import autocast, describe_device, is_out_of_memory, resolve_device
from .image_checks import modality_of
from .metrics import adapted_rand_error, average_precision, matching, restrict_to_region, score_name
from .model import ModelFileError, UNet, center_crop, clone_model, load_model, save_atomic, save_model
from .modes import MODES
from .postprocess import probabilities_to_labels
from .targets import DEFAULT_MARGIN
from .tiling import padded_logits
from .training_data import (
    TrainingData,
    as_chw,
    in_channels_of,
    normalised_whole,
    num_classes_for,
    prepare_validation,
    split_for_validation,
    zoom_to_model,
)

#: architecture of a fresh model when no trained one is given (the bundled model's)
FRESH_ARCHITECTURE = {"depth": 3, "base_width": 16, "dropout": 0.1}
DEFAULT_ITERATIONS = 500
LR_SCRATCH = 3e-3
LR_FINE_TUNE = 3e-4
#: fine-tuning a trained model on partly annotated images (a region that is not "all", or
#: labelled cells and a margin): a few cells pull a model away fast. The stained model on
#: eight 128-px windows of H&E tiles 01, 03, 05 (118 cells, 240 steps), AP@0.5 on tiles 08 +
#: 10 (0.770 before): 3e-4 0.572, 1e-4 0.705
LR_PARTIAL = 1e-4
#: a 1-channel model widened to colour in this run (it never saw colour): the fluorescence
#: model fine-tuned on three H&E tiles for 120 CPU-s, scored on two others, AP@0.5 0.19 at
#: 3e-4 and 0.29 at 1e-3 (the stained model, which knows colour: 0.42 at 3e-4)
LR_WIDENED = 1e-3
WARMUP_FRACTION = 0.05
SCHEDULES = ("cosine", "constant", "cycles")
FINAL_LR_FRACTION = 0.01
#: validation images are cut to at most this edge (their centre), to bound its cost
MAX_VAL_EDGE = 768
#: ... for membrane data, whose validation runs a watershed over the whole image: a
#: 512² ISBI slice cost 2 s (forward + watershed) per validation, a 256² centre a quarter
MAX_VAL_EDGE_MEMBRANES = 256
PRESETS = ("membranes", "membrane-mask")
#: membrane runs keep the checkpoint of the lowest validation loss, not of the best 1 - Rand
#: error: on 256-px validation crops that score jumped between 0.91 and 0.99 from one
#: validation to the next late in a run (the loss fell smoothly), and the checkpoints it
#: picked were worse on unseen slices. ISBI, train 0-14, 1700 steps, two runs; pixel / Rand
#: error on slices 15-19 of the checkpoint picked by Rand 0.082 / 0.073 and 0.088 / 0.114,
#: of the lowest-loss one among those scored (every 340 steps) 0.078 / 0.062 and 0.082 / 0.082
MEMBRANE_SELECT_BY_LOSS = True
#: the weight map (eq. 2): w0, sigma (px) and the class balance
RECIPE = {"w0": 10.0, "sigma": 5.0, "class_weights": None}
#: ... of the membrane preset, measured on ISBI 2012 (train on slices 0-14, score 15-19,
#: 500 steps; the table is in benchmarks/bench_em.py's docstring)
MEMBRANE_RECIPE = dict(RECIPE)
#: ... for stained-tissue (H&E) images: no border term. Dense nuclei touch everywhere, and
#: w0 10 made fine-tuning the stained model score *below* the model itself on unseen tiles
#: (3 tiles, 120 s, tiles 01 + 08, AP@0.5: zero-shot 0.52; w0 10 0.43,
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



def lr_factor(fraction: float) -> float:
    """Schedule: linear warm-up over WARMUP_FRACTION, then cosine to FINAL_LR_FRACTION."""
    f = min(max(fraction, 0.0), 1.0)
    if f < WARMUP_FRACTION:
        return max(f / WARMUP_FRACTION, 0.01)
    t = (f - WARMUP_FRACTION) / (1 - WARMUP_FRACTION)
    return FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * t))


# -- the starting model ------------------------------------------------------------------


def fresh_model(in_channels: int, mode: str, labels: Sequence[Any], **architecture: Any) -> UNet:
    """A freshly initialised U-Net to train in ``mode`` on ``labels``.

    Args:
        in_channels: input channels (:func:`napari_unet.training_data.in_channels_of`).
        mode: ``"instance3"``, ``"instance2"`` or ``"semantic"``.
        labels: the training labels (semantic mode: one class per label value).
        **architecture: overrides of :data:`FRESH_ARCHITECTURE` (``depth``, ``base_width``...).

    Returns:
        The network, with its mode (and, semantic, its class names) in ``meta``, marked as
        untrained: :func:`train_iter` trains it as from ``"scratch"`` (its random weights are
        no starting model to validate, compare with or mix in).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    k = num_classes_for(mode, labels)
    net = UNet(in_channels=in_channels, num_classes=k, **{**FRESH_ARCHITECTURE, **architecture})
    net.meta["mode"] = mode
    net.meta["untrained"] = True
    if mode == "semantic":
        net.meta["class_names"] = [f"class {i}" for i in range(k)]
    return net


def _resolve_model(model: Any, mode: str | None, in_channels: int, labels: Sequence[Any],
                   first_image: Any = None) -> tuple[UNet, bool]:
    """The starting model (a copy) and whether it is freshly initialised (``"scratch"``, or a
    network :func:`fresh_model` made, however it came)."""
    net, fresh = _starting_model(model, mode, in_channels, labels, first_image)
    if net.config.spatial_dims != 2:
        raise ValueError("that model is a 3D network: fine-tune it on labelled Z stacks with "
                         "napari_unet.fine_tune_3d (this trains 2D networks)")
    return net, bool(net.meta.pop("untrained", False)) or fresh


def _starting_model(model: Any, mode: str | None, in_channels: int, labels: Sequence[Any],
                    first_image: Any) -> tuple[UNet, bool]:
    """:func:`_resolve_model` before the ``untrained`` mark is read."""
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
                stacklevel=5,  # the caller of train_iter's generator
            )
            model = "scratch"
    if isinstance(model, str) and model == "scratch":
        return fresh_model(in_channels, mode or "instance3", labels), True
    if isinstance(model, (str, os.PathLike)):
        return load_model(model), False
    raise ValueError(f"model must be a UNet, a model file path, 'bundled', 'scratch' or None, got {type(model).__name__}")


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


def _optimizer(name: str, net: UNet, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(net.parameters(), lr=lr)
    if name == "sgd":
        return torch.optim.SGD(net.parameters(), lr=lr, momentum=0.99)
    raise ValueError(f"unknown optimizer {name!r}; choose 'adamw', 'adam' or 'sgd'")


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
    #: the starting model's validation score (None: not validated -- from scratch, resumed, no validation data)
    start_score: float | None = None
    start_iteration: int = 0
    curve: list[dict[str, float]] = field(default_factory=list)
    #: the model's history with this run's record so far (set by ``train_iter``)
    history: Callable[[], list[dict[str, Any]]] | None = None
    #: the training arrays (normalised with each whole image's statistics)
    data: TrainingData | None = None
    #: what every model the run hands out gets last (membranes: the fitted bias; set by ``train_iter``)
    finish: Callable[[UNet], None] | None = None

    @property
    def improved(self) -> bool | None:
        """True when a training step beat the starting model on validation (its weights are
        the ones kept), False when the starting model stayed the best (the run hands it back
        unchanged), None when the starting model was not validated."""
        if self.start_score is None:
            return None
        return self.best_state is not None and self.best_iteration > self.start_iteration

    def best_model(self) -> UNet:
        """A CPU copy of the best model so far (the current one when never validated),
        with this run's record in its history (marked as not finished)."""
        model = clone_model(self.model)
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        if self.finish is not None:
            self.finish(model)
        if self.history is not None:
            model.meta["history"] = self.history()
        return model.eval()


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
        out["best_val_loss"] = run.best_loss
        out["best_iteration"] = run.best_iteration
    if run.improved is not None:
        out["improved"] = run.improved
    losses = [c["train_loss"] for c in run.curve[-50:]]
    if losses:
        out["final_train_loss"] = float(np.mean(losses))
    # a light loss curve: validation points only (every val_every steps)
    out["curve"] = [
        {k: round(float(v), 5) for k, v in c.items()} for c in run.curve if "val_ap" in c
    ]
    return out


def _checked_inputs(images: Sequence[Any], labels: Sequence[Any], o: SimpleNamespace) -> tuple:
    """``train_iter``'s data checked, labelled 3D stacks expanded to planes (which train at
    the stack's own scale: ``o.zoom_to_model`` is turned off): (images, labels, regions,
    val_images, val_labels, val_regions)."""
    regions, val_images, val_labels, val_regions = o.regions, o.val_images, o.val_labels, o.val_regions
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
    if o.iterations is not None and int(o.iterations) < 1:
        raise ValueError(f"iterations must be at least 1, got {o.iterations}")
    if o.max_time is not None and float(o.max_time) <= 0:
        raise ValueError(f"max_time must be positive, got {o.max_time}")
    if o.batch_size is not None and o.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {o.batch_size}")
    if not 0 <= o.val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {o.val_fraction}")
    if not 0 <= o.keep_start <= 1:
        raise ValueError(f"keep_start must be in [0, 1], got {o.keep_start}")
    if any(np.ndim(lab) == 3 for lab in list(labels) + list(val_labels or [])):
        from .volume import expand_stacks  # labelled 3D stacks -> planes of all orientations

        o.zoom_to_model = False  # 3D segmentation predicts a stack at its own scale: its planes train at it

        images, labels, regions = expand_stacks(images, labels, regions, o.voxel_size)
        if val_images is not None and val_labels is not None:
            val_images, val_labels, val_regions = expand_stacks(val_images, val_labels, val_regions, o.voxel_size)
    return images, labels, regions, val_images, val_labels, val_regions


def _val_score(probs: np.ndarray, v: Any, mode: str, membranes: bool, postprocess: dict[str, Any]) -> float:
    """One validation image's score: AP at IoU 0.5 on the annotated region; the mean IoU of
    the classes in semantic mode; 1 - adapted Rand error for membrane data. ``postprocess``:
    the model's own post-processing defaults (``meta["postprocess"]``), as segment uses them."""
    if mode == "semantic":
        cls = probs.argmax(0)
        ious = []
        for c in range(1, probs.shape[0]):
            a, b = (cls == c) & v.mask, (v.gt == c) & v.mask
            union = (a | b).sum()
            if union:
                ious.append((a & b).sum() / union)
        return float(np.mean(ious)) if ious else 1.0
    # the post-processing segment uses
    pred = probabilities_to_labels(probs, mode, **{**postprocess, "membranes": membranes})
    if membranes:
        return 1.0 - adapted_rand_error(v.gt, pred)[0] if (v.gt > 0).any() else 1.0
    return average_precision(v.gt, restrict_to_region(pred, v.mask), 0.5)[0.5]


#: fine-tuning returns (1 - KEEP_START) x the fine-tuned weights + KEEP_START x the starting
#: weights. Measured with the stained model fine-tuned on three H&E tiles (1000 steps, four
#: runs: two folds x two runs), AP@0.5 on the two unseen tiles of each fold, mean over the
#: runs; share of the start 0 / 0.25 / 0.5 / 0.75 / 1 (the start itself):
#: tiles 01 + 08: 0.703 / 0.694 / 0.683 / 0.679 / 0.680; tiles 03 + 10: 0.583 / 0.655 /
#: 0.663 / 0.669 / 0.666 (AP@0.75 0.31 / 0.39 / 0.41 / 0.43 / 0.43). Fine-tuning alone lost
#: to the start on the second fold (it fits the training tiles, not the unseen ones);
#: a quarter of the start keeps most of the first fold's gain and repairs most of the
#: second's loss (mean of both folds 0.643 / 0.675 / 0.673 / 0.674 / 0.673: on unseen
#: tiles, fine-tuning on three gained nothing over the start on average; mixed, it no
#: longer loses on average, and a worst fold loses 0.01 instead of 0.08). Without
#: validation (partial labels, a live run), the mix is handed out unchecked: the stained
#: model fine-tuned on eight 128-px H&E windows (240 steps), AP@0.5 on two unseen tiles,
#: start / fine-tuned / mixed 0.25: tiles 08 + 10 0.770 / 0.750 / 0.769; 01 + 08 0.691 /
#: 0.682 / 0.687.
KEEP_START = 0.25
#: fine-tuning a trained model keeps its BatchNorm statistics (the layers normalise as the
#: trained model does; their scale and shift still learn); a fresh network learns them. With
#: two tiles a step, each step's own statistics are noise that the running averages take
#: in. Measured: the stained model fine-tuned on 128-px windows of H&E tiles 01, 03, 05
#: (their cells, whole), AP@0.5 on tiles 08 + 10 with the model's own thresholds (the
#: package defaults in brackets; 0.755 (0.722) before): one window, 60 steps at 3e-4:
#: learned 0.425 (0.601), kept 0.580 (0.717); at 1e-4: 0.548 (0.707), 0.659 (0.725); four
#: windows, 120 steps at 1e-4: 0.602 (0.735), 0.658 (0.748)
FREEZE_NORM_FINE_TUNING = True
#: fine-tuning on partly annotated images: the weight of the starting model's own confident
#: classes outside the annotated area (``remember``), and the top class probability that
#: counts as confident. Measured: see ``benchmarks/bench_live_loop.py``
REMEMBER_WEIGHT = 0.5
REMEMBER_CONFIDENCE = 0.8
#: ... unless the mixed weights score more than this below the fine-tuned ones on the
#: validation images (which come from the training images, so they favour the fine-tuned)
KEEP_START_TOLERANCE = 0.02

#: post-processing options tried on the validation images at the end of an instance-mode
#: run (not membranes) with ``tune_postprocess=True``, around the model's own defaults: the
#: best pooled AP@0.5 wins. Off by default, measured: the stained model fine-tuned on H&E
#: tiles 03, 05, 10 (300 s, 2 threads) chose fg 0.5 / seed 0.5 / h 1 on their validation
#: strips (AP@0.5 there 0.557 -> 0.635), which lowered AP@0.5 on the unseen tiles 01 + 08
#: from 0.706 to 0.596: one slide's best thresholds are not another's. For images that are
#: all alike (one microscope, one stain), turn it on.
TUNE_GRID = {"foreground_threshold": (0.3, 0.4, 0.5), "seed_threshold": (0.3, 0.5), "h": (1.0, 2.0, 3.0)}
#: ... only with at least this many annotated cells in the validation images, and only
#: when the best beats the defaults by this much (a few cells more are noise)
TUNE_MIN_CELLS = 40
TUNE_MIN_GAIN = 0.01


def choose_postprocess(probs: Sequence[np.ndarray], gts: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                     mode: str, defaults: dict[str, Any]) -> tuple[dict[str, Any], float, float] | None:
    """The post-processing options (``defaults`` with the grid's keys changed) that give the
    best pooled AP@0.5 on validation images, with that score and the defaults' score; None
    when there are too few cells to choose, or for a mode with nothing to tune.

    Args:
        probs: per image, class probabilities (K, H, W).
        gts: per image, instance labels (0 outside the annotated region).
        masks: per image, the annotated region (predictions outside it are not counted).
        mode: ``"instance3"`` (all of :data:`TUNE_GRID`) or ``"instance2"`` (the foreground
            threshold only).
        defaults: the options segment would use (the model's ``meta["postprocess"]``).
    """
    keys = {"instance3": ("foreground_threshold", "seed_threshold", "h"), "instance2": ("foreground_threshold",)}.get(mode)
    if keys is None or sum(int(len(np.unique(g)) - (g == 0).any()) for g in gts) < TUNE_MIN_CELLS:
        return None

    def pooled(options: dict[str, Any]) -> float:
        tp = fp = fn = 0
        for p, g, m in zip(probs, gts, masks):
            r = matching(g, restrict_to_region(probabilities_to_labels(p, mode, **options), m), 0.5)
            tp, fp, fn = tp + r["tp"], fp + r["fp"], fn + r["fn"]
        return tp / max(tp + fp + fn, 1)

    base = pooled(dict(defaults))
    best, best_score = dict(defaults), base
    for values in itertools.product(*(TUNE_GRID[k] for k in keys)):
        options = {**defaults, **dict(zip(keys, values))}
        score = pooled(options)
        if score > best_score:
            best, best_score = options, score
    if best_score < base + TUNE_MIN_GAIN:
        return dict(defaults), base, base
    return best, best_score, base


# -- the trainer -------------------------------------------------------------------------


class Trainer:
    """One training run, split as torch-em's ``DefaultTrainer`` and MONAI's engines split theirs.

    * setup (the constructor): the inputs checked, the starting model (or the checkpoint
      it resumes), the data (:mod:`napari_unet.training_data`), optimiser and schedule;
    * :meth:`step`: one optimiser step on a fresh augmented batch;
    * :meth:`validate`: validation loss and score (:meth:`keep_if_best` keeps the best weights);
    * :meth:`checkpoint` and :meth:`resume`: ``last.pt``, ``best.pt`` and ``state.pt``;
    * :meth:`fit`: the loop, a generator of :class:`Progress` records that returns the
      model: what :func:`train_iter` runs. Nothing yields inside a step, so closing the
      generator (a widget's Cancel) stops between two steps.

    Args:
        images, labels, model: as for :func:`train_iter`.
        **options: keywords of :func:`train_iter` (whose signature holds the defaults).
    """

    def __init__(self, images: Sequence[Any], labels: Sequence[Any], model: Any = None, **options: Any) -> None:
        defaults = {k: p.default for k, p in inspect.signature(train_iter).parameters.items() if p.kind is p.KEYWORD_ONLY}
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            raise TypeError(f"unknown training option(s) {', '.join(unknown)}; see train_iter")
        o = self.options = SimpleNamespace(**{**defaults, **options})
        images, labels, regions, self.val_images, self.val_labels, self.val_regions = _checked_inputs(images, labels, o)
        self.total = int(o.iterations) if o.iterations is not None else (DEFAULT_ITERATIONS if o.max_time is None else 10**9)
        self.dev = resolve_device(o.device)
        self.in_ch = in_channels_of(images)
        state, resumed = self._open_checkpoints(images, labels, regions)
        torch.manual_seed(o.seed)  # a fresh network's initial weights follow the seed too
        labels = self._setup_model(model, resumed, images, labels,
                                   partial=regions is None or any(not isinstance(r, str) for r in regions))
        self._setup_data(images, labels, regions)
        self._setup_optimiser()
        self._setup_run(state)

    # -- setup --------------------------------------------------------------------------

    def _open_checkpoints(self, images: Sequence[Any], labels: Sequence[Any],
                          regions: Sequence[Any] | None) -> tuple[dict[str, Any] | None, UNet | None]:
        """The checkpoint folder and, when resuming, the saved state and model; refuses a
        folder that holds another run, and a resume with other data or settings."""
        o = self.options
        self.ckpt = Path(o.checkpoint_dir) if o.checkpoint_dir is not None else None
        self.settings = _run_settings(
            images, labels, regions, self.val_images, self.val_labels, mode=o.mode, batch_size=o.batch_size,
            tile_size=o.tile_size, augment=o.augment, val_fraction=o.val_fraction, w0=o.w0, sigma=o.sigma,
            class_weights=o.class_weights, margin=o.margin, seed=o.seed, optimizer=o.optimizer, schedule=o.schedule,
            zoom_to_model=o.zoom_to_model, preset=o.preset, remember=o.remember)
        if o.resume is None:
            found = [n for n in CHECKPOINT_FILES if self.ckpt is not None and (self.ckpt / n).exists()]
            if found:
                # their best.pt would pass for this run's: refuse rather than mix two runs in one folder
                raise ValueError(f"{self.ckpt} holds checkpoints of an earlier run ({', '.join(found)}); resume it, or "
                                 "choose an empty checkpoint folder (napari-unet train --overwrite replaces them)")
            return None, None
        rdir = self.resume_dir = Path(o.resume).parent if Path(o.resume).is_file() else Path(o.resume)
        if not (rdir / "last.pt").is_file() or not (rdir / "state.pt").is_file():
            raise ValueError(f"cannot resume from {rdir}: it holds no last.pt and state.pt checkpoint")
        net = load_model(rdir / "last.pt")
        try:
            state = torch.load(rdir / "state.pt", map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a bad file
            raise ModelFileError(f"{rdir / 'state.pt'} is not a readable training state ({exc})") from exc
        if self.ckpt is None:
            self.ckpt = rdir
        differ = sorted(k for k, v in self.settings.items() if state.get("settings", {}).get(k, v) != v)
        if differ:
            raise ValueError(f"cannot resume from {rdir}: that run was started with other {', '.join(differ)}; "
                             "resume with the same images and settings, or start a new run in another folder")
        return state, net

    def _setup_model(self, model: Any, resumed: UNet | None, images: Sequence[Any], labels: Sequence[Any],
                     partial: bool = False) -> list:
        """The network (resumed, or resolved from ``model`` and widened to the images'
        channels), its mode, preset, weight-map recipe and learning rate (``partial``: some
        images are partly annotated); returns the labels as cell ids."""
        o, in_ch = self.options, self.in_ch
        mode = "instance2" if resumed is None and o.preset is not None and o.mode is None else o.mode
        net, fresh = (resumed, False) if resumed is not None else _resolve_model(model, mode, in_ch, labels, images[0])
        preset, labels, self.val_labels = _membrane_preset(o.preset, net, fresh, labels, self.val_labels)
        # what the trained model will know: its images' kind (the modality check reads it)
        modality = modality_of(images, in_ch, net.meta.get("modality", "fluorescence"))
        recipe = MEMBRANE_RECIPE if preset == "membranes" else STAINED_RECIPE if modality == "stained" else RECIPE
        self.w0 = recipe["w0"] if o.w0 is None else o.w0
        self.sigma = recipe["sigma"] if o.sigma is None else o.sigma
        self.class_weights = recipe["class_weights"] if o.class_weights is None else o.class_weights
        if preset is not None:
            net.meta["preset"] = preset
        self.picked = None
        if model is None and o.resume is None and not fresh:
            stained = net.meta.get("modality") == "stained"
            self.picked = f"the {'stained' if stained else 'fluorescence'} bundled model (picked for " + (
                "brightfield RGB images)" if stained else f"{in_ch}-channel images)")
        self.norm_rule = net.meta.get("normalization", {"kind": "percentile", "low": 1.0, "high": 99.8})
        widened = net.config.in_channels != in_ch
        if widened:
            from .channels import fit_channels

            rgb = in_ch == 3 and np.shape(images[0])[-1] == 3
            net = fit_channels(net, in_ch, as_chw(images[0], in_ch, 0), self.norm_rule, rgb=rgb)
        net.meta["modality"] = modality
        net_mode = net.meta.get("mode", "instance3")
        if mode is not None and mode != net_mode:
            raise ValueError(f"the starting model segments in mode {net_mode!r}, not {mode!r}; start from "
                             f"model='scratch' to train a {mode!r} model")
        self.net, self.fresh, self.mode, self.preset = net, fresh, net_mode, preset
        self.lr = o.lr if o.lr is not None else (LR_SCRATCH if fresh else LR_WIDENED if widened
                                                 else LR_PARTIAL if partial else LR_FINE_TUNE)
        self.batch_size = o.batch_size if o.batch_size is not None else 2 if self.dev.type == "cpu" else 4
        self.in_size = net.config.input_size_for_output(int(o.tile_size if o.tile_size is not None else 192))
        self.out_size = net.config.output_size(self.in_size)
        return labels

    def _setup_data(self, images: Sequence[Any], labels: Sequence[Any], regions: Sequence[Any] | None) -> None:
        """Seeds, then the training and validation data (:meth:`set_data`)."""
        o = self.options
        self.rng = np.random.default_rng(o.seed)
        self.gen = torch.Generator().manual_seed(o.seed)
        torch.manual_seed(o.seed)
        self._sizes: dict[tuple[Any, ...], float | None] = {}
        self._size_model: UNet | None = None
        self.set_data(images, labels, regions)

    def set_data(self, images: Sequence[Any], labels: Sequence[Any], regions: Sequence[Any] | None) -> None:
        """The training and validation data: normalised once with each whole image's
        statistics (before strips and crops are cut), split, zoomed to the model. Called
        again between steps, the next step learns from the new data (live learning,
        :mod:`napari_unet.live`); the best score so far is then the caller's to renew."""
        o, in_ch, rule = self.options, self.in_ch, self.norm_rule
        self.cycle_start = getattr(self, "iteration", 0)  # the "cycles" schedule starts again
        imgs = [normalised_whole(img, in_ch, k, rule) for k, img in enumerate(images)]
        labs = list(labels)
        regs = list(regions) if regions is not None else None
        if self.val_images is not None:
            if self.val_labels is None or len(self.val_labels) != len(self.val_images):
                raise ValueError("val_images need val_labels of the same length")
            va_i = [normalised_whole(img, in_ch, k, rule) for k, img in enumerate(self.val_images)]
            va_l = list(self.val_labels)
            va_r = list(self.val_regions) if self.val_regions is not None else None
        else:
            imgs, labs, regs, va_i, va_l, va_r = split_for_validation(imgs, labs, regs, o.val_fraction)
        self.zoom, self.data_diameter = 1.0, math.nan
        if self.mode != "semantic":
            imgs, labs, regs, va_i, va_l, va_r, self.zoom, self.data_diameter = zoom_to_model(
                self.net, self.fresh, o.zoom_to_model, imgs, labs, regs, va_i, va_l, va_r, measure=self.measured_diameter)
        done = self.normalised_rule()
        recipe = dict(w0=self.w0, sigma=self.sigma, class_weights=self.class_weights, margin=o.margin)
        self.data = TrainingData(imgs, labs, regs, mode=self.mode, normalization=done, in_channels=in_ch,
                                 source_size=o.augment.source_size(self.in_size), num_classes=self.net.config.num_classes,
                                 rng=self.rng, known=self._known(imgs, regs), known_weight=o.remember, **recipe)
        max_edge = MAX_VAL_EDGE_MEMBRANES if self.preset == "membranes" else MAX_VAL_EDGE
        self.val = prepare_validation(va_i, va_l, va_r, self.mode, done, in_ch, **recipe, max_edge=max_edge)
        if hasattr(self, "entry"):  # data changed during the run
            self.entry.update(images=len(self.data), val_images=len(self.val))

    def _known(self, images: list, regions: list | None) -> list[np.ndarray | None] | None:
        """Per partially annotated image, the starting model's confident classes (-1 where
        its top probability is below :data:`REMEMBER_CONFIDENCE`), which the run keeps
        learning outside the annotated area (``remember``); None when it does not apply:
        a fresh network, membranes, or ``remember=0``. Each image is predicted once."""
        if self.fresh or self.preset == "membranes" or not self.options.remember > 0:
            return None
        if not hasattr(self, "_known_cache"):
            self._known_cache: dict[bytes, np.ndarray] = {}
            self._teacher = clone_model(self.net).to(self.dev).eval()
        out: list[np.ndarray | None] = []
        for k, img in enumerate(images):
            region = regions[k] if regions is not None else None
            if isinstance(region, str):  # "all": nothing is unknown
                out.append(None)
                continue
            arr = np.ascontiguousarray(img, np.float32)
            key = hashlib.sha1(arr.tobytes()).digest() + bytes(str(arr.shape), "ascii")
            if key not in self._known_cache:
                chw = arr if arr.ndim == 3 else arr[None]
                probs = torch.softmax(padded_logits(self._teacher, chw, self.dev, False)[0], 0).cpu().numpy()
                known = probs.argmax(0).astype(np.int16)
                known[probs.max(0) < REMEMBER_CONFIDENCE] = -1
                self._known_cache[key] = known
            out.append(self._known_cache[key])
        return out

    def normalised_rule(self) -> dict[str, Any]:
        """The normalisation of data the run has normalised already (each whole image by
        its own statistics, :func:`~napari_unet.training_data.normalised_whole`): none."""
        return {"kind": "fixed", "lo": [0.0] * self.in_ch, "hi": [1.0] * self.in_ch}

    def measured_diameter(self, image: np.ndarray) -> float | None:
        """The cell diameter the starting model measures on a normalised training image, as
        ``segment`` measures an image before zooming it (None: too few cells to measure);
        each image is measured once (a live run prepares its data again at every change)."""
        from .diameter import CellSizeError, measure_diameter

        image = np.ascontiguousarray(image)
        key = (image.shape, hashlib.blake2b(image.data, digest_size=16).digest())
        if key not in self._sizes:
            if self._size_model is None:  # the weights the person saw when they annotated
                self._size_model = clone_model(self.net).eval()
                self._size_model.meta = {**self._size_model.meta, "normalization": self.normalised_rule()}
            try:
                self._sizes[key] = measure_diameter(image, self._size_model, axes="YX" if image.ndim == 2 else "CYX",
                                                    device=self.dev)
            except CellSizeError:
                self._sizes[key] = None
        return self._sizes[key]

    def _setup_optimiser(self) -> None:
        """The network on its device, mixed precision, the (wrapped) forward network and the optimiser."""
        o, net, dev = self.options, self.net, self.dev
        net.to(dev)
        self.channels_last = dev.type != "mps"
        if self.channels_last:
            net.to(memory_format=torch.channels_last)
        self.use_amp = (dev.type == "cuda") if o.amp is None else bool(o.amp)
        if o.amp is None and dev.type == "cpu":
            from .device import cpu_supports_bf16

            self.use_amp = cpu_supports_bf16()
        bf16 = dev.type == "cuda" and torch.cuda.is_bf16_supported()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and dev.type == "cuda" and not bf16)
        # the wrapper shares the network's parameters (DDP adds gradient all-reduce hooks)
        self.forward_net = o.wrap_network(net) if o.wrap_network is not None else net
        self.opt = _optimizer(o.optimizer, net, self.lr, o.weight_decay)
        if o.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {o.schedule!r}; choose one of {', '.join(map(repr, SCHEDULES))}")

    def _setup_run(self, state: dict[str, Any] | None) -> None:
        """The run's counters and record (continued from ``state`` when resuming)."""
        o = self.options
        self.run = TrainingRun(model=self.net, total=self.total, data=self.data)
        self.run_id = state.get("run_id") if state is not None else uuid.uuid4().hex
        self.base_history = list(self.net.meta.get("history", []))
        self.start_it, self.elapsed_before, self.stale = 0, 0.0, 0
        self.best_saved: int | None = None  # the iteration whose weights best.pt holds
        # the starting weights, which a fine-tuned model keeps a share of (keep_start)
        self.start_state = None
        self.frozen_norm = FREEZE_NORM_FINE_TUNING and (not self.fresh if state is None else bool(state.get("frozen_norm")))
        if not self.fresh and o.keep_start > 0 and self.preset != "membranes":  # measured on nuclei only
            self.start_state = state.get("start_state") if state is not None else {  # (older checkpoints: none)
                k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}
        if state is not None:
            self.resume(state)
        for g in self.opt.param_groups:
            g["initial_lr"] = self.lr
        self.iteration = self.run.iteration = self.start_it
        self.run.total = self.total
        self.val_every = o.val_every if o.val_every is not None else max(10, self.total // 20) if self.total < 10**9 else 50
        self.checkpoint_every = o.checkpoint_every if o.checkpoint_every is not None else self.val_every
        self.dev_text = describe_device(self.dev)
        self.entry = self._history_entry()
        # what a widget that cancels keeps (the generator's own return is lost on quit)
        self.run.history = lambda: self.history(False, "cancelled")
        self.run.finish = self.finish
        self.info = {"device": self.dev_text, "run": self.run, "tile_size": self.out_size, "mode": self.mode,
                     "score": score_name(self.mode, self.preset == "membranes")}
        self.t0 = time.perf_counter()
        self.step_times: list[float] = []
        self.loss_ema: float | None = None
        self.last_val: dict[str, float] = {}

    def _history_entry(self) -> dict[str, Any]:
        """This run's record in the model's history (its counters are added as it goes)."""
        o = self.options
        entry: dict[str, Any] = {
            "kind": "train",
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "images": len(self.data),
            "val_images": len(self.val),
            "mode": self.mode,
            "preset": self.preset,
            "optimizer": o.optimizer,
            "lr": self.lr,
            "schedule": {"cosine": f"warmup {WARMUP_FRACTION:g} + cosine to {FINAL_LR_FRACTION:g}",
                         "cycles": f"warmup + cosine over {o.schedule_iterations} steps from each new data"}.get(
                             o.schedule, o.schedule),
            "batch_size": self.batch_size,
            "tile_size": self.out_size,
            "w0": self.w0,
            "sigma": self.sigma,
            "augment": {f: getattr(o.augment, f) for f in o.augment.__dataclass_fields__},
            "device": self.dev_text,
            "amp": self.use_amp,
            "data_diameter": None if not math.isfinite(self.data_diameter) else round(self.data_diameter, 2),
            "zoom": round(self.zoom, 4),
        }
        if self.frozen_norm:
            entry["batch_norm"] = "trained statistics kept"
        if self.picked:
            entry["start_model"] = self.picked
        if self.net.meta.get("input"):
            entry["input"] = dict(self.net.meta["input"])
        return entry

    # -- checkpoint and resume ------------------------------------------------------------

    def checkpoint(self, final: bool = False, best: UNet | None = None) -> None:
        """Write ``last.pt``, ``best.pt`` and ``state.pt``. ``best.pt``: ``best`` when given
        (the finished run's returned model, :meth:`finish` applied), else the best weights
        when they changed since the last checkpoint."""
        if self.ckpt is None:
            return
        net, run, it = self.net, self.run, self.iteration
        net.meta["history"] = self.history(final)
        was_training = net.training
        net.meta["checkpoint_run"] = self.run_id  # ties last.pt and best.pt to this run's state.pt
        save_model(net, self.ckpt / "last.pt")
        if best is None and run.best_state is not None and run.best_iteration != self.best_saved:
            # also the starting model when it stays the best (its iteration is before any checkpoint)
            best = clone_model(net)
            best.load_state_dict(run.best_state)
        if best is not None:
            best.meta["checkpoint_run"] = self.run_id
            save_model(best, self.ckpt / "best.pt")
            del best.meta["checkpoint_run"]
            self.best_saved = run.best_iteration
        del net.meta["checkpoint_run"]
        net.train(was_training)
        state = {
            "iteration": it,
            "total": self.total,
            "elapsed": self.elapsed(),
            "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "best_score": run.best_score,
            "best_loss": run.best_loss,
            "best_iteration": run.best_iteration,
            "start_score": run.start_score,
            "start_iteration": run.start_iteration,
            "curve": run.curve,
            "stale": self.stale,
            "base_history_len": len(self.base_history),
            "numpy_rng": self.rng.bit_generator.state,
            "torch_gen": self.gen.get_state(),
            "run_id": self.run_id,
            "settings": self.settings,
            "start_state": self.start_state,
            "frozen_norm": self.frozen_norm,
            # the finished run's best.pt holds the mixed weights; a resumed run goes on from these
            "best_state": run.best_state if final and self.entry.get("keep_start", {}).get("mixed") else None,
        }
        save_atomic(state, self.ckpt / "state.pt")

    def resume(self, state: dict[str, Any]) -> None:
        """Continue a saved run: optimiser, scaler, counters, curve, random generators, the
        schedule's length and peak rate, and its best weights (when ``best.pt`` is this run's)."""
        o, run = self.options, self.run
        self.opt.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.start_it = int(state["iteration"])
        self.elapsed_before = float(state.get("elapsed", 0.0))
        run.best_score = float(state.get("best_score", -math.inf))
        run.best_loss = float(state.get("best_loss", math.inf))
        run.best_iteration = int(state.get("best_iteration", 0))
        run.start_score, run.start_iteration = state.get("start_score"), int(state.get("start_iteration", 0))
        run.curve = [dict(c) for c in state.get("curve", [])]
        self.stale = int(state.get("stale", 0))
        self.base_history = self.base_history[: int(state.get("base_history_len", len(self.base_history)))]
        if "numpy_rng" in state:
            self.rng.bit_generator.state = state["numpy_rng"]
        if "torch_gen" in state:
            self.gen.set_state(state["torch_gen"])
        if o.iterations is None and o.max_time is None:
            self.total = int(state.get("total", self.total))
        best_file = self.resume_dir / "best.pt"
        if best_file.is_file():
            best_model = load_model(best_file)
            # a best.pt of another run in this folder is not this run's best
            if best_model.meta.get("checkpoint_run") == self.run_id:
                run.best_state = state.get("best_state") or {k: v.clone() for k, v in best_model.state_dict().items()}
                self.best_saved = run.best_iteration
        for g in self.opt.param_groups:
            self.lr = float(g.get("initial_lr", self.lr))

    # -- step and validate ----------------------------------------------------------------

    def elapsed(self) -> float:
        """Seconds trained, counting a resumed run's earlier time."""
        return self.elapsed_before + time.perf_counter() - self.t0

    def learning_rate(self, elapsed: float) -> float:
        """The scheduled rate of the next step (by steps, or by time for a time budget)."""
        o = self.options
        if o.schedule == "cycles":
            return self.lr * lr_factor((self.iteration - self.cycle_start) / max(o.schedule_iterations or 1, 1))
        if o.schedule_iterations is not None:
            frac = self.iteration / o.schedule_iterations
        elif o.iterations is not None or o.max_time is None:
            frac = self.iteration / self.total
        else:
            frac = elapsed / o.max_time
        return self.lr * lr_factor(frac) if o.schedule == "cosine" else self.lr

    def step(self, elapsed: float) -> float | None:
        """One optimiser step on a fresh augmented batch; returns its loss, or None when it
        ran out of memory and the batch was halved (the caller tries the step again)."""
        ts = time.perf_counter()
        self.cur_lr = self.learning_rate(elapsed)
        for g in self.opt.param_groups:
            g["lr"] = self.cur_lr
        arrays = self.data.sample(self.batch_size, self.rng)
        try:
            loss = self._forward_backward(arrays)
        except Exception as exc:  # torch reports out-of-memory as several exception types
            if not is_out_of_memory(exc):
                raise
            self._refuse_out_of_memory(exc)
            loss = None
        if loss is None:
            # drop what the failed step holds (the exception went with the except block), retry with half the batch
            self.opt.zero_grad(set_to_none=True)
            if self.dev.type == "cuda":
                torch.cuda.empty_cache()
            self.batch_size = max(1, self.batch_size // 2)
            self.entry["batch_size"] = self.batch_size
            return None
        self.scaler.step(self.opt)
        self.scaler.update()
        self.iteration = self.run.iteration = self.iteration + 1
        lv = float(loss.detach())
        self.loss_ema = lv if self.loss_ema is None else 0.9 * self.loss_ema + 0.1 * lv
        self.step_times.append(time.perf_counter() - ts)
        return lv

    def _forward_backward(self, arrays: tuple[np.ndarray, ...]) -> torch.Tensor:
        """Augment the batch on the device, forward, the weighted loss, backward."""
        xt, tt, wt, mt = (torch.from_numpy(a).to(self.dev, non_blocking=True) for a in arrays)
        batch = augment_batch(xt, tt, wt, mt, out_size=self.in_size, config=self.options.augment, generator=self.gen)
        xin = batch.image.contiguous(memory_format=torch.channels_last) if self.channels_last else batch.image
        self.net.train()
        if self.frozen_norm:
            for m in self.net.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()  # normalise with the trained statistics; scale and shift still learn
        with autocast(self.dev, self.use_amp):
            logits = self.forward_net(xin)
        loss = weighted_cross_entropy(logits, batch.targets.long(), batch.weights, batch.mask)
        if not torch.isfinite(loss):
            raise ValueError(
                f"training diverged at iteration {self.iteration + 1}: the loss is {loss.item()}. Likely causes: "
                f"a learning rate too high (now {self.cur_lr:.3g}; try 10x lower), images holding NaN/inf "
                "values, labels with no annotated pixels, or a model file with broken weights"
            )
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        return loss

    def _refuse_out_of_memory(self, exc: BaseException) -> None:
        """Raise a clear MemoryError when halving the batch is not allowed or not possible."""
        where, bs = describe_device(self.dev), self.batch_size
        if not self.options.oom_retry:
            raise MemoryError(
                f"out of memory on {where} with batch size {bs} and tile {self.out_size}; "
                f"not retried (all processes must take the same steps): rerun with batch size "
                f"{max(1, bs // 2)} or a smaller tile"
            ) from exc
        if bs == 1:
            raise MemoryError(
                f"out of memory on {where} even with batch size 1; use a smaller "
                f"tile_size (now {self.out_size}), free memory, or train on another device"
            ) from exc

    def validate(self, net: UNet | None = None) -> dict[str, float]:
        """Validation loss and score (``val_ap``, see :func:`_val_score`, named by :func:`score_name`) of the network
        (``net``: another one, such as a CPU copy to hand out): each image in one forward
        pass, mirror-padded as inference pads (:func:`napari_unet.tiling.padded_logits`)."""
        net = self.net if net is None else net
        losses, scores = [], []
        for v, logits in self._val_logits(net):
            tt, wt, mt = (torch.from_numpy(a)[None].to(logits.device) for a in (v.targets, v.weights, v.mask))
            losses.append(float(weighted_cross_entropy(logits, tt, wt, mt)))
            probs = torch.softmax(logits[0], 0).cpu().numpy()
            scores.append(_val_score(probs, v, self.mode, self.preset == "membranes", net.meta.get("postprocess", {})))
        return {"val_loss": float(np.mean(losses)), "val_ap": float(np.mean(scores))}

    def _val_logits(self, net: UNet) -> Generator[tuple[Any, torch.Tensor], None, None]:
        """``(item, logits)`` of each validation image: one forward pass in eval mode on the
        network's own device (mixed precision as in training when that is the training
        device), mirror-padded as inference pads; the network's mode is restored after."""
        dev = next(net.parameters()).device
        amp = self.use_amp and dev.type == self.dev.type
        was_training = net.training
        net.eval()
        try:
            for v in self.val:
                yield v, padded_logits(net, v.image, dev, amp)
        finally:
            net.train(was_training)

    def keep_if_best(self, val: dict[str, float], start: bool = False) -> None:
        """Keep the weights when their score beats the best (ties: the lower loss); for
        membranes, when their loss is lower (:data:`MEMBRANE_SELECT_BY_LOSS`). Count
        validations without improvement for early stopping. ``start``: the starting model
        is the first candidate (a run that never beats it returns it)."""
        run, score, loss = self.run, val["val_ap"], val["val_loss"]
        if self.preset == "membranes" and MEMBRANE_SELECT_BY_LOSS:
            better = loss < run.best_loss or (loss == run.best_loss and score > run.best_score)
        else:
            better = score > run.best_score or (score == run.best_score and loss < run.best_loss)
        if start or better:
            run.best_score, run.best_loss, run.best_iteration = score, val["val_loss"], self.iteration
            run.best_state = {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}
            self.stale = 0
        else:
            self.stale += 1

    # -- the loop ---------------------------------------------------------------------------

    def history(self, final: bool, stopped: str | None = None) -> list[dict[str, Any]]:
        """The model's history with this run's record."""
        rec = dict(self.entry, iterations=self.iteration, seconds=round(self.elapsed(), 1), finished=final)
        if stopped is not None:
            rec["stopped"] = stopped
        rec.update(_summary(self.run))
        return self.base_history + [rec]

    def _shown_total(self) -> int:
        return self.total if self.total < 10**9 else self.run.total  # a time budget: the estimate

    def _eta(self) -> float:
        """Seconds left (and, for a time budget alone, the run's estimated step count)."""
        o = self.options
        mean_step = float(np.mean(self.step_times[-50:]))
        eta = (self.total - self.iteration) * mean_step
        if o.max_time is not None:
            eta = min(eta, max(0.0, o.max_time - self.elapsed()))
            if o.iterations is None:
                self.run.total = self.iteration + int(eta / max(mean_step, 1e-9))
        return eta

    def fit(self) -> Generator[Progress, None, UNet]:
        """Train to the end (steps, time budget or early stopping): yields a record after
        every step, returns the model (best by validation, else the last)."""
        o, info = self.options, self.info
        self.t0 = time.perf_counter()
        it = self.start_it
        msg = f"training on {info['device']}" + (f" from {self.picked}" if self.picked else "")
        shown = self.total if self.total < 10**9 else 0  # a time budget: no step count to show yet
        yield Progress(it, shown, msg, dict(info, phase="start", iteration=it, start_model=self.picked))
        if self.val and self.start_it == 0 and not self.fresh:
            yield Progress(it, shown, "validating the starting model", dict(info, phase="validate", iteration=it))
            val = self.validate()
            self.keep_if_best(val, start=True)
            self.run.start_score, self.run.start_iteration = val["val_ap"], it
            self.entry["start_val_ap"] = round(val["val_ap"], 5)
            # the starting score, so that a plot and a summary can show what training had to beat
            yield Progress(it, shown, f"the starting model scores {info['score']} {val['val_ap']:.2f}",
                           dict(info, phase="start_score", iteration=it, **val))
        stop = "done"
        while self.iteration < self.total:
            elapsed = self.elapsed()  # a resumed run's time budget counts the time it trained before
            if o.max_time is not None and elapsed >= o.max_time:
                stop = "time"
                break
            loss = self.step(elapsed)
            it = self.iteration
            if loss is None:
                yield Progress(it, self.total, f"out of memory: retrying with batch size {self.batch_size}",
                               dict(info, phase="train", iteration=it, batch_size=self.batch_size))
                continue
            point: dict[str, float] = {"iteration": it, "train_loss": loss}
            rec = dict(info, phase="train", iteration=it, train_loss=loss, train_loss_smooth=self.loss_ema, lr=self.cur_lr)
            # validate at the last step of a time budget too: its best model must not be older than it
            last = it == self.total or (o.max_time is not None and self.elapsed() >= o.max_time)
            if self.val and (it % self.val_every == 0 or last):
                yield Progress(it, self._shown_total(), "validating", dict(info, phase="validate", iteration=it))
                self.last_val = self.validate()
                point.update(self.last_val)
                rec.update(self.last_val)
                self.keep_if_best(self.last_val)
            self.run.curve.append(point)
            if it % self.checkpoint_every == 0 or it == self.total:
                self.checkpoint()
            rec["eta"] = self._eta()
            yield Progress(it, self._shown_total(), f"iteration {it}: loss {loss:.4f}", rec)
            if o.early_stopping is not None and self.stale >= o.early_stopping:
                stop = "early stopping"
                break
        result = self.end(stop)
        yield Progress(it, it, f"finished ({stop})", dict(info, phase="done", iteration=it, **self.last_val))
        return result

    def end(self, stop: str) -> UNet:
        """Close the run (``stop`` says why): the returned model (:meth:`result`), which is
        also the final checkpoint's ``best.pt``."""
        self.entry["stopped"] = stop
        result = self.result()  # best.pt is this model (calibrated once, for membranes)
        self.checkpoint(final=True, best=result)
        return result

    def finish(self, model: UNet) -> None:
        """What every model this run hands out gets last (the returned one, which is also the
        finished run's ``best.pt``, and a cancelled run's best): a fine-tuned model's weights
        mixed with the starting model's (``keep_start``, :data:`KEEP_START`); for membranes,
        the bias fitted on the validation pixels (:mod:`napari_unet.calibration`). Not applied
        to the ``best.pt`` of checkpoints during the run, which would repeat a validation pass
        at every new best."""
        if self.start_state is not None:
            self._keep_start(model)
        if self.preset == "membranes":
            from .calibration import calibrate_membranes

            val = self.val
            calibrate_membranes(model, [v.image for v in val], [v.targets == 0 for v in val], [v.mask for v in val])
        elif self.val and self.options.tune_postprocess:
            self._tune_postprocess(model)

    def _keep_start(self, model: UNet) -> None:
        """Mix ``keep_start`` of the starting weights into ``model``'s (the run's best), unless
        that scores more than :data:`KEEP_START_TOLERANCE` below it on the validation images
        (so a starting model that knew little of these images is mostly not mixed in); one
        validation pass, on the training device. Without validation images nothing checks
        the fine-tuned weights, and the mix is handed out."""
        run, share = self.run, float(self.options.keep_start)
        if self.val and (run.best_state is None or run.best_iteration == 0):
            return  # never validated, or the starting model stayed the best: nothing to mix
        tuned = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict({k: (1 - share) * v + share * self.start_state[k].to(v.device, v.dtype)
                               if v.is_floating_point() else v for k, v in tuned.items()})
        if not self.val:
            self.entry["keep_start"] = {"share": share, "mixed": True, "val_ap": None, "fine_tuned_val_ap": None}
            return
        before = run.best_score  # these weights' validation score
        home = next(model.parameters()).device
        after = self.validate(model.to(self.dev))["val_ap"]
        model.to(home)
        kept = after >= before - KEEP_START_TOLERANCE
        if not kept:
            model.load_state_dict(tuned)
        self.entry["keep_start"] = {"share": share, "mixed": kept, "val_ap": round(after, 4),
                                    "fine_tuned_val_ap": round(before, 4)}

    def _tune_postprocess(self, model: UNet) -> None:
        """Store in ``meta["postprocess"]`` the options that segment these validation images
        best (:func:`choose_postprocess`); the run's record says what was tried."""
        probs = [torch.softmax(logits[0], 0).cpu().numpy() for _, logits in self._val_logits(model)]
        defaults = dict(model.meta.get("postprocess", {}))
        tuned = choose_postprocess(probs, [v.gt for v in self.val], [v.mask for v in self.val], self.mode, defaults)
        if tuned is None:
            return
        options, score, base = tuned
        self.entry["postprocess_tuned"] = {"options": options, "val_ap": round(score, 4), "defaults_val_ap": round(base, 4)}
        if options != defaults:
            model.meta["postprocess"] = options

    def result(self) -> UNet:
        """A CPU copy of the best weights (the last when never validated), finished history, eval mode."""
        result = clone_model(self.net)
        if self.run.best_state is not None:
            result.load_state_dict(self.run.best_state)
        self.finish(result)
        result.meta["history"] = self.history(True)
        return result.eval()


def describe_outcome(record: dict[str, Any]) -> str:
    """What validation said of a run, in one sentence, from its record in a model's history
    (the Train widget's and the CLI's words): whether training improved on the starting
    model, the scores before and after, or the best score of a run from scratch."""
    name = score_name(str(record.get("mode", "")), record.get("preset") == "membranes")
    start, best, step = record.get("start_val_ap"), record.get("best_val_ap"), record.get("best_iteration")
    if best is None:
        return "no validation images, so the last model is kept"
    if record.get("improved") is False:
        return (f"training did not improve on the starting model (validation {name} {best:.2f} before and "
                "after); the starting model is kept")
    if record.get("improved") and start is not None:
        digits = 2 if f"{start:.2f}" != f"{best:.2f}" else 3
        return (f"the best model is kept (validation {name} {start:.{digits}f} at the start, {best:.{digits}f} at "
                f"iteration {step})")
    return f"the best model is kept (validation {name} {best:.2f} at iteration {step})"


# -- the generator ------------------------------------------------------------------------


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
    tune_postprocess: bool = False,
    keep_start: float = KEEP_START,
    remember: float = REMEMBER_WEIGHT,
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
            rounded up to a valid size; default 192 (measured: the module's docstring).
        augment: augmentation switches and strengths.
        val_fraction: share held out for validation when no ``val_images`` are given
            (whole images from 8 images up, else a strip of each image); 0 = none.
        val_images, val_labels, val_regions: explicit validation data.
        val_every: validate every this many steps (default: 20 times per run; 50 steps on a
            time budget, and at its last step).
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
        schedule: ``"cosine"`` (warm-up then cosine decay, default), ``"constant"``, or
            ``"cycles"`` (a warm-up and cosine cycle of ``schedule_iterations`` steps from
            the start and from every :meth:`Trainer.set_data`, then the cycle's floor: live
            learning, where the data change as the person annotates).
        zoom_to_model: when the starting model records the cell diameter it knows best
            (``meta["diameter"]``) and the training cells' median diameter differs from it
            by more than 25%, train on copies zoomed to the model's size (as
            ``segment(..., diameter="auto")`` segments), so that fine-tuning builds on what
            the model knows instead of relearning the scale (measured: the module's
            docstring). False: train at the
            data's own scale and record its diameter (always so for labelled 3D stacks,
            which 3D segmentation predicts at their own scale). A model that records
            ``meta["zoom_each"]`` (the stained model: slides at 20x and 40x) gets *each*
            image zoomed to the model's size, as ``segment`` then zooms each image: by the
            diameter the starting model measures on it (as ``segment`` measures it) when
            its labels are partial (a region or the labelled cells, not ``"all"``), by its
            labelled cells' when complete or not measurable (a few seconds per image on a
            CPU, once per run); one that records ``meta["diameter_range"]`` (pretrained
            on many sizes) is not zoomed for data whose diameter lies inside that range.
        tune_postprocess: in an instance mode (not membranes), choose the post-processing
            thresholds (:data:`TUNE_GRID`) that segment the validation images best and store
            them in the model's ``meta["postprocess"]``, which ``segment`` then uses by
            default (only with at least :data:`TUNE_MIN_CELLS` validation cells, and only
            when they beat the model's defaults by :data:`TUNE_MIN_GAIN` AP@0.5; the run's
            history records what was found). Off by default (measured: :data:`TUNE_GRID`):
            the starting model's defaults are kept.
        keep_start: when fine-tuning a trained model (not from scratch), the share of the
            starting model's weights mixed into the returned ones: ``(1 - keep_start) *
            fine-tuned + keep_start * start`` (weight-space ensembling, Wortsman et al.
            2022, "WiSE-FT"), so that a model fine-tuned on a few images keeps part of what
            it knew about others (measured: :data:`KEEP_START`). With validation data,
            mixed only when that costs at most :data:`KEEP_START_TOLERANCE` of validation
            score (the run's history records both scores); without, always; not for
            membranes (not measured there). 0 = the fine-tuned weights.
        remember: when fine-tuning a trained model on partly annotated images (a region
            that is not ``"all"``), outside the annotated area the run keeps learning the
            starting model's own confident classes, with this weight per pixel against 1
            for annotated ones ("learning without forgetting", Li & Hoiem 2016), so that a
            few corrected cells teach what was wrong without unteaching the rest
            (measured: :data:`REMEMBER_WEIGHT`). 0: only the annotated area counts.
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
        ``phase`` and ``run`` (a :class:`TrainingRun`). A fine-tuning run validates its
        starting model first (a ``"start_score"`` record at the starting iteration); the
        finished model's last history record says whether training ``improved`` on it.

    Returns:
        The trained model (CPU, eval mode): the best by validation (:func:`_val_score`), else the last.
    """
    options = dict(locals())  # every keyword as given (the defaults are this signature's)
    del options["images"], options["labels"], options["model"]
    return (yield from Trainer(images, labels, model, **options).fit())


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
        The trained model (best by validation, :func:`_val_score`, when validation data exists).
    """
    gen = train_iter(
        images, labels, model, regions=regions, iterations=iterations, max_time=max_time, device=device, **kwargs
    )
    return drain(gen, progress)


__all__ = [
    "AugmentConfig",
    "CHECKPOINT_FILES",
    "Trainer",
    "TrainingData",
    "TrainingRun",
    "describe_outcome",
    "fine_tune",
    "fresh_model",
    "lr_factor",
    "train_iter",
    "weighted_cross_entropy",
]
