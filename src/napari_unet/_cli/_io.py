"""Reading and writing images for the command line: TIFF, .npy and zarr.

Inputs are opened lazily where the format allows (memory-mapped TIFF or .npy, tiled or
compressed TIFF through tifffile's zarr view, zarr arrays), so the tiled inference reads
only what each tile needs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .._files import write_atomic

TIFF_SUFFIXES = (".tif", ".tiff")
FORMATS = ("tif", "zarr", "npy")


def _tiff_axes(tif: Any) -> str | None:
    """The axes of a TIFF's first series in our letters (None when they make no sense)."""
    series = tif.series[0]
    photometric = getattr(series.keyframe, "photometric", "")
    # an IntEnum: str() gives "2" on Python 3.11+, so compare its name
    rgb = str(getattr(photometric, "name", photometric)).upper().endswith("RGB")
    axes = ""
    for a in series.axes.upper():
        if a in "TZCYX":
            axes += a
        elif a == "S":
            # tifffile calls any sample axis S; only a real RGB image is colour
            axes += "S" if rgb else "Q"
        else:
            axes += "Q"
    if axes.count("Y") != 1 or axes.count("X") != 1:
        return None
    return axes


def read_image(path: str | Path) -> tuple[Any, str | None]:
    """Open an image lazily.

    Args:
        path: a ``.tif``/``.tiff`` file, a ``.npy`` file, or a zarr array/group directory
            (for a group, the array ``"0"`` as in OME-Zarr, or its only array).

    Returns:
        ``(array, axes)``: an array-like with numpy slicing and the axes read from the
        file's metadata (TIFF), or None when the file does not say.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                axes = _tiff_axes(tif)
                # a truncated file opens fine and fails only when a tile is read: check now
                need = max((o + n for page in tif.series[0].pages if page is not None
                            for o, n in zip(page.dataoffsets, page.databytecounts)), default=0)
        except Exception as exc:  # tifffile raises several types for broken files
            raise ValueError(f"{path} is not a readable TIFF ({exc.__class__.__name__}: {exc})") from exc
        size = path.stat().st_size
        if need > size:
            raise ValueError(f"{path} is truncated: its image data needs {need} bytes but the file has {size}; copy it again")
        try:
            return tifffile.memmap(path, mode="r"), axes
        except (ValueError, OSError):
            pass  # compressed or tiled: read through tifffile's zarr view instead
        try:
            import zarr

            return zarr.open(tifffile.imread(path, aszarr=True), mode="r"), axes
        except Exception:  # noqa: BLE001 - any failure of the lazy path: read it whole
            return tifffile.imread(path), axes
    if suffix == ".npy":
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False), None
        except ValueError as exc:
            raise ValueError(f"{path} is not a readable .npy array ({exc})") from exc
    if path.is_dir():
        import zarr

        try:
            node = zarr.open(str(path), mode="r")
        except Exception as exc:  # noqa: BLE001 - zarr raises many types for non-zarr dirs
            raise ValueError(f"{path} is a directory but not a zarr array or group ({exc})") from exc
        if hasattr(node, "shape"):
            return node, None
        keys = sorted(node.array_keys())
        if "0" in keys:
            return node["0"], None
        if len(keys) == 1:
            return node[keys[0]], None
        raise ValueError(f"zarr group {path} holds {len(keys)} arrays ({', '.join(keys) or 'none'}); give the path of one array")
    raise ValueError(f"unsupported input {path}: use a .tif/.tiff, .npy or a zarr directory")


def output_format(path: str | Path, default: str = "tif") -> str:
    suffix = Path(path).suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return "tif"
    if suffix == ".zarr":
        return "zarr"
    if suffix == ".npy":
        return "npy"
    return default


def refuse_existing(paths: list[Path], overwrite: bool) -> None:
    """Refuse outputs that exist already unless ``--overwrite`` was given (before any work)."""
    if overwrite:
        return
    for p in paths:
        if p.exists():
            raise ValueError(f"the output {p} exists already; choose another name or add --overwrite to replace it")


def _staging(path: Path) -> Path:
    """Where an output is written before it is moved into place (same folder: a rename)."""
    return path.with_name(f".{path.name}.partial-{os.getpid()}")


def create_output(path: str | Path, shape: tuple[int, ...], dtype: Any, fmt: str) -> Any:
    """An array to fill: a zarr array on disk (written tile by tile) or a numpy array.

    A zarr output is written under a temporary name next to ``path``; :func:`finish_output`
    moves it into place, so an interrupted run never leaves a half-written ``path``.
    """
    if fmt == "zarr":
        import zarr

        staging = _staging(Path(path))
        staging.parent.mkdir(parents=True, exist_ok=True)
        chunks = tuple(1 for _ in shape[:-2]) + tuple(min(s, 1024) for s in shape[-2:])
        return zarr.open_array(str(staging), mode="w-", shape=shape, chunks=chunks, dtype=dtype)
    return np.zeros(shape, dtype)


def discard_output(path: str | Path, fmt: str) -> None:
    """Remove what :func:`create_output` staged for ``path`` (after a failed or interrupted run)."""
    staging = _staging(Path(path))
    if fmt == "zarr" and staging.is_dir():
        shutil.rmtree(staging, ignore_errors=True)


def finish_output(path: str | Path, array: Any, fmt: str) -> None:
    """Move the finished result into place at ``path`` (atomically for TIFF and .npy).

    The caller has checked that replacing an existing ``path`` is wanted (``--overwrite``).
    """
    path = Path(path)
    if fmt == "zarr":
        staging = _staging(path)
        if path.exists():
            # the old store goes only once the new one is complete and in place
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(staging, path)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.replace(staging, path)
        return
    array = np.asarray(array)
    if fmt == "npy":
        write_atomic(path, lambda fh: np.save(fh, array), fsync=False)
        return
    import tifffile

    # tifffile wants a named file: write the staging file, then rename it over the target
    staging = _staging(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tifffile.imwrite(staging, array, compression="zlib", photometric="minisblack", bigtiff=array.nbytes > 2**31)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
