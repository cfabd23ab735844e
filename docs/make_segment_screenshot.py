"""Render docs/images/segment_widget.png: the Segment widget docked next to its result.

Usage (needs a display; on a headless machine run it under ``xvfb-run -a``)::

    python docs/make_segment_screenshot.py [--model PATH] [--train-seconds 300]

Without ``--model`` it uses the bundled model when it is installed, and otherwise
fine-tunes a small fresh U-Net for ``--train-seconds`` on a *different* synthetic image
than the one shown (so the screenshot shows a real prediction, not the training data).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def quick_model(path: Path, seconds: float) -> Path:
    """A small U-Net fine-tuned from scratch for ``seconds`` on another synthetic image.

    depth 2 / width 8 with light augmentation learns fast enough on a CPU; on 2 busy
    cores 300 s (~120 steps) reached AP@0.5 = 0.73 on the sample image.
    """
    from napari_unet import UNet, fine_tune, make_sample, save_model
    from napari_unet.augment import AugmentConfig

    image, labels = make_sample((320, 320), 7, kind="nuclei", density=0.3, radius=10.0)
    start = UNet(in_channels=1, num_classes=3, depth=2, base_width=8, dropout=0.0)
    t0 = time.perf_counter()
    model = fine_tune(
        [image], [labels], model=start, max_time=seconds, iterations=600, device="cpu",
        lr=2e-3, batch_size=2, tile_size=96, val_fraction=0.0,
        augment=AugmentConfig(enabled=True, elastic=False, rotate=False, scale=False),
    )
    print(f"trained a demo model for {time.perf_counter() - t0:.0f} s")
    model.meta["description"] = f"demo model for the README screenshot ({seconds:.0f} s on CPU)"
    return save_model(model, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model file (default: bundled, else a quick demo model)")
    parser.add_argument("--train-seconds", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=HERE / "images" / "segment_widget.png")
    args = parser.parse_args()

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_unet._widgets.segment import SegmentWidget
    from napari_unet.model import bundled_model_path

    model_path = args.model
    if model_path is None and not bundled_model_path().is_file():
        model_path = quick_model(Path(tempfile.gettempdir()) / "demo_nuclei.pt", args.train_seconds)

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 860)  # noqa: SLF001 - a fixed size for the docs
    viewer.open_sample("napari-unet", "nuclei")
    viewer.layers["nuclei ground truth"].visible = False
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment (napari-unet)", area="right")
    widget.image.value = viewer.layers["nuclei (synthetic)"]
    if model_path is not None:
        widget.model.source.value = widget.model.FILE
        widget.model.file.value = model_path
    widget.run_button.native.click()
    t0 = time.perf_counter()
    while widget.runner.running or widget.runner.last_outcome is None:
        QApplication.processEvents()
        time.sleep(0.02)
        if time.perf_counter() - t0 > 600:
            raise SystemExit("segmentation did not finish in 10 minutes")
    if widget.runner.last_outcome != "done":
        raise SystemExit(f"segmentation failed: {widget.status.value}")
    labels = viewer.layers.selection.active  # Segment selects its result, "<image> labels (<model>)"
    labels.contour = 0
    labels.opacity = 0.45
    viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shot = viewer.screenshot(path=str(args.out), canvas_only=False, flash=False)
    print(f"wrote {args.out} {shot.shape}; status: {widget.status.value}")
    n = len(np.unique(labels.data)) - 1
    print(f"{n} objects")
    viewer.close()


if __name__ == "__main__":
    main()
