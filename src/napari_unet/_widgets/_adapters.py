"""The one place where the widgets touch private API of napari, magicgui, superqt or qtpy.

Each item says why no public API does the job, so it can be replaced when one appears.
Everything else in ``_widgets/`` uses public API only (``tests/test_widget_layout.py``
and the widget tests exercise what is here).
"""

from __future__ import annotations

from typing import Any


def row_label(widget: Any) -> Any:
    """The magicgui ``Label`` shown left of ``widget`` in a labelled ``Container`` (None
    for a row without one: buttons, check boxes, a widget outside a labelled container).

    Private: ``Widget._labeled_widget()`` and ``_LabeledWidget._label_widget``. magicgui
    wraps each row of a labelled container in an internal ``_LabeledWidget`` and offers no
    public handle on its label: ``Widget.label`` is only the text. :func:`._common.align_form`
    needs the label widget itself, to hide empty ones and to widen the label column after
    napari's theme has changed the font (magicgui measures the labels once, with the
    default font, when the container is built).
    """
    labeled = widget._labeled_widget()  # noqa: SLF001 - see the docstring
    return None if labeled is None else labeled._label_widget  # noqa: SLF001
