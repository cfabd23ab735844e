"""Augmentation speed, measured in one run.

    python benchmarks/bench_augment.py [--repeat 7] [--steps 20]

1. A 512x512 image / labels / weights triple, augmented with elastic deformation (3x3
   grid, sigma 10 px) + rotation (any angle) + scaling + shift + flips + 90-degree turns +
   gray values (gamma, contrast, brightness, noise):
   * ours: ``napari_unet.augment.augment_batch`` (one composed sampling grid, one
     ``grid_sample`` per interpolation kind), image bilinear (default) and bicubic;
   * reference: the usual scipy implementation of the same deformation -- coarse
     displacements upsampled with ``ndimage.zoom(order=3)``, coordinates built with numpy,
     ``ndimage.map_coordinates`` with order=3 for the image, 0 for labels, 1 for weights,
     numpy flips and gray-value changes.
   Timed alternately (best of ``--repeat``), so both see the same machine load.
2. A training step (sampling + augmentation + forward/backward/AdamW step) of the
   bundled architecture (depth 3, width 16, batch 4, 128-px output tiles) with
   augmentation on vs off, through the real ``train_iter`` loop, alternately.

Targets: ours >= 7x faster than the scipy reference on CPU; a step with
augmentation costs <= 1.15x one without.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_unet.augment import AugmentConfig, augment_batch


def scipy_augment(image, labels, weights, rng, sigma=10.0, grid=3, max_rot=180.0, max_shift=8.0, scale=(0.85, 1.15)):
    """The common numpy/scipy formulation of the same augmentation."""
    h, w = image.shape
    # elastic: coarse Gaussian displacements, bicubic upsampling to a dense field
    coarse = rng.normal(0, sigma, (2, grid, grid))
    dy = ndi.zoom(coarse[0], (h / grid, w / grid), order=3, mode="nearest")[:h, :w]
    dx = ndi.zoom(coarse[1], (h / grid, w / grid), order=3, mode="nearest")[:h, :w]
    yy, xx = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")
    yy, xx = yy + dy, xx + dx
    a = math.radians(rng.uniform(-max_rot, max_rot)) + rng.integers(4) * math.pi / 2
    s = math.exp(rng.uniform(math.log(scale[0]), math.log(scale[1])))
    c, sn = math.cos(a) * s, math.sin(a) * s
    ty, tx = rng.uniform(-max_shift, max_shift, 2)
    sy = c * yy + sn * xx + (h - 1) / 2 + ty
    sx = -sn * yy + c * xx + (w - 1) / 2 + tx
    coords = np.stack([sy, sx])
    img = ndi.map_coordinates(image, coords, order=3, mode="mirror")
    lab = ndi.map_coordinates(labels, coords, order=0, mode="mirror")
    wts = ndi.map_coordinates(weights, coords, order=1, mode="mirror")
    if rng.random() < 0.5:
        img, lab, wts = img[::-1], lab[::-1], wts[::-1]
    if rng.random() < 0.5:
        img, lab, wts = img[:, ::-1], lab[:, ::-1], wts[:, ::-1]
    lo, hi = img.min(), img.max()
    img = lo + (hi - lo) * np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1) ** rng.uniform(0.7, 1.4)
    m = img.mean()
    img = (img - m) * rng.uniform(0.75, 1.33) + m + rng.uniform(-0.1, 0.1)
    img = img + rng.normal(0, rng.uniform(0, 0.04), img.shape)
    return np.ascontiguousarray(img), np.ascontiguousarray(lab), np.ascontiguousarray(wts)


def triple(size=512, seed=0):
    rng = np.random.default_rng(seed)
    image = ndi.gaussian_filter(rng.random((size, size)), 3).astype(np.float32)
    labels = ndi.label(image > np.median(image))[0].astype(np.int32)
    weights = (1 + 9 * rng.random((size, size))).astype(np.float32)
    return image, labels, weights


def bench_pair(repeat: int) -> None:
    image, labels, weights = triple()
    rng = np.random.default_rng(1)
    ti = torch.from_numpy(image)[None, None]
    tl = torch.from_numpy(labels.astype(np.int64))[None]
    tw = torch.from_numpy(weights)[None]
    tm = torch.ones(1, 512, 512, dtype=torch.bool)
    gen = torch.Generator().manual_seed(0)
    cfgs = {"ours bilinear": AugmentConfig(), "ours bicubic": AugmentConfig(image_interpolation="bicubic")}
    times: dict[str, list[float]] = {k: [] for k in ["scipy map_coordinates", *cfgs]}
    cpu: dict[str, list[float]] = {k: [] for k in times}
    for _ in range(2):  # warm-up
        scipy_augment(image, labels, weights, rng)
        for cfg in cfgs.values():
            augment_batch(ti, tl, tw, tm, out_size=512, config=cfg, generator=gen)
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        scipy_augment(image, labels, weights, rng)
        times["scipy map_coordinates"].append(time.perf_counter() - t)
        cpu["scipy map_coordinates"].append(time.process_time() - c)
        for name, cfg in cfgs.items():
            t, c = time.perf_counter(), time.process_time()
            augment_batch(ti, tl, tw, tm, out_size=512, config=cfg, generator=gen)
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    ref = min(times["scipy map_coordinates"])
    ref_cpu = min(cpu["scipy map_coordinates"])
    print(f"512x512 image/labels/weights, elastic+rotation+scale+shift+flips+gray values, best of {repeat}")
    print("  (wall time, and CPU time of this process: the fair figure on a loaded, shared machine)")
    for name, ts in times.items():
        best, best_cpu = min(ts), min(cpu[name])
        print(f"  {name:24s} wall {best * 1e3:7.1f} ms ({ref / best:5.1f}x)   "
              f"cpu {best_cpu * 1e3:7.1f} ms ({ref_cpu / best_cpu:5.1f}x)")


def bench_steps(steps: int, repeat: int) -> None:
    from napari_unet.model import UNet
    from napari_unet.synthetic import make_sample
    from napari_unet.training import train_iter

    data = [make_sample((384, 384), seed=s) for s in range(4)]
    images, labels = [d[0] for d in data], [d[1] for d in data]

    def step_time(cfg: AugmentConfig) -> float:
        torch.manual_seed(0)
        net = UNet(1, 3, depth=3, base_width=16, dropout=0.1)
        gen = train_iter(images, labels, net, regions=["all"] * 4, iterations=steps + 3, batch_size=4,
                         tile_size=128, augment=cfg, val_fraction=0.0, device="cpu")
        stamps = []
        for rec in gen:
            if rec.info.get("phase") == "train":
                stamps.append(time.perf_counter())
        d = np.diff(stamps[2:])  # skip the first steps (warm-up)
        return float(np.median(d))

    on, off = [], []
    for _ in range(repeat):
        off.append(step_time(AugmentConfig.off()))
        on.append(step_time(AugmentConfig()))
    a, b = min(on), min(off)
    print(f"training step (depth 3, width 16, batch 4, 128-px output tiles, {steps} steps, best of {repeat} medians):")
    print(f"  augmentation off {b * 1e3:7.1f} ms   on {a * 1e3:7.1f} ms   ratio {a / b:.3f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--skip-steps", action="store_true")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    bench_pair(args.repeat)
    if not args.skip_steps:
        bench_steps(args.steps, max(1, args.repeat // 2))


if __name__ == "__main__":
    main()
