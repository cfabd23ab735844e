"""Overlap-tile inference: mirror padding, edge-to-edge output tiles, seamless stitching.

This module only predicts (class probabilities). Labels are made above it:
:mod:`napari_unet.instances` (plane by plane) and :mod:`napari_unet.segmentation`
(``segment``: zoom, 3D, labels); ``tiling.segment`` / ``tiling.segment_iter`` stay
importable from here for old code.

How a prediction is laid out (the paper's overlap-tile strategy, made exact):

* The output plane is cut into tiles of ``S_y x S_x`` pixels laid edge to edge. Every
  tile origin is a multiple of the pooling grid ``g = 2**depth``; a network with
  ``depth`` 2x2 poolings is only translation-equivariant for shifts that are multiples
  of ``g``, so this is what makes the stitched result equal -- up to float rounding --
  to ONE forward pass over the whole mirror-padded image, whatever the tile size.
* A tile's network input is the tile plus the halo (``model.config.halo``) on every
  side, enlarged on the bottom/right to the next valid input size. Valid output sizes
  (``g*k - 4*(g - 1)``) are not multiples of ``g``, so each forward pass computes a few
  pixels more than the tile and only the first ``S`` rows/columns are kept.
* Pixels outside the image are filled by mirroring (reflection without repeating the
  edge pixel, numpy's ``"reflect"``), by index reflection, repeated as often as needed,
  so images smaller than the network's field of view work too. Only the tile plus its
  halo is read from the image, which is what keeps lazy inputs (dask, zarr, memory-mapped
  TIFF) bounded in memory.

``tile_size`` is the edge of the OUTPUT tile. It is rounded to the nearest multiple of
the pooling grid (at least the smallest output a valid input gives, rounded down to the
grid), then reduced so that tiles split each image axis evenly (e.g. a 1000 px axis with
``tile_size=768`` gets two 512 px tiles instead of 768 + 232). ``None`` chooses it from the
device's free memory (see :func:`auto_tile_size`). The result does not depend on it.

Normalisation follows ``model.meta["normalization"]`` and is computed once per image
(over all planes; on a strided subsample for large images), never per tile.

Forward passes run on a worker thread while the generator reads the next batch of tiles
and keeps yielding :class:`~napari_unet._progress.Progress` records (at least every
0.2 s), so a consumer that stops iterating (``close()``, napari's ``worker.quit()``) is
released at once; a batch already on the device finishes in the background and is
discarded.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._progress import Progress, ProgressBar, drain
from .calibration import class_probabilities
from .device import autocast, available_memory, cpu_supports_bf16, describe_device, is_out_of_memory, resolve_device
from .image_checks import NONFINITE_WARNING, modality_warning
from .inputs import (  # the image's axes, channels and normalisation live there (also importable from here)
    AXIS_LETTERS,
    ChannelMismatch,
    Layout,
    choose_channel_map,
    image_normalization,
    map_channels,
    out_index,
    parse_axes,
)
from .normalize import apply_normalization

#: seconds between progress records while a batch is on the device (cancel latency)
HEARTBEAT_S = 0.2
#: activation values alive per input pixel and per channel of the first level at
#: inference (conv, BatchNorm, concat and skip buffers of all levels). Measured peak for
#: the U-Net of model.py (depth 4, width 16, CPU): 5.5 (float32) to 6.5 (bfloat16); 7
#: leaves a margin
ACTIVATION_FACTOR = 7.0
#: on a CPU the output tile is capped: measured on a 2-core AVX-512-BF16/AMX CPU with
#: bfloat16 and channels-last, a 2048x2048 image ran about 2x faster with 384-512 px
#: tiles than with 1024-2048 px ones (the activations of a tile then stay in cache), even
#: though the halo share is larger (benchmarks/bench_tiling.py --sweep)
CPU_MAX_TILE = 512
#: share of free memory a prediction may use
MEMORY_SHARE = {"cuda": 0.6, "mps": 0.5, "cpu": 0.25}
MAX_BATCH = 16

# -- reading tiles ---------------------------------------------------------------------------


def reflect_indices(idx: np.ndarray, n: int) -> np.ndarray:
    """Mirror indices into ``[0, n)`` (numpy's ``"reflect"``, repeated for any distance)."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    m = np.mod(idx, period)
    return np.where(m < n, m, period - m)


def _as_numpy(a: Any) -> np.ndarray:
    if hasattr(a, "compute"):  # dask
        a = a.compute()
    return np.asarray(a)


class Source:
    """Reads mirror-padded ``(C, h, w)`` float32 regions of one plane of any array-like."""

    def __init__(self, image: Any, layout: Layout, channel_map: str) -> None:
        self.image = image
        self.layout = layout
        self.channel_map = channel_map  # "keep" | "gray" | "rgb" (drop alpha)

    def read(self, plane: tuple[int, ...], y0: int, h: int, x0: int, w: int) -> np.ndarray:
        lay = self.layout
        H, W = lay.yx_shape
        rows = reflect_indices(np.arange(y0, y0 + h), H)
        cols = reflect_indices(np.arange(x0, x0 + w), W)
        rlo, rhi = int(rows.min()), int(rows.max()) + 1
        clo, chi = int(cols.min()), int(cols.max()) + 1
        index: list[Any] = [slice(None)] * len(lay.shape)
        for ax, i in zip(lay.planes, plane):
            index[ax] = int(i)
        index[lay.y] = slice(rlo, rhi)
        index[lay.x] = slice(clo, chi)
        block = _as_numpy(self.image[tuple(index)])
        # remaining axes, in the image's order: put them as (C, Y, X)
        kept = [a for a in range(len(lay.shape)) if a not in lay.planes]
        order = [kept.index(a) for a in ((lay.channel,) if lay.channel is not None else ()) + (lay.y, lay.x)]
        block = block.transpose(order)
        if lay.channel is None:
            block = block[None]
        if rows[0] != rlo or (rhi - rlo) != h or not np.array_equal(rows, np.arange(rlo, rhi)):
            block = block[:, rows - rlo]
        if cols[0] != clo or (chi - clo) != w or not np.array_equal(cols, np.arange(clo, chi)):
            block = block[:, :, cols - clo]
        block = block.astype(np.float32, copy=False)
        return block if self.channel_map == "keep" else map_channels(block, self.channel_map)

    def seen(self, plane: tuple[int, ...], lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """One whole plane as the network sees it: ``(C, H, W)``, normalised by ``(lo, hi)``."""
        H, W = self.layout.yx_shape
        return apply_normalization(self.read(plane, 0, H, 0, W), lo, hi, channel_axis=0)


def plane_writer(buf: np.ndarray) -> Callable[[tuple[int, ...], int, int, np.ndarray], None]:
    """A ``write`` for :meth:`Predictor.run` that stores one plane's tiles in ``buf`` ``(K, H, W)``."""

    def write(_plane: tuple[int, ...], oy: int, ox: int, probs: np.ndarray) -> None:
        buf[:, oy : oy + probs.shape[1], ox : ox + probs.shape[2]] = probs

    return write


# -- plan ------------------------------------------------------------------------------------


def round_tile_size(tile_size: int, config: Any) -> int:
    """Nearest multiple of the pooling grid, at least the smallest useful output edge."""
    g = config.grid
    smallest = g * max(1, config.output_size(config.min_input_size) // g)
    return max(smallest, g * int(round(float(tile_size) / g)))


def balanced_tile(size: int, tile: int, g: int) -> int:
    n = max(1, math.ceil(size / tile))
    return min(tile, g * math.ceil(math.ceil(size / n) / g))


def activation_bytes_per_pixel(config: Any, amp: bool) -> float:
    """Estimated bytes of inference activations per network input pixel."""
    return (2.0 if amp else 4.0) * ACTIVATION_FACTOR * config.base_width + 4.0 * (config.in_channels + config.num_classes)


def auto_tile_size(config: Any, device: torch.device, amp: bool, memory: int | None = None) -> int:
    """Output tile edge chosen from the device's free memory.

    Uses a share of the free memory (:data:`MEMORY_SHARE`) and the activation estimate of
    :func:`activation_bytes_per_pixel`; on a CPU the edge is also capped at
    :data:`CPU_MAX_TILE`, past which bigger tiles are not faster.
    """
    if memory is None:
        memory = available_memory(device)
    budget = memory * MEMORY_SHARE.get(device.type, 0.25)
    side = math.sqrt(max(budget, 0.0) / activation_bytes_per_pixel(config, amp)) - 2 * config.halo
    if device.type == "cpu":
        side = min(side, CPU_MAX_TILE)
    return round_tile_size(max(side, config.grid), config)


@dataclass
class _Plan:
    tile: tuple[int, int]  # output tile (stride) per axis
    inp: tuple[int, int]  # network input per axis
    batch: int

    def origins(self, hw: tuple[int, int]) -> list[tuple[int, int]]:
        return [(oy, ox) for oy in range(0, hw[0], self.tile[0]) for ox in range(0, hw[1], self.tile[1])]


def _make_plan(config: Any, hw: tuple[int, int], tile: int, batch: int | None, device: torch.device, amp: bool, n_planes: int) -> _Plan:
    g = config.grid
    ty, tx = (balanced_tile(s, tile, g) for s in hw)
    iy, ix = config.input_size_for_output(ty), config.input_size_for_output(tx)
    if batch is None and device.type == "cpu":
        # one full-size tile keeps the cores busy and bigger batches only evict the
        # caches; small tiles (small planes) are batched up to the same number of pixels
        full = config.input_size_for_output(CPU_MAX_TILE) ** 2
        batch = int(max(1, min(MAX_BATCH, full // (iy * ix))))
    if batch is None:
        budget = available_memory(device) * MEMORY_SHARE.get(device.type, 0.25)
        per_tile = activation_bytes_per_pixel(config, amp) * iy * ix
        n_tiles = n_planes * math.ceil(hw[0] / ty) * math.ceil(hw[1] / tx)
        batch = int(max(1, min(MAX_BATCH, budget // max(per_tile, 1.0), n_tiles)))
    return _Plan((ty, tx), (iy, ix), max(1, int(batch)))


# -- forward -----------------------------------------------------------------------------------


class TileTooLarge(Exception):
    """One tile alone ran out of memory: the tile must shrink."""


def _amp_dtype_name(device: torch.device, amp: bool) -> str:
    if not amp:
        return "float32"
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device.type == "cpu" and cpu_supports_bf16():
        return "bfloat16"
    return "float32"


def forward_batch(net: torch.nn.Module, x: np.ndarray, device: torch.device, amp: bool, channels_last: bool, keep: tuple[int, int]) -> np.ndarray:
    """Probabilities of a batch; on out-of-memory, split the batch and retry."""
    try:
        # inference_mode and autocast are thread-local: they must be entered here, in
        # the worker thread that runs the network
        with torch.inference_mode(), autocast(device, amp):
            t = torch.from_numpy(x).to(device, non_blocking=True)
            if channels_last:
                t = t.contiguous(memory_format=torch.channels_last)
            # softmax, with a membrane model's test-time flips and class bias (calibration.py)
            probs = class_probabilities(net, t)[:, :, : keep[0], : keep[1]]
            return probs.cpu().numpy()
    except Exception as exc:  # torch reports out-of-memory as several types; others re-raised
        if not is_out_of_memory(exc):
            raise
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if x.shape[0] == 1:
            raise TileTooLarge(str(exc)) from exc
    half = x.shape[0] // 2
    return np.concatenate(
        [forward_batch(net, x[:half], device, amp, channels_last, keep), forward_batch(net, x[half:], device, amp, channels_last, keep)]
    )


def prepare_network(model: torch.nn.Module, device: torch.device, channels_last: bool) -> torch.nn.Module:
    # a private copy: never change the caller's model (device, memory layout, train mode),
    # which may be training in another thread
    net = copy.deepcopy(model).eval().to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


# -- the predictor -------------------------------------------------------------------------------


class Predictor:
    def __init__(self, image: Any, model: Any, tile_size: int | None, device: Any, axes: str | None,
                 batch_size: int | None, amp: bool | None, channels_last: bool,
                 normalization: tuple[np.ndarray, np.ndarray] | None = None, layout: Layout | None = None,
                 channel_map: str | None = None) -> None:
        # the model is resolved by the caller (``checked_model``), which also sets ``picked``
        self.picked: str | None = None
        if not hasattr(model, "config") or not hasattr(model, "meta"):
            raise TypeError(f"model must be a napari_unet.UNet (or wrap one), got {type(model).__name__}")
        if not hasattr(image, "shape") or not hasattr(image, "__getitem__"):
            image = np.asarray(image)
        dtype = np.dtype(getattr(image, "dtype", np.float32))
        if dtype.kind not in "biuf":
            raise ValueError(f"cannot segment an image of dtype {dtype}; give a numeric or boolean image")
        self.image = image
        self.config = model.config
        self.meta = model.meta
        # a given layout: the image's axes, parsed once at the door (napari_unet.inputs)
        self.layout = parse_axes(image.shape, axes) if layout is None else layout
        self.channel_map = choose_channel_map(self.layout, self.config.in_channels) if channel_map is None else channel_map
        self.device = resolve_device(device)
        if amp is None:
            amp = self.device.type == "cuda" or (self.device.type == "cpu" and cpu_supports_bf16())
        self.amp = bool(amp)
        self.channels_last = bool(channels_last) and self.device.type != "mps"
        # a given (lo, hi): a block of a larger image (volume.py), normalised as the whole
        self.lo, self.hi = normalization if normalization is not None else image_normalization(
            image, self.layout, model.meta.get("normalization", {"kind": "percentile"}), self.channel_map
        )
        self.source = Source(image, self.layout, self.channel_map)
        self.net = prepare_network(model, self.device, self.channels_last)
        self.tile = (
            auto_tile_size(self.config, self.device, self.amp) if tile_size is None else round_tile_size(tile_size, self.config)
        )
        self.batch_size = batch_size
        self.description = describe_device(self.device)
        self.nonfinite_seen = False

    def info(self, plan: _Plan) -> dict[str, Any]:
        return {
            "device": self.description,
            "tile_size": plan.tile,
            "input_size": plan.inp,
            "batch_size": plan.batch,
            "precision": _amp_dtype_name(self.device, self.amp),
            "channels_last": self.channels_last,
            **({"model": self.picked} if self.picked else {}),
        }

    def run(self, planes: list[tuple[int, ...]], write: Callable[[tuple[int, ...], int, int, np.ndarray], None],
            done0: int, total: int | None = None) -> Generator[Progress, None, int]:
        """Predict ``planes``; ``write(plane, oy, ox, probs)`` stores each tile. Returns tiles done."""
        while True:
            plan = _make_plan(self.config, self.layout.yx_shape, self.tile, self.batch_size, self.device, self.amp, len(planes))
            try:
                return (yield from self._run_plan(plan, planes, write, done0, total))
            except TileTooLarge:
                smaller = round_tile_size(max(plan.tile) // 2, self.config)
                if smaller >= max(plan.tile):
                    raise MemoryError(
                        f"out of memory on {self.description} even with the smallest tile "
                        f"({plan.tile[0]}x{plan.tile[1]}); free memory or use another device"
                    ) from None
                self.tile = smaller
                self.batch_size = 1
                yield Progress(done0, total or 0, f"out of memory: retrying with {smaller} px tiles", self.info(plan))

    def n_tiles(self, n_planes: int) -> int:
        plan = _make_plan(self.config, self.layout.yx_shape, self.tile, 1, self.device, self.amp, n_planes)
        return n_planes * len(plan.origins(self.layout.yx_shape))

    def _run_plan(self, plan: _Plan, planes: list[tuple[int, ...]], write: Callable[..., None], done0: int,
                  total: int | None) -> Generator[Progress, None, int]:
        hw = self.layout.yx_shape
        origins = plan.origins(hw)
        jobs = [(p, o) for p in planes for o in origins]
        total = total if total is not None else done0 + len(jobs)
        info = self.info(plan)
        halo = self.config.halo
        iy, ix = plan.inp
        done = done0
        message = f"predicting on {self.description}, {plan.tile[0]}x{plan.tile[1]} tiles"
        yield Progress(done, total, message, info)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-unet-forward")
        pending = None
        try:
            for start in range(0, len(jobs), plan.batch):
                chunk = jobs[start : start + plan.batch]
                # read the next batch while the previous one is on the device
                x = np.empty((len(chunk), self.config.in_channels, iy, ix), np.float32)
                for i, (p, (oy, ox)) in enumerate(chunk):
                    raw = self.source.read(p, oy - halo, iy, ox - halo, ix)
                    if not self.nonfinite_seen and not np.isfinite(raw).all():
                        self.nonfinite_seen = True  # said once per image
                        warnings.warn(NONFINITE_WARNING, UserWarning, stacklevel=2)
                    x[i] = apply_normalization(raw, self.lo, self.hi, channel_axis=0)
                if pending is not None:
                    done = yield from self._finish(pending, write, hw, plan, done, total, message, info)
                pending = (pool.submit(forward_batch, self.net, x, self.device, self.amp, self.channels_last, plan.tile), chunk)
            if pending is not None:
                done = yield from self._finish(pending, write, hw, plan, done, total, message, info)
                pending = None
        finally:
            # on cancel (GeneratorExit) a running batch finishes in the background, unseen
            pool.shutdown(wait=False, cancel_futures=True)
        return done - done0

    def _finish(self, pending: Any, write: Callable[..., None], hw: tuple[int, int], plan: _Plan, done: int,
                total: int, message: str, info: dict[str, Any]) -> Generator[Progress, None, int]:
        fut, chunk = pending
        while True:
            try:
                probs = fut.result(timeout=HEARTBEAT_S)
                break
            except FutureTimeout:
                yield Progress(done, total, message, info)
        for (p, (oy, ox)), pr in zip(chunk, probs):
            h, w = min(plan.tile[0], hw[0] - oy), min(plan.tile[1], hw[1] - ox)
            write(p, oy, ox, pr[:, :h, :w])
        done += len(chunk)
        yield Progress(done, total, message, info)
        return done


# -- public API ----------------------------------------------------------------------------------


def predict_iter(
    image: Any,
    model: Any = None,
    *,
    tile_size: int | None = None,
    device: str | torch.device | None = None,
    axes: str | None = None,
    batch_size: int | None = None,
    out: Any = None,
    amp: bool | None = None,
    channels_last: bool = True,
) -> Generator[Progress, None, Any]:
    """Class probabilities by overlap-tile inference, as a progress generator.

    Args:
        image: 2D or larger array-like of any numeric/bool dtype: numpy (also memory-mapped),
            dask, zarr, or anything with ``shape`` and numpy-style slicing. Read tile by tile.
        model: a :class:`~napari_unet.model.UNet`; None = the bundled model.
        tile_size: edge of the output tile in pixels, rounded to a multiple of the pooling
            grid (see the module docs); None = chosen from free memory. The result does
            not depend on it (beyond float rounding).
        device: ``"auto"``/None, ``"cpu"``, ``"cuda"``, ``"mps"`` or a torch device.
        axes: axis letters such as ``"ZCYX"`` (see :func:`parse_axes`); None = guess.
        batch_size: tiles per forward pass; None = as many as fit (at most 16).
        out: optional preallocated array (numpy, zarr...) of shape
            ``(num_classes, *image shape without its channel axis)``, written tile by tile.
        amp: mixed precision (float16/bfloat16 on CUDA, bfloat16 on CPUs with native
            support); None = on where supported. Use False for bit-for-bit float32.
        channels_last: run convolutions in NHWC memory layout (faster on CPU and CUDA).

    Yields:
        :class:`Progress` records (one per batch, and at least every 0.2 s while a batch
        runs); ``info`` holds the device, tile, batch size and precision.

    Returns:
        float32 probabilities of shape ``(num_classes, *image shape without channels)``,
        or ``out``.
    """
    model, picked = checked_model(image, model, axes)
    pred = Predictor(image, model, tile_size, device, axes, batch_size, amp, channels_last)
    pred.picked = picked
    lay = pred.layout
    shape = (pred.config.num_classes, *lay.out_shape)
    if out is None:
        out = np.zeros(shape, np.float32)
    lay.check_out(out, "probabilities", pred.config.num_classes)

    def write(plane: tuple[int, ...], oy: int, ox: int, probs: np.ndarray) -> None:
        idx, transpose = out_index(lay, plane, slice(oy, oy + probs.shape[1]), slice(ox, ox + probs.shape[2]))
        out[(slice(None),) + idx] = probs.transpose(0, 2, 1) if transpose else probs

    yield from pred.run(lay.plane_indices(), write, 0)
    return out


def predict(image: Any, model: Any = None, *, tile_size: int | None = None, device: str | torch.device | None = None,
            axes: str | None = None, progress: ProgressBar | None = None, **kwargs: Any) -> Any:
    """Class probabilities of ``image``: :func:`predict_iter` run to the end.

    Args:
        progress: optional tqdm-like bar.
        **kwargs: ``batch_size``, ``out``, ``amp``, ``channels_last`` of :func:`predict_iter`.

    Returns:
        float32 array ``(num_classes, *image shape without its channel axis)`` (or ``out``).
    """
    return drain(predict_iter(image, model, tile_size=tile_size, device=device, axes=axes, **kwargs), progress)


# -- the model ------------------------------------------------------------------------------------


def checked_model(image: Any, model: Any, axes: str | None) -> tuple[Any, str | None]:
    """The model to run (None: the bundled one that suits the image, see
    :func:`napari_unet.channels.resolve_model`) and the line saying which was picked, after
    warning when ``image`` looks unlike the model's training data (``predict``; ``segment``
    decides all this once in :func:`napari_unet.inputs.describe_input`).
    """
    from .channels import resolve_model

    layout = parse_axes(np.shape(image), axes) if hasattr(image, "shape") else None
    model, picked = resolve_model(model, layout is not None and layout.rgb, image if layout is not None else None)
    meta = getattr(model, "meta", None)
    if not isinstance(meta, dict) or layout is None:
        return model, picked
    message = modality_warning(image, layout, meta)
    if message:
        warnings.warn(message, UserWarning, stacklevel=3)
    return model, picked


def mirror_pad(image: np.ndarray, config: Any) -> np.ndarray:
    """A ``(C, H, W)`` image mirror-padded for one forward pass over all of it: the halo on
    every side, and the bottom/right up to the next valid input size. The padding is the
    tiles' (:func:`reflect_indices`, numpy's ``"reflect"`` repeated for any distance), so
    a pass over it gives what :func:`predict` stitches from tiles."""
    _, H, W = image.shape
    halo = config.halo
    rows = reflect_indices(np.arange(-halo, config.input_size_for_output(H) - halo), H)
    cols = reflect_indices(np.arange(-halo, config.input_size_for_output(W) - halo), W)
    return np.asarray(image, np.float32)[:, rows][:, :, cols]


def padded_logits(net: torch.nn.Module, image: np.ndarray, device: torch.device, amp: bool) -> torch.Tensor:
    """Logits ``(1, K, H, W)`` (float32, on ``device``) of ONE forward pass over a whole
    mirror-padded ``(C, H, W)`` image, already normalised; ``net`` is used as it is (on
    ``device``, in the mode the caller set), without gradients. Training's validation.

    The padding is inference's (:func:`mirror_pad`), so validation scores are inference scores.
    """
    _, H, W = image.shape
    x = torch.from_numpy(np.ascontiguousarray(mirror_pad(image, net.config)))[None].to(device)
    with torch.no_grad(), autocast(device, amp):
        logits = net(x)
    return logits[..., :H, :W].float()


def padded_single_pass(image: np.ndarray, model: Any, amp: bool = False, *, normalized: bool = False) -> np.ndarray:
    """Reference: ONE forward pass over the whole mirror-padded image (tests, benchmarks), on the CPU.

    Args:
        image: ``(Y, X)`` image, or ``(C, Y, X)`` with the model's input channels.
        model: the network (a copy in eval mode is run; the model is not changed).
        amp: mixed precision as in :func:`predict_iter`.
        normalized: the image is already normalised (else normalised here like predict).

    Returns:
        float32 probabilities ``(num_classes, Y, X)``.
    """
    x = np.asarray(image, np.float32)
    if x.ndim == 2:
        x = x[None]
    if not normalized:
        rule = model.meta.get("normalization", {"kind": "percentile"})
        lo, hi = image_normalization(image, parse_axes(np.shape(image), "YX" if np.ndim(image) == 2 else "CYX"), rule)
        x = apply_normalization(x, lo, hi, channel_axis=0)
    net = copy.deepcopy(model).eval()
    _, H, W = x.shape
    padded = torch.from_numpy(np.ascontiguousarray(mirror_pad(x, net.config)))[None]
    with torch.no_grad(), autocast(torch.device("cpu"), amp):
        probs = class_probabilities(net, padded)  # as every tiled pass: a membrane model's bias too
    return probs[0, :, :H, :W].float().numpy()


__all__ = [
    "AXIS_LETTERS",
    "ChannelMismatch",
    "Layout",
    "Predictor",
    "Source",
    "TileTooLarge",
    "auto_tile_size",
    "balanced_tile",
    "checked_model",
    "choose_channel_map",
    "forward_batch",
    "image_normalization",
    "out_index",
    "mirror_pad",
    "padded_logits",
    "padded_single_pass",
    "plane_writer",
    "parse_axes",
    "predict",
    "predict_iter",
    "prepare_network",
    "reflect_indices",
    "round_tile_size",
]

#: names that moved out of this module, still importable from here (old import paths);
#: the package's own modules import them from where they live now
_MOVED = {
    "segment": "segmentation",
    "segment_iter": "segmentation",
    "objects_above_noise": "instances",
    "POSTPROCESS_BYTES_PER_PIXEL": "instances",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        from importlib import import_module

        return getattr(import_module(f".{_MOVED[name]}", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
