"""Which optimiser trains our U-Net best? A small synthetic problem, measured.

    python benchmarks/bench_optim.py [--iterations 300] [--seeds 0 1]

Depth-3, width-8 U-Net from scratch, instance3 mode, 8 synthetic 192x192 training images
(``napari_unet.synthetic``), batch 4, 64-px output tiles, all augmentations on; AP at
IoU 0.5 (validation inside ``train_iter``) on 4 held-out synthetic images, reported as
the final and the best value. The winner is the default of ``napari_unet.training``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from napari_unet.model import UNet
from napari_unet.synthetic import make_sample
from napari_unet.training import train_iter

CANDIDATES = [
    ("adamw", "cosine", 1e-3),
    ("adamw", "cosine", 3e-3),
    ("adamw", "cosine", 3e-4),
    ("adam", "constant", 1e-3),
    ("sgd", "cosine", 1e-2),
    ("sgd", "cosine", 1e-3),
]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = p.parse_args()
    train = [make_sample((192, 192), seed=s, difficulty="normal") for s in range(8)]
    val = [make_sample((192, 192), seed=1000 + s, difficulty="normal") for s in range(4)]
    print(f"{'optimizer':8s} {'schedule':9s} {'lr':>7s} {'seed':>4s} {'final AP50':>10s} {'best AP50':>9s} {'loss':>7s} {'time':>6s}")
    for opt, sched, lr in CANDIDATES:
        for seed in args.seeds:
            torch.manual_seed(seed)
            net = UNet(1, 3, depth=3, base_width=8, dropout=0.1)
            t0 = time.perf_counter()
            gen = train_iter([a for a, _ in train], [b for _, b in train], net, regions=["all"] * 8,
                             iterations=args.iterations, lr=lr, optimizer=opt, schedule=sched, batch_size=4,
                             tile_size=64, val_images=[a for a, _ in val], val_labels=[b for _, b in val],
                             val_regions=["all"] * 4, val_every=50, device="cpu", seed=seed)
            aps, losses = [], []
            for rec in gen:
                if "val_ap" in rec.info and rec.info.get("phase") == "train":
                    aps.append(rec.info["val_ap"])
                if "train_loss" in rec.info:
                    losses.append(rec.info["train_loss"])
            print(f"{opt:8s} {sched:9s} {lr:7.0e} {seed:4d} {aps[-1]:10.3f} {max(aps):9.3f} "
                  f"{np.mean(losses[-30:]):7.4f} {time.perf_counter() - t0:5.0f}s", flush=True)


if __name__ == "__main__":
    main()
