"""Choose the bundled model's diameter, and measure what ``diameter="auto"`` gains.

    python benchmarks/calibrate_diameter.py [--model FILE] [--diameters 14 17 20 24]

The model segments cells best at some size; ``model.meta["diameter"]`` records it, and
``segment(..., diameter="auto")`` zooms each image so that its cells come out that size.
For a model trained on one kind of data that size is the median diameter of its training
cells (``train_iter`` records it). The bundled model was trained on a wide range of sizes,
so its value is chosen here: for each candidate, AP@0.5 with ``diameter="auto"`` on

* the real DSB 2018 crop (``benchmarks/real_data.py``) zoomed 0.5x to 3x,
* synthetic nuclei of radius 3 to 30 px and whole cells of radius 12 and 24 px,

and, for comparison, AP@0.5 with the image segmented as it is (no diameter).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import napari_unet as nu  # noqa: E402
from napari_unet.diameter import label_diameter  # noqa: E402
from napari_unet.synthetic import make_sample  # noqa: E402


def cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    from skimage.transform import rescale

    from benchmarks.real_data import load_real_datasets

    out = []
    for name, image, gt in load_real_datasets():
        for z in (0.5, 0.75, 1.0, 1.5, 2.0, 3.0):
            im = rescale(image.astype(np.float32), z, order=1, preserve_range=True, anti_aliasing=z < 1)
            g = rescale(gt, z, order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
            out.append((f"{name} x{z}", im, g))
    for r in (3.0, 5.0, 9.0, 18.0, 30.0):
        img, lab = make_sample((int(max(384, r * 40)),) * 2, seed=11, kind="nuclei", difficulty="normal", radius=r)
        out.append((f"synthetic nuclei r={r:g}", img, lab))
    for r in (12.0, 24.0):
        img, lab = make_sample((int(max(384, r * 30)),) * 2, seed=12, kind="cells", difficulty="normal", radius=r)
        out.append((f"synthetic cells r={r:g}", img, lab))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="model file (default: the bundled model)")
    ap.add_argument("--diameters", type=float, nargs="+", default=[14.0, 17.0, 20.0, 24.0])
    args = ap.parse_args()
    model = nu.load_model(args.model)
    data = cases()
    columns = {"as is": [nu.average_precision(g, nu.segment(im, model), thresholds=(0.5,))[0.5] for _, im, g in data]}
    seconds = {}
    for md in args.diameters:
        model.meta["diameter"] = md
        t = time.perf_counter()
        columns[f"auto, {md:g}"] = [
            nu.average_precision(g, nu.segment(im, model, diameter="auto"), thresholds=(0.5,))[0.5] for _, im, g in data
        ]
        seconds[md] = time.perf_counter() - t
    width = max(len(n) for n, _, _ in data)
    print("AP@0.5; columns: segmented as is, then diameter='auto' with model diameter = ...")
    print(f"{'image':<{width}} {'cells':>6} " + " ".join(f"{c:>10}" for c in columns))
    for k, (name, _, g) in enumerate(data):
        print(f"{name:<{width}} {label_diameter(g):6.1f} " + " ".join(f"{v[k]:10.3f}" for v in columns.values()))
    print(f"{'mean':<{width}} {'':>6} " + " ".join(f"{np.mean(v):10.3f}" for v in columns.values()))
    for md, s in seconds.items():
        print(f"model diameter {md:g}: {s:.0f} s for {len(data)} images with diameter='auto'")


if __name__ == "__main__":
    main()
