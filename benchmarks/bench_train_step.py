"""Where a training step's time goes: output tile vs halo, per tile size and batch.

With valid convolutions a depth-3 U-Net loses a 44-px halo on each side, so a 96-px
output tile takes a 184-px input: only (96/184)^2 = 27% of the computed input area is
output. This times one full training step (augmentation on the device, forward, weighted
loss, backward, AdamW) of the bundled architecture for several output tiles, and prints
the time per step and per thousand output pixels (the number that matters: the loss is
taught only on output pixels). Ratios measured in one run; absolute times depend on load.

    OMP_NUM_THREADS=2 python benchmarks/bench_train_step.py [--channels 3] [--steps 6]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from napari_unet.augment import AugmentConfig, augment_batch
from napari_unet.device import autocast, cpu_supports_bf16
from napari_unet.model import UNet
from napari_unet.training import weighted_cross_entropy


def time_step(net: UNet, tile: int, batch: int, steps: int, amp: bool, augment: AugmentConfig) -> float:
    cfg = net.config
    inp = cfg.input_size_for_output(tile)
    src = augment.source_size(inp)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, cfg.in_channels, src, src)
    t = torch.randint(0, 3, (batch, src, src), dtype=torch.int16)
    w = torch.ones(batch, src, src)
    m = torch.ones(batch, src, src, dtype=torch.bool)
    times = []
    for k in range(steps + 1):
        t0 = time.perf_counter()
        b = augment_batch(x, t, w, m, out_size=inp, config=augment, generator=g)
        with autocast(torch.device("cpu"), amp):
            logits = net(b.image.contiguous(memory_format=torch.channels_last))
        loss = weighted_cross_entropy(logits, b.targets.long(), b.weights, b.mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if k:  # the first step warms up
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--configs", default="96x4,128x4,192x2,256x1,320x1", help="TILExBATCH,...")
    args = p.parse_args(argv)
    amp = cpu_supports_bf16()
    net = UNet(args.channels, 3, depth=3, base_width=16, dropout=0.1).to(memory_format=torch.channels_last).train()
    print(f"threads {torch.get_num_threads()}, bf16 {amp}, depth 3, width 16, halo {net.halo} px")
    print("| output tile | input | batch | output share of input | s / step | ms / 1000 output px |")
    print("|---|---|---|---|---|---|")
    for spec in args.configs.split(","):
        tile, batch = (int(v) for v in spec.split("x"))
        inp = net.config.input_size_for_output(tile)
        out = net.config.output_size(inp)
        s = time_step(net, tile, batch, args.steps, amp, AugmentConfig())
        print(f"| {out} | {inp} | {batch} | {out * out / inp / inp:.0%} | {s:.3f} | {1000 * s / (batch * out * out) * 1000:.2f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
