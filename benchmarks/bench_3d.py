"""3D stacks: accuracy, time per voxel and peak memory of ``segment(stack, axes="ZYX")``.

    python benchmarks/bench_3d.py            # all three parts
    python benchmarks/bench_3d.py --quick    # smaller stacks, for a smoke test
    python benchmarks/bench_3d.py --part ap  # one part: ap, time or memory

* ap: 3D AP@0.5 of the bundled model on synthetic confocal stacks
  (``napari_unet.synthetic_3d.make_stack``, axial blur 3x) at anisotropies 1, 2, 4 and
  nucleus radii 7, 10, 14 px: plane by plane (the behaviour before 3D: ids per plane),
  the default 3D path (Z step estimated), and with the Z step given.
* time: seconds per megavoxel of the 3D path (XY + XZ + YZ views, Z step 3) and of XY
  only, against plane-by-plane 2D segmentation (seconds per megapixel) of the same stack,
  in one run (the machine is shared: ratios, not absolute times).
* memory: peak resident memory (VmHWM) of a child process segmenting a lazy zarr stack
  into a zarr store (a small random network: memory is what is measured), against the
  same child only opening the stack, and the stack's own size.

There is no real 3D data in ../shared/data; the part that would use it says so.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def part_ap(quick: bool) -> None:
    import napari_unet as nu
    from napari_unet.synthetic_3d import make_stack

    net = nu.load_model()
    ap = lambda t, p: nu.average_precision(t, p, 0.5)[0.5]  # noqa: E731
    side = 96 if quick else 128
    print(f"\n3D AP@0.5, bundled model, synthetic stacks {int(72)}/a x {side} x {side} px (axial blur 3x)")
    print(f"{'aniso':>5} {'radius':>6} {'cells':>5} | {'per plane':>9} {'3D est.':>8} {'(Z step)':>8} {'3D given':>8}")
    for a in (1.0, 2.0, 4.0):
        for r in ((10.0,) if quick else (7.0, 10.0, 14.0)):
            img, truth = make_stack((int(round(72 / a)), side, side), seed=int(a * 10 + r), anisotropy=a, radius=r)
            flat = nu.segment(img, net, axes="ZYX", plane_by_plane=True)
            info: dict = {}
            from napari_unet._progress import drain, relay
            from napari_unet.segmentation import segment_iter

            est = drain(relay(segment_iter(img, net, axes="ZYX"), lambda rec: info.update(rec.info) or rec))
            given = nu.segment(img, net, axes="ZYX", voxel_size=(a, 1, 1))
            print(f"{a:>5.0f} {r:>6.0f} {int(truth.max()):>5} | {ap(truth, flat):>9.3f} {ap(truth, est):>8.3f} "
                  f"{info['anisotropy']:>8.2f} {ap(truth, given):>8.3f}", flush=True)
    print("real 3D data: none in ../shared/data (skipped)")


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def part_time(quick: bool) -> None:
    import napari_unet as nu
    from napari_unet.synthetic_3d import make_stack

    net = nu.load_model()
    shape = (12, 128, 128) if quick else (24, 256, 256)
    img, _ = make_stack(shape, seed=1, anisotropy=3.0)
    mvox = img.size / 1e6
    runs = {
        "2D plane by plane": lambda: nu.segment(img, net, axes="ZYX", plane_by_plane=True),
        "3D, XY view only": lambda: nu.segment(img, net, axes="ZYX", voxel_size=(3, 1, 1), views="xy"),
        "3D, XY + XZ + YZ": lambda: nu.segment(img, net, axes="ZYX", voxel_size=(3, 1, 1)),
        "3D default (Z step estimated)": lambda: nu.segment(img, net, axes="ZYX"),
    }
    nu.segment(img[:2], net, axes="QYX")  # warm-up
    print(f"\ntime, bundled model, stack {shape} (Z step 3), {os.environ.get('OMP_NUM_THREADS', 'all')} threads, best of 2")
    base = None
    for name, fn in runs.items():
        s = _best(fn, 2)
        base = base or s
        print(f"{name:>30}: {s:6.2f} s = {s / mvox:6.2f} s per megavoxel ({s / base:4.1f}x the 2D time per pixel)",
              flush=True)


CHILD = textwrap.dedent("""
    import sys, resource
    sys.path.insert(0, {src!r})
    import numpy as np, torch, zarr
    torch.manual_seed(0)
    from napari_unet import UNet, segment
    src = zarr.open_array({path!r}, mode="r")
    if {run!r}:
        net = UNet(in_channels=1, num_classes=3, depth=3, base_width=8)
        net.meta["diameter"] = 20.0
        out = zarr.open_array({out!r}, mode="w", shape=src.shape, chunks=(8, 256, 256), dtype="int32")
        flat = {run!r} == "2D"
        segment(src, net, axes="ZYX", voxel_size=(2, 1, 1), out=out, device="cpu", plane_by_plane=flat,
                **({{}} if flat else dict(block_voxels=2**22)))
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            print(int(line.split()[1]) * 1024)
""")


def part_memory(quick: bool) -> None:
    zarr = __import__("zarr")
    shape = (16, 768, 768) if quick else (16, 1536, 1536)
    with tempfile.TemporaryDirectory() as tmp:
        path, out = os.path.join(tmp, "in.zarr"), os.path.join(tmp, "out.zarr")
        z = zarr.open_array(path, mode="w", shape=shape, chunks=(8, 256, 256), dtype="uint16")
        rng = np.random.default_rng(0)
        for i in range(0, shape[0], 8):
            z[i : i + 8] = rng.integers(100, 4000, (min(8, shape[0] - i), *shape[1:]), dtype=np.uint16)
        peaks = {}
        for run in ("", "2D", "3D"):
            code = CHILD.format(src=str(ROOT / "src"), path=path, out=out, run=run)
            t = time.perf_counter()
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
            if res.returncode:
                print(res.stderr[-2000:])
                return
            peaks[run] = (int(res.stdout.split()[-1]), time.perf_counter() - t)
    vox = int(np.prod(shape))
    base, flat, seg = peaks[""][0], peaks["2D"][0], peaks["3D"][0]
    print(f"\npeak memory, lazy zarr stack {shape} uint16 ({vox * 2 / 2**20:.0f} MiB; int32 labels "
          f"{vox * 4 / 2**20:.0f} MiB; float32 probabilities of the whole would be {vox * 12 / 2**20:.0f} MiB) -> zarr")
    print(f"  opening only: {base / 2**20:.0f} MiB; plane by plane (2D): {flat / 2**20:.0f} MiB "
          f"(+{(flat - base) / 2**20:.0f} MiB) in {peaks['2D'][1]:.0f} s; "
          f"3D (Z step 2, XY + XZ + YZ, blocks of 4 Mvoxel): {seg / 2**20:.0f} MiB (+{(seg - base) / 2**20:.0f} MiB) "
          f"in {peaks['3D'][1]:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--part", choices=("ap", "time", "memory"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    for name, fn in (("ap", part_ap), ("time", part_time), ("memory", part_memory)):
        if args.part in (None, name):
            fn(args.quick)


if __name__ == "__main__":
    main()
