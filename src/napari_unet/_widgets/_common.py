"""GUI plumbing shared by the napari-unet dock widgets (Segment, Weight map, Train, Annotate).

Everything here is a thin skin over the Qt-free core:

* :class:`TaskRunner` runs a core progress generator (``Generator[Progress, None, T]``) in
  a napari ``thread_worker`` and wires it to a progress bar, a Run and a Cancel button and
  a status label. Cancel calls ``worker.quit()``, which takes effect at the generator's
  next ``yield`` (the core yields at least once per tile or training step).
* :func:`show_error_in` shows an error both as a napari notification and in the widget's
  status label, so the message is still there after the notification fades.
* :func:`add_or_update_layer` writes an output layer: same name → ``.data`` is replaced
  and the user's display settings (colormap, opacity, contrast, ...) are kept; new layer
  otherwise.
* :func:`load_model_cached` (models are loaded in the worker and cached by path +
  modification time + size).

The sections the widgets are assembled from (layer pickers, model picker, device row,
Run / Cancel / progress / status row, folded settings) are in :mod:`._sections`; the one
use of private magicgui API is in :mod:`._adapters`.

**Nothing the user made is modified.** A layer napari-unet did not create (no tag in its
``metadata``) is the person's: a result under its name goes to a new layer ``"<name> (2)"``.
A Labels layer we write is tagged and watched for napari's ``paint`` event (brush, eraser,
fill, polygon; also emitted by undo/redo); if the person painted on it since we last wrote
it, a re-run writes to a new layer too and says so in the status line; an unedited layer
of ours is updated in place. Result layers are named after the model that made them
(:func:`result_name`), so results of different models sit side by side.

**Worker warnings** (the core's ``UserWarning``: NaN pixels, an image unlike the model's
training data) are shown as a notification and stay in the status line after the
result line (:class:`TaskRunner`).

**Forms scroll** (:func:`scroll_form`): every widget fits a 1280x800 screen. **Docks share
one tab group** (:func:`tab_when_docked`): a napari-unet dock opened beside another one
becomes a tab next to it, so each widget has the full height of the window (stacked, four
docks left about 150 px each and every Run button out of sight).

torch is imported lazily (when a widget is created or a job runs), never when this module
is imported, so napari's start-up stays fast.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from magicgui.widgets import Container, Label, ProgressBar, PushButton
from napari.layers import Image, Labels
from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils.notifications import notification_manager, show_error, show_warning
from qtpy.QtCore import QEvent, QObject, QRect, QSize, Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractButton,
    QDockWidget,
    QFrame,
    QLabel,
    QMainWindow,
    QScrollArea,
    QStyle,
    QWidget,
)

from .._progress import Progress
from ._adapters import row_label

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from ..model import UNet

T = TypeVar("T")

#: key under which napari-unet keeps its bookkeeping in a layer's ``metadata``
META_KEY = "napari_unet"

#: what the validation score AP@0.5 means, for tooltips
AP_HELP = ("AP@0.5: the share of cells found right, from 0 to 1. A predicted cell counts as found when it overlaps "
           "an annotated cell by at least half (intersection over union 0.5); "
           "AP@0.5 = found / (found + false cells + missed cells)")

# colours for the status line (readable on napari's dark and light themes)
_ERROR_STYLE = "color: #ff6b6b;"
_WARN_STYLE = "color: #f0ad4e;"
_OK_STYLE = ""


# -- errors ------------------------------------------------------------------------------


class TaskError(Exception):
    """A failure inside a worker, re-raised as a non-``RuntimeError``.

    superqt's worker treats a ``RuntimeError`` escaping the generator as "the worker object
    was deleted" and drops it with a console warning: the widget would never hear of it.
    Many real failures are ``RuntimeError`` (torch errors, ``DeviceError``), so the worker
    wraps them in this class; the original is ``__cause__``.
    """


def is_user_error(exc: BaseException) -> bool:
    """True for errors caused by the input (shown as one clear line, no traceback)."""
    if isinstance(exc, TaskError) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, (ValueError, MemoryError)):
        return True  # includes ModelFileError
    return type(exc).__name__ in ("DeviceError", "OutOfMemoryError")


def error_text(exc: BaseException) -> str:
    """One line for the person: the message of the root cause."""
    if isinstance(exc, TaskError) and exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip() or type(exc).__name__
    return text[0].upper() + text[1:] if text else text


_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def is_core_warning(category: type, filename: str) -> bool:
    """True for a warning napari-unet raised for the person: a ``UserWarning`` attributed
    to a file of this package (the core warns with ``stacklevel=2``); numpy's "invalid
    value" (a ``RuntimeWarning``) and other libraries' notices stay on the console."""
    if not issubclass(category, UserWarning):
        return False
    try:
        return Path(filename).resolve().is_relative_to(_PACKAGE_DIR)
    except (OSError, ValueError):
        return False


def set_status(status: Label, text: str, kind: str = "ok") -> None:
    """Write ``text`` to a status label; ``kind`` is "ok", "warning" or "error"."""
    status.value = text
    status.tooltip = text  # long messages are elided by the layout; the tooltip keeps all
    _fit_height(status.native)
    style = {"error": _ERROR_STYLE, "warning": _WARN_STYLE}.get(kind, _OK_STYLE)
    status.native.setStyleSheet(style)
    status.native.setProperty("napari_unet_kind", kind)


def status_kind(status: Label) -> str:
    """What :func:`set_status` last showed: "ok", "warning" or "error"."""
    return str(status.native.property("napari_unet_kind") or "ok")


def show_error_in(status: Label | None, exc_or_text: BaseException | str) -> None:
    """Show an error in the viewer (notification) and in the widget's status label.

    Errors caused by the input get a one-line message; anything else (a bug) goes to
    napari's notification manager with its traceback, so it can be reported.
    """
    if isinstance(exc_or_text, BaseException):
        text = error_text(exc_or_text)
        if is_user_error(exc_or_text):
            show_error(text)
        else:
            exc = exc_or_text
            notification_manager.receive_error(type(exc), exc, exc.__traceback__)
    else:
        text = exc_or_text
        show_error(text)
    if status is not None:
        set_status(status, text, "error")


def make_or_show_error(make: Callable[[], T], status: Label | None) -> T | None:
    """``make()`` (a widget collecting its job from its inputs), or None after showing its
    ``ValueError`` (bad input) with :func:`show_error_in`; other errors propagate."""
    try:
        return make()
    except ValueError as exc:
        show_error_in(status, exc)
        return None


# -- running core generators --------------------------------------------------------------


def _run_generator(make_gen: Callable[[], Generator[Progress, None, Any]]):
    """The worker's generator: runs ``make_gen()`` and yields its progress records."""
    try:
        gen = make_gen()
        return (yield from gen)
    except RuntimeError as exc:  # see TaskError: would otherwise vanish silently
        raise TaskError(f"{type(exc).__name__}: {exc}") from exc


@dataclass
class _Callbacks:
    """What :meth:`TaskRunner.start` was asked to call back during one run."""

    on_result: Callable[[Any], None]
    on_progress: Callable[[Progress], None] | None = None
    on_cancelled: Callable[[], None] | None = None
    on_error: Callable[[BaseException], None] | None = None


class TaskRunner:
    """Runs one core progress generator at a time off the GUI thread.

    Args:
        progress: bar advanced from the yielded :class:`Progress` records.
        run_button: disabled while a task runs (so a double click starts nothing twice).
        cancel_button: enabled while a task runs; pressing it calls ``worker.quit()``.
        status: label that receives errors and "Cancelled".

    The ``on_result`` callback of :meth:`start` runs in the GUI thread with the generator's
    return value; it is *not* called after Cancel, so a cancelled run changes no layer.
    """

    def __init__(
        self,
        *,
        progress: ProgressBar,
        run_button: PushButton,
        cancel_button: PushButton,
        status: Label,
    ) -> None:
        self.progress = progress
        self.run_button = run_button
        self.cancel_button = cancel_button
        self.status = status
        self.worker: GeneratorWorker | None = None
        self.started_at = 0.0
        self.last_outcome: str | None = None  # "done", "cancelled", "error" (tests, status)
        self.warnings: list[str] = []  # the core's warnings during the last run
        self._callbacks = _Callbacks(on_result=lambda _: None)  # those of the current run (start)
        self.cancel_button.enabled = False
        self.cancel_button.changed.connect(self.cancel)
        self.progress.visible = False

    @property
    def running(self) -> bool:
        return self.worker is not None

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started_at

    def make_job(self, make: Callable[[], T]) -> T | None:
        """The job a widget collects from its inputs, or None: while a task runs (a second
        press does nothing) or when the input is refused (said in the status)."""
        if self.running:
            return None
        return make_or_show_error(make, self.status)

    def start(
        self,
        make_gen: Callable[[], Generator[Progress, None, Any]],
        on_result: Callable[[Any], None],
        *,
        on_progress: Callable[[Progress], None] | None = None,
        on_cancelled: Callable[[], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        message: str = "Working...",
    ) -> GeneratorWorker | None:
        """Start ``make_gen()`` in a worker thread; return the worker (None if busy).

        ``make_gen`` itself is called in the worker thread, so slow set-up (loading a
        model, reading a file) does not block the viewer either.
        """
        if self.running:
            show_warning("napari-unet: a task is already running; cancel it first")
            return None
        worker = create_worker(
            _run_generator,
            make_gen,
            _worker_class=GeneratorWorker,  # plain worker: errors are shown by us, once
            _ignore_errors=True,
            _start_thread=False,
        )
        self.worker = worker
        self.last_outcome = None
        self.warnings = []
        self.started_at = time.perf_counter()
        # one task at a time (see ``running``): the callbacks of this run until it finishes
        self._callbacks = _Callbacks(on_result, on_progress, on_cancelled, on_error)
        self.progress.min, self.progress.max, self.progress.value = 0, 0, 0  # busy indicator
        self.progress.visible = True
        self.progress.tooltip = message
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        set_status(self.status, message)
        worker.yielded.connect(self._yielded)
        worker.returned.connect(self._returned)
        worker.errored.connect(self._errored)
        worker.aborted.connect(self._aborted)
        worker.warned.connect(self._warned)
        worker.finished.connect(self._finished)
        worker.start()
        return worker

    def _yielded(self, rec: Any) -> None:
        if not isinstance(rec, Progress):
            return
        total = max(int(rec.total), 0)
        if self.progress.max != total:
            self.progress.max = total
        self.progress.value = min(int(rec.done), total)
        if rec.message:
            set_status(self.status, rec.message)
        if self._callbacks.on_progress is not None:
            self._callbacks.on_progress(rec)

    def _returned(self, result: Any) -> None:
        self.last_outcome = "done"
        try:
            self._callbacks.on_result(result)
        except (ValueError, TypeError) as exc:  # e.g. a layer that cannot take the data
            self.last_outcome = "error"
            show_error_in(self.status, exc)
            return
        if self.warnings:  # the success line must not hide what the core warned about
            text = str(self.status.value).rstrip(". ")
            set_status(self.status, f"{text}. Warning: " + " ".join(self.warnings), "warning")

    def _errored(self, exc: BaseException) -> None:
        self.last_outcome = "error"
        if self._callbacks.on_error is not None:
            self._callbacks.on_error(exc)
        show_error_in(self.status, exc)

    def _aborted(self) -> None:
        self.last_outcome = "cancelled"
        set_status(self.status, f"Cancelled after {self.elapsed:.1f} s; nothing was changed", "warning")
        if self._callbacks.on_cancelled is not None:
            self._callbacks.on_cancelled()

    def _warned(self, args: tuple) -> None:
        # warnings raised in the worker ("image unlike the model's training data", "GPU
        # present but torch is CPU-only"): a notification, and the status line until the
        # run ends (then appended to its last line)
        message, category, filename = args[0], args[1], str(args[2])
        if not is_core_warning(category, filename):
            return  # a library's notice to developers, not to the person
        text = str(message).strip()
        if text in self.warnings:
            return
        self.warnings.append(text)
        show_warning(text)
        set_status(self.status, f"Warning: {text}", "warning")

    def _finished(self) -> None:
        self.worker = None
        self.progress.visible = False
        self.run_button.enabled = True
        self.cancel_button.enabled = False

    def cancel(self, *_: Any) -> None:
        """Ask the running task to stop at its next progress step."""
        if self.worker is not None:
            set_status(self.status, "Cancelling...", "warning")
            self.cancel_button.enabled = False
            self.worker.quit()


# -- output layers -----------------------------------------------------------------------


def _mark_edited(event: Any) -> None:
    layer = event.source
    meta = layer.metadata.get(META_KEY)
    if isinstance(meta, dict):
        meta["edited"] = True


def is_ours(layer: Any) -> bool:
    """True for a layer napari-unet created (tagged in its ``metadata``); any other layer
    is the person's and is never modified."""
    return isinstance(layer.metadata.get(META_KEY), dict)


def loaded_from_file(layer: Any) -> bool:
    """True for a layer napari read from a file or a sample (e.g. a mask of every cell),
    rather than one made in the viewer (``layer.source``)."""
    source = getattr(layer, "source", None)
    return source is not None and (source.path is not None or getattr(source, "sample", None) is not None)


def layer_data(layer: Any) -> Any:
    """A layer's data: the full-resolution level of a multiscale layer (not read into memory)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def result_name(image_name: str, what: str, model_tag: str) -> str:
    """``"<image> <what> (<model>)"``: results of different models (bundled, a file,
    trained here) go to different layers, so they can be compared."""
    return f"{image_name} {what} ({model_tag})"


def model_tag(path: str | Path | None) -> str:
    """A short name of a model for layer names: "bundled" or the file's stem."""
    return "bundled" if path is None else Path(path).stem


class _CloseWatch(QObject):
    """Event filter behind :func:`on_close`."""

    def __init__(self, widget: Any, callback: Callable[[], None]) -> None:
        super().__init__(widget.native)
        self._callback: Callable[[], None] | None = callback
        self._docked = False

    def eventFilter(self, obj: Any, event: Any) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.ParentChange:
            if obj.parentWidget() is not None:
                self._docked = True
            elif self._docked and self._callback is not None:
                callback, self._callback = self._callback, None
                callback()
        return False


def on_close(widget: Any, callback: Callable[[], None]) -> None:
    """Call ``callback`` once when the dock holding the magicgui ``widget`` is closed.

    napari closes a dock by taking its widget out of it (``setParent(None)``); a hidden
    dock keeps its widget, and so does a widget that was never docked.
    """
    widget.native.installEventFilter(_CloseWatch(widget, callback))  # a child: lives as long


def was_edited(layer: Any) -> bool:
    """True when the person painted on a Labels layer since napari-unet last wrote it."""
    meta = layer.metadata.get(META_KEY)
    return bool(isinstance(meta, dict) and meta.get("edited"))


def _watch_edits(layer: Any, writer: str) -> None:
    layer.metadata[META_KEY] = {"writer": writer, "edited": False}
    if hasattr(layer.events, "paint"):
        layer.events.paint.connect(_mark_edited)  # connecting twice is a no-op in napari


def unique_name(name: str, taken: Collection[str]) -> str:
    """``name`` if not in ``taken``, else ``"name (2)"``, ``"name (3)"``, ..."""
    if name not in taken:
        return name
    i = 2
    while f"{name} ({i})" in taken:
        i += 1
    return f"{name} ({i})"


def unique_layer_name(viewer: napari.Viewer, name: str) -> str:
    """``name`` if no layer has it, else ``"name (2)"``, ``"name (3)"``, ..."""
    return unique_name(name, {layer.name for layer in viewer.layers})


@dataclass
class LayerWrite:
    """What :func:`add_or_update_layer` did."""

    layer: Any
    created: bool
    note: str = ""  # e.g. why a new layer was made instead of updating one


#: the layer class of each ``layer_type`` :func:`add_or_update_layer` writes
_LAYER_CLASSES: dict[str, type] = {"labels": Labels, "image": Image}


def add_or_update_layer(
    viewer: napari.Viewer,
    data: Any,
    name: str,
    layer_type: str,
    *,
    writer: str = "napari-unet",
    **kwargs: Any,
) -> LayerWrite:
    """Put ``data`` into the layer called ``name``, or add a new layer.

    Args:
        viewer: the napari viewer.
        data: the layer data.
        name: layer name; an existing layer of that name and type is updated in place
            (``.data`` only, so the person's colormap, opacity, contrast limits, ... stay).
        layer_type: "labels" or "image".
        writer: recorded in the layer's metadata (which widget wrote it).
        **kwargs: passed to ``viewer.add_<layer_type>`` when a new layer is made
            (``scale``, ``translate``, ``colormap``, ...).

    Returns:
        a :class:`LayerWrite` with the layer and whether it is new. A layer napari-unet
        did not create (the person's own, e.g. a curated mask of that name), a Labels
        layer the person edited since we wrote it, or a layer of another type or
        dimensionality, is left alone and a new layer ``"name (2)"`` is made instead.
    """
    existing = viewer.layers[name] if name in viewer.layers else None
    note = ""
    if existing is not None and not is_ours(existing):
        note = f"'{name}' is your layer, not a napari-unet result, so it was kept and the result went to a new one"
        name = unique_layer_name(viewer, name)
        existing = None
    if existing is not None:
        same_kind = isinstance(existing, _LAYER_CLASSES[layer_type])
        same_ndim = getattr(existing.data, "ndim", None) == getattr(data, "ndim", None)
        if layer_type == "image" and same_kind:
            same_ndim = same_ndim and bool(existing.rgb) == bool(kwargs.get("rgb", False))
        if same_kind and same_ndim and not was_edited(existing):
            existing.data = data
            if layer_type == "image" and "contrast_limits" in kwargs:
                existing.contrast_limits = kwargs["contrast_limits"]
            if layer_type == "labels":
                _watch_edits(existing, writer)
            existing.refresh()
            return LayerWrite(existing, created=False)
        if not same_kind or not same_ndim:
            note = f"'{name}' is a different kind of layer, so the result went to a new one"
        else:
            note = f"'{name}' was edited by hand, so it was kept and the result went to a new layer"
        name = unique_layer_name(viewer, name)
    add = getattr(viewer, f"add_{layer_type}")
    layer = add(data, name=name, **kwargs)
    if layer_type == "labels":
        _watch_edits(layer, writer)
    else:
        layer.metadata[META_KEY] = {"writer": writer}
    return LayerWrite(layer, created=True, note=note)


# -- models ------------------------------------------------------------------------------

_MODEL_CACHE: OrderedDict[tuple[str, int, int], UNet] = OrderedDict()
_MODEL_CACHE_SIZE = 3
_MODEL_LOCK = threading.Lock()


def load_model_cached(path: str | Path | None) -> UNet:
    """Load a model file (None = the bundled model), reusing a recent load of the same file.

    The cache key is (resolved path, modification time, size), so a file that was
    overwritten (e.g. by the Train widget) is read again. The returned model is shared:
    callers that change its weights must ``clone_model`` it first.

    Raises:
        ModelFileError: missing or corrupt file, or no bundled model installed.
    """
    from ..model import bundled_model_path, load_model

    p = Path(path) if path is not None else bundled_model_path()
    try:
        st = p.stat()
    except OSError:
        return load_model(path)  # raises the model module's clear "not found" message
    key = (str(p.resolve()), st.st_mtime_ns, st.st_size)
    with _MODEL_LOCK:
        if key in _MODEL_CACHE:
            _MODEL_CACHE.move_to_end(key)
            return _MODEL_CACHE[key]
    model = load_model(p)
    with _MODEL_LOCK:
        _MODEL_CACHE[key] = model
        while len(_MODEL_CACHE) > _MODEL_CACHE_SIZE:
            _MODEL_CACHE.popitem(last=False)
    return model


def segment_at_model_size(*args: Any, **kwargs: Any) -> Generator[Progress, None, Any]:
    """:func:`napari_unet.segmentation.segment_at_model_size`, imported when called (it imports torch)."""
    from ..segmentation import segment_at_model_size as run

    return run(*args, **kwargs)


def bundled_model_available() -> bool:
    from ..model import bundled_model_path  # model.py imports torch; only called from widgets

    return bundled_model_path().is_file()


# -- layout ------------------------------------------------------------------------------


def header(text: str, rule: bool = True) -> Label:
    """A bold section title, with a rule under it unless ``rule`` is False."""
    head = Label(label="", value=text)
    style = "font-weight: bold; padding-top: 6px;"
    if rule:
        style += " border-bottom: 1px solid #5a626c;"
    head.native.setStyleSheet(style)
    return head


class _FitHeight(QObject):
    """Event filter behind :func:`wrapped`: a new width or a new text (seen when it is painted:
    QLabel has no signal for it), a new height."""

    def eventFilter(self, obj: Any, event: Any) -> bool:  # noqa: N802 - Qt's name
        kind = event.type()
        if kind == QEvent.Type.Resize:
            _fit_height(obj)
        elif kind == QEvent.Type.Paint and obj.width() > 0 and _text_height(obj) != obj.height():
            QTimer.singleShot(0, lambda: _fit_height(obj))  # not while it paints
        return False


def _text_height(label: QLabel) -> int:
    """The height of the label's text wrapped at its width (``QLabel.heightForWidth`` is never
    less than the label's minimum height, so it cannot tell when a shorter text came)."""
    m, pad = label.contentsMargins(), 2 * label.margin()
    width = max(1, label.width() - m.left() - m.right() - pad)
    flags = int(Qt.TextFlag.TextWordWrap.value) | int(label.alignment().value)
    text = label.fontMetrics().boundingRect(QRect(0, 0, width, 1 << 20), flags, label.text())
    return text.height() + m.top() + m.bottom() + pad


def _fit_height(label: QLabel) -> None:
    height = _text_height(label) if label.width() > 0 else -1
    if height > 0 and (height != label.minimumHeight() or height != label.maximumHeight()):
        label.setFixedHeight(height)  # not less (half lines), not more (a one-line row as tall as two)


def wrapped(label: Label) -> Label:
    """Let ``label`` wrap long texts and keep it as tall as its wrapped text: a form row
    gives a wrapping label one line's height, so a two-line message showed half of each line."""
    label.native.setWordWrap(True)
    label.native.installEventFilter(_FitHeight(label.native))  # a child: lives as long
    return label


def status_label(label: str = "Status") -> Label:
    """The status line of a widget: wraps long messages instead of widening the dock."""
    status = wrapped(Label(value="", label=label))
    status.native.setMinimumWidth(200)
    return status


def row(*widgets: Any) -> Container:
    """The widgets side by side, without labels or margins (e.g. a Run / Cancel pair)."""
    box = Container(widgets=list(widgets), layout="horizontal", labels=False)
    box.margins = (0, 0, 0, 0)
    return box


class _FormScrollArea(QScrollArea):
    """A vertical scroll area exactly as wide as the form it holds needs (never clipping
    it), and only ``min_height`` tall at least. ``on_show`` runs when it is first shown."""

    def __init__(self, min_height: int, on_show: Callable[[], None]) -> None:
        super().__init__()
        self._min_height = min_height
        self._on_show: Callable[[], None] | None = on_show
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        inner = self.widget()
        width = 0 if inner is None else inner.minimumSizeHint().expandedTo(inner.minimumSize()).width()
        bar = self.style().pixelMetric(QStyle.PixelMetric.PM_ScrollBarExtent)
        return QSize(width + bar + 2 * self.frameWidth(), self._min_height)

    def showEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        if self._on_show is not None:
            self._on_show()
            self._on_show = None
            self.updateGeometry()
        super().showEvent(event)


def fit_texts(form: Container, *forms: Container) -> None:
    """Keep every text of ``form`` whole: align the label columns of ``form`` and of the
    labelled containers ``forms`` inside it, and give buttons, check boxes and one-line
    labels at least their text's width, so a narrow dock cannot squeeze them ("Remove
    selecte"). Measured once napari's theme (its font) applies: when first shown."""
    for f in (form, *forms):
        align_form(f)
    for w in form.native.findChildren((QAbstractButton, QLabel)):
        if not (isinstance(w, QLabel) and w.wordWrap()):
            w.setMinimumWidth(max(w.minimumWidth(), w.sizeHint().width()))


def scroll_form(outer: Container, form: Container, *forms: Container, min_height: int = 150) -> QScrollArea:
    """Show ``form`` -- the only child of the plain container ``outer`` -- in a vertical
    scroll area, so a tall widget fits a small screen (1280x800) instead of forcing the
    window taller than the screen; its texts are fitted with :func:`fit_texts` (``forms``:
    labelled containers inside ``form``). Returns the scroll area.

    magicgui's ``Container(scrollable=True)`` wraps its *root* widget in a scroll area, but
    napari docks a magicgui widget's ``.native`` (the inner widget), so the scroll area
    never reaches the dock; hence the scroll area lives inside ``outer`` here.
    """
    fit_texts(form, *forms)  # now, for widgets that are never shown; again when shown
    tab_when_docked(outer)
    scroll = _FormScrollArea(min_height, lambda: fit_texts(form, *forms))
    form.native.layout().addStretch(1)  # rows stay packed at the top of a tall dock
    layout = outer.native.layout()
    layout.removeWidget(form.native)
    scroll.setWidget(form.native)  # magicgui keeps ``form`` as a child (reset_choices etc.)
    layout.addWidget(scroll)
    outer.margins = (0, 0, 0, 0)
    return scroll


#: what napari appends to a plugin dock's title (the Plugins menu: display name; add_plugin_dock_widget: package)
_PLUGIN_SUFFIX = re.compile(r" \((U-Net|napari-unet)\)$")
#: Qt property marking the outer widget of a napari-unet dock (see :func:`tab_when_docked`)
_DOCK_PROPERTY = "napari_unet_dock"


class _DockWatch(QObject):
    """Event filter behind :func:`tab_when_docked`."""

    def eventFilter(self, obj: Any, event: Any) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.ParentChange and obj.parentWidget() is not None:
            # napari adds the dock to the window after wrapping the widget: join the tabs then
            QTimer.singleShot(0, lambda: join_unet_tabs(obj))
        return False


def tab_when_docked(outer: Container) -> None:
    """Show the dock of ``outer`` as a tab beside the other napari-unet docks of its side of
    the window (when it is docked there), instead of stacking it under them: four docks
    stacked on a 1280x800 screen leave each about 150 px, every Run button out of sight."""
    outer.native.setProperty(_DOCK_PROPERTY, True)
    outer.native.installEventFilter(_DockWatch(outer.native))  # a child: lives as long


def dock_of(widget: Any) -> QDockWidget | None:
    """The dock holding the Qt widget ``widget`` (None when it is not docked)."""
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parentWidget()
    return parent


def _holds_unet_widget(dock: QDockWidget) -> bool:
    return any(w.property(_DOCK_PROPERTY) for w in dock.findChildren(QWidget))


def join_unet_tabs(native: Any) -> None:
    """Tab the dock holding the Qt widget ``native`` with the napari-unet docks on its side."""
    try:
        dock = dock_of(native)
    except RuntimeError:  # deleted meanwhile (the viewer closed)
        return
    main = dock.parentWidget() if dock is not None else None
    if not isinstance(main, QMainWindow) or dock.isFloating():
        return
    area = main.dockWidgetArea(dock)
    others = [d for d in main.findChildren(QDockWidget)
              if d is not dock and not d.isFloating() and d.isVisibleTo(main) and main.dockWidgetArea(d) == area
              and _holds_unet_widget(d)]
    tabbed = main.tabifiedDockWidgets(dock)
    if not others or any(d in tabbed for d in others):
        return
    main.tabifyDockWidget(others[-1], dock)
    for d in (*others, dock):  # short tab titles: "Segment", not "Segment (U-...", in a narrow dock
        d.setWindowTitle(_PLUGIN_SUFFIX.sub("", d.windowTitle()))
    dock.show()
    dock.raise_()


def align_form(container: Any) -> None:
    """Give every label of a labelled magicgui container the same (sufficient) width.

    magicgui measures label text with the default font before the widget is styled by
    napari's theme, so long labels can end up wider than their column and rows stop
    lining up; measuring the real Qt labels afterwards fixes it. Label *values* (status
    lines, section titles) are left-aligned. A row without a label (a section title, a
    folded section, a status line) spans the whole width instead of leaving an empty
    label column.
    """
    from qtpy.QtWidgets import QSizePolicy

    labels = [lab for lab in map(row_label, container) if lab is not None]
    for lab in labels:
        if not str(lab.value).strip():
            lab.visible = False
    labels = [lab for lab in labels if str(lab.value).strip()]
    if not labels:
        return
    width = max(lab.native.sizeHint().width() for lab in labels) + 16
    for lab in labels:
        lab.min_width = width
    for w in container:
        if isinstance(w, Label):
            # a label sized to its text is centred in its row; let it fill the row instead
            w.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
            w.native.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
