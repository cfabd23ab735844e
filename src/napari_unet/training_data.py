"""What a training run learns from: its images prepared once, and the crop sampler.

Every image is normalised once with the model's rule and the WHOLE image's statistics
(as inference does), its class targets, loss mask and weight map are computed once, and
the arrays are reflect-padded once (:class:`TrainingData`); each step then cuts random
source crops -- a few array slices, in the main process, no workers. Validation images
get the same preparation, unpadded (:func:`prepare_validation`). Also here: the held-out
split (:func:`split_for_validation`), the zoom to a model's cell size
(:func:`zoom_to_model`) and what the images say about the network they need
(:func:`in_channels_of`, :func:`num_classes_for`).

Numpy only (no torch): the trainer (:mod:`napari_unet.training`) turns the arrays into
tensors.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from typing import TYPE_CHECKING

import numpy as np

from .normalize import apply_normalization, normalization_params
from .targets import DEFAULT_MARGIN, check_labels, labels_to_targets

if TYPE_CHECKING:
    from .model import UNet


def check_finite(image: np.ndarray, index: int) -> None:
    """Refuse training image ``index`` when it holds NaN or inf pixels."""
    bad = int(np.count_nonzero(~np.isfinite(image)))
    if bad:
        raise ValueError(
            f"training image {index} holds {bad} NaN/inf pixel(s); replace them "
            "(e.g. numpy.nan_to_num) or crop them away before training"
        )


def as_chw(image: Any, in_channels: int, index: int) -> np.ndarray:
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


def normalised_whole(image: Any, in_channels: int, index: int, rule: dict[str, Any]) -> np.ndarray:
    """An image normalised by its model's rule with the WHOLE image's statistics (as
    inference does), before any strip or crop is cut from it; 2D for 1-channel models."""
    chw = as_chw(image, in_channels, index)
    check_finite(chw, index)
    lo, hi = normalization_params(chw, rule, channel_axis=0)
    norm = apply_normalization(chw, lo, hi, channel_axis=0)
    return norm[0] if in_channels == 1 else norm


def weights_for(labels: np.ndarray, targets: np.ndarray, mode: str, w0: float, sigma: float, class_weights: Any) -> np.ndarray:
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


def in_channels_of(images: Sequence[Any]) -> int:
    """Input channels a network needs for these training images (read from the first).

    A 2D image has one; a 3D image has its last axis as channels when that axis has at
    most 4 entries (``YXC``, e.g. RGB), else its first (``CYX``).

    Raises:
        ValueError: an image that is neither 2D nor 2D with a channel axis.
    """
    arr = np.asarray(images[0]) if not hasattr(images[0], "shape") else images[0]
    if arr.ndim == 2:
        return 1
    if arr.ndim == 3:
        return int(arr.shape[-1]) if arr.shape[-1] <= 4 else int(arr.shape[0])
    raise ValueError(f"training images must be 2D (optionally with a channel axis), got shape {arr.shape}")


def num_classes_for(mode: str, labels: Sequence[Any]) -> int:
    """Output classes of a fresh network for ``mode``: 3 (``instance3``: background,
    interior, boundary), 2 (``instance2``), or one per class value in the labels
    (``semantic``, at least 2)."""
    if mode == "semantic":
        return max(2, max(int(np.asarray(lab).max(initial=0)) for lab in labels) + 1)
    return 3 if mode == "instance3" else 2


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


def _checked_pair(image: Any, labels: Any, in_channels: int, idx: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Training image ``idx`` as (C, H, W), its labels checked, and whether it is constant."""
    chw = as_chw(image, in_channels, idx)
    check_finite(chw, idx)
    lab = check_labels(labels, f"labels {idx}")
    if lab.shape != chw.shape[1:]:
        raise ValueError(f"labels {idx} have shape {lab.shape} but image {idx} is {chw.shape[1:]} (y, x)")
    flat = bool(chw.size > 0 and chw.min() == chw.max())
    if flat and lab.max(initial=0) > 0:
        # an all-zero image (a wrong channel or an empty file) would train its whole budget on nothing
        raise ValueError(f"training image {idx} is constant (every pixel is {chw.flat[0]:g}) but its labels "
                         "hold cells: nothing in the image shows them; check the file or channel")
    return chw, lab, flat


def _checked_targets(labels: np.ndarray, mode: str, region: Any, margin: int, num_classes: int | None,
                     idx: int) -> tuple[np.ndarray, np.ndarray]:
    """Class targets and loss mask of training image ``idx``, refused when nothing counts."""
    try:
        targets, mask = labels_to_targets(labels, mode, region, margin)
    except ValueError as exc:
        raise ValueError(f"training image {idx}: {exc}") from exc
    if mode == "semantic" and num_classes is not None and int(targets[mask].max(initial=0)) >= num_classes:
        raise ValueError(
            f"labels {idx} hold class {int(targets[mask].max())} but the model has only "
            f"{num_classes} classes (0..{num_classes - 1})"
        )
    if not mask.any():
        raise ValueError(f"training image {idx}: the annotated region is empty; nothing to learn from")
    return targets, mask


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
        known: per image, None or the starting model's confident classes (an int array, -1
            where it is unsure): outside the annotated region these count in the loss
            with weight ``known_weight`` (crops are still centred on annotated pixels).
        known_weight: the weight of those pixels.
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
        known: Sequence[np.ndarray | None] | None = None,
        known_weight: float = 0.0,
    ) -> None:
        rng = rng or np.random.default_rng(0)
        self.source_size = int(source_size)
        self.items: list[_Item] = []
        pad = self.source_size // 2 + 1
        n_flat = 0
        for k, (img, lab) in enumerate(zip(images, labels)):
            idx = first_index + k
            chw, lab, flat = _checked_pair(img, lab, in_channels, idx)
            n_flat += flat
            region = regions[k] if regions is not None else None
            targets, mask = _checked_targets(lab, mode, region, margin, num_classes, idx)
            weights = weights_for(lab, targets, mode, w0, sigma, class_weights)
            lo, hi = normalization_params(chw, normalization, channel_axis=0)
            norm = apply_normalization(chw, lo, hi, channel_axis=0)
            item = self._padded(norm, targets, weights, mask, pad, rng)
            if known is not None and known[k] is not None and known_weight > 0:
                self._add_known(item, known[k], known_weight, mask)
            self.items.append(item)
        if not self.items:
            raise ValueError("no training images given")
        if n_flat == len(self.items):
            warnings.warn("Every training image is constant (all its pixels the same), so training can only learn "
                          "that flat images hold no cells; check the files or channels.", UserWarning, stacklevel=2)
        counts = np.array([it.counted for it in self.items], np.float64)
        # images are drawn in proportion to their annotated area
        self._p = counts / counts.sum()

    def _padded(self, norm: np.ndarray, targets: np.ndarray, weights: np.ndarray, mask: np.ndarray, pad: int,
                rng: np.random.Generator) -> _Item:
        """One image's arrays reflect-padded by ``pad``, with its candidate crop centres."""
        yx = np.argwhere(mask)
        if len(yx) > self.MAX_CENTRES:
            yx = yx[rng.choice(len(yx), self.MAX_CENTRES, replace=False)]
        pw = ((pad, pad), (pad, pad))
        return _Item(
            image=np.pad(norm, ((0, 0),) + pw, mode="reflect"),
            # class ids are small: int16 keeps the padded pool light
            targets=np.pad(targets.astype(np.int16), pw, mode="reflect"),
            weights=np.pad(weights, pw, mode="reflect"),
            mask=np.pad(mask, pw, mode="constant", constant_values=False),
            pad=pad,
            centres=yx.astype(np.int32),
            counted=int(mask.sum()),
        )

    @staticmethod
    def _add_known(item: _Item, known: np.ndarray, weight: float, annotated: np.ndarray) -> None:
        """The starting model's confident classes outside the annotated area join the loss."""
        use = (known >= 0) & ~annotated
        pw = ((item.pad, item.pad), (item.pad, item.pad))
        use_p = np.pad(use, pw, mode="constant", constant_values=False)
        item.targets[use_p] = np.pad(known, pw, mode="constant")[use_p]
        item.weights[use_p] = weight
        item.mask[use_p] = True

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
class ValidationItem:
    """One validation image, prepared once (unpadded: the validation pass pads it)."""

    image: np.ndarray  # (C, H, W) normalised
    gt: np.ndarray  # instance (or class) labels restricted to the annotated region
    targets: np.ndarray
    weights: np.ndarray
    mask: np.ndarray


def prepare_validation(
    images: list[Any], labels: list[Any], regions: list[Any] | None, mode: str, rule: dict[str, Any],
    in_ch: int, w0: float, sigma: float, class_weights: Any, margin: int, max_edge: int,
) -> list[ValidationItem]:
    """Validation images normalised by ``rule``, cut to their centre ``max_edge`` square,
    with targets, weights, mask and the truth restricted to the annotated region;
    images with no labelled cell and no region are skipped."""
    out: list[ValidationItem] = []
    for k, (img, lab) in enumerate(zip(images, labels)):
        chw = as_chw(img, in_ch, k)
        check_finite(chw, k)
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
        weights = weights_for(lab, targets, mode, w0, sigma, class_weights)
        gt = np.where(mask, lab, 0) if mode != "semantic" else lab
        out.append(ValidationItem(norm, gt, targets, weights, mask))
    return out


#: from this many images on, validation holds out whole images; with fewer, a strip of each,
#: so that every image is trained on (with five H&E slides, a held-out slide took away the
#: second of two 40x slides, and validation saw one slide of one magnification)
WHOLE_IMAGE_VALIDATION = 8


def _strip_cut(shape: tuple[int, ...], val_fraction: float) -> int | None:
    """Where a validation strip starts along an image's longer axis; None when the strip or
    the rest would be under 48 px."""
    length = max(shape[-2:])
    cut = length - int(round(length * val_fraction))
    return None if length - cut < 48 or cut < 48 else cut


def split_for_validation(
    images: list[Any], labels: list[Any], regions: list[Any] | None, val_fraction: float
) -> tuple[list[Any], list[Any], list[Any] | None, list[Any], list[Any], list[Any] | None]:
    """Hold out whole images (:data:`WHOLE_IMAGE_VALIDATION` or more images, or 4 or more
    too small to cut) or a strip of each image (fewer)."""
    n = len(images)
    if val_fraction <= 0:
        return images, labels, regions, [], [], None
    if n >= WHOLE_IMAGE_VALIDATION or (n >= 4 and not all(_strip_cut(np.shape(lab), val_fraction) for lab in labels)):
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
        cut = _strip_cut(lab.shape, val_fraction)
        if cut is None:
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


def zoom_to_model(net: UNet, fresh: bool, enabled: bool, imgs: list, labs: list, regs: list | None,
                  va_i: list, va_l: list, va_r: list | None,
                  measure: Callable[[np.ndarray], float | None] | None = None) -> tuple:
    """Training data zoomed to the starting model's cell size (see ``train_iter``'s
    ``zoom_to_model``), and
    the model's ``meta["diameter"]`` set to the size it will know best afterwards.

    ``measure``: for a ``zoom_each`` model, the cell diameter the model measures on a
    (normalised) image, as ``segment`` measures it before zooming, or None when it cannot.
    An image whose labels are partial (its region is not ``"all"``) is zoomed by that
    measure: the cells a person labelled first are not a fair sample of the image's
    (the least confident are the large, merged ones), and training at their size while
    ``segment`` zooms by the measured size teaches the model the wrong scale. Without it,
    or when the model cannot measure, each image is zoomed by its labelled cells.

    Returns the (possibly zoomed) lists, the zoom and the data's median cell diameter.
    """
    from .diameter import label_diameter, zoom_for

    data_d = label_diameter([*labs, *va_l])
    if not math.isfinite(data_d):
        return imgs, labs, regs, va_i, va_l, va_r, 1.0, data_d
    target = None if fresh else net.meta.get("diameter")
    if enabled and net.meta.get("zoom_each") and isinstance(target, (int, float)) and target > 0:
        # slides at 20x and 40x (the stained model): EACH image to the model's size by its own
        # cells, as segment (diameter "auto" for such a model) zooms each image
        def own_zoom(img: Any, lab: Any, reg: Any) -> float:
            complete = isinstance(reg, str) and reg == "all"
            d = measure(np.asarray(img)) if measure is not None and not complete else None
            if d is None:
                d = label_diameter([np.asarray(lab)])
            return zoom_for(float(target), d) if math.isfinite(d) else 1.0

        zooms = [own_zoom(*item) for item in zip(imgs, labs, regs or [None] * len(imgs))]
        va_zooms = [own_zoom(*item) for item in zip(va_i, va_l, va_r or [None] * len(va_i))]
        imgs, labs, regs = _zoomed(imgs, labs, regs, zooms)
        va_i, va_l, va_r = _zoomed(va_i, va_l, va_r, va_zooms)
        return imgs, labs, regs, va_i, va_l, va_r, float(np.median(zooms)), data_d
    known = net.meta.get("diameter_range")  # a model pretrained on many sizes (e.g. 20x and 40x)
    if known and not fresh and known[0] <= data_d <= known[1]:
        target = None  # it knows this size already: train at the data's own scale
    if not (enabled and isinstance(target, (int, float)) and target > 0):
        net.meta["diameter"] = round(data_d, 2)  # the data's own size is what it will know
        return imgs, labs, regs, va_i, va_l, va_r, 1.0, data_d
    zoom = zoom_for(float(target), data_d)
    if zoom == 1.0:
        return imgs, labs, regs, va_i, va_l, va_r, 1.0, data_d
    imgs, labs, regs = _zoomed(imgs, labs, regs, [zoom] * len(imgs))
    va_i, va_l, va_r = _zoomed(va_i, va_l, va_r, [zoom] * len(va_i))
    return imgs, labs, regs, va_i, va_l, va_r, zoom, data_d


def _zoomed(images: list, labels: list, regions: list | None, zooms: list[float]) -> tuple[list, list, list | None]:
    """Each image, its labels and its region (an array, or "all") zoomed by its own zoom."""
    from .resize import resize_image, resize_nearest, zoomed_shape

    out_i, out_l, out_r = [], [], None if regions is None else []
    for k, (img, lab, zoom) in enumerate(zip(images, labels, zooms)):
        lab = np.asarray(lab)
        r = None if regions is None else regions[k]
        if zoom != 1.0:
            yx = zoomed_shape(lab.shape[-2:], zoom)
            img, lab = resize_image(np.asarray(img), _image_axes(img, lab.shape), yx), resize_nearest(lab, "YX", yx)
            r = resize_nearest(np.asarray(r), "YX", yx) if isinstance(r, np.ndarray) else r
        out_i.append(img)
        out_l.append(lab)
        if out_r is not None:
            out_r.append(r)
    return out_i, out_l, out_r

