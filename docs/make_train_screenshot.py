"""Render docs/images/train_widget.png: the Train widget docked in a viewer, mid-training.

Usage (needs a display; on a headless machine run it under ``xvfb-run -a``)::

    python docs/make_train_screenshot.py [--iterations 60]

Opens the napari-unet sample (synthetic nuclei + ground truth), trains a small fresh
U-Net (depth 2, width 8) on it from the Train widget, waits until the loss plot holds
``--iterations`` steps and a few validations, takes the screenshot *while training runs*,
then cancels (which keeps the best model so far).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=60, help="steps shown in the plot")
    parser.add_argument("--out", type=Path, default=HERE / "images" / "train_widget.png")
    args = parser.parse_args()

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_unet._widgets.train import TrainWidget

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 1000)  # noqa: SLF001 - a fixed size for the docs
    viewer.open_sample("napari-unet", "nuclei")
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Train (napari-unet)", area="right")
    widget.image.value = viewer.layers["nuclei (synthetic)"]
    widget.labels_layer.value = viewer.layers["nuclei ground truth"]
    widget.add_pair()
    widget.start.value = widget.SCRATCH
    widget.depth.value, widget.base_width.value = 2, 8
    widget.iterations.value = 400
    widget.tile_size.value = 64
    widget.batch_size.value = 2
    widget.val_every.value = 10
    widget.device.value = "auto"
    widget.run_button.native.click()

    def pump(seconds: float) -> None:
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            QApplication.processEvents()
            time.sleep(0.02)

    t0 = time.perf_counter()
    while len(widget.plot.train_x) < args.iterations or len(widget.plot.val_x) < 3:
        pump(0.1)
        if not widget.runner.running:
            raise SystemExit(f"training stopped early: {widget.status.value}")
        if time.perf_counter() - t0 > 900:
            raise SystemExit("training too slow for the screenshot")
    pump(0.5)  # let the throttled plot redraw
    viewer.reset_view()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shot = viewer.screenshot(path=str(args.out), canvas_only=False, flash=False)
    print(f"wrote {args.out} {shot.shape}; {len(widget.plot.train_x)} steps, val AP {widget.plot.val_ap}")
    widget.cancel_button.native.click()
    while widget.runner.running:
        pump(0.05)
    print(widget.status.value)
    viewer.close()


if __name__ == "__main__":
    main()
