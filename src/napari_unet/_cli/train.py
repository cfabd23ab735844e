"""``napari-unet train``: fine-tune a model on labelled images from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ._io import read_image


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", nargs="+", metavar="IMG", help="training images (.tif, .npy, zarr)")
    parser.add_argument("--labels", nargs="+", metavar="LAB", help="label images, one per image, same order")
    parser.add_argument("--regions", nargs="+", metavar="MASK",
                        help="optional annotated-region masks, one per image (default: labelled cells + margin)")
    parser.add_argument("--complete", action="store_true",
                        help="the labels are complete: every unlabelled pixel is background")
    parser.add_argument("--set", metavar="FOLDER", help="a training-set folder (index.json + TIFFs)")
    parser.add_argument("-o", "--output", required=True, metavar="MODEL.pt", help="where to write the trained model")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace MODEL.pt if it exists, and an earlier run's checkpoints in --checkpoint-dir "
                             "(default: refuse both)")
    parser.add_argument("--model", default=None, metavar="START",
                        help="starting model: a model file, 'fluorescence' (= 'bundled'), 'stained' or 'scratch' "
                             "(default: the bundled model that suits the images: 'stained' for RGB)")
    parser.add_argument("--mode", choices=("instance3", "instance2", "semantic"),
                        help="class meaning of a model trained from scratch")
    parser.add_argument("--preset", choices=("membranes", "membrane-mask"),
                        help="EM-like data (trains instance2): 'membranes' = cells labelled, 0 = the membrane "
                             "between them; 'membrane-mask' = painted membranes (nonzero), cells are what they enclose")
    parser.add_argument("--iterations", type=int, metavar="N", help="training steps (default 500)")
    parser.add_argument("--max-time", type=float, metavar="S", help="stop after this many seconds")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--lr", type=float, help="peak learning rate (default 3e-4 fine-tuning, 3e-3 scratch)")
    parser.add_argument("--batch-size", type=int, default=None, metavar="N", help="tiles per step (default 2 CPU, 4 GPU)")
    parser.add_argument("--tile-size", type=int, metavar="N", help="output tile edge (default 192)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share held out for validation")
    parser.add_argument("--no-augment", action="store_true", help="switch all augmentation off")
    parser.add_argument("--checkpoint-dir", metavar="DIR", help="write last/best checkpoints here")
    parser.add_argument("--resume", metavar="DIR", help="continue from the checkpoints in DIR")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--native-scale", action="store_true",
                        help="train at the images' own scale (default: when the cells' size differs from the "
                             "starting model's by more than 25%%, train on copies zoomed to the model's size)")
    parser.add_argument("--keep-start", type=float, default=None, metavar="SHARE",
                        help="share of the starting model's weights mixed into the fine-tuned ones "
                             "(default 0.25; used only when validation says it costs at most 0.02; 0 = none)")
    parser.add_argument("--tune-postprocess", action="store_true",
                        help="store in the model the post-processing thresholds that segment the validation "
                             "images best (for images all alike; off by default)")


def _read(path: str) -> np.ndarray:
    arr, _axes = read_image(path)
    return np.asarray(arr)


def load_data(args: argparse.Namespace) -> tuple[list[Any], list[Any], list[Any]]:
    """Images, labels and regions from ``--set`` and/or ``--images/--labels/--regions``.

    Shared by ``napari-unet train`` and ``python -m napari_unet.ddp``, which take the same
    options (see :func:`add_arguments`).

    Args:
        args: Parsed options of :func:`add_arguments`.

    Returns:
        ``(images, labels, regions)``, one entry per image; a region is a bool mask,
        ``"all"`` (``--complete``) or None (labelled cells + margin).
    """
    images: list[Any] = []
    labels: list[Any] = []
    regions: list[Any] = []
    if args.set:
        from ..data import TrainingSet

        ts = TrainingSet.load(args.set)
        images += ts.images
        labels += ts.labels
        regions += list(ts.regions)
    if args.images or args.labels:
        if not args.images or not args.labels or len(args.images) != len(args.labels):
            raise ValueError(
                f"--images and --labels must name the same number of files "
                f"(got {len(args.images or [])} and {len(args.labels or [])})"
            )
        if args.regions and len(args.regions) != len(args.images):
            raise ValueError(f"--regions must name one mask per image (got {len(args.regions)} for {len(args.images)})")
        images += [_read(p) for p in args.images]
        labels += [_read(p) for p in args.labels]
        if args.regions:
            regions += [_read(p).astype(bool) for p in args.regions]
        else:
            regions += ["all" if args.complete else None] * len(args.images)
    if not images:
        raise ValueError("no training data: give --images and --labels, or --set FOLDER")
    if args.complete:
        regions = ["all" if r is None else r for r in regions]
    return images, labels, regions


def run(args: argparse.Namespace) -> int:
    from .._progress import Progress, progress_bar
    from ..augment import AugmentConfig
    from ..model import save_model
    from ..training import train_iter

    from ..device import resolve_device

    resolve_device(args.device)  # a device that cannot be used is said before any work starts
    out_path = Path(args.output)
    if out_path.exists() and not args.overwrite:
        start = args.model not in (None, "bundled", "scratch") and Path(args.model).resolve() == out_path.resolve()
        what = "is the starting model" if start else "exists already"
        raise ValueError(f"the output {out_path} {what}; choose another name or add --overwrite to replace it")
    if args.overwrite and args.checkpoint_dir and not args.resume:
        from ..training import CHECKPOINT_FILES

        for name in CHECKPOINT_FILES:  # an earlier run's checkpoints, replaced as asked
            (Path(args.checkpoint_dir) / name).unlink(missing_ok=True)
    images, labels, regions = load_data(args)

    gen = train_iter(
        images, labels, args.model, regions=regions, iterations=args.iterations, max_time=args.max_time,
        device=args.device, lr=args.lr, batch_size=args.batch_size, tile_size=args.tile_size,
        augment=AugmentConfig.off() if args.no_augment else AugmentConfig(), val_fraction=args.val_fraction,
        checkpoint_dir=args.checkpoint_dir, resume=args.resume, mode=args.mode, preset=args.preset, seed=args.seed,
        zoom_to_model=not args.native_scale, tune_postprocess=args.tune_postprocess,
        **({} if args.keep_start is None else {"keep_start": args.keep_start}),
    )
    bar = progress_bar("training")
    shown = 0
    try:
        while True:
            try:
                rec = next(gen)
            except StopIteration as stop:
                model = stop.value
                break
            if not isinstance(rec, Progress):
                continue
            if bar.total != rec.total:
                bar.total = rec.total
                bar.refresh()
            if rec.done > shown:
                bar.update(rec.done - shown)
                shown = rec.done
            info = rec.info
            post = {}
            if "train_loss_smooth" in info:
                post["loss"] = f"{info['train_loss_smooth']:.4f}"
            if "val_ap" in info:
                post["val " + info["score"]] = f"{info['val_ap']:.3f}"
            if post:
                bar.set_postfix(post, refresh=False)
            if info.get("phase") == "start":
                bar.write(rec.message, file=sys.stderr)  # "training on DEVICE [from the picked model]"
    finally:
        bar.close()
    out = save_model(model, out_path)  # atomic: written beside it, then renamed
    last = model.meta["history"][-1]
    summary = f"wrote {out} after {last['iterations']} iterations ({last['seconds']:.0f} s)"
    if "best_val_ap" in last:
        from ..training import describe_outcome

        summary += "; " + describe_outcome(last)
        if last.get("improved") is False:
            summary += " (the file holds its weights)"
    if last.get("input"):
        from ..channels import describe_input

        summary += f"; input: {describe_input(model.meta, model.config.in_channels)}"
    print(summary)
    return 0
