"""Tiled inference throughput and memory against the targets, measured in one run.

    python benchmarks/bench_tiling.py            # speed, precision, 16k zarr memory
    python benchmarks/bench_tiling.py --sweep    # also: throughput per tile size
    python benchmarks/bench_tiling.py --quick    # smaller images, for a smoke test

What is compared, on a 2048x2048 image, with a U-Net of the bundled model's size
(depth 4, base width 16):

* ours: ``napari_unet.predict`` with DEFAULT settings (tile from free memory, bfloat16
  autocast where the CPU supports it, channels-last);
* one whole-image forward pass of the same network over the mirror-padded image, in
  float32 (plain PyTorch), and with the same levers as ours (bfloat16 + channels-last);
* MONAI ``sliding_window_inference`` (roi 512, overlap 0.25, gaussian blending) with
  ``monai.networks.nets.BasicUNet`` of the same widths and depth (padded convolutions,
  BatchNorm), in float32 as MONAI runs by default; also under the same bfloat16 autocast
  for reference.

Every method is run ``--repeats`` times, interleaved, and the fastest run counts (the
machine is shared; the minimum is the least disturbed run). Ratios are from this one run.

Precision: bfloat16 vs float32 average precision on a synthetic image, with a small
network fine-tuned for a minute on another synthetic image (or the bundled model).

Memory: peak resident memory (``VmHWM``, else ``ru_maxrss``) of a child process that runs a zarr → zarr
prediction of a 16384x16384 image with a small network (depth 3, width 8).

MONAI is a benchmark-only extra (``pip install monai``), never a runtime dependency.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import torch

import napari_unet as nu
from napari_unet.device import autocast, cpu_supports_bf16
from napari_unet.segmentation import segment
from napari_unet.tiling import image_normalization, parse_axes, predict


def _net(depth: int, width: int, seed: int = 0) -> nu.UNet:
    torch.manual_seed(seed)
    model = nu.UNet(in_channels=1, num_classes=3, depth=depth, base_width=width)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def whole_pass(image: np.ndarray, model: nu.UNet, amp: bool, channels_last: bool) -> np.ndarray:
    """One forward pass over the whole mirror-padded image (normalised as predict does)."""
    cfg = model.config
    lo, hi = image_normalization(image, parse_axes(image.shape), model.meta["normalization"])
    H, W = image.shape
    iy, ix = cfg.input_size_for_output(H), cfg.input_size_for_output(W)
    padded = np.pad(image, ((cfg.halo, iy - H - cfg.halo), (cfg.halo, ix - W - cfg.halo)), mode="reflect")
    x = torch.from_numpy(((padded - lo[0]) / (hi[0] - lo[0])).astype(np.float32))[None, None]
    net = model
    if channels_last:
        net = nu.model.clone_model(model).eval().to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(torch.device("cpu"), amp):
        return torch.softmax(net(x).float(), 1)[0, :, :H, :W].numpy()


def monai_pass(image: np.ndarray, net: torch.nn.Module, amp: bool) -> np.ndarray:
    from monai.inferers import sliding_window_inference

    lo, hi = np.percentile(image, (1.0, 99.8))
    x = torch.from_numpy(((image - lo) / (hi - lo)).astype(np.float32))[None, None]
    with torch.inference_mode(), autocast(torch.device("cpu"), amp):
        y = sliding_window_inference(x, roi_size=(512, 512), sw_batch_size=1, predictor=net, overlap=0.25,
                                     mode="gaussian")
        return torch.softmax(y.float(), 1)[0].numpy()


def monai_net(depth: int, width: int) -> torch.nn.Module:
    from monai.networks.nets import BasicUNet

    if depth != 4:
        raise SystemExit("MONAI's BasicUNet has depth 4; use --depth 4")
    feats = tuple(width * 2**i for i in range(depth + 1)) + (width,)
    torch.manual_seed(0)
    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=3, features=feats, norm="batch").eval()


def timed(fn, *args, **kwargs) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def speed(size: int, depth: int, width: int, repeats: int, sweep: bool) -> None:
    image, _ = nu.make_sample((size, size), 1, kind="nuclei")
    image = image.astype(np.float32)
    model = _net(depth, width)
    mpix = size * size / 1e6
    methods = {
        "ours (defaults)": lambda: predict(image, model),
        "whole-image pass, float32": lambda: whole_pass(image, model, False, False),
        "whole-image pass, bf16+channels-last": lambda: whole_pass(image, model, True, True),
    }
    try:
        mnet = monai_net(depth, width)
        methods["MONAI sliding window (roi 512, 0.25, gaussian), float32"] = lambda: monai_pass(image, mnet, False)
        if cpu_supports_bf16():
            methods["MONAI sliding window, bf16 autocast"] = lambda: monai_pass(image, mnet, True)
    except ImportError:
        print("MONAI is not installed (pip install monai): its comparison is skipped")
    if sweep:
        for t in (256, 384, 512, 768, 1024, 2048):
            methods[f"ours, tile {t}"] = lambda t=t: predict(image, model, tile_size=t)
    # warm-up: oneDNN builds kernels per shape on first use
    predict(image[:600, :600], model)
    gen = nu.tiling.predict_iter(image, model)
    info = next(gen).info
    gen.close()
    best = {k: float("inf") for k in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            best[name] = min(best[name], timed(fn))
    print(f"\n{size}x{size} image, U-Net depth {depth}, width {width}, {torch.get_num_threads()} threads; "
          f"ours chose: {info['device']}, tile {info['tile_size']}, batch {info['batch_size']}, "
          f"{info['precision']}, channels_last={info['channels_last']}")
    ours = best["ours (defaults)"]
    for name, t in best.items():
        print(f"  {name:<58s} {t:7.2f} s  {mpix / t:6.2f} MPix/s   ours is {t / ours:5.2f}x faster")


def precision_ap(quick: bool, model_path: str | None) -> None:
    """AP of bfloat16 vs float32 inference with a trained network.

    The network: ``--model FILE``, else the bundled model, else a small network fine-tuned
    briefly here (too briefly to segment well: then the agreement of the bf16 and f32
    labels is the figure to read).
    """
    from napari_unet.metrics import average_precision

    try:
        model = nu.load_model(model_path)
        source = model_path or "bundled model"
    except ValueError:
        from napari_unet.training import fine_tune

        img, lab = nu.make_sample((256, 256), 3, kind="nuclei", difficulty="easy")
        t = 20 if quick else 90
        model = fine_tune([img], [lab], nu.UNet(1, 3, depth=3, base_width=16), max_time=t, device="cpu")
        source = f"depth-3 width-16 U-Net fine-tuned {t} s on a synthetic 256x256 image"
    test_img, test_lab = nu.make_sample((512, 512), 7, kind="nuclei", difficulty="easy")
    l32 = segment(test_img, model, amp=False)
    lbf = segment(test_img, model, amp=True)
    ths = (0.5, 0.75, 0.9)
    a32 = average_precision(test_lab, l32, ths)
    abf = average_precision(test_lab, lbf, ths)
    agree = average_precision(l32, lbf, ths)
    print(f"\nprecision ({source}; synthetic 512x512 test image, {int(test_lab.max())} cells):")
    for t in ths:
        print(f"  AP@{t:.2f}: float32 {a32[t]:.3f}  bfloat16 {abf[t]:.3f}  (diff {abf[t] - a32[t]:+.3f}; "
              f"bf16 vs f32 labels {agree[t]:.3f})")


CHILD = textwrap.dedent(
    """
    import resource, sys, time, numpy as np, torch, zarr
    import napari_unet as nu
    from napari_unet.tiling import predict
    src, dst, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.manual_seed(0)
    model = nu.UNet(1, 3, depth=3, base_width=8).eval()
    zin = zarr.open_array(src, mode="r")
    zout = zarr.open_array(dst, mode="w", shape=(3, size, size), chunks=(3, 1024, 1024), dtype="f2")
    t0 = time.perf_counter()
    gen = nu.tiling.predict_iter(zin, model, out=zout)
    info = None
    while True:
        try:
            info = next(gen).info
        except StopIteration:
            break
    dt = time.perf_counter() - t0
    # VmHWM is this process's own peak; on Linux ru_maxrss also counts the parent's
    # resident memory at fork time (it survives exec), which inflates it
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        with open("/proc/self/status") as fh:
            rss = next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        pass
    print(f"{dt:.1f} {rss:.0f} {info['tile_size'][0]} {info['precision']}")
    """
)


def memory(size: int) -> None:
    import zarr

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.zarr"), os.path.join(tmp, "out.zarr")
        zin = zarr.open_array(src, mode="w", shape=(size, size), chunks=(1024, 1024), dtype="u2")
        tile, _ = nu.make_sample((1024, 1024), 5, kind="nuclei")
        for y in range(0, size, 1024):
            for x in range(0, size, 1024):
                zin[y : y + 1024, x : x + 1024] = np.roll(tile, (y // 7, x // 5), (0, 1))
        r = subprocess.run([sys.executable, "-c", CHILD, src, dst, str(size)], capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(r.stderr)
        dt, rss, tile, prec = r.stdout.split()
        print(f"\nzarr -> zarr {size}x{size} (depth 3, width 8, tile {tile}, {prec}): {float(dt):.0f} s, "
              f"{size * size / 1e6 / float(dt):.1f} MPix/s, peak RSS {float(rss):.0f} MB "
              f"(the image is {size * size * 2 / 2**20:.0f} MB, the float16 output {3 * size * size * 2 / 2**20:.0f} MB)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--big", type=int, default=16384, help="edge of the zarr -> zarr memory test")
    p.add_argument("--sweep", action="store_true", help="also time tile sizes 256..2048")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test of this script")
    p.add_argument("--model", help="trained model file for the precision test (default: bundled)")
    p.add_argument("--skip", nargs="*", default=[], choices=("speed", "precision", "memory"))
    a = p.parse_args()
    if a.quick:
        a.size, a.big, a.repeats = 512, 2048, 1
    # memory first: this process is still small when the child is forked
    if "memory" not in a.skip:
        memory(a.big)
    if "speed" not in a.skip:
        speed(a.size, a.depth, a.width, a.repeats, a.sweep)
    if "precision" not in a.skip:
        precision_ap(a.quick, a.model)


if __name__ == "__main__":
    main()
