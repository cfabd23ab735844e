"""Render docs/images/annotate_*.png: the label → train → segment loop, step by step.

Usage (needs a display; on a headless machine run it under ``xvfb-run -a``)::

    python docs/make_annotate_screenshots.py [--model PATH] [--iterations 150]

Steps shown: (1) the annotation layer on the sample image, (2) predict to annotate inside
a drawn region, (3) the corrected labels and the training set (one entry held out for
scoring), (4) after "Train on this": the new segmentation and the before/after score.
Without ``--model`` (and no bundled model) the "current model" is a fixed threshold
network, so step 2 shows what a weak model proposes and the person corrects.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def wait(pred, seconds=900):
    from qtpy.QtWidgets import QApplication

    t0 = time.perf_counter()
    while not pred():
        QApplication.processEvents()
        time.sleep(0.02)
        if time.perf_counter() - t0 > seconds:
            raise SystemExit("a step did not finish in time")
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--out", type=Path, default=HERE / "images")
    args = parser.parse_args()

    import imageio.v3 as iio
    import napari

    sys.path.insert(0, str(HERE.parent / "tests"))
    from _helpers import threshold_unet

    from napari_unet import save_model
    from napari_unet._widgets.annotate import AnnotateWidget
    from napari_unet.annotate import diff_edit
    from napari_unet.model import bundled_model_path

    model_path = args.model
    if model_path is None and not bundled_model_path().is_file():
        model_path = save_model(threshold_unet(), Path(tempfile.gettempdir()) / "threshold_demo.pt")

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1280, 800)  # noqa: SLF001 - the smallest laptop screen
    viewer.open_sample("napari-unet", "nuclei")
    gt = np.asarray(viewer.layers["nuclei ground truth"].data)
    viewer.layers.remove("nuclei ground truth")  # the person has no ground truth
    w = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(w, name="Annotate (napari-unet)", area="right")
    if model_path is not None:
        w.model.source.value = w.model.FILE
        w.model.file.value = model_path
    w.device.value = "cpu"

    def shot(name: str) -> None:
        wait(lambda: True)
        out = args.out / f"annotate_{name}.png"
        iio.imwrite(out, viewer.screenshot(canvas_only=False, flash=False))
        print("wrote", out)

    layer = w.new_labels_layer()
    layer.paint((200, 200), layer.selected_label)
    shot("1_annotation_layer")

    region = w.new_region_layer()
    region.add_rectangles(np.array([[0.0, 0.0], [255.0, 511.0]]))
    layer.data[:] = 0
    w.predict_button.native.click()
    wait(lambda: not w.runner.running and w.runner.last_outcome is not None)
    viewer.layers.selection.active = layer
    shot("2_predicted")

    corrected = np.where(np.arange(512)[:, None] < 256, gt, 0).astype(np.int32)
    w.apply_edit(layer, diff_edit(np.asarray(layer.data), corrected, "corrected by hand"))
    region.data = [np.array([[0.0, 0.0], [0.0, 511.0], [191.0, 511.0], [191.0, 0.0]])]
    w.add_to_set()
    region.data = [np.array([[192.0, 0.0], [192.0, 511.0], [255.0, 511.0], [255.0, 0.0]])]
    w.add_to_set()
    region.data = [np.array([[0.0, 0.0], [0.0, 511.0], [255.0, 511.0], [255.0, 0.0]])]
    w.entries.value = [w.entries.choices[1]]
    w.toggle_held_out()
    w.folder.value = Path(tempfile.mkdtemp()) / "nuclei set"
    w.save_set()
    w.scroll.ensureWidgetVisible(w.entries.native)  # the set's list in view
    shot("3_training_set")

    train = w.train_widget()
    if model_path is None:
        train.start.value = train.BUNDLED  # fine-tune the bundled model, as a person would
    else:
        train.start.value = train.SCRATCH
        train.depth.value, train.base_width.value = 2, 8
    train.iterations.value = args.iterations
    train.tile_size.value = 96
    train.batch_size.value = 2
    train.device.value = "cpu"
    w.train_button.native.click()
    wait(lambda: w.last_scores.get("after") is not None and not w.runner.running)
    viewer.layers[w.last_scores["layer"]].contour = 2  # "<image> labels (trained)"
    w.scroll.ensureWidgetVisible(w.status.native)  # the score and the status line in view
    shot("4_after_training")
    print(w.score.value)


if __name__ == "__main__":
    main()
