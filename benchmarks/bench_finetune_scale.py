"""Fine-tuning on cells of another size than the model's: zoomed to the model vs native.

    python benchmarks/bench_finetune_scale.py [--zoom 2.0] [--seconds 90]

The real DSB 2018 crop (``benchmarks/real_data.py``) is zoomed (default 2x: nuclei about
47 px, the bundled model knows 20 px). The bundled model is fine-tuned for the same time
on the top half, once with ``zoom_to_model=True`` (the default: the training data is
zoomed to the model's cell size) and once with ``zoom_to_model=False`` (trained at the
data's own scale); both are scored on the bottom half with ``diameter="auto"``, next to
the model before fine-tuning.
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


def main() -> None:
    from skimage.transform import rescale

    from benchmarks.real_data import load_real_datasets

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoom", type=float, default=2.0)
    ap.add_argument("--seconds", type=float, default=90.0)
    args = ap.parse_args()
    _, image, gt = next(iter(load_real_datasets()))
    z = args.zoom
    im = rescale(image.astype(np.float32), z, order=1, preserve_range=True, anti_aliasing=z < 1)
    g = rescale(gt, z, order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
    h = im.shape[0] // 2
    train_i, train_l, test_i, test_l = im[:h], g[:h], im[h:], g[h:]

    def score(model):
        return nu.average_precision(test_l, nu.segment(test_i, model, diameter="auto"), thresholds=(0.5,))[0.5]

    print(f"real crop zoomed {z:g}x: cells {label_diameter(train_l):.0f} px; the bundled model knows "
          f"{nu.load_model().meta['diameter']:.0f} px")
    print(f"before fine-tuning: AP@0.5 {score(nu.load_model()):.3f}")
    for zoom_to_model in (True, False):
        t = time.perf_counter()
        tuned = nu.fine_tune([train_i], [train_l], model=nu.load_model(), max_time=args.seconds,
                             iterations=10**6, device="cpu", val_fraction=0.0, zoom_to_model=zoom_to_model)
        took = time.perf_counter() - t
        print(f"zoom_to_model={zoom_to_model}: {took:.0f} s, model diameter {tuned.meta['diameter']:.0f} px, "
              f"AP@0.5 {score(tuned):.3f}")


if __name__ == "__main__":
    main()
