"""Weight map (eq. 2): speed, exactness and memory, all measured in one run.

    python benchmarks/bench_weights.py [--repeat 3] [--skip-reference]

1. 1024x1024 label image with ~500 touching cells: ours vs the straightforward formula
   (one whole-image distance transform per cell, keeping the two smallest distances):
   speed ratio, max |difference|, peak memory (tracemalloc) of both.
2. 2048x2048 with ~2000 touching cells: ours vs ONE scipy
   ``distance_transform_edt`` of the whole background (the practical floor), timed
   alternately so both see the same machine load.
3. 64x256x256 with ~400 touching cells: ours vs one scipy EDT of the whole background.

Targets: >= 250x faster than the reference; no slower than one EDT; difference
<= 1e-3; memory proportional to pixels.
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc

import numpy as np
from scipy import ndimage as ndi

from napari_unet.synthetic import touching_cells
from napari_unet.weights import weight_map


def reference_weight_map(labels, w0=10.0, sigma=5.0):
    """One whole-image EDT per cell; keeps only the two smallest distances (memory ~ pixels)."""
    ids = [i for i in np.unique(labels) if i != 0]
    w = np.ones(labels.shape, np.float64)
    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    for i in ids:
        d = ndi.distance_transform_edt(labels != i)
        d2 = np.minimum(d2, np.maximum(d1, d))
        d1 = np.minimum(d1, d)
    bg = labels == 0
    w[bg] += w0 * np.exp(-((d1[bg] + d2[bg]) ** 2) / (2 * sigma**2))
    return w


def best_of(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def ours_and_one_edt(labels, repeat):
    """Best times of ``weight_map(labels)`` and of one scipy EDT of its background,
    alternated so that both see the same machine load."""
    bg = labels == 0
    ours, edt = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        weight_map(labels)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        ndi.distance_transform_edt(bg)
        edt.append(time.perf_counter() - t)
    return min(ours), min(edt)


def peak_mib(fn):
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-reference", action="store_true", help="skip the slow reference (~1 min)")
    args = ap.parse_args()
    print(f"CPUs: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")

    lab1 = touching_cells((1024, 1024), 500, 30, seed=0)
    n1 = len(np.unique(lab1)) - 1
    print(f"1024x1024: {n1} cells, {np.mean(lab1 > 0):.0%} cell pixels")
    weight_map(lab1[:64, :64])  # compile (or load) the kernels outside the timings
    t_ours1, w1 = best_of(lambda: weight_map(lab1), args.repeat)
    mem_ours1 = peak_mib(lambda: weight_map(lab1))
    rows = [("1024x1024 ours (s)", f"{t_ours1:.3f}")]
    if not args.skip_reference:
        t = time.perf_counter()
        ref = reference_weight_map(lab1)
        t_ref = time.perf_counter() - t
        small = touching_cells((512, 512), 125, 30, seed=0)
        mem_ref_small = peak_mib(lambda: reference_weight_map(small))
        diff = float(np.abs(w1 - ref).max())
        rows += [
            ("1024x1024 reference (s)", f"{t_ref:.1f}"),
            ("speed-up vs reference (target >= 250)", f"{t_ref / t_ours1:.0f}x"),
            ("max |ours - reference| (target <= 1e-3)", f"{diff:.2e}"),
            ("peak memory ours, 1024^2 (MiB)", f"{mem_ours1:.0f}"),
            ("peak memory reference, 512^2 (MiB; x4 at 1024^2)", f"{mem_ref_small:.0f}"),
            ("a stack of per-cell maps would need (MiB)", f"{n1 * lab1.size * 8 / 2**20:.0f}"),
        ]
    else:
        rows.append(("peak memory ours, 1024^2 (MiB)", f"{mem_ours1:.0f}"))

    lab2 = touching_cells((2048, 2048), 2000, 30, seed=1)
    n2 = len(np.unique(lab2)) - 1
    print(f"2048x2048: {n2} cells, {np.mean(lab2 > 0):.0%} cell pixels")
    t_ours2, t_edt = ours_and_one_edt(lab2, args.repeat)
    mem_ours2 = peak_mib(lambda: weight_map(lab2))
    rows += [
        ("2048x2048 ours (s)", f"{t_ours2:.3f}"),
        ("2048x2048 one scipy EDT (s)", f"{t_edt:.3f}"),
        ("ours / one EDT (target <= 1)", f"{t_ours2 / t_edt:.2f}"),
        ("peak memory ours, 2048^2 (MiB; x4 of 1024^2 = pixels)", f"{mem_ours2:.0f}"),
    ]

    lab3 = touching_cells((64, 256, 256), 400, 12, seed=2)
    print(f"64x256x256: {len(np.unique(lab3)) - 1} cells, {np.mean(lab3 > 0):.0%} cell pixels")
    t_ours3, t_edt3 = ours_and_one_edt(lab3, args.repeat)
    rows += [
        ("64x256x256 ours (s)", f"{t_ours3:.3f}"),
        ("64x256x256 one scipy EDT (s)", f"{t_edt3:.3f}"),
        ("3D ours / one EDT", f"{t_ours3 / t_edt3:.2f}"),
    ]
    width = max(len(r[0]) for r in rows)
    print()
    for name, value in rows:
        print(f"{name:<{width}}  {value:>10}")


if __name__ == "__main__":
    main()
