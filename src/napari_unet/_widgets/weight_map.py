"""The Weight map dock widget: the paper's boundary weight map of a Labels layer, live.

Pick a Labels layer, set w0, sigma and the class balance, press Compute (or tick "live"
and drag sigma): the map is shown as an Image layer ``"<labels> weights"`` (magma
colormap), updated in place on every re-run. Large layers (> 0.25 Mpx), and every layer
until numba's kernels are compiled (in a background thread at start), are computed in a
napari ``thread_worker``. Live changes are throttled, not debounced: while sigma is
dragged the map follows every ``THROTTLE_MS`` with the newest values; at most one job runs
at a time and a change (a value, or a paint on the labels) arriving meanwhile is computed
when it ends, so dragging never queues a backlog and no edit is dropped.
A 3D layer (a Z stack) gets one 3D map with 3D distances, the layer's ``scale`` giving the
voxel spacing (sigma in X pixels), unless "plane by plane" is ticked.
The core is ``napari_unet.weights.weight_map`` (Qt-free, tested without a viewer).
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSlider, FloatSpinBox, PushButton
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import QTimer

from ._common import add_or_update_layer, layer_data, scroll_form, set_status, status_label
from ._sections import layer_picker

if TYPE_CHECKING:  # pragma: no cover
    import napari


@dataclass(frozen=True)
class WeightParams:
    """The inputs of one computation (compared to skip needless re-runs)."""

    layer_name: str
    w0: float
    sigma: float
    class_weights: str
    per_plane: bool = False
    spacing: tuple[float, ...] | None = None  # pixel size per axis in X pixels (layer scale); None: 1


class DistanceCache:
    """Distances ``d1``, ``d2`` of the last labels seen, reused while only w0/sigma change.

    Re-weighting cached distances is one pass over the pixels, so dragging sigma *down*
    is instant; distances are computed with 20% more reach than asked, so small steps up
    are too. The key includes a CRC of the label pixels, so painting invalidates it.
    """

    HEADROOM = 1.2

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.cutoff = 0.0
        self.distances: list[tuple[np.ndarray, np.ndarray]] = []
        self.hits = 0

    def get(self, planes: np.ndarray, per_plane: bool, cutoff: float,
            spacing: tuple[float, ...] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        from ..weights import border_distances

        key = (planes.shape, planes.dtype.str, per_plane, spacing,
               zlib.crc32(memoryview(np.ascontiguousarray(planes)).cast("B")))
        if key == self.key and self.cutoff >= cutoff:
            self.hits += 1
            return self.distances
        reach = cutoff * self.HEADROOM
        self.distances = [border_distances(p, reach, spacing) for p in planes]
        self.key, self.cutoff = key, reach
        return self.distances


def _compute(
    labels: np.ndarray, params: WeightParams, cache: DistanceCache | None = None
) -> tuple[np.ndarray, WeightParams]:
    """The map of a 2D or 3D layer, or of each 2D plane of a stack (``per_plane``)."""
    from ..targets import check_labels
    from ..weights import cutoff_distance, weight_map, weight_map_from_distances

    cw = None if params.class_weights == "none" else params.class_weights
    lab = check_labels(labels)
    if params.per_plane and lab.ndim > 2:
        planes = lab.reshape((-1,) + lab.shape[-2:])
    elif lab.ndim in (2, 3):
        planes = lab[None]
    else:
        raise ValueError(f"labels must be 2D or 3D, got {lab.ndim}D; use 'plane by plane'")
    if cache is None or params.w0 <= 0:
        out = np.stack([weight_map(p, w0=params.w0, sigma=params.sigma, class_weights=cw, spacing=params.spacing)
                        for p in planes])
        return out.reshape(lab.shape), params
    if not params.sigma > 0:
        raise ValueError(f"sigma must be > 0, got {params.sigma}")
    dists = cache.get(planes, params.per_plane, cutoff_distance(params.w0, params.sigma), params.spacing)
    out = np.stack([
        weight_map_from_distances(p, d1, d2, params.w0, params.sigma, cw) for p, (d1, d2) in zip(planes, dists)
    ])
    return out.reshape(lab.shape), params


def _compile_kernels() -> None:
    from ..weights import compile_kernels

    compile_kernels()


class WeightMapWidget(Container):
    """Compute and show the U-Net boundary weight map of a Labels layer."""

    #: layers with more pixels than this are computed off the GUI thread
    SYNC_MAX_PIXELS = 250_000
    #: while values keep changing, live updates run at most this often (ms)
    THROTTLE_MS = 120

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        self._viewer = napari_viewer
        self.status = status_label()
        self.form = Container(widgets=[*self._input_section(), *self._settings_section(), self.status], labels=True)
        super().__init__(widgets=[self.form], labels=False)
        self.scroll = scroll_form(self, self.form)
        self.worker: Any = None
        self.cache = DistanceCache()
        self.shown: WeightParams | None = None  # what the output layer shows now
        self._pending = False  # a newer request arrived while a worker was running
        self._watched: Any = None  # the Labels layer whose edits trigger live updates
        self._connect_live()
        self._sync_per_plane()
        self._watch_layer()
        # compile the distance kernels before the first slider move (no-op when done); until
        # then every computation runs in a worker, so the first Compute never freezes the GUI
        self._warmup = threading.Thread(target=_compile_kernels, name="napari-unet-compile", daemon=True)
        self._warmup.start()
        self._describe()

    def _input_section(self) -> list[Any]:
        self.labels_layer = layer_picker("Labels", "Labels", "Instance labels: 0 is background, each other id one cell")
        self.w0 = FloatSpinBox(
            label="Border weight w0", value=10.0, min=0.0, max=1000.0, step=1.0,
            tooltip="w0: how much more the thin gaps between touching cells count in training than other "
            "pixels (the paper: 10; 0 = no extra weight)",
        )
        self.sigma = FloatSlider(
            label="Border width σ (px)", value=5.0, min=0.5, max=30.0, step=0.5,
            tooltip="How far from the gap between two cells the extra weight reaches, in pixels (the paper: about 5)",
        )
        self.class_weights = ComboBox(
            label="Class balance", choices=["none", "balanced"], value="none",
            tooltip="Whether rare classes weigh more. none: every pixel counts the same; balanced: each class "
            "(background, cell) counts as much in total, so the rarer one's pixels weigh more (mean 1 over the image)",
        )
        self.sigma.native.setToolTip(self.sigma.tooltip)  # also over its number box
        return [self.labels_layer, self.w0, self.sigma, self.class_weights]

    def _settings_section(self) -> list[Any]:
        self.per_plane = CheckBox(
            text="plane by plane (stacks, time series)", value=False,
            tooltip="For a layer with more than 2 dimensions: one 2D map per plane instead of "
            "one 3D map (always on beyond 3D)",
        )
        self.live = CheckBox(text="live (recompute when a value changes)", value=True,
                             tooltip="On: the map is computed again shortly after you change a value or "
                             "paint on the labels. Off: only when you press Compute")
        self.compute_button = PushButton(text="Compute", tooltip="Compute the weight map of the chosen "
                                         "Labels layer into an Image layer '<labels> weight map'")
        return [self.per_plane, self.live, self.compute_button]

    def _connect_live(self) -> None:
        """Compute on the button, and (live) shortly after any value or the labels change."""
        # parented to the widget, so it dies with it (no late timeout after the dock closes)
        self._timer = QTimer(self.native)
        self._timer.setSingleShot(True)
        self._timer.setInterval(self.THROTTLE_MS)
        self._timer.timeout.connect(self.compute)
        self.compute_button.changed.connect(self.compute)
        for w in (self.w0, self.sigma, self.class_weights, self.per_plane, self.labels_layer):
            w.changed.connect(self._value_changed)
        self.labels_layer.changed.connect(self._sync_per_plane)
        self.labels_layer.changed.connect(self._describe)
        self.labels_layer.changed.connect(self._watch_layer)

    # -- helpers -------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.worker is not None

    def output_name(self, layer: Any) -> str:
        return f"{layer.name} weights"

    def params(self) -> WeightParams | None:
        layer = self.labels_layer.value
        if layer is None:
            return None
        ndim = layer.ndim
        per_plane = ndim > 3 or (ndim == 3 and bool(self.per_plane.value))
        # distances in X pixels along the axes of one map: a Z step of 3 (layer scale) is 3 px
        scale = np.abs(np.asarray(layer.scale, float)[-2 if per_plane else -ndim:])
        spacing = tuple(float(v) for v in scale / scale[-1])
        return WeightParams(
            layer.name, float(self.w0.value), float(self.sigma.value), self.class_weights.value, per_plane,
            None if all(v == 1.0 for v in spacing) else spacing,
        )

    def _sync_per_plane(self, *_: Any) -> None:
        layer = self.labels_layer.value
        self.per_plane.visible = layer is not None and layer.ndim == 3

    def _watch_layer(self, *_: Any) -> None:
        """Recompute (when live) after the person paints on, or replaces, the labels."""
        for layer, connect in ((self._watched, False), (self.labels_layer.value, True)):
            if layer is None:
                continue
            for name in ("data", "paint"):
                emitter = getattr(layer.events, name, None)
                if emitter is None:
                    continue
                if connect:
                    emitter.connect(self._value_changed)
                else:
                    emitter.disconnect(self._value_changed)
        self._watched = self.labels_layer.value

    def _value_changed(self, *_: Any) -> None:
        if self.live.value and self.labels_layer.value is not None and not self._timer.isActive():
            # a throttle: the first change of a burst starts the timer, later ones do not
            # restart it, so a continuous drag is computed every THROTTLE_MS (newest values)
            self._timer.start()

    def _describe(self, *_: Any) -> None:
        if self.shown is None and not self.running:
            text = ("Choose a Labels layer" if self.labels_layer.value is None
                    else "Press Compute, or drag sigma (live)")
            set_status(self.status, text)

    # -- running ---------------------------------------------------------------------

    def compute(self, *_: Any) -> None:
        """Compute the map for the current values (in a worker when the layer is large)."""
        layer = self.labels_layer.value
        if layer is None:
            show_error("Weight map: choose a Labels layer first")
            set_status(self.status, "Choose a Labels layer first", "error")
            return
        if self.running:
            self._pending = True  # run again with the newest values when this one ends
            return
        params = self.params()
        data = layer_data(layer)
        labels = np.asarray(data)
        if labels.size <= self.SYNC_MAX_PIXELS and not self._warmup.is_alive():
            try:
                result = _compute(labels, params, self.cache)
            except ValueError as exc:
                self._error(exc)
                return
            self._show(result, layer)
            return
        set_status(self.status, f"Computing ({labels.size / 1e6:.1f} Mpx)...")
        labels = labels.copy()  # the person may paint while the worker reads it
        worker = create_worker(
            _compute, labels, params, self.cache, _start_thread=False, _ignore_errors=True
        )
        self.worker = worker
        worker.returned.connect(lambda res: self._show(res, layer))
        worker.errored.connect(self._error)
        worker.finished.connect(self._finished)
        worker.start()

    def _finished(self) -> None:
        self.worker = None
        if self._pending:
            # always recompute: the change may be a paint on the labels, which the params
            # do not show (unchanged labels cost little: the distances are cached)
            self._pending = False
            self.compute()

    def _error(self, exc: BaseException) -> None:
        text = str(exc) or type(exc).__name__
        show_error(f"Weight map: {text}")
        set_status(self.status, text, "error")

    def _show(self, result: tuple[np.ndarray, WeightParams], layer: Any) -> None:
        w, params = result
        lo = float(w.min())
        hi = max(float(w.max()), lo + 1e-3)
        out = add_or_update_layer(
            self._viewer, w, self.output_name(layer), "image",
            writer="weight_map", colormap="magma", contrast_limits=(lo, hi),
            scale=tuple(layer.scale), translate=tuple(layer.translate), blending="additive",
            opacity=0.8,
        )
        self.shown = params
        note = f"; {out.note}" if out.note else ""
        set_status(
            self.status,
            f"border weight w0 {params.w0:g}, width σ {params.sigma:g} px, class balance {params.class_weights}"
            + ("" if params.spacing is None else
               ", pixel spacing " + " x ".join(f"{v:g}" for v in params.spacing) + " (layer scale)")
            + f": weights {lo:.2f} to {hi:.2f}{note}",
        )
