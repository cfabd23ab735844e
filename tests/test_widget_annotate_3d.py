"""Annotate and Weight map widgets on Z stacks, in a real napari viewer (runs under Xvfb: ``-p xvfb``).

3D painting (napari's ``n_edit_dimensions = 3``), Split and Merge through the planes,
predict-to-annotate giving 3D ids (bundled model on a small synthetic stack), adding a
3D annotation to the training set, and the 3D weight map with the layer's voxel spacing.
"""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import docked_annotate
from test_widget_annotate import wait_done

pytestmark = pytest.mark.gui

napari = pytest.importorskip("napari")

SHAPE = (12, 96, 96)


def _annotate(viewer, image):
    w = docked_annotate(viewer)
    w.image.value = image
    return w


@pytest.fixture
def stack_widget(make_napari_viewer):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros(SHAPE, np.float32), name="stack", scale=(2.0, 1.0, 1.0))
    return _annotate(viewer, image)


def _planes_of(data, label):
    return sorted({int(z) for z in np.nonzero(data == label)[0]})


def test_3d_paint_reaches_neighbouring_planes(stack_widget):
    w = stack_widget
    assert not w.cells_3d.native.isHidden() and w.cells_3d.value  # on by default for a Z stack
    layer = w.new_labels_layer()
    assert layer.n_edit_dimensions == 3 and tuple(layer.scale) == (2.0, 1.0, 1.0)
    layer.paint((6, 48, 48), 1)  # brush 8 px: radius 4.5 px = 2 planes of Z step 2
    assert _planes_of(layer.data, 1) == [4, 5, 6, 7, 8]
    assert layer.data[6, 48, 52] == 1 and layer.data[6, 48, 54] == 0
    # switched off: one plane at a time, as before
    w.cells_3d.value = False
    assert layer.n_edit_dimensions == 2
    layer.paint((2, 20, 20), 2)
    assert _planes_of(layer.data, 2) == [2]


def test_2d_image_keeps_plane_painting(make_napari_viewer):
    viewer = make_napari_viewer()
    w = _annotate(viewer, viewer.add_image(np.zeros((40, 50), np.float32), name="flat"))
    assert w.cells_3d.native.isHidden() and not w.cells_3d.value
    assert w.new_labels_layer().n_edit_dimensions == 2


def _two_balls_joined():
    zz, yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    lab = np.zeros(SHAPE, np.int32)
    for cx in (30, 52):  # two nuclei one 3D segmentation joined: id 1
        lab[((zz - 6) * 2) ** 2 + (yy - 40) ** 2 + (xx - cx) ** 2 < 13**2] = 1
    lab[((zz - 6) * 2) ** 2 + (yy - 75) ** 2 + (xx - 75) ** 2 < 8**2] = 5
    return lab


def test_split_and_merge_act_through_the_planes(stack_widget):
    w = stack_widget
    viewer = w._viewer
    layer = w.new_labels_layer()
    layer.data = _two_balls_joined()
    layer._reset_history()  # noqa: SLF001 - start from a clean history
    before = layer.data.copy()
    viewer.dims.set_current_step(0, 6)
    lines = w.new_cut_line_layer()
    lines.add_lines(np.array([[6.0, 20.0, 41.0], [6.0, 60.0, 41.0]]))  # drawn on plane 6 only
    assert w.split(), w.status.value
    data = layer.data
    new = int(data.max())
    assert new == 6 and "split cell 1 into 2" in w.status.value.lower()
    # the cut goes through every plane of the cell, not only the one it was drawn on
    for z in (3, 6, 9):
        assert data[z, 40, 30] == 1 and data[z, 40, 52] == new, z
    assert np.count_nonzero(data) == np.count_nonzero(before)  # no voxel lost
    # merge acts on the whole stack, too
    w.merge_a.value, w.merge_b.value = 1, new
    assert w.merge()
    assert np.array_equal(layer.data, before)
    layer.undo()
    assert layer.data[3, 40, 52] == new and layer.data[9, 40, 52] == new
    # plane by plane (switch off): the same merge only changes the plane shown
    w.cells_3d.value = False
    assert w.merge()
    assert layer.data[6, 40, 52] == 1 and layer.data[3, 40, 52] == new


def test_predict_to_annotate_gives_3d_ids_and_the_set_takes_them(make_napari_viewer, qtbot):
    from napari_unet import average_precision
    from napari_unet.synthetic_3d import make_stack

    img, truth = make_stack(SHAPE, seed=2, anisotropy=3, radius=10)
    viewer = make_napari_viewer()
    image = viewer.add_image(img, name="nuclei", scale=(3.0, 1.0, 1.0))
    w = _annotate(viewer, image)
    w.model.source.value = w.model.BUNDLED
    layer = w.new_labels_layer()
    layer.data[0, 0:3, 0:3] = 40  # a cell of the person's, outside the predicted area
    viewer.dims.ndisplay = 3
    w.where.value = "field of view"
    assert w.predict() is None and "Switch the viewer to 2D" in w.status.value
    w.where.value = "whole image / plane"  # works in the 3D view too
    job = w._make_predict_job()
    assert job.axes == "ZYX" and job.voxel_size == (3.0, 1.0, 1.0) and job.image.shape == SHAPE
    assert w.predict() is not None
    wait_done(qtbot, w)
    pred = np.where(layer.data == 40, 0, layer.data)
    ids = np.unique(pred[pred > 0])
    # 3D ids: cells span planes (plane by plane each id would lie on one plane)
    spans = [len(_planes_of(pred, i)) for i in ids]
    assert np.median(spans) >= 3, spans
    assert ids.min() > 40  # no predicted cell took an id the layer already had
    # measured 0.7-0.9 on this small stack (bundled model, Z step 3 from the scale; plane by plane: 0.0)
    assert average_precision(truth, pred, 0.5)[0.5] > 0.5
    # the 3D annotation goes to the training set as its labelled XY planes and side views
    w.crop.value = False
    w.complete.value = True  # every cell is labelled: whole planes are learnt from
    n = w.add_to_set()
    samples = w.training_set.samples
    xy = [s for s in samples if " z=" in s.name]
    side = [s for s in samples if " side view " in s.name]
    assert len(xy) + len(side) == n and len(xy) == len({int(z) for z in np.nonzero(layer.data)[0]}) >= 10
    assert all(s.labels.shape == SHAPE[1:] and s.image.shape == SHAPE[1:] for s in xy)
    # XZ / YZ planes of 12 planes of Z step 3: 36 rows of isotropic pixels
    assert len(side) == 2 * 12 and all(s.labels.shape == (36, 96) == s.image.shape for s in side)
    # a side view holds the cells of the XY planes it crosses
    k = next(i for i, s in enumerate(side) if s.labels.any())
    assert set(np.unique(side[k].labels)) <= set(np.unique(layer.data))


def test_predict_in_a_region_fills_its_column_through_the_stack(make_napari_viewer, model_path, qtbot):
    zz, yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    img = np.full(SHAPE, 0.1, np.float32)
    for cy, cx in ((30, 30), (70, 70)):
        img[((zz - 6) * 2) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 < 10**2] = 1.0
    viewer = make_napari_viewer()
    w = _annotate(viewer, viewer.add_image(img, name="balls", scale=(2.0, 1.0, 1.0)))
    w.model.source.value = w.model.FILE
    w.model.file.value = model_path
    layer = w.new_labels_layer()
    layer.data[0, 90:93, 90:93] = 40  # the person's cell, outside the region and its context
    layer._reset_history()  # noqa: SLF001
    before = layer.data.copy()
    viewer.dims.set_current_step(0, 6)
    region = w.new_region_layer()
    region.add_rectangles(np.array([[6.0, 10.0, 10.0], [6.0, 10.0, 50.0], [6.0, 50.0, 50.0], [6.0, 50.0, 10.0]]))  # on plane 6
    assert w.predict() is not None
    wait_done(qtbot, w)
    cell = int(layer.data[6, 30, 30])
    assert _planes_of(layer.data, cell) == _planes_of(img[:, 30:31, 30:31] > 0.5, True)
    # a fresh id: not one of the crop's (there 1 was free) but past every id of the layer
    assert cell == 41
    assert np.array_equal(layer.data[:, 50:, 50:], before[:, 50:, 50:])  # outside the region's column
    layer.undo()
    assert np.array_equal(layer.data, before)


def test_weight_map_of_a_3d_layer_uses_its_voxel_spacing(make_napari_viewer, qtbot):
    from napari_unet._widgets.weight_map import WeightMapWidget
    from napari_unet.weights import TOLERANCE, weight_map

    viewer = make_napari_viewer()
    w = WeightMapWidget(viewer)
    viewer.window.add_dock_widget(w, name="Weight map")
    w.live.value = False
    vol = np.zeros((8, 40, 40), np.int32)
    vol[:, 5:18, 5:35] = 1
    vol[:, 22:35, 5:35] = 2  # two slabs 4 px apart in Y: a 3D border along every plane
    vol[3:5] = 0  # and an empty slab of planes: the cells above and below are 2 planes = 6 px apart
    viewer.add_labels(vol, name="stack", scale=(3.0, 0.5, 0.5))
    w.labels_layer.value = viewer.layers["stack"]
    w.compute()
    qtbot.waitUntil(lambda: "stack weights" in viewer.layers, timeout=30000)
    out = viewer.layers["stack weights"]
    assert out.data.shape == vol.shape and tuple(out.scale) == (3.0, 0.5, 0.5)
    expected = weight_map(vol, spacing=(6.0, 1.0, 1.0))  # Z step in X pixels
    np.testing.assert_allclose(out.data, expected, atol=2 * TOLERANCE)
    assert not np.allclose(expected, weight_map(vol), atol=0.1)  # the spacing matters here
    assert "pixel spacing 6 x 1 x 1 (layer scale)" in w.status.value
