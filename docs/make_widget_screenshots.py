"""Render the README's screenshots: each widget opened from the Plugins menu, at work, in a
napari window of a real screen's size (1280x800, the smallest laptop, and 1920x1080).

Usage (needs a display as large as the largest size; headless)::

    xvfb-run -a -s "-screen 0 1920x1080x24" python docs/make_widget_screenshots.py

Writes ``docs/images/<widget>_<W>x<H>.png`` with ``viewer.screenshot(canvas_only=False)``.
All four widgets are open in every picture (they share the right side as tabs), the one
shown in front. The states: Segment after segmenting the sample with the bundled model;
Weight map of the sample's ground truth; Train while training a small fresh U-Net (loss plot
filling); Annotate after *Predict to annotate* in the field of view. Written as 256-colour
PNGs (:func:`save_small`), a few hundred KB each.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZES = [(1280, 800), (1920, 1080)]
WIDGETS = ["segment", "weight_map", "train", "annotate"]


def pump(seconds: float) -> None:
    from qtpy.QtWidgets import QApplication

    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        QApplication.processEvents()
        time.sleep(0.02)


def wait(cond, timeout: float = 600.0) -> None:
    t0 = time.perf_counter()
    while not cond():
        pump(0.05)
        if time.perf_counter() - t0 > timeout:
            raise SystemExit("timed out")


def shoot(kind: str, size: tuple[int, int], out: Path) -> None:
    import napari

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(*size)  # noqa: SLF001 - the screen size being shown
    viewer.open_sample("napari-unet", "nuclei")
    image, truth = viewer.layers["nuclei (synthetic)"], viewer.layers["nuclei ground truth"]
    names = {"segment": "Segment", "weight_map": "Weight map", "train": "Train", "annotate": "Annotate"}
    opened = {k: viewer.window.add_plugin_dock_widget("napari-unet", n) for k, n in names.items()}  # Plugins ▸ U-Net
    dock, w = opened[kind]
    pump(0.3)
    dock.raise_()  # its tab in front (the person clicks it)
    pump(0.3)
    if kind == "segment":
        truth.visible = False
        w.image.value = image
        w.run_button.native.click()
        wait(lambda: w.runner.last_outcome is not None and not w.runner.running)
        viewer.layers[-1].contour = 1
    elif kind == "weight_map":
        w.labels_layer.value = truth
        w.compute()
        wait(lambda: w.shown is not None and not w.running)
        viewer.layers.move(viewer.layers.index(truth), len(viewer.layers))
        truth.contour = 1
        viewer.layers.selection.active = viewer.layers[f"{truth.name} weights"]
    elif kind == "train":
        truth.visible = False
        w.image.value, w.labels_layer.value = image, truth
        w.start.value = w.SCRATCH
        w.depth.value, w.base_width.value = 2, 8
        w.iterations.value = 400
        w.tile_size.value, w.batch_size.value = 64, 2
        w.val_every.value = 10
        w.run_button.native.click()
        wait(lambda: len(w.plot.train_x) >= 40 and len(w.plot.val_x) >= 3)
        pump(0.6)  # the throttled plot redraws
    elif kind == "annotate":
        truth.visible = False
        w.image.value = image
        w.predict()
        wait(lambda: w.runner.last_outcome is not None and not w.runner.running)
        viewer.layers.selection.active = w.annotations.value
    viewer.reset_view()
    pump(0.5)
    out.parent.mkdir(parents=True, exist_ok=True)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    save_small(shot, out)
    print(f"wrote {out} {shot.shape[1]}x{shot.shape[0]} ({out.stat().st_size // 1024} KB): {w.status.value}")
    if kind == "train":
        w.cancel_button.native.click()
        wait(lambda: not w.runner.running)
    viewer.close()


def save_small(rgba, out: Path) -> None:
    """Write a screenshot as a 256-colour PNG: a third of the size, the gray levels of the
    image and the colours of the plot kept ("maximum coverage"; median cut grays the plot),
    refined by k-means so that the theme's grays stay exact."""
    from PIL import Image

    rgb = Image.fromarray(rgba[..., :3])
    rgb.quantize(256, method=Image.Quantize.MAXCOVERAGE, kmeans=2).save(out, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=WIDGETS, default=WIDGETS)
    parser.add_argument("--out", type=Path, default=HERE / "images")
    args = parser.parse_args()
    for kind in args.only:
        for size in SIZES:
            shoot(kind, size, args.out / f"{kind}_{size[0]}x{size[1]}.png")


if __name__ == "__main__":
    main()
