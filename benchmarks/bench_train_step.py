"""Where a training step's time goes: output tile vs halo, per tile size and batch.

With valid convolutions a depth-3 U-Net loses a 44-px halo on each side, so a 96-px
output tile takes a 184-px input: only (96/184)^2 = 27% of the computed input area is
output. This times one full training step (augmentation on the device, forward, weighted
loss, backward, AdamW) of the bundled architecture for several output tiles, and prints
the time per step and per thousand output pixels (the number that matters: the loss is
taught only on output pixels). Ratios measured in one run; absolute times depend on load.

Beside each row, the same step of MONAI's plain ``BasicUNet`` (when MONAI is installed:
a benchmark-only dependency) at the same width (features 16, 32, 64, 128, 256; one more
level than ours) with same-padded convolutions, so its output tile is its input tile:
the comparison per output pixel is what the valid convolutions cost.

    OMP_NUM_THREADS=2 python benchmarks/bench_train_step.py [--channels 3] [--steps 6] [--no-monai]

Measured (``--steps 4 --configs 192x2,96x4,192x2``, 2 threads, bf16, RGB, MONAI 1.6.1, on
the shared 2-core machine under heavy load from other jobs: absolute times are several
times the idle ones and pairs taken a minute apart differ by up to 4x), ms per 1000
output pixels::

    output tile x batch   ours (input)        MONAI BasicUNet (same padding)
    192 x 2               40.0, 61.1 (284)    159.6, 62.2
    96 x 4                188.7 (188)         89.0

At the 192-px tile (the default) a step of ours costs about the same per output pixel as
BasicUNet's (the later, steadier pair: 61 against 62 ms) although our input is 2.2x the
output: BasicUNet goes one level deeper (features to 256) and normalises every
convolution (instance norm), which costs about what our halo does. At 96 px our output is
28% of the input and a step costs about twice BasicUNet's per output pixel: what the valid
convolutions cost, and why training uses 192-px tiles. Rerun on an idle machine for
figures to quote.
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


def time_step(net: torch.nn.Module, tile: int, batch: int, steps: int, amp: bool, augment: AugmentConfig,
              inp: int | None = None, in_channels: int | None = None) -> dict[str, float]:
    """Median seconds of a whole step and of its parts (augment, forward + loss, backward + AdamW).
    ``inp``: the input tile (default: what our U-Net needs for a ``tile`` output)."""
    inp = inp if inp is not None else net.config.input_size_for_output(tile)
    channels = in_channels if in_channels is not None else net.config.in_channels
    src = augment.source_size(inp)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, channels, src, src)
    t = torch.randint(0, 3, (batch, src, src), dtype=torch.int16)
    w = torch.ones(batch, src, src)
    m = torch.ones(batch, src, src, dtype=torch.bool)
    times: dict[str, list[float]] = {"step": [], "augment": [], "forward": [], "backward": []}
    for k in range(steps + 1):
        t0 = time.perf_counter()
        b = augment_batch(x, t, w, m, out_size=inp, config=augment, generator=g)
        t1 = time.perf_counter()
        with autocast(torch.device("cpu"), amp):
            logits = net(b.image.contiguous(memory_format=torch.channels_last))
        loss = weighted_cross_entropy(logits, b.targets.long(), b.weights, b.mask)
        t2 = time.perf_counter()
        opt.zero_grad()
        loss.backward()
        opt.step()
        t3 = time.perf_counter()
        if k:  # the first step warms up
            for name, v in (("step", t3 - t0), ("augment", t1 - t0), ("forward", t2 - t1), ("backward", t3 - t2)):
                times[name].append(v)
    return {name: float(np.median(v)) for name, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--configs", default="96x4,192x2,96x4,192x2", help="TILExBATCH,... (repeats interleave)")
    p.add_argument("--no-monai", action="store_true", help="skip MONAI's BasicUNet (benchmark-only dependency)")
    args = p.parse_args(argv)
    amp = cpu_supports_bf16()
    net = UNet(args.channels, 3, depth=3, base_width=16, dropout=0.1).to(memory_format=torch.channels_last).train()
    print(f"threads {torch.get_num_threads()}, bf16 {amp}, depth 3, width 16, halo {net.halo} px")
    print("| network | output tile | input | batch | output share of input | s / step | augment / forward / backward "
          "| ms / 1000 output px |")
    print("|---|---|---|---|---|---|---|---|")
    monai = None if args.no_monai else _monai_basic_unet(args.channels)
    if monai is None and not args.no_monai:
        print("(MONAI is not installed: pip install monai to compare with its BasicUNet)")
    for spec in args.configs.split(","):
        tile, batch = (int(v) for v in spec.split("x"))
        inp = net.config.input_size_for_output(tile)
        out = net.config.output_size(inp)
        rows = [("ours", net, inp, out)]
        if monai is not None:
            rows.append(("MONAI BasicUNet", monai, tile, tile))  # same padding: the output is the input
        for name, model, size, out_size in rows:
            t = time_step(model, out_size, batch, args.steps, amp, AugmentConfig(), inp=size, in_channels=args.channels)
            s = t["step"]
            parts = " / ".join(f"{t[k] / s:.0%}" for k in ("augment", "forward", "backward"))
            print(f"| {name} | {out_size} | {size} | {batch} | {out_size * out_size / size / size:.0%} | {s:.3f} | {parts} | "
                  f"{1000 * s / (batch * out_size * out_size) * 1000:.2f} |", flush=True)
    return 0


def _monai_basic_unet(channels: int) -> torch.nn.Module | None:
    """MONAI's plain BasicUNet at our width (16 features at the top, doubling down), 3
    classes; None when MONAI is not installed."""
    try:
        from monai.networks.nets import BasicUNet
    except ImportError:
        return None
    net = BasicUNet(spatial_dims=2, in_channels=channels, out_channels=3, features=(16, 32, 64, 128, 256, 16))
    return net.to(memory_format=torch.channels_last).train()


if __name__ == "__main__":
    raise SystemExit(main())
