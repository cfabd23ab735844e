"""The Segment widget on EM-like data (runs under Xvfb: ``-p xvfb``): a membrane model's
membrane probability and its cells both become layers."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import membrane_image, threshold_unet

pytestmark = pytest.mark.gui

napari = pytest.importorskip("napari")


def test_segment_widget_shows_membrane_probability_and_cells(make_napari_viewer, qtbot, tmp_path):
    import napari_unet as nu
    from napari_unet._widgets.segment import SegmentWidget

    model = threshold_unet(num_classes=2)  # dark = background = membrane
    model.meta["preset"] = "membranes"
    path = nu.save_model(model, tmp_path / "membranes.pt")
    img, cells, membrane = membrane_image((96, 110), n=16, seed=3)
    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w, name="Segment")
    w.model.source.value = w.model.FILE
    w.model.file.value = path
    w.device.value = "cpu"
    viewer.add_image(img, name="em")
    w.image.value = viewer.layers["em"]
    w.probabilities.value = True
    w.runner.last_outcome = None
    w.run_button.native.click()
    qtbot.waitUntil(lambda: w.runner.last_outcome is not None and not w.runner.running, timeout=60_000)
    assert w.runner.last_outcome == "done", w.status.value

    probs = viewer.layers["em probabilities (membranes)"]
    assert isinstance(probs, napari.layers.Image) and probs.data.shape == (2, *img.shape)
    p_membrane = probs.data[0]
    assert p_membrane[membrane].mean() > 0.8 and p_membrane[~membrane].mean() < 0.2
    labels = viewer.layers["em labels (membranes)"]
    assert isinstance(labels, napari.layers.Labels)
    # the cells of the membrane watershed: they fill the image, one per true cell
    np.testing.assert_array_equal(labels.data, nu.segment(img, model=nu.load_model(path), device="cpu"))
    assert (labels.data > 0).all()
    assert nu.adapted_rand_error(cells, labels.data)[0] < 0.05


def test_train_widget_trains_from_a_painted_membrane_mask(make_napari_viewer, qtbot):
    from napari_unet._widgets.train import TrainWidget

    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w, name="Train")
    w.start.value = w.SCRATCH
    w.mode.value = "membrane mask (EM)"
    w.depth.value, w.base_width.value = 2, 4
    w.tile_size.value, w.batch_size.value, w.device.value = 48, 2, "cpu"
    w.iterations.value = 3
    for s in (1, 2):
        img, _, membrane = membrane_image(seed=s)
        w.image.value = viewer.add_image(img, name=f"em{s}")
        w.labels_layer.value = viewer.add_labels(membrane.astype(np.uint8), name=f"em{s} membranes")
        assert w.add_pair() is not None, w.status.value
    w.runner.last_outcome = None
    w.run_button.native.click()
    qtbot.waitUntil(lambda: w.runner.last_outcome is not None and not w.runner.running, timeout=90_000)
    assert w.runner.last_outcome == "done", w.status.value
    model = w.trained_model
    assert model.meta["mode"] == "instance2" and model.config.num_classes == 2
    assert model.meta["preset"] == "membranes"
    # the plot and the status line name the membrane score, not AP
    assert w.plot.ax_ap.get_ylabel() == "validation 1 - Rand error"
    assert [t.get_text() for t in w.plot._legend.get_texts()][-1] == "val. 1 - Rand error"
