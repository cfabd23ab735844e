"""The Weight map dock widget with a real napari viewer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from napari_unet.synthetic import touching_cells
from napari_unet.weights import TOLERANCE, weight_map

pytestmark = pytest.mark.gui

SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "images" / "weight_map.png"


def _cells(shape, n, radius, seed=0):
    """Touching cells with ids 1..n, radii 0.6-1.1 x ``radius``."""
    return touching_cells(shape, n, radius, seed, ids="consecutive", size_range=(0.6, 1.1))


@pytest.fixture
def widget(make_napari_viewer, qtbot):
    from napari_unet._widgets.weight_map import WeightMapWidget

    viewer = make_napari_viewer()
    w = WeightMapWidget(viewer)
    viewer.window.add_dock_widget(w, name="Weight map")
    return viewer, w


def _wait_for(qtbot, viewer, name, expected, timeout=10000):
    def shown():
        assert name in viewer.layers
        # cached distances may reach further than the cutoff: equal to the tolerance
        np.testing.assert_allclose(viewer.layers[name].data, expected, atol=2 * TOLERANCE)

    qtbot.waitUntil(shown, timeout=timeout)


def test_compute_then_live_sigma_updates_layer_in_place(widget, qtbot):
    viewer, w = widget
    labels = _cells((160, 200), 30, 18, seed=1)
    viewer.add_labels(labels, name="cells")
    w.labels_layer.value = viewer.layers["cells"]
    w.live.value = False
    w.sigma.value = 5.0
    w.compute_button.clicked.emit()
    _wait_for(qtbot, viewer, "cells weights", weight_map(labels, sigma=5.0))
    layer = viewer.layers["cells weights"]
    assert layer.colormap.name == "magma"
    assert layer.contrast_limits[1] > 5  # the border term shows

    w.live.value = True
    for s in (6.0, 7.5, 9.0):  # a quick burst of changes, as when dragging the slider
        w.sigma.value = s
    expected = weight_map(labels, sigma=9.0)
    assert np.abs(expected - layer.data).max() > 0.5  # the wait below can fail
    _wait_for(qtbot, viewer, "cells weights", expected)
    assert viewer.layers["cells weights"] is layer  # updated in place, not a new layer
    assert sum(lay.name.startswith("cells weights") for lay in viewer.layers) == 1

    w.class_weights.value = "balanced"
    _wait_for(qtbot, viewer, "cells weights", weight_map(labels, sigma=9.0, class_weights="balanced"))

    # a smaller sigma reuses the distances (no new distance transform) and is still right
    hits = w.cache.hits
    w.sigma.value = 3.0
    _wait_for(qtbot, viewer, "cells weights", weight_map(labels, sigma=3.0, class_weights="balanced"))
    assert w.cache.hits > hits
    # new labels (as after painting) are recomputed live, not served from the cache
    layer_labels = viewer.layers["cells"]
    edited = layer_labels.data.copy()
    edited[:40] = 0
    layer_labels.data = edited.copy()  # napari keeps the array it is given
    _wait_for(qtbot, viewer, "cells weights", weight_map(edited, sigma=3.0, class_weights="balanced"))
    # painting edits the array in place: seen too
    layer_labels.brush_size = 15
    layer_labels.paint((100, 100), 999)  # a new cell
    painted = np.asarray(layer_labels.data).copy()
    assert not np.array_equal(painted, edited)
    _wait_for(qtbot, viewer, "cells weights", weight_map(painted, sigma=3.0, class_weights="balanced"))


def test_large_layer_runs_in_a_worker(widget, qtbot):
    viewer, w = widget
    w.SYNC_MAX_PIXELS = 1000  # force the threaded path on a small layer
    labels = _cells((120, 120), 20, 15, seed=2)
    viewer.add_labels(labels, name="big")
    w.labels_layer.value = viewer.layers["big"]
    w.live.value = True
    w.compute()
    assert w.running  # off the GUI thread
    w.sigma.value = 3.0  # arrives while the first job runs: computed after it
    _wait_for(qtbot, viewer, "big weights", weight_map(labels, sigma=3.0))
    qtbot.waitUntil(lambda: not w.running, timeout=5000)


def test_sigma_follows_a_drag_without_pauses(widget, qtbot):
    """A value stream with no pause (a change every 30 ms, as while dragging) shows
    intermediate maps; a restarting debounce showed nothing until the drag ended."""
    viewer, w = widget
    labels = _cells((160, 200), 30, 18, seed=4)
    w.labels_layer.value = viewer.add_labels(labels, name="cells")
    w.live.value = True
    qtbot.waitUntil(lambda: w.shown is not None and not w.running, timeout=20_000)  # the first map
    seen = set()
    stream = np.round(np.linspace(2.0, 12.0, 41), 1)  # 41 changes, 30 ms apart: 1.2 s
    for value in stream:
        w.sigma.value = float(value)
        qtbot.wait(30)
        if w.shown is not None:
            seen.add(w.shown.sigma)
    intermediate = seen - {5.0, float(stream[-1])}
    print(f"{len(intermediate)} intermediate maps during a {len(stream)}-step drag")
    assert len(intermediate) >= 3, f"the map did not follow the drag: saw sigma {sorted(seen)}"
    _wait_for(qtbot, viewer, "cells weights", weight_map(labels, sigma=float(stream[-1])))


def test_paint_during_a_background_computation_is_not_dropped(widget, qtbot):
    viewer, w = widget
    labels = _cells((600, 600), 150, 20, seed=5)  # above SYNC_MAX_PIXELS: computed in a worker
    layer = viewer.add_labels(labels.copy(), name="cells")  # napari paints into the array it holds
    w.live.value = False
    w.labels_layer.value = layer
    qtbot.waitUntil(lambda: not w._warmup.is_alive(), timeout=60_000)
    w.compute()
    assert w.running
    layer.brush_size = 21
    layer.paint((300, 300), 999, refresh=False)  # the person paints while it runs...
    w.compute()  # ...and presses Compute (live: the throttle timer fires) before it ends
    painted = np.asarray(layer.data).copy()
    assert not np.array_equal(painted, labels)
    _wait_for(qtbot, viewer, "cells weights", weight_map(painted), timeout=60_000)
    qtbot.waitUntil(lambda: not w.running, timeout=60_000)
    layer.undo()  # Ctrl+Z still takes the stroke back
    np.testing.assert_array_equal(layer.data, labels)


def test_compute_does_not_stall_the_gui(make_napari_viewer, qtbot):
    """The first Compute in a fresh widget (numba kernels maybe still compiling: 1.1 s on
    the GUI thread before) and a recompute, on a large layer: the GUI thread never waits
    more than 0.3 s. The first result's display is napari adding the new Image layer
    (its controls, selection and texture: a fixed cost of napari), timed apart."""
    from _helpers import GuiStalls

    from napari_unet._widgets.weight_map import WeightMapWidget

    viewer = make_napari_viewer()
    labels = _cells((1000, 1000), 400, 25, seed=6)  # 1 Mpx: the old code computed it on the GUI thread
    layer = viewer.add_labels(labels, name="cells")
    w = WeightMapWidget(viewer)
    viewer.window.add_dock_widget(w, name="Weight map")
    w.live.value = False
    w.labels_layer.value = layer
    show = w._show
    computing = GuiStalls()

    def stop_then_show(*args):  # the computation ends here; napari's layer add follows
        computing.__exit__()
        show(*args)

    w._show = stop_then_show
    with computing:
        w.compute_button.clicked.emit()
        qtbot.waitUntil(lambda: w.shown is not None and not w.running, timeout=60_000)
    w._show = show
    np.testing.assert_allclose(viewer.layers["cells weights"].data, weight_map(labels), atol=2 * TOLERANCE)
    w.sigma.value = 7.0  # a recompute: the layer exists, updated in place (display included)
    with GuiStalls() as again:
        w.compute_button.clicked.emit()
        qtbot.waitUntil(lambda: w.shown.sigma == 7.0 and not w.running, timeout=60_000)
    print(f"longest GUI stall: first Compute {computing.longest:.3f} s, recompute {again.longest:.3f} s")
    assert computing.longest < 0.3, f"the GUI froze for {computing.longest:.2f} s on the first Compute"
    assert again.longest < 0.3, f"the GUI froze for {again.longest:.2f} s on a recompute"


def test_status_is_never_empty(widget):
    viewer, w = widget
    assert "Labels layer" in w.status.value
    w.labels_layer.value = viewer.add_labels(_cells((60, 60), 5, 10), name="c")
    assert w.status.value


def test_bad_labels_show_an_error(widget, qtbot, monkeypatch):
    viewer, w = widget
    shown = []
    monkeypatch.setattr("napari_unet._widgets.weight_map.show_error", shown.append)
    bad = np.zeros((30, 30), np.int32)
    bad[5:10, 5:10] = -3
    layer = viewer.add_labels(bad, name="negative")
    w.labels_layer.value = layer
    w.compute()
    assert shown and "negative" in shown[-1]
    assert "negative weights" not in viewer.layers
    assert "negative" in w.status.value


def test_stacks_volume_or_plane_by_plane(widget, qtbot):
    viewer, w = widget
    w.live.value = False
    vol = np.stack([_cells((40, 50), 6, 9, seed=s) for s in range(3)])
    viewer.add_labels(vol, name="stack")
    w.labels_layer.value = viewer.layers["stack"]
    w.compute()
    _wait_for(qtbot, viewer, "stack weights", weight_map(vol))
    w.per_plane.value = True
    w.compute()
    _wait_for(qtbot, viewer, "stack weights", np.stack([weight_map(p) for p in vol]))
    # beyond 3D: always plane by plane
    ts = np.stack([vol, vol[::-1]])
    viewer.add_labels(ts, name="ts")
    w.labels_layer.value = viewer.layers["ts"]
    w.compute()
    _wait_for(qtbot, viewer, "ts weights", np.stack([weight_map(p) for p in ts.reshape(-1, 40, 50)]).reshape(ts.shape))


def test_no_layer_says_so(widget, monkeypatch):
    viewer, w = widget
    shown = []
    monkeypatch.setattr("napari_unet._widgets.weight_map.show_error", shown.append)
    w.compute()
    assert shown and "Labels layer" in shown[-1]


def test_screenshot(widget, qtbot):
    """A docked widget showing a weight map over its labels (docs/images/weight_map.png)."""
    viewer, w = widget
    labels = _cells((300, 400), 70, 22, seed=3)
    layer = viewer.add_labels(labels, name="cells", opacity=0.6)
    w.labels_layer.value = layer
    w.sigma.value = 5.0
    w.compute()
    _wait_for(qtbot, viewer, "cells weights", weight_map(labels, sigma=5.0))
    viewer.layers.move(viewer.layers.index("cells"), len(viewer.layers))  # labels on top
    layer.contour = 1  # cell outlines over the map, so both can be seen
    viewer.layers.selection.active = viewer.layers["cells weights"]
    viewer.window._qt_window.resize(1400, 780)
    viewer.reset_view()
    qtbot.wait(200)
    img = viewer.screenshot(canvas_only=False, flash=False)
    assert img.shape[0] > 300 and img[..., :3].std() > 10  # not a blank image
    # NAPARI_UNET_SCREENSHOTS=1 refreshes the docs image (not on every run: it is tracked)
    if os.environ.get("NAPARI_UNET_SCREENSHOTS") == "1":
        from skimage.io import imsave

        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        imsave(SCREENSHOT, img, check_contrast=False)


def test_opens_from_the_plugin_menu(make_napari_viewer):
    """The manifest entry (napari.yaml) builds the widget."""
    from napari_unet._widgets.weight_map import WeightMapWidget

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Weight map")
    assert isinstance(widget, WeightMapWidget)
