"""Training sets: (image, labels, annotated region) samples, in memory and as a folder.

Folder format (version 1) -- simple enough to write by hand or from another tool::

    my_set/
      index.json          {"format": "napari-unet training set", "version": 1,
                           "samples": [{"name": "...", "image": "images/0000.tif",
                                        "labels": "labels/0000.tif",
                                        "region": "regions/0000.tif" or null}, ...]}
      images/0000.tif     the image: (Y, X) or (Y, X, C) with C <= 4, any numeric dtype
      labels/0000.tif     integer labels (Y, X): 0 background, one id per cell
      regions/0000.tif    optional uint8 mask (Y, X): 1 where the labels are complete;
                          without it, the labelled cells plus a margin count as annotated

Paths in the index are relative to the folder. :meth:`TrainingSet.load` checks every
sample (missing file, unreadable file, shape mismatch, wrong dtype) and names the broken
ones; with ``strict=False`` the good samples are kept and the problems listed in
``errors``, so one bad file never loses the rest of the set.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._files import write_atomic

FORMAT = "napari-unet training set"
VERSION = 1
INDEX = "index.json"


class TrainingSetError(ValueError):
    """A training-set folder that cannot be read (missing, broken or inconsistent files)."""


@dataclass
class TrainingSample:
    """One annotated image.

    Attributes:
        image: (Y, X) or (Y, X, C) image (C <= 4 channels).
        labels: (Y, X) integer labels, 0 = background.
        region: optional (Y, X) bool mask of where the labels are complete (None: the
            labelled cells plus a margin).
        name: a short name shown in lists (unique within a set).
    """

    image: np.ndarray
    labels: np.ndarray
    region: np.ndarray | None = None
    name: str = ""

    def __post_init__(self) -> None:
        self.image, self.labels, self.region = check_sample(self.image, self.labels, self.region, self.name)


def check_sample(image: Any, labels: Any, region: Any = None, name: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate one sample; return (image, labels, region) as arrays.

    Raises:
        ValueError: wrong dimensionality, dtype or mismatched shapes (message names ``name``).
    """
    what = f"sample '{name}'" if name else "sample"
    img = np.asarray(image)
    lab = np.asarray(labels)
    if img.dtype == bool or not (np.issubdtype(img.dtype, np.integer) or np.issubdtype(img.dtype, np.floating)):
        raise ValueError(f"{what}: the image must be numeric, got dtype {img.dtype}")
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] > 4):
        raise ValueError(f"{what}: the image must be (Y, X) or (Y, X, C) with C <= 4, got shape {img.shape}")
    if lab.dtype == bool:
        lab = lab.astype(np.int32)
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"{what}: labels must be integers (one id per cell), got dtype {lab.dtype}")
    if lab.ndim != 2:
        raise ValueError(f"{what}: labels must be 2D (Y, X), got shape {lab.shape}")
    if lab.size and lab.min() < 0:
        raise ValueError(f"{what}: labels must not be negative")
    if tuple(img.shape[:2]) != tuple(lab.shape):
        raise ValueError(f"{what}: image shape {img.shape} does not match labels shape {lab.shape}")
    reg = None
    if region is not None:
        r = np.asarray(region)
        if r.shape != lab.shape:
            raise ValueError(f"{what}: region shape {r.shape} does not match labels shape {lab.shape}")
        if r.dtype != bool:
            if not np.issubdtype(r.dtype, np.integer) or (r.size and (r.min() < 0 or r.max() > 1)):
                raise ValueError(f"{what}: the region must be a 0/1 mask, got dtype {r.dtype}")
        reg = r.astype(bool)
    return img, lab, reg


def _inside(root: Path, rel: Any, key: str) -> Path:
    """``root / rel`` for a path of the index, refused unless it is a relative path inside ``root``."""
    if not isinstance(rel, str) or not rel:
        raise ValueError(f"the {key!r} path must be a file name relative to the folder, got {rel!r}")
    path = root / rel
    if Path(rel).is_absolute() or not path.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"the {key!r} path {rel!r} points outside the training-set folder; keep the files inside it")
    return path


def _read_entry(root: Path, entry: Any) -> list[np.ndarray | None]:
    """The (image, labels, region) arrays an index entry names (region may be None).

    Raises:
        ValueError: a malformed entry, a path outside the folder, a missing or unreadable file.
    """
    import tifffile

    if not isinstance(entry, dict) or "image" not in entry or "labels" not in entry:
        raise ValueError("the index entry needs 'image' and 'labels' paths")
    arrays: list[np.ndarray | None] = []
    for key in ("image", "labels", "region"):
        rel = entry.get(key)
        if rel is None:
            arrays.append(None)
            continue
        path = _inside(root, rel, key)
        if not path.is_file():
            raise ValueError(f"missing file {rel}")
        try:
            arrays.append(tifffile.imread(path))
        except Exception as exc:  # noqa: BLE001 - tifffile raises many kinds for a bad file
            raise ValueError(f"{rel} is not a readable TIFF ({exc})") from exc
    return arrays


def _tiff_writer(array: np.ndarray) -> Any:
    """A ``write(fh)`` for :func:`write_atomic` that writes ``array`` as a TIFF."""
    import io

    import tifffile

    def write(fh: Any) -> None:
        buf = io.BytesIO()
        tifffile.imwrite(buf, array)
        fh.write(buf.getvalue())
    return write


@dataclass
class TrainingSet:
    """An ordered list of :class:`TrainingSample` with folder save/load.

    Attributes:
        samples: the samples.
        errors: problems met by the last :meth:`load` with ``strict=False`` (one line each).
    """

    samples: list[TrainingSample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def add(self, image: Any, labels: Any, region: Any = None, name: str | None = None) -> TrainingSample:
        """Append a sample (validated); returns it."""
        sample = TrainingSample(image, labels, region, name or f"sample {len(self.samples) + 1}")
        self.samples.append(sample)
        return sample

    def remove(self, index: int) -> TrainingSample:
        """Remove and return the sample at ``index``."""
        return self.samples.pop(index)

    @property
    def images(self) -> list[np.ndarray]:
        return [s.image for s in self.samples]

    @property
    def labels(self) -> list[np.ndarray]:
        return [s.labels for s in self.samples]

    @property
    def regions(self) -> list[np.ndarray | None]:
        return [s.region for s in self.samples]

    def save(self, folder: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the set to ``folder`` (created if needed).

        Every file is written under a temporary name and renamed into place, the index
        last, so a crash leaves the old set or the new one. With ``overwrite``, files that
        the old index listed and the new set no longer uses are then removed; no other
        file is ever touched.

        Args:
            folder: the training-set folder.
            overwrite: replace a set already saved there (without it, an existing set or
                any file the new set would write is refused).

        Returns:
            The folder.

        Raises:
            ValueError: ``folder`` is a file, or it holds a set or files in the way and
                ``overwrite`` is False.
        """
        root = Path(folder)
        if root.exists() and not root.is_dir():
            raise ValueError(f"{root} is a file, not a folder: choose a folder for the training set")
        old_files = self._files_of_saved(root)
        entries = []
        for i, s in enumerate(self.samples):
            stem = f"{i:04d}.tif"
            entries.append({"name": s.name, "image": f"images/{stem}", "labels": f"labels/{stem}",
                            "region": f"regions/{stem}" if s.region is not None else None})
        written = {e[k] for e in entries for k in ("image", "labels", "region") if e[k] is not None}
        if not overwrite:
            in_the_way = sorted(p for p in written | {INDEX} if (root / p).exists())
            if in_the_way:
                what = "holds a training set already" if (root / INDEX).exists() else f"already has {in_the_way[0]}"
                raise ValueError(f"{root} {what}; choose another folder or save with overwrite=True to replace it")

        for s, entry in zip(self.samples, entries):
            write_atomic(root / entry["image"], _tiff_writer(s.image), fsync=False)
            write_atomic(root / entry["labels"], _tiff_writer(s.labels), fsync=False)
            if s.region is not None:
                write_atomic(root / entry["region"], _tiff_writer(s.region.astype(np.uint8)), fsync=False)
        index = {"format": FORMAT, "version": VERSION, "samples": entries}
        write_atomic(root / INDEX, lambda fh: fh.write(json.dumps(index, indent=1).encode()))
        # files of the earlier set saved here that this one no longer lists would be mistaken for part of it
        for rel in sorted(old_files - written):
            (root / rel).unlink(missing_ok=True)
        return root

    @staticmethod
    def _files_of_saved(root: Path) -> set[str]:
        """The files (relative paths inside ``root``) that the index saved in ``root`` lists."""
        try:
            index = json.loads((root / INDEX).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return set()
        out = set()
        for entry in index.get("samples", []) if isinstance(index, dict) else []:
            for key in ("image", "labels", "region"):
                rel = entry.get(key) if isinstance(entry, dict) else None
                try:
                    if _inside(root, rel, key).is_file():
                        out.add(rel)
                except ValueError:
                    continue  # a path outside the folder is not ours to remove
        return out

    @classmethod
    def load(cls, folder: str | os.PathLike, strict: bool = True) -> TrainingSet:
        """Read a set saved by :meth:`save` (or written by hand in the same format).

        Args:
            folder: the training-set folder.
            strict: True: any broken sample raises; False: broken samples are skipped
                and described in ``errors``.

        Raises:
            TrainingSetError: no/invalid index, or (strict) a broken sample; the message
                names every broken sample and why.
        """
        root = Path(folder)
        index_path = root / INDEX
        if not index_path.is_file():
            raise TrainingSetError(f"{root} is not a training-set folder: it has no {INDEX}")
        try:
            index = json.loads(index_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TrainingSetError(f"{index_path} cannot be read: {exc}") from exc
        if not isinstance(index, dict) or not isinstance(index.get("samples"), list):
            raise TrainingSetError(f"{index_path} has no 'samples' list: not a napari-unet training set")
        if int(index.get("version", VERSION)) > VERSION:
            raise TrainingSetError(f"{index_path} is format version {index['version']}; this napari-unet reads "
                                   f"up to {VERSION}: update napari-unet")
        ts = cls()
        for i, entry in enumerate(index["samples"]):
            name = str(entry.get("name") or f"sample {i + 1}") if isinstance(entry, dict) else f"sample {i + 1}"
            try:
                ts.samples.append(TrainingSample(*_read_entry(root, entry), name))
            except ValueError as exc:
                msg = str(exc).removeprefix(f"sample '{name}': ")
                ts.errors.append(f"sample {i + 1} '{name}': {msg}")
        if ts.errors and strict:
            raise TrainingSetError(f"{root}: {len(ts.errors)} broken sample(s): " + "; ".join(ts.errors))
        return ts
