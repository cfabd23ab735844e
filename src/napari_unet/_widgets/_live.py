"""The Live section of the Annotate widget: the model learns while the person annotates.

A thin skin over :class:`napari_unet.live.LiveProcess` (a :class:`napari_unet.live.LiveRun`
in a process of its own). With *Live* on:

* the run trains in its own process (one torch thread, at a lower CPU priority than the
  viewer, so that training and proposals never hold up the viewer's event loop) on the
  training set and on what is being annotated on the plane in view (the training area:
  the annotated region, the whole plane for complete labels, else the labelled cells and
  a margin); each change of the annotation layer (painting, Split, Merge, accepting...)
  reaches it at the next refresh;
* every few seconds the view is predicted again into ``"<image> live proposal"`` -- its
  own Labels layer beside the person's, which the loop never writes -- with the cells the
  person has labelled left out, and ``"<image> live uncertainty"`` shows each proposed
  cell's doubt (1 - confidence, :func:`napari_unet.live.cell_confidence`);
* a click on a proposed cell (proposal layer selected) accepts it into the annotation
  layer, Shift+click rejects it; *Accept all in region* accepts every proposed cell in the
  annotated region (or the view); each is one Ctrl+Z; *Next uncertain cell* centres the
  view on the least sure cell not yet looked at.

Switching Live off, closing the dock or closing napari stops the run (and ends its
process) and keeps its best model (``best.pt`` in the chosen folder or a temporary one;
``last.pt`` when the annotations were too small to hold out a validation strip), which
*Predict to annotate* then uses.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, Label, PushButton

from ..annotate import Edit, next_free_id
from ..live import DEFAULT_THREADS
from ._common import (
    add_or_update_layer,
    layer_data,
    on_close,
    row,
    set_status,
    show_error_in,
    wrapped,
)

#: how often the view is predicted again (ms) and how often results are picked up
REFRESH_MS = 3000
POLL_MS = 200
#: pixels of image read around the view (cells at its edge are predicted as in the whole image)
CONTEXT = 32
#: a proposed cell is hidden once the person has labelled this share of it
LABELLED_SHARE = 0.5
WRITER = "annotate-live"


class LiveSection:
    """The Live rows of the Annotate form and what they drive (``widgets``: the rows).

    Attributes for scripts and tests: ``switch``, ``show_uncertainty``, ``next_button``,
    ``accept_region_button``, ``info``, ``run`` (the :class:`LiveProcess`, None when off),
    ``folder`` (where each run's folder with its kept model goes; None: the temporary
    folder), ``kept_path``, ``threads`` (the run's torch threads), ``process`` (False: the
    run trains in a thread of the viewer's process instead, a :class:`LiveRun`).
    """

    def __init__(self, widget: Any) -> None:
        self.w = widget
        self.switch = CheckBox(text="Live: learn while I annotate", value=False,
                               tooltip="Keep training in the background on what you annotate; the cells in view "
                               "are predicted again every few seconds into a proposal layer beside yours")
        self.show_uncertainty = CheckBox(text="uncertainty overlay", value=True,
                                         tooltip="Colour each proposed cell by how unsure the model is of it")
        self.next_button = PushButton(text="Next uncertain cell",
                                      tooltip="Centre the view on the proposed cell the model is least sure of")
        self.accept_region_button = PushButton(text="Accept all in region",
                                               tooltip="Copy every proposed cell inside the annotated region (or "
                                               "the view) into your labels; one Ctrl+Z undoes it")
        self.info = wrapped(Label(value="Off. Click a proposed cell to accept it, Shift+click to reject it"))
        self.widgets = [row(self.switch, self.show_uncertainty), row(self.next_button, self.accept_region_button),
                        self.info]
        self.run: Any = None
        self.folder: Path | None = None
        self.threads = DEFAULT_THREADS
        self.process = True
        self.kept_path: Path | None = None
        self.proposal: Any = None  # the Proposal shown
        self._shown: tuple | None = None  # (plane, box) of the proposal shown
        self._visited: list[tuple[int, ...]] = []
        self._rejected: np.ndarray | None = None
        self._dirty = True
        self._set_names: list[str] = []
        self._margin = 0  # the margin around labelled cells the run was started with
        self._watched: list[Any] = []
        self.latency: list[float] = []  # seconds from a refresh request to the proposal shown
        self._asked: float | None = None
        from qtpy.QtCore import QTimer

        self._refresh_timer, self._poll_timer = QTimer(), QTimer()
        self._refresh_timer.setInterval(REFRESH_MS)
        self._poll_timer.setInterval(POLL_MS)
        self._refresh_timer.timeout.connect(self.refresh)
        self._poll_timer.timeout.connect(self.poll)

    def connect(self) -> None:
        """Wire the rows (once the Annotate widget is built)."""
        self.switch.changed.connect(self._toggled)
        self.show_uncertainty.changed.connect(self._show_overlay)
        self.next_button.changed.connect(self.next_uncertain)
        self.accept_region_button.changed.connect(self.accept_in_region)
        on_close(self.w, self.stop)
        # napari closing deletes the widget: end the run, touching no child widget
        self.w.native.destroyed.connect(lambda *_: self._end_run())

    # -- on and off ------------------------------------------------------------------------

    def _toggled(self, on: bool) -> None:
        if on:
            self.start()
        else:
            self.stop()

    def start(self) -> bool:
        """Start the live run from the widget's model and device."""
        from ..live import LiveProcess, LiveRun

        w = self.w
        if self.run is not None:
            return True
        try:
            if w.image.value is None:
                raise ValueError("No image layer: open an image first")
            if w.annotations.value is None:
                w.new_labels_layer()
            model = w.model_spec()
        except ValueError as exc:
            show_error_in(w.status, exc)
            self.switch.value = False
            return False
        # a folder of its own for each run (a checkpoint folder holds one run)
        folder = Path(tempfile.mkdtemp(prefix="napari-unet-live-", dir=self.folder))
        kind = LiveProcess if self.process else LiveRun
        self._margin = int(w.margin.value)
        self.run = kind(model, device=w.device.value, threads=self.threads, checkpoint_dir=folder,
                        margin=self._margin)
        self.run.start()
        self._dirty, self._set_names, self._visited = True, [], []
        self._rejected = None
        self._refresh_timer.start()
        self._poll_timer.start()
        self.refresh()
        set_status(w.status, "Live learning on: annotate as usual; proposals refresh every few seconds")
        return True

    def _end_run(self) -> Any:
        """Stop the run and return its kept model (no widget is touched)."""
        run, self.run = self.run, None
        if run is None:
            return None
        self._refresh_timer.stop()
        self._poll_timer.stop()
        kept = run.stop()
        self.kept_path = run.kept_path
        return kept

    def stop(self) -> Any:
        """Stop the run, keep its best model and make *Predict to annotate* use it."""
        run = self.run
        kept = self._end_run()
        if self.switch.value:
            self.switch.value = False
        if run is None:
            return None
        w = self.w
        if kept is None or self.kept_path is None or not self.kept_path.is_file():
            set_status(w.status, "Live learning stopped before it had cells to learn from; nothing was kept")
            return None
        w.model.source.value = w.model.FILE
        w.model.file.value = self.kept_path
        what = "best model" if self.kept_path.name == "best.pt" else "model (too few cells to validate: the last)"
        set_status(w.status, f"Live learning stopped after {run.iteration} steps: the {what} is kept in "
                   f"{self.kept_path}; 'Predict to annotate' now uses it")
        self.info.value = "Off."
        return kept

    # -- annotations to the run, proposals back ------------------------------------------------

    def _plane(self) -> tuple[int, ...]:
        return self.w.current_plane(self.w.annotations.value)

    def _watch(self, layer: Any) -> None:
        if layer is not None and not any(x is layer for x in self._watched):
            self._watched.append(layer)
            layer.events.paint.connect(self._mark_dirty)
            if hasattr(layer.events, "data"):
                layer.events.data.connect(self._mark_dirty)

    def _mark_dirty(self, *_: Any) -> None:
        self._dirty = True

    def send_annotations(self) -> None:
        """Hand the run the training set and what is annotated on the plane in view."""
        w, run = self.w, self.run
        samples = w.training_set.samples
        names = [s.name for s in samples]
        if names != self._set_names:
            for name in set(self._set_names) - set(names):
                run.remove_annotation(("set", name))
            for s in samples:
                if s.name not in self._set_names and s.name not in w.held_out:
                    run.set_annotation(("set", s.name), s.image, s.labels, s.region)
            self._set_names = names
        labels = w.annotations.value
        self._watch(labels)
        if w.region.value is not None:
            self._watch(w.region.value)
        if not self._dirty or labels is None:
            return
        self._dirty = False
        plane = self._plane()
        lab = np.asarray(labels.data[plane])
        region = w.region_mask(plane or None)
        if region is None and w.complete.value:
            region = "all"
        elif region is None and int(w.margin.value) != self._margin:
            region = w.training_area(plane)  # the margin changed since the run started
        # else None: the labelled cells and the margin, worked out by the run (not here)
        if (not lab.any()) if region is None else (isinstance(region, np.ndarray) and not region.any()):
            run.remove_annotation("in view")
            return
        # the whole plane (normalised as a whole, as proposals of the view are), the rest ignored
        image = np.asarray(self._image_data()[plane])
        run.set_annotation("in view", image, lab, region)

    def _image_data(self) -> Any:
        return layer_data(self.w.image.value)

    def refresh(self) -> None:
        """Send what changed and ask for a proposal of the view (every few seconds)."""
        w, run = self.w, self.run
        if run is None:
            return
        if run.error is not None:
            error = run.error
            kept = self.stop() is not None
            show_error_in(w.status, f"Live learning stopped: {error}"
                          + (f". Its best model is kept in {self.kept_path}" if kept else ""))
            return
        labels = w.annotations.value
        if labels is None or w.image.value is None or w._viewer.dims.ndisplay != 2:
            return
        try:
            self.send_annotations()
            box = w.view_box(labels)
        except ValueError as exc:
            show_error_in(w.status, exc)
            return
        from .segment import layer_axes

        image = w.image.value
        plane = self._plane()
        H, W = labels.data.shape[-2:]
        ctx = tuple(slice(max(s.start - CONTEXT, 0), min(s.stop + CONTEXT, n)) for s, n in zip(box, (H, W)))
        axes = layer_axes(image, "auto")[-3 if image.rgb else -2:]
        whole = self._image_data()[plane]
        run.request_proposal(np.asarray(whole[ctx]), axes=axes, key=(plane, ctx, box), reference=whole)
        self._asked = time.perf_counter()
        self._show_info()

    def _show_info(self) -> None:
        run = self.run
        if run is None:
            return
        if not run.iteration:
            text = "Live: waiting for cells to learn from" if not run.annotations else "Live: starting..."
        else:
            text = f"Live: step {run.iteration}" + (", up to date with your annotations; paint or correct cells to teach it more" if run.settled else "")
        if self.proposal is not None:
            text += f"; proposal from step {self.proposal.iteration}, {len(self.proposal.confidence)} cells"
        self.info.value = text

    def poll(self) -> None:
        """Show a proposal once the run made it."""
        run = self.run
        if run is None:
            return
        p = run.take_proposal()
        if p is None:
            return
        if self._asked is not None:
            self.latency.append(time.perf_counter() - self._asked)
        self.show(p)

    def show(self, p: Any) -> None:
        """Write a proposal into the proposal and uncertainty layers (never the person's)."""
        from ..live import uncertainty_image

        w = self.w
        labels_layer, image = w.annotations.value, w.image.value
        if labels_layer is None or image is None:
            return
        plane, ctx, box = p.key
        if plane != self._plane():
            return  # the person moved to another plane meanwhile
        H, W = labels_layer.data.shape[-2:]
        inner = tuple(slice(b.start - c.start, b.stop - c.start) for b, c in zip(box, ctx))
        cells = np.asarray(p.labels)[inner].astype(np.int32)
        # cells the person has labelled, or rejected, are not proposed again
        mine = np.asarray(labels_layer.data[plane + box]) > 0
        rejected = self._rejected[box] if self._rejected is not None and self._rejected.shape == (H, W) else None
        for i in np.unique(cells[mine | (rejected if rejected is not None else False)]):
            if i and (mine[cells == i].mean() > LABELLED_SHARE or (rejected is not None and rejected[cells == i].any())):
                cells[cells == i] = 0
        full = np.zeros((H, W), np.int32)
        full[box] = cells
        present = set(np.unique(cells).tolist())
        kept = {i: c for i, c in p.confidence.items() if i in present}
        doubt = np.zeros((H, W), np.float32)
        doubt[box] = uncertainty_image(cells, kept)
        self.proposal, self._shown = p, (plane, box)
        self.proposal.confidence = kept
        self._doubt_layer = self._layer(doubt, "live uncertainty", "image", colormap="magma", blending="additive",
                                        contrast_limits=(0.0, 0.6), opacity=0.7)
        self._proposal_layer = self._layer(full, "live proposal", "labels", opacity=0.9)
        if self._doubt_layer.visible != bool(self.show_uncertainty.value):  # setting it redraws the layer
            self._doubt_layer.visible = bool(self.show_uncertainty.value)
        self._show_info()

    def _layer(self, data: np.ndarray, what: str, kind: str, **kwargs: Any) -> Any:
        """Our layer ``"<image> <what>"`` (a 2D layer over the plane in view), updated in place."""
        w = self.w
        image = w.image.value
        scale = tuple(image.scale[-2:])
        translate = tuple(image.translate[-2:])
        name = f"{image.name} {what}"
        layers = w._viewer.layers
        selected = list(layers.selection)
        done = add_or_update_layer(w._viewer, data, name, kind, writer=WRITER, scale=scale, translate=translate,
                                   **kwargs)
        layer = done.layer
        if done.created:
            if kind == "labels":
                layer.contour = 2  # outlines: the person's own cells stay the filled ones
                layer.mouse_drag_callbacks.append(self._clicked)
            layers.selection.clear()  # a new layer must not take the person's brush
            layers.selection.update(selected)
            if selected:
                layers.selection.active = selected[-1]
        return layer

    def _show_overlay(self, *_: Any) -> None:
        layer = getattr(self, "_doubt_layer", None)
        if layer is not None and layer in self.w._viewer.layers:
            layer.visible = bool(self.show_uncertainty.value)

    # -- accept, reject, next -----------------------------------------------------------------

    def _clicked(self, layer: Any, event: Any) -> Any:
        """A click (not a drag) on a proposed cell accepts it; Shift+click rejects it."""
        start = tuple(event.position)
        yield
        while event.type == "mouse_move":
            if np.hypot(*np.subtract(event.position[-2:], start[-2:])) > 2:
                return  # a drag pans the view
            yield
        yx = tuple(int(round(v)) for v in layer.world_to_data(start)[-2:])
        if "Shift" in {str(getattr(m, "name", m)) for m in event.modifiers}:
            self.reject_at(yx)
        else:
            self.accept_at(yx)

    def _proposed_id(self, yx: tuple[int, int]) -> int:
        layer = getattr(self, "_proposal_layer", None)
        if layer is None or layer not in self.w._viewer.layers:
            return 0
        H, W = layer.data.shape
        y, x = yx
        return int(layer.data[y, x]) if 0 <= y < H and 0 <= x < W else 0

    def accept_at(self, yx: tuple[int, int]) -> bool:
        """Copy the proposed cell at ``yx`` (plane pixels) into the annotation layer as one
        undoable step (the pixels the person has not labelled)."""
        i = self._proposed_id(yx)
        if not i:
            set_status(self.w.status, "No proposed cell there: click inside a cell of the proposal layer")
            return False
        return self._accept(self._proposal_layer.data == i, "accepted 1 proposed cell")

    def accept_in_region(self, *_: Any) -> bool:
        """Accept every proposed cell lying (mostly) inside the annotated region, or the view."""
        w = self.w
        layer = getattr(self, "_proposal_layer", None)
        if layer is None or layer not in w._viewer.layers or self._shown is None:
            show_error_in(w.status, "No proposal yet: switch Live on and wait for the first one")
            return False
        area = w.region_mask(self._plane() or None) if w.region.value is not None else None
        if area is None:
            area = np.zeros(layer.data.shape, bool)
            area[self._shown[1]] = True
        data = np.asarray(layer.data)
        ids = [i for i in np.unique(data[area]) if i and area[data == i].mean() > 0.9]
        return self._accept(np.isin(data, ids), f"accepted {len(ids)} proposed cell{'s' * (len(ids) != 1)}", ids)

    def _accept(self, pixels: np.ndarray, message: str, ids: list[int] | None = None) -> bool:
        w = self.w
        labels = w.annotations.value
        if labels is None:
            show_error_in(w.status, "No annotation layer to accept cells into")
            return False
        plane = self._plane()
        current = np.asarray(labels.data[plane])
        proposal = np.asarray(self._proposal_layer.data)
        free = pixels & (current == 0)
        if not free.any():
            set_status(w.status, "Nothing to accept there: those pixels are labelled already")
            return False
        first = next_free_id(labels.data)
        ids = ids or [int(np.max(proposal[pixels]))]
        new = {i: first + k for k, i in enumerate(ids)}
        idx = np.nonzero(free)
        values = np.array([new.get(int(v), first) for v in proposal[idx]], dtype=labels.data.dtype)
        if w.apply_edit(labels, Edit(idx, values, message), plane):
            layer_data = self._proposal_layer.data
            layer_data[pixels] = 0  # shown as accepted: off the proposal (our layer)
            self._proposal_layer.data = layer_data
            labels.selected_label = next_free_id(labels.data)
            self._dirty = True
            return True
        return False

    def reject_at(self, yx: tuple[int, int]) -> bool:
        """Take the proposed cell at ``yx`` off the proposal (it is not proposed again there)."""
        i = self._proposed_id(yx)
        if not i:
            set_status(self.w.status, "No proposed cell there")
            return False
        layer = self._proposal_layer
        cell = layer.data == i
        if self._rejected is None or self._rejected.shape != cell.shape:
            self._rejected = np.zeros(cell.shape, bool)
        self._rejected |= cell
        data = layer.data
        data[cell] = 0
        layer.data = data
        set_status(self.w.status, "Rejected 1 proposed cell: paint the right one, or leave the place empty")
        return True

    def next_uncertain(self, *_: Any) -> tuple[int, int] | None:
        """Centre the view on the least sure proposed cell not visited yet; its centre (plane pixels)."""
        w = self.w
        p, layer = self.proposal, getattr(self, "_proposal_layer", None)
        if p is None or layer is None or layer not in w._viewer.layers:
            show_error_in(w.status, "No proposal yet: switch Live on and wait for the first one")
            return None
        data = np.asarray(layer.data)
        for i in p.uncertain():
            cell = data == i
            if not cell.any() or any(cell[v] for v in self._visited):
                continue
            yx = tuple(int(round(c)) for c in np.argwhere(cell).mean(axis=0))
            if not cell[yx]:  # a curved cell: a pixel of its own
                yx = tuple(int(c) for c in np.argwhere(cell)[0])
            self._visited.append(yx)
            world = layer.data_to_world(yx)
            scene = getattr(w._viewer, "scene", None)
            cam = scene.camera if scene is not None else w._viewer.camera
            cam.center = tuple(world[-2:])
            set_status(w.status, f"The least sure proposed cell here (confidence {p.confidence[i]:.2f}): click it "
                       "in the proposal layer to accept it, Shift+click to reject it, or paint it right")
            return yx  # type: ignore[return-value]
        set_status(w.status, "No proposed cell left to look at in this view: move on, or wait for the next proposal")
        return None
