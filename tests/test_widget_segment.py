"""The Segment dock widget in a real napari viewer (runs under Xvfb: ``-p xvfb``).

The network is a tiny depth-2 U-Net whose weights are set by hand to threshold the
normalised image (identity 3x3 convolutions carrying channel 0 through the encoder and the
top skip connection, a 1x1 head that says "interior" where the intensity is above one half).
It runs through the real model file, tiling and post-processing code, finds bright blobs
deterministically and costs nothing to "train".
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from _helpers import blobs, threshold_unet

pytestmark = pytest.mark.gui

napari = pytest.importorskip("napari")

WAIT_MS = 60_000  # generous for 2 shared cores; a hang still fails


@pytest.fixture
def widget(make_napari_viewer, model_path):
    from napari_unet._widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w, name="Segment")
    w.model.source.value = w.model.FILE
    w.model.file.value = model_path
    w.device.value = "cpu"
    return w


def run_and_wait(qtbot, w, timeout=WAIT_MS):
    w.runner.last_outcome = None
    w.run_button.native.click()
    qtbot.waitUntil(lambda: w.runner.last_outcome is not None and not w.runner.running, timeout=timeout)
    return w.runner.last_outcome


def test_segment_2d_labels_and_rerun_in_place(qtbot, widget, model_path):
    from napari_unet import load_model, segment

    viewer = widget._viewer
    img = blobs()
    viewer.add_image(img, name="cells", scale=(0.5, 0.25), translate=(3.0, 4.0))
    widget.image.value = viewer.layers["cells"]
    widget.min_size.value = 0

    assert run_and_wait(qtbot, widget) == "done", widget.status.value
    layer = viewer.layers["cells labels (threshold)"]
    assert isinstance(layer, napari.layers.Labels)
    assert layer.data.shape == img.shape
    assert layer.data.dtype == np.int32
    expected = segment(img, load_model(model_path), device="cpu", min_size=0)
    np.testing.assert_array_equal(layer.data, expected)
    n = len(np.unique(layer.data)) - 1
    assert 4 <= n <= 8  # 8 discs, some may touch
    assert tuple(layer.scale) == (0.5, 0.25) and tuple(layer.translate) == (3.0, 4.0)
    assert f"{n} cells" in widget.status.value

    # re-run with other settings: the same layer object is updated, nothing added
    layer.opacity = 0.3  # a user setting that must survive
    n_layers = len(viewer.layers)
    widget.min_size.value = 10_000  # removes every object
    assert run_and_wait(qtbot, widget) == "done"
    assert len(viewer.layers) == n_layers
    assert viewer.layers["cells labels (threshold)"] is layer
    assert layer.data.max() == 0
    assert layer.opacity == pytest.approx(0.3)


def test_edited_labels_are_not_overwritten(qtbot, widget):
    viewer = widget._viewer
    viewer.add_image(blobs(seed=1), name="cells")
    widget.image.value = viewer.layers["cells"]
    assert run_and_wait(qtbot, widget) == "done"
    layer = viewer.layers["cells labels (threshold)"]
    layer.paint((2, 2), 99, refresh=False)  # what the brush does (emits the paint event)
    assert run_and_wait(qtbot, widget) == "done"
    assert layer.data[2, 2] == 99  # the person's edit is still there
    assert "cells labels (threshold) (2)" in viewer.layers
    assert viewer.layers["cells labels (threshold) (2)"].data[2, 2] == 0
    assert "edited" in widget.status.value


def paint_three_cells(layer):
    """Three cells painted with napari's brush code path (each stroke is one undo step)."""
    for i, (y, x) in enumerate([(20, 20), (50, 60), (80, 30)], start=1):
        layer.paint((y, x), i, refresh=False)


def test_the_users_own_labels_layer_is_never_modified(qtbot, widget):
    """A layer napari-unet did not create is the person's: painted cells under the name
    Segment used to write to, or a curated mask loaded under the exact result name, stay
    as they are, and Ctrl+Z still undoes the person's last stroke."""
    viewer = widget._viewer
    viewer.add_image(blobs(seed=1), name="cells")
    widget.image.value = viewer.layers["cells"]
    mine = viewer.add_labels(np.zeros((96, 110), np.int32), name="cells labels")
    curated = viewer.add_labels(np.zeros((96, 110), np.int32), name="cells labels (threshold)")
    for layer in (mine, curated):
        layer.brush_size = 5
        paint_three_cells(layer)
    before = mine.data.copy()
    assert set(np.unique(before)) == {0, 1, 2, 3}
    assert run_and_wait(qtbot, widget) == "done", widget.status.value
    for layer in (mine, curated):
        np.testing.assert_array_equal(layer.data, before)
    result = viewer.layers["cells labels (threshold) (2)"]
    assert result.data.max() > 0
    assert "your layer" in widget.status.value
    curated.undo()  # Ctrl+Z: the last stroke (cell 3) goes, the others stay
    assert set(np.unique(curated.data)) == {0, 1, 2}
    mine.undo()
    assert set(np.unique(mine.data)) == {0, 1, 2}


def test_results_of_different_models_go_to_layers_named_after_them(qtbot, widget, tmp_path):
    from napari_unet import save_model

    viewer = widget._viewer
    viewer.add_image(blobs(seed=3), name="cells")
    widget.image.value = viewer.layers["cells"]
    assert run_and_wait(qtbot, widget) == "done"
    widget.model.file.value = save_model(threshold_unet(), tmp_path / "tuned.pt")
    assert run_and_wait(qtbot, widget) == "done"
    assert "cells labels (threshold)" in viewer.layers and "cells labels (tuned)" in viewer.layers
    assert "'cells labels (tuned)'" in widget.status.value


def test_core_warnings_stay_in_the_status_line(qtbot, widget, model_path):
    """A warning of the core (here: NaN pixels, segmented as background) is shown in the
    status line, after the success line, not only as a notification that fades."""
    import warnings

    from napari_unet import load_model, segment

    img = blobs(seed=5)
    img[:10, :10] = np.nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        segment(img, load_model(model_path), device="cpu")
    said = [str(c.message) for c in caught if issubclass(c.category, UserWarning)]
    if not said:
        pytest.skip("this core does not warn about NaN pixels")
    viewer = widget._viewer
    viewer.add_image(img, name="holes")
    widget.image.value = viewer.layers["holes"]
    assert run_and_wait(qtbot, widget) == "done", widget.status.value
    status = widget.status.value
    assert "cells in" in status  # the success line...
    assert f"Warning: {said[0]}" in status  # ...and the warning after it
    assert status.index("cells in") < status.index("Warning:")
    from napari_unet._widgets._common import status_kind

    assert status_kind(widget.status) == "warning"
    assert widget.runner.warnings == [said[0]]  # once, however often the core warned


def test_probabilities_layer(qtbot, widget):
    viewer = widget._viewer
    viewer.add_image(blobs(seed=2), name="img")
    widget.image.value = viewer.layers["img"]
    widget.probabilities.value = True
    assert run_and_wait(qtbot, widget) == "done"
    probs = viewer.layers["img probabilities (threshold)"]
    assert isinstance(probs, napari.layers.Image)
    assert probs.data.shape == (3, 96, 110) and probs.data.dtype == np.float32
    np.testing.assert_allclose(probs.data.sum(axis=0), 1.0, atol=1e-4)
    fg = probs.data[1] > 0.5
    cells = viewer.layers["img labels (threshold)"].data > 0
    assert np.array_equal(fg & cells, cells)


def test_cancel_stops_quickly_and_adds_no_layer(qtbot, widget):
    viewer = widget._viewer
    viewer.add_image(blobs((1500, 1500), n=50), name="big")
    widget.image.value = viewer.layers["big"]
    widget.tile_size.value = 16  # hundreds of tiny tiles: a long run
    n_layers = len(viewer.layers)
    widget.run_button.native.click()
    # wait until tiles are being predicted (first progress with a total)
    qtbot.waitUntil(lambda: widget.progress.max > 0 and widget.progress.value > 0, timeout=WAIT_MS)
    assert widget.runner.running
    t0 = time.perf_counter()
    widget.cancel_button.native.click()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=5_000)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, f"cancel took {elapsed:.2f} s"
    assert widget.runner.last_outcome == "cancelled"
    assert len(viewer.layers) == n_layers and "big labels (threshold)" not in viewer.layers
    assert "Cancelled" in widget.status.value
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_corrupt_model_file_gives_message(qtbot, widget, tmp_path):
    viewer = widget._viewer
    viewer.add_image(blobs(), name="cells")
    widget.image.value = viewer.layers["cells"]
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"this is not a model" * 10)
    widget.model.file.value = bad
    assert run_and_wait(qtbot, widget) == "error"
    assert "broken.pt" in widget.status.value and "not a readable" in widget.status.value
    assert "cells labels (threshold)" not in viewer.layers
    assert len(viewer.layers) == 1
    assert widget.run_button.enabled  # ready for another try


def test_bad_input_messages(qtbot, widget):
    viewer = widget._viewer
    # no image layer at all
    widget.run_button.native.click()
    assert widget.runner.worker is None
    assert "No image layer" in widget.status.value
    # axes that do not fit the image
    viewer.add_image(blobs(), name="cells")
    widget.image.value = viewer.layers["cells"]
    widget.axes.value = "ZYX"
    widget.run_button.native.click()
    assert widget.runner.worker is None
    assert "ZYX" in widget.status.value and "2" in widget.status.value
    # a model-file choice without a file
    widget.axes.value = "auto"
    widget.model.file.value = ""
    widget.run_button.native.click()
    assert widget.runner.worker is None
    assert "model file" in widget.status.value.lower()
    assert len(viewer.layers) == 1


def test_3d_stack_and_small_image(qtbot, widget):
    viewer = widget._viewer
    stack = np.stack([blobs((40, 52), seed=s, n=3) for s in range(3)])  # smaller than the field of view
    viewer.add_image(stack, name="stack", scale=(2.0, 0.5, 0.5))
    widget.image.value = viewer.layers["stack"]
    widget.min_size.value = 0
    widget.plane_by_plane.value = True  # unrelated sections
    assert run_and_wait(qtbot, widget) == "done", widget.status.value
    labels = viewer.layers["stack labels (threshold)"]
    assert labels.data.shape == stack.shape and labels.data.dtype == np.int32
    assert tuple(labels.scale) == (2.0, 0.5, 0.5)
    for z in range(3):  # every plane segmented, ids unique across planes
        assert labels.data[z].max() > 0
    assert not set(np.unique(labels.data[0])[1:]) & set(np.unique(labels.data[1])[1:])


def test_rgb_layer(qtbot, widget):
    viewer = widget._viewer
    gray = blobs(seed=3)
    rgb = (np.stack([gray, gray * 0.5, gray * 0.8], axis=-1) * 255).astype(np.uint8)
    layer = viewer.add_image(rgb, name="rgb")
    assert layer.rgb
    widget.image.value = layer
    assert run_and_wait(qtbot, widget) == "done", widget.status.value
    labels = viewer.layers["rgb labels (threshold)"]
    assert labels.data.shape == gray.shape
    assert labels.data.max() > 0


def test_multichannel_with_axes(qtbot, widget, tmp_path):
    """A 2-channel image named 'CYX' with a 2-input model: the channel axis is dropped."""
    from napari_unet import save_model

    path = save_model(threshold_unet(in_channels=2), tmp_path / "two.pt")
    viewer = widget._viewer
    img = np.stack([blobs(seed=4), blobs(seed=4)])
    viewer.add_image(img, name="two", scale=(1.0, 0.5, 0.5))
    widget.image.value = viewer.layers["two"]
    widget.model.file.value = path
    widget.axes.value = "CYX"
    assert run_and_wait(qtbot, widget) == "done", widget.status.value
    labels = viewer.layers["two labels (two)"]
    assert labels.data.shape == img.shape[1:]
    assert tuple(labels.scale) == (0.5, 0.5)
    assert labels.data.max() > 0


def test_lazy_multiscale_layer(qtbot, widget):
    da = pytest.importorskip("dask.array")
    viewer = widget._viewer
    img = blobs((128, 128), seed=5)
    pyramid = [da.from_array(img, chunks=64), da.from_array(img[::2, ::2], chunks=64)]
    viewer.add_image(pyramid, name="pyr", multiscale=True)
    widget.image.value = viewer.layers["pyr"]
    widget.min_size.value = 0
    assert run_and_wait(qtbot, widget) == "done", widget.status.value
    labels = viewer.layers["pyr labels (threshold)"]
    assert labels.data.shape == img.shape  # the full-resolution level
    assert labels.data.max() > 0
    assert "full-resolution" in widget.status.value


def _bundled_exists() -> bool:
    from importlib.resources import files

    return files("napari_unet").joinpath("models", "bundled.pt").is_file()


@pytest.mark.skipif(not _bundled_exists(), reason="the bundled model is not trained yet")
def test_default_bundled_model(qtbot, make_napari_viewer):
    from napari_unet._widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    assert w.model.path is None  # the default is the bundled model
    viewer.add_image(blobs((128, 128), seed=6) * 1000, name="cells")
    w.reset_choices()  # napari does this for a docked widget when layers change
    w.image.value = viewer.layers["cells"]
    assert run_and_wait(qtbot, w, timeout=120_000) == "done", w.status.value
    assert viewer.layers["cells labels (bundled)"].data.max() > 0


def test_unavailable_device_is_reported_not_swallowed(qtbot, widget):
    """An explicit 'cuda' on a machine without one: a clear message, no silent CPU run.

    DeviceError is a RuntimeError, which superqt's worker would drop silently; the
    runner re-raises it so the message reaches the person.
    """
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    viewer = widget._viewer
    viewer.add_image(blobs(), name="cells")
    widget.image.value = viewer.layers["cells"]
    widget.device.value = "cuda"
    assert "cuda" in widget.device.info.value.lower()  # the picker already says so
    assert run_and_wait(qtbot, widget) == "error"
    assert "cuda" in widget.status.value.lower()
    assert "cells labels (threshold)" not in viewer.layers


def test_device_picker_warns_about_cpu_only_torch(qtbot, monkeypatch):
    """A machine with an NVIDIA GPU but a CPU-only torch: 'auto' says so in the widget."""
    import torch

    from napari_unet import device
    from napari_unet._widgets._sections import DevicePicker

    if torch.cuda.is_available():
        pytest.skip("this torch can use the GPU")
    monkeypatch.setattr(device, "nvidia_gpu_present", lambda: True)  # no GPU in CI
    picker = DevicePicker()
    assert picker.info.value.startswith("cpu")
    assert "cannot use it" in picker.info.value and "CUDA build" in picker.info.value


def test_cell_size_auto_given_and_unknown(qtbot, widget, tmp_path):
    from napari_unet import save_model

    viewer = widget._viewer
    img = blobs(shape=(200, 220), n=10, radius=15)
    viewer.add_image(img, name="big")
    widget.image.value = viewer.layers["big"]
    widget.min_size.value = 0
    assert widget.cell_size.value == "auto" and not widget.diameter.enabled
    # the fixture's model records no cell size: segmented as is, and the status says why
    assert run_and_wait(qtbot, widget) == "done", widget.status.value
    assert "records no cell diameter" in widget.status.value
    as_is = viewer.layers["big labels (threshold)"].data.copy()
    # a model that knows 12 px cells, told these are 30 px: zoomed 0.4x, same blobs found
    sized = threshold_unet()
    sized.meta["diameter"] = 12.0
    widget.model.file.value = save_model(sized, tmp_path / "sized.pt")
    widget.cell_size.value = "diameter"
    assert widget.diameter.enabled
    widget.diameter.value = 30.0
    assert run_and_wait(qtbot, widget) == "done", widget.status.value
    assert "zoomed 0.40x" in widget.status.value
    # auto with that model: measured (the blobs are 30 px), shown in the diameter box
    widget.diameter.value = 50.0
    widget.cell_size.value = "auto"
    assert run_and_wait(qtbot, widget) == "done", widget.status.value
    assert abs(widget.diameter.value - 30) < 3 and not widget.diameter.enabled
    assert "cells ~" in widget.status.value
    zoomed = viewer.layers["big labels (threshold)"].data
    assert zoomed.shape == img.shape
    inter = np.logical_and(zoomed > 0, as_is > 0).sum()
    assert inter / np.logical_or(zoomed > 0, as_is > 0).sum() > 0.9
