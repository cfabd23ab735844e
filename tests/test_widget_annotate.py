"""The Annotate dock widget in a real napari viewer (runs under Xvfb: ``-p xvfb``).

Every helper is applied through the widget and undone through the Labels layer's own
history (``layer.undo()``, what Ctrl+Z calls). Prediction uses a tiny hand-set U-Net
(threshold of the normalised image) saved to a file, so it is deterministic and free;
the end-to-end test trains a tiny network from scratch for a few iterations.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from _helpers import blobs_at, docked_annotate

pytestmark = pytest.mark.gui

napari = pytest.importorskip("napari")

WAIT_MS = 120_000  # generous for 2 shared cores; a hang still fails
SCREENSHOTS = os.environ.get("NAPARI_UNET_SCREENSHOTS")  # folder: also write docs screenshots


@pytest.fixture
def widget(make_napari_viewer, model_path):
    viewer = make_napari_viewer()
    viewer.add_image(blobs_at(), name="cells")
    return docked_annotate(viewer, model_path)


def wait_done(qtbot, w):
    qtbot.waitUntil(lambda: not w.runner.running, timeout=WAIT_MS)
    assert w.runner.last_outcome == "done", w.status.value


def shot(viewer, name):
    if SCREENSHOTS:
        from qtpy.QtWidgets import QApplication

        QApplication.processEvents()
        import imageio.v3 as iio

        iio.imwrite(Path(SCREENSHOTS) / f"annotate_{name}.png", viewer.screenshot(canvas_only=False, flash=False))


# -- layers ----------------------------------------------------------------------------------



def tiny_scratch_training(w):
    """The Annotate widget's Train widget set to train a tiny network from scratch on the CPU
    (32-px tiles, one at a time, no validation); the caller sets the budget."""
    train = w.train_widget()
    train.start.value = train.SCRATCH
    train.depth.value, train.base_width.value = 2, 4
    train.tile_size.value, train.batch_size.value = 32, 1
    train.val_fraction.value = 0.0
    train.device.value = "cpu"
    return train

def test_new_annotation_layer_defaults_and_next_id_after_stroke(widget, qtbot):
    w, viewer = widget, widget._viewer
    layer = w.new_labels_layer()
    assert layer.name == "cells annotations" and layer.data.shape == (96, 120)
    assert layer.preserve_labels and layer.selected_label == 1 and layer.brush_size == 8
    w.brush_size.value = 5
    w.contour.value = True
    assert layer.brush_size == 5 and layer.contour > 0
    w.contour.value = False
    assert layer.contour == 0
    layer.paint((20, 20), layer.selected_label)  # one brush stroke
    assert layer.data[20, 20] == 1 and layer.selected_label == 2  # next cell gets a new id
    w.auto_next.value = False
    layer.paint((60, 30), 2)
    assert layer.selected_label == 2
    # pressing again picks the existing layer instead of making another
    assert w.new_labels_layer() is layer
    assert [lay.name for lay in viewer.layers].count("cells annotations") == 1
    # the training area overlay follows the labels (cells + margin)
    qtbot.waitUntil(lambda: "cells annotations training area" in viewer.layers
                    and viewer.layers["cells annotations training area"].data[60, 30] == 1, timeout=5000)
    area = viewer.layers["cells annotations training area"]
    assert area.data[20, 20] == 1 and area.data[0, 119] == 0
    w.show_area.value = False
    assert not area.visible


# -- helpers, each undone through napari's history -----------------------------------------


def _labels_with(widget, arr):
    layer = widget.new_labels_layer()
    layer.data = arr.astype(np.int32)
    layer._reset_history()  # noqa: SLF001 - start from a clean history
    return layer


def test_helpers_apply_and_undo(widget):
    w = widget
    lab = np.zeros((96, 120), np.int32)
    lab[10:30, 10:30] = 1
    lab[15:18, 15:18] = 0  # a hole
    lab[50:52, 50:52] = 2  # a tiny piece
    lab[60:80, 60:100] = 3  # to split
    lab[10:20, 60:70] = 4
    lab[20:30, 60:70] = 5  # 4 and 5 to merge
    layer = _labels_with(w, lab)
    steps = []

    w.min_size.value = 10
    assert w.remove_small()
    assert not (layer.data == 2).any()
    steps.append(layer.data.copy())

    assert w.fill_holes()
    assert (layer.data[15:18, 15:18] == 1).all()
    steps.append(layer.data.copy())

    w.merge_a.value, w.merge_b.value = 4, 5
    assert w.merge()
    assert not (layer.data == 5).any() and (layer.data[20:30, 60:70] == 4).all()
    steps.append(layer.data.copy())

    lines = w.new_cut_line_layer()
    lines.add_lines(np.array([[55.0, 80.0], [85.0, 80.0]]))
    assert w.split()
    left, right = layer.data[70, 65], layer.data[70, 95]
    assert {int(left), int(right)} == {3, 5} and (layer.data > 0).sum() == (steps[-1] > 0).sum()
    assert len(lines.data) == 0  # the used line is removed
    assert "split cell 3" in w.status.value.lower()

    # one undo per helper, in reverse order, restores each earlier state exactly
    for before in reversed([lab, *steps]):
        layer.undo()
        assert np.array_equal(layer.data, before)
    layer.redo()
    assert np.array_equal(layer.data, steps[0])


def test_helper_errors_are_shown_and_change_nothing(widget):
    w = widget
    lab = np.zeros((96, 120), np.int32)
    lab[10:30, 10:30] = 1
    layer = _labels_with(w, lab)
    assert not w.split()
    assert "No cut line" in w.status.value
    w.merge_a.value, w.merge_b.value = 1, 9
    assert not w.merge()
    assert "no cell with id 9" in w.status.value.lower()
    lines = w.new_cut_line_layer()
    lines.add_lines(np.array([[0.0, 5.0], [5.0, 5.0]]))  # crosses no cell
    assert not w.split()
    assert "does not cross" in w.status.value
    assert not w.fill_holes()  # nothing to fill is not an error
    assert np.array_equal(layer.data, lab) and len(layer._undo_history) == 0  # noqa: SLF001


def test_next_free_id_button(widget):
    w = widget
    lab = np.zeros((96, 120), np.int32)
    lab[0, 0], lab[5, 5] = 3, 11
    layer = _labels_with(w, lab)
    layer.selected_label = 1
    assert w.select_next_id() == 12 and layer.selected_label == 12


def test_stack_plane_by_plane(make_napari_viewer, model_path, qtbot):
    viewer = make_napari_viewer()
    stack = np.stack([blobs_at(), blobs_at(centers=((40, 40),)), blobs_at()])
    viewer.add_image(stack, name="stack")
    w = docked_annotate(viewer, model_path)
    assert w.cells_3d.value  # a 3D layer is a Z stack of 3D cells by default; these planes are unrelated
    w.cells_3d.value = False
    layer = w.new_labels_layer()
    assert layer.data.shape == stack.shape and layer.n_edit_dimensions == 2
    viewer.dims.set_current_step(0, 1)
    assert w.current_plane(layer) == (1,)
    w.where.value = "whole image / plane"
    assert w.predict() is not None
    wait_done(qtbot, w)
    assert layer.data[1].max() == 1 and not layer.data[0].any() and not layer.data[2].any()
    # a piece on plane 1 is removed by the helper; plane 2 is untouched
    layer.data[1, 0:2, 0:2] = 9
    layer.data[2, 0:2, 0:2] = 9
    w.min_size.value = 10
    assert w.remove_small()
    assert layer.data[1, 0, 0] == 0 and layer.data[2, 0, 0] == 9
    layer.undo()
    assert layer.data[1, 0, 0] == 9
    layer.data[2] = 0
    w.crop.value = False
    assert w.add_to_set() == 1  # only the labelled plane
    s = w.training_set.samples[0]
    assert s.name == "stack z=1" and s.labels.shape == (96, 120) and s.image.shape == (96, 120)
    assert np.array_equal(s.image, stack[1])


# -- predict to annotate -------------------------------------------------------------------


def test_predict_in_region_keeps_user_labels_and_undoes(widget, qtbot):
    w = widget
    layer = w.new_labels_layer()
    layer.data[55:65, 25:35] = 7  # the person's own cell (on a predicted blob)
    layer._reset_history()  # noqa: SLF001
    before = layer.data.copy()
    region = w.new_region_layer()
    region.add_rectangles(np.array([[0.0, 0.0], [80.0, 50.0]]))  # covers blobs (20,20) and (60,30)
    assert w.region.value is region
    assert w.predict() is not None
    wait_done(qtbot, w)
    data = layer.data
    assert data[20, 20] > 7  # predicted with a fresh id
    assert (data[55:65, 25:35] == 7).all()  # kept
    assert data[20, 60] == 0 and data[70, 90] == 0  # outside the region: not filled
    assert "added 1 predicted cell" in w.status.value.lower()
    layer.undo()
    assert np.array_equal(layer.data, before)
    # replace: inside the region the prediction wins
    w.replace.value = True
    w.predict()
    wait_done(qtbot, w)
    assert not (layer.data == 7).any() and layer.data[60, 30] > 0
    layer.undo()
    assert np.array_equal(layer.data, before)


def test_predict_in_field_of_view(widget, qtbot):
    w, viewer = widget, widget._viewer
    layer = w.new_labels_layer()
    cam = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    cam.center = (20, 20)
    cam.zoom = viewer.canvas.size[0] / 30  # about 30 px tall in view
    rows, cols = w.view_box(layer)
    assert rows.start <= 20 < rows.stop and rows.stop - rows.start < 60 and cols.stop < 120
    w.where.value = "field of view"
    w.predict()
    wait_done(qtbot, w)
    assert layer.data[20, 20] > 0 and layer.data[70, 90] == 0


def test_predict_errors(widget):
    w = widget
    w.new_labels_layer()
    w.where.value = "annotated region"
    assert w.predict() is None  # no region drawn
    assert "No annotated region" in w.status.value
    w.model.file.value = ""
    w.where.value = "whole image / plane"
    assert w.predict() is None
    assert "No model file" in w.status.value


def test_first_predict_from_a_fresh_viewer(widget, qtbot):
    """A new user opens an image and presses Predict to annotate: it works (in the field
    of view, the default until a region is drawn), and an error shown earlier does not
    stay once the person paints."""
    w, viewer = widget, widget._viewer
    assert w.annotations.value is None and w.where.value == "field of view"
    assert w.predict() is not None, w.status.value
    wait_done(qtbot, w)
    layer = viewer.layers["cells annotations"]  # made for the prediction
    assert w.annotations.value is layer and layer.data[20, 20] > 0
    region = w.new_region_layer()
    assert w.where.value == "annotated region"  # once there is a region, predict in it
    w.region.value = None
    assert w.where.value == "field of view"
    # an error (here: a refused helper), then the person paints: the error goes
    w.merge_a.value, w.merge_b.value = 500, 501
    assert not w.merge()
    from napari_unet._widgets._common import status_kind

    assert status_kind(w.status) == "error"
    layer.paint((80, 10), 42, refresh=False)
    assert status_kind(w.status) != "error"
    assert region in viewer.layers


def test_refused_first_predict_creates_no_layer(widget):
    w, viewer = widget, widget._viewer
    w.where.value = "annotated region"  # no region drawn: refused
    n = len(viewer.layers)
    assert w.predict() is None
    assert "No annotated region" in w.status.value
    assert len(viewer.layers) == n and "cells annotations" not in viewer.layers


def test_complete_labels_switch_in_the_set(widget, tmp_path):
    w, viewer = widget, widget._viewer
    layer = w.new_labels_layer()
    layer.data[15:26, 15:26] = 1  # one small cell: sparse
    w.crop.value = False
    assert w.complete.value is False
    assert w.add_to_set() == 1
    sparse = w.training_set.samples[0].region
    assert 0 < sparse.mean() < 0.2
    assert "Only" in w.status.value and "labels are complete" in w.status.value  # most is ignored: said
    w.complete.value = True
    assert w.add_to_set() == 1
    assert w.training_set.samples[1].region.all()  # complete: the whole image is learnt from
    assert "Only" not in w.status.value
    # a mask read from a file: complete by default
    import tifffile

    tifffile.imwrite(tmp_path / "mask.tif", np.asarray(layer.data).astype(np.uint16))
    w.complete.value = False
    (mask,) = viewer.open(tmp_path / "mask.tif", layer_type="labels")
    w.annotations.value = mask
    assert w.complete.value is True


def test_cancelled_training_is_not_reported_as_trained(make_napari_viewer, model_path, qtbot):
    from napari_unet.synthetic import make_sample

    img, gt = make_sample((96, 96), 3)
    viewer = make_napari_viewer()
    viewer.add_image(img, name="img")
    w = docked_annotate(viewer, model_path)
    layer = w.new_labels_layer()
    layer.data = gt.astype(np.int32)
    w.complete.value = True
    assert w.add_to_set() == 1
    train = tiny_scratch_training(w)
    train.budget.value = train.MINUTES
    train.minutes.value = 30.0
    w.train_on_this()
    qtbot.waitUntil(lambda: train.runner.running and len(train.plot.train_x) >= 3, timeout=WAIT_MS)
    n_layers = len(viewer.layers)
    train.cancel_button.native.click()
    qtbot.waitUntil(lambda: not train.runner.running, timeout=WAIT_MS)
    qtbot.wait(100)
    assert "cancelled" in w.status.value and "Trained" not in w.status.value
    assert w.model.source.value == w.model.FILE  # Predict to annotate keeps its model
    assert not w.runner.running and len(viewer.layers) == n_layers  # nothing re-segmented


# -- training set ---------------------------------------------------------------------------


def test_training_set_add_list_show_holdout_remove_save_load(widget, tmp_path):
    w, viewer = widget, widget._viewer
    layer = w.new_labels_layer()
    layer.data[15:26, 15:26] = 1
    layer.data[55:66, 25:36] = 2
    assert w.add_to_set() == 1
    s = w.training_set.samples[0]
    # without a region: cropped to cells + margin, and that area is the stored region
    assert s.region is not None and s.region.shape == s.labels.shape and s.labels.shape[0] < 96
    assert w.entries.choices[0].startswith("1. 2 cells, ") and w.entries.choices[0].endswith("82x52 — cells [0:82, 0:52]")
    region = w.new_region_layer()
    region.add_rectangles(np.array([[0.0, 0.0], [40.0, 40.0]]))
    assert w.add_to_set() == 1
    assert w.training_set.samples[1].labels.shape == (41, 41)
    assert len(w.entries.choices) == 2 and w.entries.choices[1].startswith("2. 1 cells, 41x41")
    w.entries.value = [w.entries.choices[1]]
    w.toggle_held_out()
    assert "held out" in w.entries.choices[1] and len(w.held_out) == 1
    w.entries.value = [w.entries.choices[0]]
    w.show_entries()
    assert f"set: {s.name}" in viewer.layers and f"set: {s.name} labels" in viewer.layers
    # save, load back identically
    w.folder.value = tmp_path / "set"
    assert w.save_set() is not None
    saved = [(x.name, x.image.copy(), x.labels.copy(), x.region.copy()) for x in w.training_set.samples]
    w.entries.value = [w.entries.choices[0]]
    w.remove_entries()
    assert len(w.training_set) == 1
    assert w.load_set()
    assert len(w.training_set) == 2
    for (name, img, lab, reg), t in zip(saved, w.training_set.samples):
        assert t.name == name and np.array_equal(t.image, img) and np.array_equal(t.labels, lab)
        assert np.array_equal(t.region, reg)
    assert "held out" in w.entries.choices[1]  # the hold-out survives by name


def test_broken_folder_is_reported_and_nothing_is_lost(widget, tmp_path):
    w = widget
    layer = w.new_labels_layer()
    layer.data[15:26, 15:26] = 1
    w.add_to_set()
    layer.data[55:66, 25:36] = 2
    w.crop.value = False
    w.add_to_set()
    root = w.save_set(tmp_path / "set")
    assert not w.load_set(tmp_path / "nothing")  # not a set: the current one is kept
    assert "no index.json" in w.status.value and len(w.training_set) == 2
    (root / "labels" / "0000.tif").unlink()
    assert not w.load_set(root)
    assert "missing file labels/0000.tif" in w.status.value
    assert len(w.training_set) == 1 and w.training_set.samples[0].labels.shape == (96, 120)


# -- the whole loop ------------------------------------------------------------------------


@pytest.mark.slow
def test_end_to_end_annotate_train_segment(make_napari_viewer, model_path, tmp_path, qtbot):
    """Sample image → predict in a region → correct → set → save/load → train → segment."""
    from napari_unet._sample_data import sample_nuclei
    from napari_unet.data import TrainingSet

    (image, image_kw, _), (gt, _, _) = sample_nuclei()
    image, gt = image[:192, :192], gt[:192, :192]  # a crop keeps the test fast
    viewer = make_napari_viewer()
    viewer.add_image(image, **image_kw)
    name = image_kw["name"]
    w = docked_annotate(viewer, model_path)
    layer = w.new_labels_layer()
    shot(viewer, "1_new_layer")

    # predict to annotate in a region
    region = w.new_region_layer()
    region.add_rectangles(np.array([[0.0, 0.0], [127.0, 191.0]]))
    w.predict()
    wait_done(qtbot, w)
    assert layer.data[:128].max() > 0 and not layer.data[128:].any()
    shot(viewer, "2_predicted")

    # correct programmatically: the person's labels become the ground truth inside the region
    corrected = np.where(np.arange(192)[:, None] < 128, gt, 0).astype(np.int32)
    w.apply_edit(layer, __import__("napari_unet.annotate", fromlist=["diff_edit"]).diff_edit(
        np.asarray(layer.data), corrected, "corrected by hand"))
    assert np.array_equal(layer.data, corrected)
    layer.undo()
    assert not np.array_equal(layer.data, corrected)
    layer.redo()
    assert np.array_equal(layer.data, corrected)

    # two entries: the top half to train on, the rest of the region held out for scoring
    region.data = [np.array([[0.0, 0.0], [0.0, 191.0], [95.0, 191.0], [95.0, 0.0]])]
    assert w.add_to_set() == 1
    region.data = [np.array([[96.0, 0.0], [96.0, 191.0], [127.0, 191.0], [127.0, 0.0]])]
    assert w.add_to_set() == 1
    w.entries.value = [w.entries.choices[1]]
    w.toggle_held_out()
    assert [s.labels.shape for s in w.training_set.samples] == [(96, 192), (32, 192)]
    shot(viewer, "3_training_set")

    # save to a folder and load back identically
    before = [(s.name, s.image.copy(), s.labels.copy(), s.region.copy()) for s in w.training_set.samples]
    w.folder.value = tmp_path / "my set"
    assert w.save_set() is not None and (tmp_path / "my set" / "index.json").is_file()
    assert w.load_set()
    for (n, img, lab, reg), s in zip(before, w.training_set.samples):
        assert s.name == n and np.array_equal(s.image, img) and np.array_equal(s.labels, lab)
        assert np.array_equal(s.region, reg) and s.image.dtype == img.dtype
    assert len(TrainingSet.load(tmp_path / "my set")) == 2

    # train a tiny network from scratch for a few iterations, from the Annotate widget
    train = w.train_widget()
    assert train is w.train_widget()  # reused, not opened twice
    train.start.value = train.SCRATCH
    train.depth.value, train.base_width.value = 2, 4
    train.iterations.value = 20
    train.tile_size.value = 48
    train.batch_size.value = 2
    train.val_fraction.value = 0.0
    train.device.value = "cpu"
    w.train_on_this()
    qtbot.waitUntil(lambda: w.last_scores.get("after") is not None, timeout=WAIT_MS)
    assert not w.runner.running or qtbot.waitUntil(lambda: not w.runner.running, timeout=WAIT_MS) is None
    s = w.last_scores
    assert s["on"] == "held-out entries" and s["n"] == 1
    assert 0.0 <= s["before"] <= 1.0 and 0.0 <= s["after"] <= 1.0
    assert "before" in w.score.value and "after" in w.score.value
    assert train.trained_model is not None
    assert len(train._job.images) == 1  # noqa: SLF001 - only the set's training entry, not the held-out rows
    # the open image was segmented again with the new model
    out = viewer.layers[f"{name} labels (trained)"]
    assert out.data.shape == (192, 192) and out.data.dtype.kind in "iu"
    assert w.model.source.value == w.TRAINED  # predict-to-annotate now uses the new model
    shot(viewer, "4_after_training")


def _train_on_this_in_a_window(make_napari_viewer, qtbot):
    """Annotate opened from the plugin list in a 1280x800 window, one entry in its set, and a
    Train on this of a tiny network run to its end."""
    from napari_unet.synthetic import make_sample

    img, gt = make_sample((96, 96), 3)
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1280, 800)
    viewer.add_image(img, name="img")
    _, w = viewer.window.add_plugin_dock_widget("napari-unet", "Annotate")
    w.device.value = "cpu"
    layer = w.new_labels_layer()
    layer.data = gt.astype(np.int32)
    w.complete.value = True
    assert w.add_to_set() == 1
    train = tiny_scratch_training(w)
    train.iterations.value = 3
    w.scroll.verticalScrollBar().setValue(0)  # the person looks at the top of the form
    w.train_on_this()
    qtbot.waitUntil(lambda: w.last_scores.get("after") is not None and not w.runner.running, timeout=WAIT_MS)
    return w, train


def test_train_on_this_scrolls_its_score_into_view(make_napari_viewer, qtbot):
    """The Annotate dock was raised after Train on this but stayed scrolled to the top: the
    before/after score and the status line were below the fold."""
    from qtpy.QtCore import QPoint, QRect
    from qtpy.QtWidgets import QApplication

    w, _ = _train_on_this_in_a_window(make_napari_viewer, qtbot)
    qtbot.wait(200)  # a moment for the person to look
    QApplication.processEvents()
    viewport = w.scroll.viewport()
    for label in (w.score, w.status):
        rect = QRect(label.native.mapTo(viewport, QPoint(0, 0)), label.native.size())
        assert viewport.rect().contains(rect), f"{label.value!r} at {rect} is outside {viewport.rect()}"
        assert label.native.isVisible() and not label.native.visibleRegion().isEmpty()


def test_a_cancelled_train_on_this_names_the_model_predict_uses(make_napari_viewer, qtbot):
    """After a second, cancelled Train on this, Annotate said "'Predict to annotate' keeps its
    model" while the Train widget had replaced the model it reads with the cancelled run's."""
    w, train = _train_on_this_in_a_window(make_napari_viewer, qtbot)
    first = train.trained_model
    assert w.model.source.value == w.TRAINED and w.model_spec() is first
    train.budget.value = train.MINUTES
    train.minutes.value = 30.0
    train.start.value = train.SCRATCH
    w.train_on_this()
    qtbot.waitUntil(lambda: train.runner.running and len(train.plot.train_x) >= 3, timeout=WAIT_MS)
    train.cancel_button.native.click()
    qtbot.waitUntil(lambda: not train.runner.running and not w.runner.running, timeout=WAIT_MS)
    qtbot.wait(100)
    assert w.model.source.value == w.TRAINED and w.model_spec() is train.trained_model
    assert train.trained_model is not first  # the Train widget keeps the cancelled run's model
    assert "cancelled" in w.status.value and "keeps its model" not in w.status.value, w.status.value
    assert "'Predict to annotate' uses the Train widget's model, which is now the one the cancelled run kept" \
        in w.status.value
