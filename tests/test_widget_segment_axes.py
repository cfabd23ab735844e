"""The Segment widget in a real napari viewer: what the image's axes are (the file's metadata,
a short first axis taken as channels, a one-click switch), the Axes field never stale, errors
in the widget's words, one name per model, one Z step figure, a plane-by-plane run beside
the 3D one, and the reason when no cells are found."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import threshold_unet
from test_widget_segment import blobs, run_and_wait, widget  # noqa: F401  (fixture)
from test_widget_volume import balls

pytestmark = pytest.mark.gui

napari = pytest.importorskip("napari")


def _shown(w) -> bool:
    """Shown when its dock is (magicgui's ``visible`` also needs the window on screen)."""
    return not w.native.isHidden()


def _bundled_installed() -> bool:
    from napari_unet.channels import bundled_path

    return bundled_path("fluorescence").is_file()


def _labels(viewer):
    return [lay for lay in viewer.layers if isinstance(lay, napari.layers.Labels)]


def test_a_two_channel_tiff_is_not_segmented_as_a_z_stack(qtbot, widget, tmp_path):  # noqa: F811
    """A (2, Y, X) TIFF whose metadata says CYX, opened as a user would: each channel is
    segmented on its own (the model reads one), never linked across the two as 3D cells."""
    tifffile = pytest.importorskip("tifffile")
    viewer = widget._viewer
    nuclei, other = blobs(seed=7, n=6), blobs(seed=8, n=6)
    path = tmp_path / "two_channels.tif"
    tifffile.imwrite(path, np.stack([nuclei, other]), metadata={"axes": "CYX"})
    (layer,) = viewer.open(str(path))
    assert layer.data.shape == (2, *nuclei.shape) and not layer.rgb  # one layer with a slider
    widget.image.value = layer
    assert "axes CYX from the file" in widget.status.value
    assert not _shown(widget.as_z_stack)  # the file said so: nothing to switch
    assert run_and_wait(qtbot, widget) == "done", widget.status.value
    (labels,) = _labels(viewer)
    status = widget.status.value
    assert "3D" not in status and "Z step" not in status
    assert "each of the 2 is segmented on its own" in status
    a, b = labels.data
    assert a.max() > 0 and b.max() > 0
    assert not set(np.unique(a)[1:]) & set(np.unique(b)[1:])  # no id joins the two channels


def test_a_short_first_axis_is_taken_as_channels_with_a_switch(qtbot, widget):  # noqa: F811
    viewer = widget._viewer
    viewer.add_image(np.stack([blobs(seed=1), blobs(seed=2)]), name="two")
    widget.image.value = viewer.layers["two"]
    assert "taken as channels" in widget.status.value
    assert _shown(widget.as_z_stack)
    assert widget._make_job().axes == "QYX"  # each channel on its own: the model reads one
    widget.as_z_stack.native.click()  # "it is a Z stack"
    assert widget.axes.value == "ZYX"
    assert "Z step" in widget.status.value and not _shown(widget.as_z_stack)
    assert widget._make_job().axes == "ZYX"


def test_the_axes_field_follows_the_image_and_the_description_follows_the_field(qtbot, widget):  # noqa: F811
    viewer = widget._viewer
    viewer.add_image(balls(), name="stack")
    viewer.add_image(blobs(), name="flat")
    widget.image.value = viewer.layers["stack"]
    widget.axes.value = "TYX"  # planes one by one: no Z step to speak of
    assert "Z step" not in widget.status.value  # the description follows the edit
    widget.axes.value = "ZYX"
    assert "Z step" in widget.status.value
    widget.image.value = viewer.layers["flat"]  # another image: the typed axes do not carry over
    assert widget.axes.value == "auto"
    assert widget._make_job().axes == "YX"


def test_a_channel_mismatch_speaks_of_the_widget(qtbot, widget):  # noqa: F811
    viewer = widget._viewer
    viewer.add_image(np.stack([blobs(seed=1), blobs(seed=2)]), name="two")
    widget.image.value = viewer.layers["two"]
    widget.axes.value = "CYX"  # channels fed together, to a 1-channel model
    widget.run_button.native.click()
    assert widget.runner.worker is None  # refused before any work
    status = widget.status.value
    assert "Split Stack" in status and "'QYX'" in status and "Axes" in status
    assert "image[" not in status and "axes=" not in status  # no Python advice
    assert not _labels(viewer)


def test_a_plane_by_plane_run_gets_its_own_layer_and_the_z_step_one_figure(qtbot, widget, tmp_path):  # noqa: F811
    from napari_unet import save_model

    viewer = widget._viewer
    model = threshold_unet()
    model.meta["diameter"] = 9.0  # the balls are 18 px across: Diameter 18 zooms by 0.5
    widget.model.file.value = save_model(model, tmp_path / "half.pt")
    viewer.add_image(balls(), name="stack", scale=(1.5, 0.5, 0.5))  # Z step 3 pixels
    widget.image.value = viewer.layers["stack"]
    widget.cell_size.value = "diameter"
    widget.diameter.value = 18.0
    assert "Z step 3x the pixel" in widget.status.value
    assert run_and_wait(qtbot, widget) == "done", widget.status.value
    status = widget.status.value
    assert "zoomed 0.50x" in status and "Z step 3x the pixel" in status  # the same figure as before the run
    three_d = viewer.layers["stack labels (half)"]
    ids_3d = three_d.data.copy()
    widget.plane_by_plane.value = True
    assert run_and_wait(qtbot, widget) == "done", widget.status.value
    flat = viewer.layers["stack labels, plane by plane (half)"]
    assert flat.data[2, 20, 20] != flat.data[7, 20, 20]  # planes on their own
    np.testing.assert_array_equal(three_d.data, ids_3d)  # the 3D result is still there, unchanged


@pytest.mark.skipif(not _bundled_installed(), reason="the bundled model is not installed")
def test_an_empty_image_says_why_no_cells_were_found(qtbot, widget):  # noqa: F811
    viewer = widget._viewer
    widget.model.source.value = widget.model.BUNDLED
    noise = np.random.default_rng(3).normal(100, 5, (160, 160)).astype(np.float32)
    viewer.add_image(noise, name="noise")
    widget.image.value = viewer.layers["noise"]
    assert widget.cell_size.value == "auto"
    assert run_and_wait(qtbot, widget, timeout=120_000) == "done", widget.status.value
    status = widget.status.value
    assert "no cells found: the image looks like noise" in status
    assert "1.4x:" not in status and "cells;" not in status  # not the list of zoom attempts


def _stained_installed() -> bool:
    from napari_unet.channels import bundled_path

    return bundled_path("stained").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not _stained_installed(), reason="the stained model is not installed")
def test_the_stained_model_has_one_name_picked_or_chosen(qtbot, widget):  # noqa: F811
    viewer = widget._viewer
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:128, :128]
    slide = np.empty((128, 128, 3), np.float64)
    slide[:] = (235, 190, 215)
    for cy, cx in rng.uniform(10, 118, (12, 2)):
        slide[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = (110, 60, 150)
    slide = np.clip(slide + rng.normal(0, 8, slide.shape), 0, 255).astype(np.uint8)
    viewer.add_image(slide, name="slide")
    widget.image.value = viewer.layers["slide"]
    widget.model.source.value = widget.model.BUNDLED  # picked for the image
    assert run_and_wait(qtbot, widget, timeout=180_000) == "done", widget.status.value
    assert "stained bundled model" in widget.status.value
    assert [lay.name for lay in _labels(viewer)] == ["slide labels (stained)"]
    widget.model.source.value = widget.model.STAINED  # chosen by name: the same model, the same layer
    assert run_and_wait(qtbot, widget, timeout=180_000) == "done", widget.status.value
    assert [lay.name for lay in _labels(viewer)] == ["slide labels (stained)"]
