"""Every widget fits the smallest laptop screen (1280x800) and keeps its texts whole.

The widgets are opened through napari's plugin machinery into a shown viewer window of
1280x800 (Xvfb), the way a person opens them from the Plugins menu.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gui

napari = pytest.importorskip("napari")

WIDGETS = ["Segment", "Weight map", "Train", "Annotate"]  # the README's order
SCREEN = (1280, 800)


def _window(make_napari_viewer, names):
    from qtpy.QtWidgets import QApplication

    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(*SCREEN)
    docks = {}
    for name in names:
        dock, widget = viewer.window.add_plugin_dock_widget("napari-unet", name)
        docks[name] = (dock, widget)
    for _, widget in docks.values():  # folded sections open: their texts must fit too
        for section in getattr(getattr(widget, "settings_box", None), "sections", []):
            section.expand(animate=False)
    for _ in range(10):
        QApplication.processEvents()
    return viewer, window, docks


def clipped_texts(widget) -> list[str]:
    """Buttons, check boxes and one-line labels narrower than their text."""
    from qtpy.QtWidgets import QAbstractButton, QLabel

    out = []
    for w in widget.native.findChildren((QAbstractButton, QLabel)):
        if not w.isVisibleTo(widget.native) or (isinstance(w, QLabel) and w.wordWrap()):
            continue
        if w.text() and w.width() < w.sizeHint().width():
            out.append(f"{w.text()!r} {w.width()} < {w.sizeHint().width()} px")
    return out


@pytest.mark.parametrize("name", WIDGETS)
def test_each_widget_fits_1280x800_without_clipped_text(make_napari_viewer, name):
    viewer, window, docks = _window(make_napari_viewer, [name])
    dock, widget = docks[name]
    hint = dock.minimumSizeHint()
    print(f"{name}: dock minimum {hint.width()}x{hint.height()} px, shown {dock.width()}x{dock.height()}")
    # the form scrolls, so the dock asks for little height (Train and Annotate were 1114
    # and 1035 px), and its width leaves most of a 1280 px screen to the canvas
    assert hint.height() <= 250, f"{name} needs {hint.height()} px of height"
    assert hint.width() <= 420, f"{name} needs {hint.width()} px of width"
    assert window.height() <= SCREEN[1], f"the window grew to {window.height()} px"
    assert widget.scroll.isAncestorOf(widget.form.native)  # the form is inside the scroll area
    assert dock.isAncestorOf(widget.scroll)
    # everything is reachable: the form scrolls to its last row (status line included)
    bar = widget.scroll.verticalScrollBar()
    assert bar.maximum() >= widget.form.native.height() - widget.scroll.viewport().height() - 1
    assert clipped_texts(widget) == []


def test_all_four_widgets_fit_one_1280x800_window(make_napari_viewer):
    """Opening all four in the README's order made a 2940 px tall window."""
    viewer, window, docks = _window(make_napari_viewer, WIDGETS)
    assert window.minimumSizeHint().height() <= SCREEN[1], window.minimumSizeHint()
    assert window.height() <= SCREEN[1]
    for name, (_, widget) in docks.items():
        assert clipped_texts(widget) == [], name
