"""Overlap-tile segmentation of huge images, or many images, as Dask tasks.

:func:`segment_distributed` runs the same inference as :func:`napari_unet.segment`
on a ``dask.distributed`` cluster (a ``LocalCluster``, dask-jobqueue's ``SLURMCluster``,
or any scheduler address) and writes everything into one zarr store. It works in three
passes over blocks of the image; every block is one zarr chunk, so no two tasks ever
write the same chunk:

1. **probabilities** -- each task reads its block plus the network halo (mirrored at the
   image borders by the same index reflection as :mod:`napari_unet.tiling`) and predicts
   it tile by tile. Tiles lie on the SAME global tile grid as the single-process run
   (tile origins on the pooling grid, tiles split evenly as ``tiling`` splits them, blocks
   made of whole tiles), so the probabilities are identical to ``segment``'s.
2. **objects** -- each task post-processes its block plus an ``overlap`` margin of the
   stored probabilities and keeps, for the pixels of its block, every object that
   overlaps it. An object is named by a key every task computes alike without talking
   to the others: the raster index of its first pixel in the whole image. Because the
   watershed result of a connected foreground region depends only on that region, an
   object whose foreground region fits inside the margin comes out the same in every
   block that sees it: no cell is split at a block face or counted twice. Objects whose
   foreground region reaches past the margin are counted (``result.cut_objects``): make
   ``overlap`` larger than the biggest clump of touching cells.
3. **labels** -- the keys are renumbered to consecutive int32 ids 1..N (ordered by each
   object's first pixel) in the final ``labels`` array.

So the final labels equal ``segment(..., min_object_z=None)``'s on the same image up to a
permutation of the ids (the blocks keep every object the network finds: the test of
objects against the image's noise, :mod:`napari_unet.image_checks`, is not applied here).

Resumable: a block's done-marker (``_done/<image>/<pass>/<y>_<x>``) is written,
atomically, after its data; a rerun with the same model, image and settings (all
recorded in the store's ``napari_unet`` attributes) skips every marked block; a rerun
with any of them changed is refused, naming what changed (``overwrite=True`` starts
again, and recreated arrays lose their markers),
and a worker killed mid-task loses only its unmarked block (Dask reruns it on another
worker). Delete a marker to recompute that block.

The model travels to the workers as bytes (config + state dict + meta, read back with
``torch.load(weights_only=True)``; no code is pickled) and is built once per worker.

Layout of the output store ``out`` (one group per image when several are given, named
after the file; a single image writes at the root)::

    labels            int32, image shape without its channel axis
    probabilities     float32, (classes, *that shape)
    _object_keys      int64 keys of pass 2 (kept for resuming; may be deleted when done)
    _done/            the markers
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import threading
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._files import write_atomic
from ._progress import Progress, ProgressBar, drain, progress_bar
from .inputs import SegmentOptions

#: default block edge (pixels of output) handled by one task
DEFAULT_BLOCK_SIZE = 2048
#: default margin post-processed around each block (must exceed the largest clump of cells)
DEFAULT_OVERLAP = 128
IMAGE_SUFFIXES = (".tif", ".tiff", ".npy", ".zarr")

# per worker process: built networks and opened images (loaded once per worker)
_CACHE_LOCK = threading.Lock()
_NETS: dict[tuple[str, str], Any] = {}
_IMAGES: dict[str, Any] = {}


# -- the model as bytes ---------------------------------------------------------------------


def model_to_bytes(model: Any) -> bytes:
    """Serialise a :class:`~napari_unet.model.UNet` (config, weights, meta) to bytes.

    Args:
        model: the network.

    Returns:
        bytes that :func:`model_from_bytes` turns back into the same network.
    """
    import torch

    from .model import FORMAT_NAME, FORMAT_VERSION, _plain

    payload = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": asdict(model.config),
        "meta": _plain(model.meta),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def model_from_bytes(data: bytes) -> Any:
    """Rebuild a network from :func:`model_to_bytes` output (``weights_only`` loading).

    Args:
        data: the bytes.

    Returns:
        the :class:`~napari_unet.model.UNet`, in eval mode on the CPU.
    """
    import torch

    from .model import FORMAT_NAME, ModelFileError, UNet, UNetConfig, default_meta

    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for bad bytes
        raise ModelFileError(f"the model bytes are not a readable napari-unet model ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise ModelFileError("the model bytes are not a napari-unet model")
    config = UNetConfig(**payload["config"])
    net = UNet(**asdict(config))
    net.load_state_dict(payload["state_dict"])
    meta = default_meta(config.num_classes)
    meta.update(payload.get("meta", {}))
    net.meta = meta
    return net.eval()


def _worker_net(key: str, data: bytes, device: str, channels_last: bool) -> Any:
    """The network for ``key`` on this worker, built on first use."""
    from .device import resolve_device
    from .tiling import prepare_network

    with _CACHE_LOCK:
        net = _NETS.get((key, device))
        if net is None:
            net = prepare_network(model_from_bytes(data), resolve_device(device), channels_last)
            _NETS[(key, device)] = net
        return net


def _open_source(src: Any) -> Any:
    """The image of a task: an array as given, or a file opened once per worker."""
    if isinstance(src, str):
        with _CACHE_LOCK:
            img = _IMAGES.get(src)
            if img is None:
                from ._cli._io import read_image

                img = read_image(src)[0]
                _IMAGES[src] = img
            return img
    return src


# -- plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ImagePlan:
    name: str  # group inside the store ("" = root)
    source: Any  # path string, array, or a scattered future
    layout: Any  # tiling.Layout
    channel_map: str
    tile: tuple[int, int]  # the single-process tile grid (balanced like tiling's)
    block: tuple[int, int]  # block edges: whole numbers of tiles

    def blocks(self) -> list[tuple[tuple[int, ...], int, int]]:
        H, W = self.layout.yx_shape
        return [
            (p, by, bx)
            for p in self.layout.plane_indices()
            for by in range(0, H, self.block[0])
            for bx in range(0, W, self.block[1])
        ]


def _block_key(plane: tuple[int, ...], y0: int, x0: int) -> str:
    return "_".join(str(int(i)) for i in (*plane, y0, x0))


def _marker(root: Path, name: str, phase: str, key: str) -> Path:
    return root / "_done" / (name or "_root") / phase / key


def _write_atomic(path: Path, data: bytes) -> None:
    # markers are many and recomputable, so no fsync: a lost marker only means redoing a block
    write_atomic(path, lambda fh: fh.write(data), fsync=False)


def _plane_index(layout: Any, plane: tuple[int, ...], ys: slice, xs: slice) -> tuple[tuple[Any, ...], bool]:
    from .tiling import out_index

    return out_index(layout, plane, ys, xs)


# -- the three passes (run on the workers) -------------------------------------------------


def _predict_block(plan: _ImagePlan, source: Any, norm: tuple[np.ndarray, np.ndarray], model_key: str, model_bytes: bytes,
                   plane: tuple[int, ...], y0: int, x0: int, root: str, device: str, amp: bool, channels_last: bool,
                   batch_size: int, torch_threads: int | None) -> str:
    """Pass 1: probabilities of one block, tiles on the global tile grid."""
    import torch
    import zarr

    from .device import resolve_device
    from .normalize import apply_normalization
    from .tiling import Source, TileTooLarge, forward_batch, round_tile_size

    if torch_threads:
        torch.set_num_threads(int(torch_threads))
    lay = plan.layout
    H, W = lay.yx_shape
    y1, x1 = min(y0 + plan.block[0], H), min(x0 + plan.block[1], W)
    net = _worker_net(model_key, model_bytes, device, channels_last)
    cfg = net.config
    dev = resolve_device(device)
    src = Source(_open_source(source), lay, plan.channel_map)
    lo, hi = norm
    probs = np.zeros((cfg.num_classes, y1 - y0, x1 - x0), np.float32)
    ty, tx = plan.tile
    while True:
        try:
            iy, ix = cfg.input_size_for_output(ty), cfg.input_size_for_output(tx)
            origins = [(oy, ox) for oy in range(y0, y1, ty) for ox in range(x0, x1, tx)]
            for start in range(0, len(origins), batch_size):
                chunk = origins[start : start + batch_size]
                x = np.empty((len(chunk), cfg.in_channels, iy, ix), np.float32)
                for i, (oy, ox) in enumerate(chunk):
                    raw = src.read(plane, oy - cfg.halo, iy, ox - cfg.halo, ix)
                    x[i] = apply_normalization(raw, lo, hi, channel_axis=0)
                out = forward_batch(net, x, dev, amp, channels_last, (ty, tx))
                for (oy, ox), pr in zip(chunk, out):
                    h, w = min(ty, y1 - oy), min(tx, x1 - ox)
                    probs[:, oy - y0 : oy - y0 + h, ox - x0 : ox - x0 + w] = pr[:, :h, :w]
            break
        except TileTooLarge:
            # out of memory with one tile: smaller tiles (equal up to float rounding only)
            smaller = round_tile_size(max(ty, tx) // 2, cfg)
            if smaller >= max(ty, tx):
                raise MemoryError(f"out of memory on {device} even with {ty}x{tx} tiles") from None
            ty = tx = smaller
    group = zarr.open_group(root, mode="r+")
    arr = group[_path(plan.name, "probabilities")]
    idx, transpose = _plane_index(lay, plane, slice(y0, y1), slice(x0, x1))
    arr[(slice(None),) + idx] = probs.transpose(0, 2, 1) if transpose else probs
    key = _block_key(plane, y0, x0)
    _write_atomic(_marker(Path(root), plan.name, "probabilities", key), b"")
    return key


def _read_plane(arr: Any, lay: Any, plane: tuple[int, ...], ys: slice, xs: slice, lead: bool) -> np.ndarray:
    idx, transpose = _plane_index(lay, plane, ys, xs)
    a = np.asarray(arr[((slice(None),) if lead else ()) + idx])
    return (a.swapaxes(-1, -2) if transpose else a)


def _label_block(plan: _ImagePlan, plane: tuple[int, ...], y0: int, x0: int, root: str, overlap: int, mode: str,
                 postprocess: dict[str, Any]) -> tuple[str, int]:
    """Pass 2: objects of one block, named by their first pixel's raster index."""
    import zarr
    from scipy import ndimage as ndi

    from .postprocess import probabilities_to_labels

    lay = plan.layout
    H, W = lay.yx_shape
    y1, x1 = min(y0 + plan.block[0], H), min(x0 + plan.block[1], W)
    group = zarr.open_group(root, mode="r+")
    key = _block_key(plane, y0, x0)
    if mode == "semantic":
        p = _read_plane(group[_path(plan.name, "probabilities")], lay, plane, slice(y0, y1), slice(x0, x1), True)
        lab = probabilities_to_labels(p, "semantic")
        idx, transpose = _plane_index(lay, plane, slice(y0, y1), slice(x0, x1))
        group[_path(plan.name, "labels")][idx] = lab.T if transpose else lab
        _write_atomic(_marker(Path(root), plan.name, "objects", key), _npy(np.zeros(0, np.int64)))
        return key, 0
    ry0, ry1 = max(0, y0 - overlap), min(H, y1 + overlap)
    rx0, rx1 = max(0, x0 - overlap), min(W, x1 + overlap)
    p = _read_plane(group[_path(plan.name, "probabilities")], lay, plane, slice(ry0, ry1), slice(rx0, rx1), True)
    lab = probabilities_to_labels(p, mode, **postprocess)
    n = int(lab.max(initial=0))
    # key = 1 + raster index (in the whole stack) of the object's first pixel
    ids, first = np.unique(lab.ravel(), return_index=True)
    fy, fx = np.divmod(first, rx1 - rx0)
    plane_offset = int(np.ravel_multi_index(plane, lay.plane_shape)) * H * W if plane else 0
    keymap = np.zeros(n + 1, np.int64)
    keymap[ids] = plane_offset + (fy + ry0).astype(np.int64) * W + (fx + rx0) + 1
    keymap[0] = 0
    # foreground regions reaching a face of the margin that is not the image border may
    # be incomplete: objects of theirs that reach into the block are counted as cut
    fg = (1.0 - p[0]) > float(postprocess.get("foreground_threshold", 0.5))
    comp, _ = ndi.label(fg)
    edge = np.zeros(int(comp.max(initial=0)) + 1, bool)
    for inner, sl in ((ry0 > 0, comp[0]), (ry1 < H, comp[-1]), (rx0 > 0, comp[:, 0]), (rx1 < W, comp[:, -1])):
        if inner:
            edge[sl] = True
    edge[0] = False
    inner_lab = lab[y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0]
    inner_comp = comp[y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0]
    cut = int(len(np.unique(inner_lab[edge[inner_comp] & (inner_lab > 0)])))
    keys = keymap[inner_lab]
    idx, transpose = _plane_index(lay, plane, slice(y0, y1), slice(x0, x1))
    group[_path(plan.name, "_object_keys")][idx] = keys.T if transpose else keys
    uniq = np.unique(keys)
    _write_atomic(_marker(Path(root), plan.name, "objects", key), _npy(uniq[uniq > 0]))
    return key, cut


def _relabel_block(plan: _ImagePlan, plane: tuple[int, ...], y0: int, x0: int, root: str, all_keys: np.ndarray) -> str:
    """Pass 3: keys to consecutive int32 ids."""
    import zarr

    lay = plan.layout
    H, W = lay.yx_shape
    y1, x1 = min(y0 + plan.block[0], H), min(x0 + plan.block[1], W)
    group = zarr.open_group(root, mode="r+")
    idx, _ = _plane_index(lay, plane, slice(y0, y1), slice(x0, x1))
    keys = np.asarray(group[_path(plan.name, "_object_keys")][idx])
    ids = np.where(keys > 0, np.searchsorted(all_keys, keys) + 1, 0).astype(np.int32)
    group[_path(plan.name, "labels")][idx] = ids
    key = _block_key(plane, y0, x0)
    _write_atomic(_marker(Path(root), plan.name, "labels", key), b"")
    return key


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _image_key(source: Any, arr: Any) -> str:
    """Names the input of a store: its file (path, size, modification time) or, for an array
    in memory, its shape, dtype and a hash of a strided sample."""
    head = f"{tuple(arr.shape)} {np.dtype(arr.dtype)}"
    if isinstance(source, str):
        st = os.stat(source)
        return f"{head} {source} {st.st_size} {st.st_mtime_ns}"
    from .normalize import strided_sample

    sample = np.ascontiguousarray(strided_sample(arr, 1_000_000))
    return f"{head} {hashlib.sha1(sample.tobytes()).hexdigest()}"


def _path(name: str, array: str) -> str:
    return f"{name}/{array}" if name else array


def _normalization(source: Any, layout: Any, rule: dict[str, Any], channel_map: str) -> tuple[np.ndarray, np.ndarray]:
    from .tiling import image_normalization

    return image_normalization(_open_source(source), layout, rule, channel_map)


# -- inputs and client -------------------------------------------------------------------------


def _inputs(image_or_paths: Any, axes: str | None) -> list[tuple[str, Any, str | None, Any]]:
    """``(name, source for tasks, axes, opened array)`` per image."""
    from ._cli._io import read_image

    if isinstance(image_or_paths, (str, os.PathLike)):
        p = Path(image_or_paths)
        if p.is_dir() and p.suffix.lower() != ".zarr":
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ValueError(f"{p} holds no images (.tif, .tiff, .npy or .zarr)")
            image_or_paths = files
        else:
            arr, file_axes = read_image(p)
            return [("", str(p.resolve()), axes or file_axes, arr)]
    if isinstance(image_or_paths, (list, tuple)) and image_or_paths and isinstance(image_or_paths[0], (str, os.PathLike)):
        out = []
        names: set[str] = set()
        for f in image_or_paths:
            f = Path(f)
            arr, file_axes = read_image(f)
            name = f.name[: -len(f.suffix)] if f.suffix else f.name
            if name in names:
                raise ValueError(f"two inputs are both named {name!r}; rename one (outputs are grouped by name)")
            names.add(name)
            out.append((name, str(f.resolve()), axes or file_axes, arr))
        return out
    if not hasattr(image_or_paths, "shape") or not hasattr(image_or_paths, "__getitem__"):
        image_or_paths = np.asarray(image_or_paths)
    return [("", image_or_paths, axes, image_or_paths)]


def _get_client(client: Any, n_workers: int | None) -> tuple[Any, list[Any]]:
    """A distributed Client and the objects to close afterwards (those made here)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - an optional dependency
        raise ValueError("distributed inference needs dask.distributed: pip install 'napari-unet[distributed]'") from exc
    if client is None:
        if n_workers is None:
            try:
                from distributed import get_client

                return get_client(), []
            except ValueError:
                pass
        cluster = LocalCluster(n_workers=n_workers or max(1, (os.cpu_count() or 1)), threads_per_worker=1,
                               processes=True, dashboard_address=":0")
        c = Client(cluster)
        return c, [c, cluster]
    if isinstance(client, str):
        c = Client(client)
        return c, [c]
    return client, []


@dataclass
class DistributedResult:
    """What :func:`segment_distributed` did.

    Attributes:
        out: the zarr store.
        images: group name per image (``""`` = the store's root).
        computed: blocks computed in this run, per pass (probabilities, objects, labels).
        skipped: blocks found done and skipped, per pass.
        objects: number of objects per image.
        cut_objects: objects whose foreground region reached past the overlap margin
            (they may be split at a block face; 0 means the labels are exact).
        tile: the tile grid used (pass the same ``tile_size`` to ``segment`` to compare).
        block: block edges in pixels.
    """

    out: str
    images: list[str]
    computed: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    objects: dict[str, int] = field(default_factory=dict)
    cut_objects: int = 0
    tile: tuple[int, int] = (0, 0)
    block: tuple[int, int] = (0, 0)


def _checked_settings(model: Any, mode: str | None, device: str, amp: bool | None, channels_last: bool,
                      block_size: int, overlap: int, batch_size: int) -> tuple[Any, str, bool, bool]:
    """The model (loaded when a path or None), mode, precision and memory layout of a run, or a clear error."""
    from .device import cpu_supports_bf16
    from .model import UNet, load_model
    from .modes import MODES

    if block_size < 1 or overlap < 0:
        raise ValueError(f"block_size must be positive and overlap non-negative, got {block_size}, {overlap}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if model is None or isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    if not isinstance(model, UNet):
        raise TypeError(f"model must be a napari_unet.UNet or a model file, got {type(model).__name__}")
    mode = mode or model.meta.get("mode", "instance3")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if amp is None:
        amp = device.startswith("cuda") or (device == "cpu" and cpu_supports_bf16())
    return model, mode, bool(amp), bool(channels_last) and not device.startswith("mps")


def _image_plan(name: str, source: Any, axes: str | None, arr: Any, cfg: Any, tile_size: int | None,
                block_size: int) -> _ImagePlan:
    """The tile grid (laid out as :mod:`napari_unet.tiling` lays it) and blocks of one image."""
    from .tiling import balanced_tile, choose_channel_map, parse_axes, round_tile_size

    dtype = np.dtype(getattr(arr, "dtype", np.float32))
    if dtype.kind not in "biuf":
        raise ValueError(f"cannot segment image {name or '(input)'} of dtype {dtype}; give a numeric image")
    lay = parse_axes(arr.shape, axes)
    cmap = choose_channel_map(lay, cfg.in_channels)
    H, W = lay.yx_shape
    t = round_tile_size(tile_size if tile_size is not None else min(512, block_size), cfg)
    tile = (balanced_tile(H, t, cfg.grid), balanced_tile(W, t, cfg.grid))
    block = tuple(max(1, round(block_size / ti)) * ti for ti in tile)
    # the plan travels with every task: it names a file, never holds an array
    return _ImagePlan(name, source if isinstance(source, str) else None, lay, cmap, tile, block)  # type: ignore[arg-type]


def _prepare_store(root_group: Any, root: Path, plan: _ImagePlan, k: int, meta: dict[str, Any], overwrite: bool) -> None:
    """The arrays of one image in the store: kept when begun with the same ``meta`` (resume),
    made anew (with their done-markers removed) otherwise, refused without ``overwrite``."""
    lay, block = plan.layout, plan.block
    group = root_group.require_group(plan.name) if plan.name else root_group
    chunks = tuple(block[0] if a == lay.y else block[1] if a == lay.x else 1
                   for a in range(len(lay.shape)) if a != lay.channel)
    want = {
        "probabilities": ((k, *lay.out_shape), (k, *chunks), "float32"),
        "_object_keys": (lay.out_shape, chunks, "int64"),
        "labels": (lay.out_shape, chunks, "int32"),
    }
    # everything the stored blocks depend on: a resume with any of it changed would mix two results
    old = dict(group.attrs).get("napari_unet")
    differ = [key for key, v in meta.items() if old is not None and old.get(key) != v]
    if differ and not overwrite:
        raise ValueError(
            f"{root} was started with another {', '.join(differ)}; resume with the same model, image and "
            "settings, pass overwrite=True (--overwrite) to start it again, or choose a new output path"
        )
    restart = bool(differ)
    for arr_name, (shape, ch, dt) in want.items():
        if not restart and arr_name in group and tuple(group[arr_name].shape) == shape \
                and group[arr_name].dtype == np.dtype(dt):
            continue
        # zarr 3 names it create_array; zarr 2 create
        make = getattr(group, "create_array", None) or group.create
        make(arr_name, shape=shape, chunks=ch, dtype=dt, fill_value=0, overwrite=True)
        restart = True
    if restart:
        # the done-markers belong to the arrays just recreated: they would leave those blocks zero
        shutil.rmtree(root / "_done" / (plan.name or "_root"), ignore_errors=True)
    group.attrs["napari_unet"] = meta


class _Passes:
    """The bookkeeping of a run's passes: which blocks are done, progress, results."""

    def __init__(self, client: Any, plans: list[_ImagePlan], root: Path, result: DistributedResult, passes: int) -> None:
        self.client, self.plans, self.root, self.result = client, plans, root, result
        self.total = passes * sum(len(p.blocks()) for p in plans)
        self.done = 0

    def pending(self, phase: str) -> list[tuple[int, _ImagePlan, tuple[int, ...], int, int]]:
        """The blocks of ``phase`` without a done-marker (the others count as done)."""
        todo = []
        skipped = 0
        for i, p in enumerate(self.plans):
            for plane, by, bx in p.blocks():
                if _marker(self.root, p.name, phase, _block_key(plane, by, bx)).is_file():
                    skipped += 1
                else:
                    todo.append((i, p, plane, by, bx))
        self.result.skipped[phase] = skipped
        self.done += skipped
        return todo

    def wait(self, futures: list[Any], phase: str) -> Generator[Progress, None, list[Any]]:
        from distributed import as_completed

        outs = []
        self.result.computed[phase] = 0
        for fut in as_completed(futures):
            outs.append(fut.result())
            self.result.computed[phase] += 1
            self.done += 1
            yield Progress(self.done, self.total, f"{phase}: block {outs[-1] if isinstance(outs[-1], str) else outs[-1][0]}")
        return outs

    def relabel_tasks(self) -> list[Any]:
        """Pass 3's tasks, with every image's object keys gathered from pass 2's markers."""
        todo = self.pending("labels")
        futs = []
        for i, p in enumerate(self.plans):
            parts = [np.load(io.BytesIO(_marker(self.root, p.name, "objects", _block_key(*b)).read_bytes()))
                     for b in p.blocks()]
            keys = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
            if len(keys) > np.iinfo(np.int32).max:
                raise ValueError("more objects than int32 labels can hold; split the image")
            self.result.objects[p.name] = int(len(keys))
            mine = [t for t in todo if t[0] == i]
            if mine:
                kf = self.client.scatter(keys, broadcast=True)
                futs += [self.client.submit(_relabel_block, p, plane, by, bx, str(self.root), kf, pure=False)
                         for _, p, plane, by, bx in mine]
        return futs


# -- public API ------------------------------------------------------------------------------------


def segment_distributed_iter(
    image_or_paths: Any,
    model: Any = None,
    *,
    out: str | os.PathLike,
    client: Any = None,
    n_workers: int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    overlap: int = DEFAULT_OVERLAP,
    tile_size: int | None = None,
    device: str = "cpu",
    axes: str | None = None,
    batch_size: int = 1,
    amp: bool | None = None,
    channels_last: bool = True,
    mode: str | None = None,
    torch_threads: int | None = None,
    overwrite: bool = False,
    **postprocess: Any,
) -> Generator[Progress, None, DistributedResult]:
    """Segment one huge image or many images on a Dask cluster, into a zarr store.

    Args:
        image_or_paths: a numpy/zarr/dask array, a path (.tif, .npy, .zarr), a directory
            of such files, or a list of paths.
        model: a :class:`~napari_unet.model.UNet`, a model file path, or None = bundled.
        out: the output zarr store (a directory); reused when it exists (resume).
        client: a ``distributed.Client``, a scheduler address (``"tcp://host:8786"``), or
            None = the current client, else a new ``LocalCluster`` (closed afterwards).
        n_workers: workers of that new ``LocalCluster`` (None = one per CPU core).
        block_size: output block edge per task, rounded to whole tiles (and the zarr
            chunk edge).
        overlap: margin post-processed around each block; objects whose touching clump
            fits in it are never split (see ``DistributedResult.cut_objects``).
        tile_size: output tile edge as in :func:`napari_unet.tiling.predict_iter`; the
            tile grid is laid out exactly as there, so ``segment(image, model,
            tile_size=T)`` gives the same probabilities. None = 512 capped at the block.
        device: device of the workers (``"cpu"``, ``"cuda"``...), as each worker sees it.
        axes: axis letters (see :func:`napari_unet.tiling.parse_axes`); None = from the
            file or guessed.
        batch_size: tiles per forward pass inside a task.
        amp: mixed precision as in ``predict_iter`` (None = where supported).
        channels_last: NHWC convolutions, as in ``predict_iter``.
        mode: post-processing mode; None = the model's.
        torch_threads: ``torch.set_num_threads`` in each task (None = leave it; a Dask
            nanny starts workers with ``OMP_NUM_THREADS=1``).
        overwrite: a store begun with another model, image or settings is started again
            (without it, refused with the settings that differ; the same ones resume).
        **postprocess: options of :func:`napari_unet.postprocess.probabilities_to_labels`.

    Yields:
        :class:`Progress` records, one per finished block.

    Returns:
        a :class:`DistributedResult`.
    """
    options = SegmentOptions(tile_size=tile_size, device=device, batch_size=batch_size, amp=amp,
                             channels_last=channels_last, mode=mode, postprocess=postprocess)
    return (yield from distributed_iter(image_or_paths, model, options, out=out, client=client, n_workers=n_workers,
                                        block_size=block_size, overlap=overlap, axes=axes,
                                        torch_threads=torch_threads, overwrite=overwrite))


def distributed_iter(image_or_paths: Any, model: Any, options: SegmentOptions, *, out: str | os.PathLike,
                     client: Any = None, n_workers: int | None = None, block_size: int = DEFAULT_BLOCK_SIZE,
                     overlap: int = DEFAULT_OVERLAP, axes: str | None = None, torch_threads: int | None = None,
                     overwrite: bool = False) -> Generator[Progress, None, DistributedResult]:
    """:func:`segment_distributed_iter` with the segmentation settings as one
    :class:`~napari_unet.inputs.SegmentOptions` (tile, device, batch, precision, mode,
    post-processing), as the 2D and 3D paths take them; the rest are the cluster's and the
    store's. Each image is described on the workers that read it (its axes here, its
    normalisation once per image in the first pass), so the client reads no image data."""
    import zarr

    tile_size, device, batch_size = options.tile_size, options.device or "cpu", options.batch_size or 1
    model, mode, amp, channels_last = _checked_settings(model, options.mode, device, options.amp,
                                                       options.channels_last, block_size, overlap, batch_size)
    postprocess = {**model.meta.get("postprocess", {}), **options.postprocess}  # the model's own defaults, as segment
    inputs = _inputs(image_or_paths, axes)
    root = Path(out)
    if root.exists() and not (root / "zarr.json").is_file() and not (root / ".zgroup").is_file():
        if any(root.iterdir()):
            raise ValueError(f"{root} exists and is not a zarr store; choose a new output path")
    root_group = zarr.open_group(str(root), mode="a")
    rule = model.meta.get("normalization", {"kind": "percentile"})
    model_bytes = model_to_bytes(model)
    model_key = hashlib.sha1(model_bytes).hexdigest()
    settings = {"overlap": int(overlap), "mode": mode, "amp": bool(amp), "model": model_key,
                "postprocess": repr(sorted(postprocess.items())), "normalization": repr(rule)}
    plans = [_image_plan(name, source, ax, arr, model.config, tile_size, block_size) for name, source, ax, arr in inputs]
    for plan, (_, source, _, arr) in zip(plans, inputs):
        _prepare_store(root_group, root, plan, model.config.num_classes,
                       {"tile": list(plan.tile), "block": list(plan.block), **settings, "image": _image_key(source, arr)},
                       overwrite)
    c, to_close = _get_client(client, n_workers)
    result = DistributedResult(out=str(root), images=[p.name for p in plans], tile=plans[0].tile, block=plans[0].block)
    try:
        run = _Passes(c, plans, root, result, 3 if mode != "semantic" else 2)
        mb = c.scatter(model_bytes, broadcast=True)
        # numpy images go to the workers once (as a future), not inside every task
        sources = [c.scatter(src, broadcast=False) if isinstance(src, np.ndarray) else src for (_, src, _, _) in inputs]
        # pass 1: probabilities
        todo = run.pending("probabilities")
        # normalisation: once per image with pass-1 work, computed as tiling computes it
        # (on a worker: the client reads no image data)
        norms = {i: c.submit(_normalization, sources[i], plans[i].layout, rule, plans[i].channel_map, pure=False)
                 for i in sorted({i for i, *_ in todo})}
        yield Progress(run.done, run.total, "probabilities")
        yield from run.wait([
            c.submit(_predict_block, p, sources[i], norms[i], model_key, mb, plane, by, bx, str(root), device, bool(amp),
                     channels_last, batch_size, torch_threads, pure=False)
            for i, p, plane, by, bx in todo
        ], "probabilities")
        # pass 2: objects (needs the probabilities of the neighbours: after pass 1)
        outs = yield from run.wait([
            c.submit(_label_block, p, plane, by, bx, str(root), int(overlap), mode, dict(postprocess), pure=False)
            for i, p, plane, by, bx in run.pending("objects")
        ], "objects")
        result.cut_objects = int(sum(cut for _, cut in outs))
        if mode != "semantic":
            # pass 3: consecutive ids (keys gathered from the markers, so a resumed run agrees)
            yield from run.wait(run.relabel_tasks(), "labels")
        yield Progress(run.total, run.total, "done")
    finally:
        for obj in to_close:
            obj.close()
    return result


def segment_distributed(image_or_paths: Any, model: Any = None, *, out: str | os.PathLike, client: Any = None,
                        progress: ProgressBar | None = None, **kwargs: Any) -> DistributedResult:
    """:func:`segment_distributed_iter` run to the end.

    Args:
        image_or_paths: array, path, directory or list of paths.
        model: model, model file or None (bundled).
        out: output zarr store.
        client: Client, scheduler address or None.
        progress: optional tqdm-like bar.
        **kwargs: further options of :func:`segment_distributed_iter`.

    Returns:
        a :class:`DistributedResult`; read the labels with ``zarr.open_group(out)["labels"]``.
    """
    return drain(segment_distributed_iter(image_or_paths, model, out=out, client=client, **kwargs), progress)




def run_cli(args: Any) -> int:
    """``napari-unet segment --scheduler ADDRESS`` / ``--workers N``: inputs into one zarr store.

    Args:
        args: the parsed ``segment`` arguments (``inputs``, ``output``, ``model``,
            ``tile_size``, ``batch_size``, ``device``, ``axes``, ``min_size``, ``no_amp``,
            ``scheduler``, ``workers``, ``block_size``, ``overlap``).

    Returns:
        the exit status (0).
    """
    import sys

    if args.sample:
        raise ValueError("--sample runs in one process; drop --scheduler/--workers")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    if args.scheduler and args.workers:
        raise ValueError("give --scheduler (an existing cluster) or --workers (a local one), not both")
    if not str(args.output).rstrip("/\\").endswith(".zarr"):
        raise ValueError(f"distributed output goes into one zarr store: end -o with .zarr (got {args.output})")
    source: Any = args.inputs[0] if len(args.inputs) == 1 else list(args.inputs)
    kwargs: dict[str, Any] = {}
    if args.min_size is not None:
        kwargs["min_size"] = args.min_size
    device = "cpu" if args.device == "auto" else args.device
    bar = progress_bar("blocks", unit="block")
    try:
        res = segment_distributed(
            source, args.model, out=args.output, client=args.scheduler, n_workers=args.workers,
            block_size=args.block_size, overlap=args.overlap, tile_size=args.tile_size, device=device,
            axes=args.axes, batch_size=args.batch_size or 1, amp=False if args.no_amp else None, progress=bar,
            overwrite=getattr(args, "overwrite", False), **kwargs,
        )
    finally:
        bar.close()
    for name in res.images:
        where = f"{res.out}/{name}/labels" if name else f"{res.out}/labels"
        print(f"{where}: {res.objects.get(name, 0)} objects", file=sys.stderr)
    print(f"blocks computed {res.computed}, skipped (already done) {res.skipped}", file=sys.stderr)
    if res.cut_objects:
        print(f"warning: {res.cut_objects} object(s) reached past the {args.overlap} px overlap and may be split; "
              "rerun into a new store with a larger --overlap", file=sys.stderr)
    return 0


__all__ = [
    "DistributedResult",
    "distributed_iter",
    "model_from_bytes",
    "model_to_bytes",
    "run_cli",
    "segment_distributed",
    "segment_distributed_iter",
]
