#!/usr/bin/env python
"""Pretrain the bundled napari-unet model on synthetic fluorescence images (CPU, ~1 hour).

Recipe (recorded in the model's ``meta["recipe"]``):

* data: ``napari_unet.synthetic.make_sample`` with a random recipe per image (seeded),
  a mix of difficulties (easy/normal/hard) and kinds (nuclei, some whole cells). A pool of
  ``--pool`` images is generated, trained on for ``--round`` iterations, and regenerated
  with new seeds, so the network sees thousands of different images;
* network: the paper's U-Net with ``--depth`` 3 (half the cost of depth 4 per step on this
  CPU, measured) and base width 16, mode ``instance3`` (background / interior / boundary);
* training: :func:`napari_unet.training.train_iter` (AdamW, warm-up + cosine schedule over
  the whole run, weighted cross-entropy with the paper's eq. 2 weights, all augmentations
  on, bfloat16 autocast and channels-last on CPUs with bf16 units);
* validation: AP at IoU 0.5 on ``--val`` held-out synthetic images (other seeds); the
  best checkpoint is exported.

Checkpoints go to ``--checkpoint-dir`` every ``--checkpoint-every`` iterations; after a
kill, re-run with ``--resume`` and it continues from the last checkpoint (the same pool is
regenerated from its seed). The final model is written to ``--out`` with ``save_model``.

Example::

    OMP_NUM_THREADS=2 nohup python scripts/pretrain.py --checkpoint-dir runs/pretrain \\
        > runs/pretrain.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_unet.augment import AugmentConfig
from napari_unet.model import UNet, bundled_model_path, load_model, save_atomic, save_model
from napari_unet.channels import bundled_path, widen_input
from napari_unet.synthetic import make_sample
from napari_unet.synthetic_tissue import make_tissue_sample
from napari_unet.training import train_iter

DIFFICULTY_MIX = (("easy", 0.2), ("normal", 0.5), ("hard", 0.3))
CELLS_FRACTION = 0.25
VAL_SEED_BASE = 10_000_000  # validation seeds never overlap training seeds


def sample_spec(seed: int) -> tuple[str, str]:
    """Difficulty and kind of the image with this seed (deterministic)."""
    r = np.random.default_rng(seed + 7_777_777)
    names, probs = zip(*DIFFICULTY_MIX)
    difficulty = str(r.choice(names, p=probs))
    kind = "cells" if r.random() < CELLS_FRACTION else "nuclei"
    return difficulty, kind


def make_pool(round_index: int, n: int, size: int, kind: str = "fluorescence") -> tuple[list[np.ndarray], list[np.ndarray]]:
    images, labels = [], []
    for k in range(n):
        seed = round_index * n + k
        if kind == "stained":
            img, lab = make_tissue_sample((size, size), seed=seed)
        else:
            difficulty, cell_kind = sample_spec(seed)
            img, lab = make_sample((size, size), seed=seed, difficulty=difficulty, kind=cell_kind)
        images.append(img)
        labels.append(lab)
    return images, labels


def make_val(n: int, size: int, kind: str = "fluorescence") -> tuple[list[np.ndarray], list[np.ndarray]]:
    images, labels = [], []
    for k in range(n):
        seed = VAL_SEED_BASE + k
        if kind == "stained":
            # half 20x, half 40x; mostly H&E
            img, lab = make_tissue_sample((size, size), seed=seed, scale=("20x", "40x")[k % 2])
        else:
            difficulty = ("normal", "hard")[k % 2]
            cell_kind = "cells" if k % 4 == 3 else "nuclei"
            img, lab = make_sample((size, size), seed=seed, difficulty=difficulty, kind=cell_kind)
        images.append(img)
        labels.append(lab)
    return images, labels


def log(msg: str, fh) -> None:
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}"
    print(line, flush=True)
    fh.write(line + "\n")
    fh.flush()


def _new_pool_next(ckpt: Path) -> None:
    """Each round resumes the run on a new pool with its own seed. ``train_iter`` refuses
    to resume with other images or another seed than the saved run's, so the saved state
    forgets those two settings (written atomically)."""
    state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
    for key in ("images", "seed"):
        state.get("settings", {}).pop(key, None)
    save_atomic(state, ckpt / "state.pt")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", choices=("fluorescence", "stained"), default="fluorescence",
                   help="synthetic data: fluorescence (napari_unet.synthetic, the bundled model) or "
                        "stained RGB tissue (napari_unet.synthetic_tissue, models/stained.pt)")
    p.add_argument("--out", type=Path, default=None,
                   help="final model file (default: the bundled model of --kind)")
    p.add_argument("--checkpoint-dir", type=Path, default=Path("runs/pretrain"))
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir")
    p.add_argument("--iterations", type=int, default=8000)
    p.add_argument("--round", type=int, default=400, help="iterations per data pool")
    p.add_argument("--pool", type=int, default=24, help="images per pool")
    p.add_argument("--size", type=int, default=448, help="edge of the generated images")
    p.add_argument("--val", type=int, default=6, help="held-out validation images")
    p.add_argument("--val-size", type=int, default=256)
    p.add_argument("--val-every", type=int, default=400)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--base-width", type=int, default=16)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--tile-size", type=int, default=128, help="output tile edge")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", type=Path, default=None,
                   help="start from this model file instead of a fresh network (a second stage)")
    p.add_argument("--scale-range", type=float, nargs=2, default=(0.85, 1.15), metavar=("LO", "HI"),
                   help="random zoom range of the augmentation (wider = more robust to magnification)")
    p.add_argument("--diameter", type=float, default=None,
                   help="cell diameter (px) recorded as the one the model segments best; the pools mix "
                        "many sizes, so it is chosen by benchmarks/calibrate_diameter.py, not measured "
                        "(default 20 for fluorescence; 18 for stained, between its 20x and 40x sizes)")
    p.add_argument("--export-from", type=Path, default=None, metavar="CHECKPOINT",
                   help="train nothing: write --out from this checkpoint (e.g. one chosen among a run's "
                        "best.pt files) with the final model's description and meta")
    p.add_argument("--zoom-each", action="store_true",
                   help="stained, from an --init model that records zoom_each (models/stained.pt): zoom "
                        "each pool image so that its nuclei reach the model's diameter, as segment and "
                        "fine_tune do for that model (else both sizes are learnt)")
    p.add_argument("--seed-offset", type=int, default=0,
                   help="added to the pool seeds, so a second stage sees new images")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = bundled_model_path() if args.kind == "fluorescence" else bundled_path("stained")
    if args.diameter is None:
        args.diameter = 20.0 if args.kind == "fluorescence" else 18.0

    ckpt = args.checkpoint_dir
    ckpt.mkdir(parents=True, exist_ok=True)
    logf = open(ckpt / "log.txt", "a")
    start_it = 0
    if args.export_from is not None:
        start_it = args.iterations
    elif args.resume and (ckpt / "state.pt").is_file():
        start_it = int(torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)["iteration"])
        log(f"resuming from iteration {start_it}", logf)
    elif (ckpt / "state.pt").is_file():
        log(f"{ckpt} already holds a run; pass --resume or choose another --checkpoint-dir", logf)
        return 2
    recipe = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    recipe.update(
        difficulty_mix=[list(d) for d in DIFFICULTY_MIX],
        cells_fraction=CELLS_FRACTION,
        torch=str(torch.__version__),
        python=platform.python_version(),
        machine=platform.machine(),
        threads=torch.get_num_threads(),
    )
    log("recipe " + json.dumps(recipe), logf)
    val_images, val_labels = make_val(args.val if args.export_from is None else 0, args.val_size, args.kind)

    if args.init is not None:
        model = load_model(args.init)
        if args.kind == "stained" and model.config.in_channels == 1:
            # RGB brightfield: start from the fluorescence filters seeing inverted luminance
            model = widen_input(model, 3, invert=True, channel_names=["red", "green", "blue"])
        init_history = [dict(h, stage="first stage") for h in model.meta.get("history", [])[-1:]]
        recipe["init_recipe"] = model.meta.get("recipe", {})
        log(f"starting from {args.init} ({model.config})", logf)
        if args.zoom_each and not (args.kind == "stained" and model.meta.get("zoom_each") and model.meta.get("diameter")):
            log("--zoom-each needs --kind stained and an --init model whose meta records zoom_each and a diameter", logf)
            return 2
    elif args.zoom_each:
        log("--zoom-each needs an --init model whose meta records zoom_each (e.g. models/stained.pt)", logf)
        return 2
    else:
        init_history = []
        model = UNet(in_channels=3 if args.kind == "stained" else 1, num_classes=3, depth=args.depth, base_width=args.base_width, dropout=args.dropout)
        model.meta["mode"] = "instance3"
    augment = AugmentConfig(scale_range=tuple(args.scale_range))
    t_start = time.time()
    it = start_it
    while it < args.iterations:
        r = it // args.round
        stop = min(args.iterations, (r + 1) * args.round)
        t = time.time()
        images, labels = make_pool(r + args.seed_offset, args.pool, args.size, args.kind)
        log(f"round {r}: pool of {len(images)} images generated in {time.time() - t:.1f}s", logf)
        resume = ckpt if (ckpt / "state.pt").is_file() else None
        if resume is not None and it % args.round == 0:
            _new_pool_next(ckpt)  # a new round; a resume inside a round is checked as usual
        gen = train_iter(
            images, labels, model if resume is None else None, regions=["all"] * len(images),
            iterations=stop, schedule_iterations=args.iterations, device=args.device, lr=args.lr,
            batch_size=args.batch_size, tile_size=args.tile_size, augment=augment,
            val_images=val_images, val_labels=val_labels, val_regions=["all"] * len(val_images),
            val_every=args.val_every, checkpoint_dir=ckpt, checkpoint_every=args.checkpoint_every,
            resume=resume, seed=args.seed + r,
            # stained pools mix 20x and 40x nuclei: learn both sizes, or (--zoom-each, with an
            # --init model whose meta says zoom_each) zoom each image to the model's size
            zoom_to_model=args.kind == "fluorescence" or args.zoom_each,
        )
        losses: list[float] = []
        while True:
            try:
                rec = next(gen)
            except StopIteration:
                break
            info = rec.info
            if "train_loss" in info:
                losses.append(info["train_loss"])
            if info.get("phase") == "train" and (info["iteration"] % 50 == 0 or "val_ap" in info):
                msg = (
                    f"it {info['iteration']}/{args.iterations} loss {np.mean(losses[-50:]):.4f} "
                    f"lr {info['lr']:.2e} {time.time() - t_start:.0f}s"
                )
                if "val_ap" in info:
                    msg += f" | val loss {info['val_loss']:.4f} AP50 {info['val_ap']:.3f}"
                log(msg, logf)
            if info.get("phase") == "start" and r == start_it // args.round:
                log(f"device {info['device']}", logf)
        it = stop

    best = ckpt / "best.pt" if (ckpt / "best.pt").is_file() else ckpt / "last.pt"
    if args.export_from is not None:
        best = args.export_from
    final = load_model(best)
    hist = final.meta.get("history", [])
    best_ap = hist[-1].get("best_val_ap", -1) if hist else -1  # this run's record
    what = "fluorescence nuclei/cells" if args.kind == "fluorescence" else "stained tissue (H&E, brightfield) nuclei, RGB"
    final.meta["description"] = (
        "napari-unet bundled model: U-Net (depth {d}, base width {w}) pretrained on synthetic "
        "{what} by scripts/pretrain.py; background/interior/boundary "
        "(instance3) with seeded watershed".format(d=final.config.depth, w=final.config.base_width, what=what)
    )
    if args.kind == "stained":
        final.meta["modality"] = "stained"
        # it learned 20x and 40x nuclei (median label diameters 13 and 25 px): fine-tuning
        # on data inside this range trains at the data's own scale (no zoom)
        final.meta["diameter_range"] = [10.0, 30.0]
        final.meta["input"] = dict(final.meta.get("input") or {}, channel_names=["red", "green", "blue"])
        # each slide zoomed to the model's cell size (training and segment), and the
        # post-processing chosen on real slides (models/stained.md)
        final.meta["zoom_each"] = True
        final.meta["postprocess"] = {"foreground_threshold": 0.3, "seed_threshold": 0.3, "h": 2.0}
    final.meta["recipe"] = recipe
    final.meta["diameter"] = args.diameter
    # the last record already holds the whole curve; a second stage keeps the first's too
    final.meta["history"] = init_history + hist[-1:]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_model(final, args.out)
    log(f"wrote {args.out} from {best.name} (best validation AP50 {best_ap:.3f})", logf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
