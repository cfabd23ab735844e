"""Training the 3D U-Net on labelled Z stacks: the bundled 3D model's pretraining
(``scripts/pretrain_3d.py``) and a user's fine-tuning (:func:`fine_tune_3d`).

A stack is learned as the 3D network sees it at inference (``volume``): normalised by
its percentiles, resampled along Z to isotropic voxels (its labels by nearest plane),
with classes background / interior / boundary (the inner one-voxel rim of each cell,
:func:`napari_unet.targets.labels_to_targets`). The loss is cross-entropy, the voxels
where two cells touch weighing :data:`TOUCH_WEIGHT` (the 3D form of the paper's border
term), on random cubes of :data:`INPUT` voxels mirrored past the stack's edges, flipped
along every axis, Y and X swapped, with gamma and contrast changes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ._progress import Progress, drain
from .device import resolve_device
from .model import UNet, bundled_3d_model_path, clone_model, load_model
from .normalize import percentile_range
from .resize import nearest_axis, resize_axis
from .targets import check_labels, labels_to_targets, touching_borders

#: input cube edge of a training step (44 voxels of output for the bundled network)
INPUT = 84
#: loss weight of the voxels where two cells touch (1 elsewhere)
TOUCH_WEIGHT = 5.0
#: share of training cubes smoothed (Gaussian sigma 0.7-1.5 voxels) as denoised or
#: deconvolved stacks are: trained on noisy stacks only, the bundled 3D U-Net took a
#: noise-free background for nuclei (54% of a stack foreground for 3% true)
SMOOTHED = 0.25
#: learning rate of fine-tuning a trained 3D network (pretraining: 1e-3)
LR_FINE_TUNE = 1e-4

Example = tuple[np.ndarray, np.ndarray, np.ndarray]


def normalized_isotropic(image: np.ndarray, anisotropy: float) -> np.ndarray:
    """A (Z, Y, X) stack normalised by its 1 and 99.8 percentiles and resampled along Z to
    isotropic voxels (``round(Z * anisotropy)`` planes), as the 3D network sees it."""
    lo, hi = (float(v[0]) for v in percentile_range(image, 1.0, 99.8))
    x = (np.asarray(image, np.float32) - lo) / max(hi - lo, 1e-6)
    return resize_axis(x, 0, max(1, round(x.shape[0] * anisotropy)), edge="nearest")


def make_example(image: np.ndarray, labels: np.ndarray | None, anisotropy: float,
                 isotropic_labels: np.ndarray | None = None, region: Any = "all") -> Example:
    """(normalised isotropic image, classes, voxels where two cells touch) of a labelled stack.

    ``isotropic_labels``: labels already on the isotropic grid (a generator's); else
    ``labels`` are resampled along Z by nearest plane. ``region``: what is annotated:
    ``"all"`` (every cell is labelled), None (the labelled cells and a margin around them)
    or a boolean mask, (Z, Y, X) or (Y, X) for every plane; voxels outside it get class -1
    (not learned).
    """
    x = normalized_isotropic(image, anisotropy)
    iso = isotropic_labels if isotropic_labels is not None else nearest_axis(check_labels(labels), 0, x.shape[0])
    if iso.shape != x.shape:
        raise ValueError(f"labels of shape {iso.shape} do not match the resampled stack {x.shape}")
    if region is not None and not isinstance(region, str):
        mask = np.asarray(region, bool)
        mask = np.broadcast_to(mask, (np.shape(image)[0], *mask.shape[-2:])) if mask.ndim == 2 else mask
        region = nearest_axis(mask.astype(np.uint8), 0, x.shape[0]).astype(bool)
    classes, known = labels_to_targets(iso, "instance3", region=region)
    classes = np.where(known, classes, -1)
    return x, classes.astype(np.int64), touching_borders(iso)


def random_cube(example: Example, size: int, out: int, rng: np.random.Generator,
                augment: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random ``size``-cube of the image (mirrored past its edges) and the ``out``-cube
    of its classes (-1 past the stack's edge: not learned) and touching voxels at its centre."""
    x, t, touch = example
    halo = (size - out) // 2
    xp = np.pad(x, [(halo, halo + max(0, out - n)) for n in x.shape], mode="reflect")
    o = [int(rng.integers(0, max(1, n - out + 1))) for n in x.shape]
    xs = xp[o[0]:o[0] + size, o[1]:o[1] + size, o[2]:o[2] + size]
    tpad = [(0, max(0, out - n)) for n in x.shape]
    box = (slice(o[0], o[0] + out), slice(o[1], o[1] + out), slice(o[2], o[2] + out))
    ts = np.pad(t, tpad, constant_values=-1)[box]
    ws = np.pad(touch, tpad)[box]
    if augment:
        for axis in range(3):
            if rng.random() < 0.5:
                xs, ts, ws = (np.flip(a, axis) for a in (xs, ts, ws))
        if rng.random() < 0.5:
            xs, ts, ws = (np.swapaxes(a, 1, 2) for a in (xs, ts, ws))
        gamma = math.exp(rng.uniform(-0.3, 0.3))
        xs = np.clip(xs, 0, None) ** gamma * rng.uniform(0.8, 1.2) + rng.uniform(-0.1, 0.1)
        if rng.random() < SMOOTHED:  # a denoised or deconvolved stack: little or no noise left
            xs = ndi.gaussian_filter(xs, rng.uniform(0.7, 1.5))
    return np.ascontiguousarray(xs, np.float32), np.ascontiguousarray(ts), np.ascontiguousarray(ws)


def random_batch(examples: Sequence[Example], n: int, size: int, out: int, rng: np.random.Generator,
                 augment: bool, touch_weight: float = TOUCH_WEIGHT) -> tuple[torch.Tensor, ...]:
    """``n`` random cubes of random examples: inputs ``(n, 1, s, s, s)``, classes, loss weights."""
    items = [random_cube(examples[int(rng.integers(len(examples)))], size, out, rng, augment) for _ in range(n)]
    x = torch.from_numpy(np.stack([i[0] for i in items]))[:, None]
    t = torch.from_numpy(np.stack([i[1] for i in items]))
    w = torch.from_numpy(1.0 + (touch_weight - 1.0) * np.stack([i[2] for i in items]).astype(np.float32))
    return x, t, w


def loss_of(net: UNet, x: torch.Tensor, t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Weighted cross-entropy over the voxels with a class (``t >= 0``)."""
    logits = net(x)
    ce = F.cross_entropy(logits, t.clamp(min=0), reduction="none")
    weight = w * (t >= 0).float()
    return (ce * weight).sum() / weight.sum().clamp(min=1.0)


class FineTune3DRun:
    """A 3D fine-tuning as it goes (each record's ``info["run"]``): the steps made and the
    model so far, for a caller that stops it (the Train widget's Cancel)."""

    def __init__(self, net: UNet, lr: float, n_stacks: int) -> None:
        self.net, self.lr, self.n_stacks = net, lr, n_stacks
        self.iteration = 0
        self.best_state = self.best_score = None  # no validation: the last weights are the result

    def best_model(self) -> UNet:
        """A copy of the network as it is now (CPU, eval mode), its history told."""
        out = clone_model(self.net).eval()
        out.meta.setdefault("history", []).append({"kind": "fine-tune 3D", "iterations": self.iteration,
                                                   "lr": self.lr, "stacks": self.n_stacks})
        return out


def fine_tune_3d_iter(stacks: Sequence[Any], labels: Sequence[Any], model: Any = None, *, voxel_size: Any,
                      regions: Sequence[Any] | None = None, iterations: int = 300, max_time: float | None = None,
                      lr: float = LR_FINE_TUNE, batch_size: int = 2, device: Any = None,
                      seed: int = 0) -> Generator[Progress, None, UNet]:
    """Fine-tune a 3D network on labelled (Z, Y, X) stacks; returns the trained copy.

    Args:
        stacks, labels: the stacks and their 3D labels.
        model: the 3D network to start from (UNet, path or None = the bundled 3D model).
        regions: per stack, what is annotated: None (the labelled cells and a margin around
            them), ``"all"`` (every cell is labelled: the rest is background) or a boolean
            mask, (Z, Y, X) or (Y, X) for every plane; None for all = labelled cells and margins.
        voxel_size: ``(z, y, x)`` of the stacks, or one number (Z step / pixel size);
            one for all, or a list with one per stack.
        iterations, max_time: training steps, and a time limit in seconds.
        lr: learning rate (AdamW); BatchNorm keeps the start model's statistics.
        batch_size: cubes per step.
        device: ``"cpu"``, ``"cuda"``, ``"mps"`` or None (the best available).
        seed: random seed of the cubes.
    """
    from .volume import check_voxel_size

    if len(stacks) == 0 or len(stacks) != len(labels):
        raise ValueError(f"give as many label stacks as stacks (got {len(stacks)} and {len(labels)}), at least one")
    sizes = voxel_size if isinstance(voxel_size, list) else [voxel_size] * len(stacks)
    regions = list(regions) if regions is not None else [None] * len(stacks)
    examples = []
    for image, lab, v, region in zip(stacks, labels, sizes, regions):
        a = check_voxel_size(v)
        if a is None:
            raise ValueError("fine-tuning the 3D network needs the voxel size (Z step) of each stack")
        image = np.asarray(image)
        if image.ndim != 3 or np.shape(lab) != image.shape:
            raise ValueError(f"a stack and its labels must both be (Z, Y, X) of one shape, got {image.shape} "
                             f"and {np.shape(lab)}")
        examples.append(make_example(image, np.asarray(lab), a, region=region))
    start = load_model(bundled_3d_model_path()) if model is None else \
        load_model(model) if not isinstance(model, UNet) else model
    if start.config.spatial_dims != 3:
        raise ValueError("fine_tune_3d needs a 3D network (UNet(spatial_dims=3))")
    dev = resolve_device(device)
    net = clone_model(start).to(dev)
    out = net.output_size(INPUT)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    run = FineTune3DRun(net, lr, len(stacks))
    t0 = time.time()
    for i in range(iterations):
        net.train()
        for m in net.modules():  # keep the trained BatchNorm statistics
            if isinstance(m, torch.nn.BatchNorm3d):
                m.eval()
        x, t, w = (v.to(dev) for v in random_batch(examples, batch_size, INPUT, out, rng, True))
        loss = loss_of(net, x, t, w)
        opt.zero_grad()
        loss.backward()
        opt.step()
        run.iteration = i + 1
        value = float(loss.item())
        yield Progress(run.iteration, iterations, f"3D fine-tuning: step {run.iteration}, loss {value:.3f}",
                       {"phase": "train", "iteration": run.iteration, "train_loss": value, "run": run})
        if max_time is not None and time.time() - t0 > max_time:
            break
    return run.best_model()


def fine_tune_3d(stacks: Sequence[Any], labels: Sequence[Any], model: Any = None, **kw: Any) -> UNet:
    """:func:`fine_tune_3d_iter` run to the end."""
    return drain(fine_tune_3d_iter(stacks, labels, model, **kw))
