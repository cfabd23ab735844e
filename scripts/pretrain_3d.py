#!/usr/bin/env python
"""Pretrain the bundled 3D U-Net (``models/bundled_3d.pt``) on synthetic confocal stacks (CPU).

Recipe (recorded in the model's ``meta["recipe"]``):

* data: ``napari_unet.synthetic_3d.make_stack`` with random settings
  (``synthetic_3d.sample_settings``: nuclei 8-30 px across, Z steps 1-4, dim to bright,
  sharp to blurred, sparse to packed; never the ``HELD_OUT`` settings). Each stack is
  resampled along Z to isotropic voxels, as ``volume`` does before predicting, and learned
  against the generator's isotropic labels (background / interior / boundary, the inner
  one-voxel rim of each nucleus). A pool of ``--pool`` stacks is regenerated with new
  seeds every ``--round`` iterations;
* network: the 3D U-Net of Çiçek et al. (2016) with the paper's valid convolutions:
  ``UNet(spatial_dims=3, depth=2, base_width=16)``, halo 20 voxels;
* training: AdamW, linear warm-up then cosine decay to 1%, cross-entropy with the voxels
  where two nuclei touch weighing ``--touch-weight`` (the 3D form of the paper's border
  term), random flips along every axis, Y/X swaps and gamma / contrast changes;
* validation: the loss on fixed crops of ``--val`` stacks of other seeds; the checkpoint
  of lowest validation loss is exported.

Checkpoints go to ``--checkpoint-dir`` every ``--checkpoint-every`` iterations; after a
kill, re-run with ``--resume`` to continue. Example::

    OMP_NUM_THREADS=2 nohup python scripts/pretrain_3d.py --checkpoint-dir runs/pretrain_3d \\
        > runs/pretrain_3d.log 2>&1 &
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from napari_unet.model import UNet, load_model, save_atomic, save_model
from napari_unet.synthetic_3d import make_stack, sample_settings
from napari_unet.training_3d import INPUT, TOUCH_WEIGHT, Example, loss_of, make_example, random_batch

VAL_SEED_BASE = 20_000_000


def generated_example(seed: int, side: int, depth: float) -> Example:
    """A random stack of the generator, as the 3D network learns it (its isotropic labels)."""
    shape, kw = sample_settings(np.random.default_rng(seed), side=side, depth=depth)
    image, _, iso = make_stack(shape, seed=seed, return_isotropic=True, **kw)
    return make_example(image, None, kw["anisotropy"], isotropic_labels=iso)


def log(msg: str, fh) -> None:
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}"
    print(line, flush=True)
    fh.write(line + "\n")
    fh.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "src/napari_unet/models/bundled_3d.pt")
    p.add_argument("--checkpoint-dir", type=Path, default=Path("runs/pretrain_3d"))
    p.add_argument("--resume", action="store_true")
    p.add_argument("--init", type=Path, default=None,
                   help="start from these weights (a model file or a checkpoint's best_state.pt) with a new "
                        "optimiser and schedule: a second, shorter stage at a lower rate")
    p.add_argument("--average-with", type=Path, default=None,
                   help="a model whose weights the exported ones are averaged with (e.g. --init's)")
    p.add_argument("--iterations", type=int, default=6000)
    p.add_argument("--max-time", type=float, default=None, help="stop after this many seconds (then export)")
    p.add_argument("--round", type=int, default=150, help="iterations per pool")
    p.add_argument("--seed-offset", type=int, default=0, help="added to the pools' seeds (new stacks in a second stage)")
    p.add_argument("--pool", type=int, default=12)
    p.add_argument("--side", type=int, default=96)
    p.add_argument("--depth-px", type=float, default=96.0)
    p.add_argument("--val", type=int, default=4)
    p.add_argument("--val-every", type=int, default=250)
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--base-width", type=int, default=16)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--input", type=int, default=INPUT, help="input cube edge (valid for the network)")
    p.add_argument("--touch-weight", type=float, default=TOUCH_WEIGHT)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ck = args.checkpoint_dir
    ck.mkdir(parents=True, exist_ok=True)
    fh = open(ck / "log.txt", "a")
    net = UNet(1, 3, args.depth, args.base_width, args.dropout, spatial_dims=3)
    out = net.output_size(args.input)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    warm = max(1, args.iterations // 20)

    def lr_at(i: int) -> float:
        if i < warm:
            return args.lr * (i + 1) / warm
        f = (i - warm) / max(1, args.iterations - warm)
        return args.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, f))))

    start, best = 0, math.inf
    if args.init is not None:
        st = torch.load(args.init, map_location="cpu", weights_only=True)
        net.load_state_dict(st["state_dict"] if "state_dict" in st else st.get("net", st))
        log(f"started from {args.init}", fh)
    if args.resume and (ck / "state.pt").exists():
        st = torch.load(ck / "state.pt", map_location="cpu", weights_only=True)
        net.load_state_dict(st["net"])
        opt.load_state_dict(st["opt"])
        start, best = int(st["iteration"]), float(st["best"])
        log(f"resumed at iteration {start}, best validation loss {best:.4f}", fh)
    vrng = np.random.default_rng(1)
    val = [generated_example(VAL_SEED_BASE + k, args.side, args.depth_px) for k in range(args.val)]
    vbatches = [random_batch(val, args.batch_size, args.input, out, vrng, False, args.touch_weight) for _ in range(6)]
    t0 = time.time()
    pool, pool_round = None, -1
    i = start
    for i in range(start, args.iterations):
        r = i // args.round
        if r != pool_round:
            pool = [generated_example(args.seed_offset + r * args.pool + k, args.side, args.depth_px) for k in range(args.pool)]
            pool_round = r
        rng = np.random.default_rng((r, i))
        net.train()
        for g in opt.param_groups:
            g["lr"] = lr_at(i)
        x, t, w = random_batch(pool, args.batch_size, args.input, out, rng, True, args.touch_weight)
        loss = loss_of(net, x, t, w)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i % 10 == 0:
            log(f"it {i} loss {loss.item():.4f} lr {lr_at(i):.2e} {time.time() - t0:.0f}s", fh)
        done = i + 1 == args.iterations or (args.max_time is not None and time.time() - t0 > args.max_time)
        if (i + 1) % args.val_every == 0 or done:
            net.eval()
            with torch.no_grad():
                vl = float(np.mean([loss_of(net, *b).item() for b in vbatches]))
            if vl < best:
                best = vl
                save_atomic({k: v.detach().clone() for k, v in net.state_dict().items()}, ck / "best_state.pt")
            log(f"it {i + 1} validation loss {vl:.4f} (best {best:.4f})", fh)
        if (i + 1) % args.checkpoint_every == 0 or done:
            save_atomic({"net": net.state_dict(), "opt": opt.state_dict(), "iteration": i + 1, "best": best},
                        ck / "state.pt")
        if done:
            break
    if (ck / "best_state.pt").exists():
        net.load_state_dict(torch.load(ck / "best_state.pt", map_location="cpu", weights_only=True))
    if args.average_with is not None:  # the mean of two stages: what each learned, with less of what each forgot
        other = load_model(args.average_with).state_dict()
        mine = net.state_dict()
        net.load_state_dict({k: (v + other[k]) / 2 if v.is_floating_point() else v for k, v in mine.items()})
        log(f"averaged with {args.average_with}", fh)
    net.eval()
    net.meta["description"] = ("3D U-Net for fluorescent nuclei in Z stacks, trained on synthetic confocal "
                               "stacks resampled to isotropic voxels")
    net.meta["recipe"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    net.meta["recipe"].update(iterations_done=i + 1, best_validation_loss=best, machine=platform.machine())
    save_model(net, args.out)
    log(f"saved {args.out}", fh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
