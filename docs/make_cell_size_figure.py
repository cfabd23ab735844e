"""Render docs/images/cell_size.png: the bundled model on nuclei 3x its size, as is and with
``diameter="auto"``.

Usage (needs matplotlib)::

    python docs/make_cell_size_figure.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def overlay(ax, image, labels, title):
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    lo, hi = np.percentile(image, (1, 99.8))
    ax.imshow(np.clip((image - lo) / (hi - lo), 0, 1) * 0.8, cmap="gray", vmin=0, vmax=1)
    edges = ndi.binary_dilation(find_boundaries(labels, mode="inner"), iterations=2)
    colours = ndi.grey_dilation(labels, size=5) % 10
    ax.imshow(np.ma.masked_where(~edges, colours), cmap="Set1", interpolation="nearest", vmin=0, vmax=9)
    ax.set_title(title, fontsize=10)
    ax.axis("off")


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import napari_unet as nu
    from napari_unet.diameter import label_diameter, measure_diameter
    from napari_unet.synthetic import make_sample

    image, truth = make_sample((720, 720), seed=12, kind="nuclei", difficulty="normal", radius=30.0)
    model = nu.load_model()
    as_is = nu.segment(image, model)
    auto = nu.segment(image, model, diameter="auto")
    measured = measure_diameter(image, model)

    def ap(lab):
        return nu.average_precision(truth, lab, thresholds=(0.5,))[0.5]

    fig, axes = plt.subplots(1, 2, figsize=(10, 5.2), dpi=100)
    overlay(axes[0], image, as_is, f"as it is:\n{len(np.unique(as_is)) - 1} objects, AP@0.5 {ap(as_is):.2f}")
    overlay(axes[1], image, auto, f"diameter='auto' (measured {measured:.0f} px, true {label_diameter(truth):.0f} px):\n"
            f"{len(np.unique(auto)) - 1} objects, AP@0.5 {ap(auto):.2f}")
    fig.suptitle(f"bundled model (knows {model.meta['diameter']:.0f} px cells) on synthetic nuclei "
                 f"of ~{label_diameter(truth):.0f} px, {len(np.unique(truth)) - 1} true cells", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    out = HERE / "images" / "cell_size.png"
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
