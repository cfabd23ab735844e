"""The sections the dock widgets are assembled from.

A section is a small class (or function) that makes the magicgui widgets of one part of a
form and knows what they mean. It is not a container of its own: a widget adds the
section's ``widgets`` to its one labelled form, so every label of the form lines up.

================  =============================================  ==============================
section           what                                           used by
================  =============================================  ==============================
layer_picker      a layer of one kind (the input picker)         Segment, Weight map, Train,
                                                                 Annotate
ModelPicker       bundled model or a model file                  Segment, Annotate
DevicePicker      auto / cuda / mps / cpu, and what it resolves  Segment, Train, Annotate
RunControls       Run / Cancel, progress bar, status line, and   Segment, Train, Annotate
                  the TaskRunner driving them
folded            settings folded away (superqt QCollapsible)    Train
LossPlotSection   the live loss plot with its ETA line           Train
================  =============================================  ==============================

Weight map uses ``layer_picker`` only (it runs no model).

The sections of one widget only live in that widget's module, as small mixin classes of
the widget (each builds its rows, wires them and holds what they do):

* Train (``train.py``): ``_TrainingPairs`` (the training-data list), ``_TrainingSetSection``,
  ``_StartModelSection``, ``_SettingsSection``, ``_TrainingRunSection`` (progress, loss
  plot), ``_ResultSection`` (the result row: save, load, export, apply).
* Annotate (``annotate.py``): ``_LayersSection``, ``_RegionSection``, ``_PredictSection``,
  ``_HelpersSection``, ``_TrainingSetSection``, ``_TrainOnThisSection``.
* Segment and Weight map are short enough to build their few rows in methods of their own.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton, create_widget

from ._common import AP_HELP, TaskRunner, bundled_model_available, row, set_status, status_label, wrapped

if TYPE_CHECKING:  # pragma: no cover
    import torch


def layer_picker(kind: str, label: str, tooltip: str, *, nullable: bool = False, empty: bool = False) -> Any:
    """A picker of napari layers of one ``kind`` ("Image", "Labels", "Shapes"), refreshed by
    napari as layers come and go. ``empty``: start with no layer chosen (``nullable`` too)."""
    options: dict[str, Any] = {"tooltip": tooltip}
    if nullable:
        options["nullable"] = True
    picker = create_widget(annotation=f"napari.layers.{kind}", label=label, options=options)
    if empty:
        picker.value = None
    return picker


class ModelPicker:
    """Model choice: the bundled model or a model file (``.pt``).

    Not a container of its own: add ``picker.widgets`` to the widget's (labelled)
    container, so the labels line up with the other rows.
    """

    BUNDLED = "bundled"
    STAINED = "bundled: stained tissue"
    FILE = "model file"

    def __init__(self, label: str = "Model") -> None:
        has_bundled = bundled_model_available()
        bundled_text = self.BUNDLED if has_bundled else f"{self.BUNDLED} (not installed)"
        self._bundled_text = bundled_text
        from ..channels import bundled_path

        stained = [self.STAINED] if bundled_path("stained").is_file() else []
        self.source = ComboBox(
            label=label,
            choices=[bundled_text, *stained, self.FILE],
            value=bundled_text if has_bundled else self.FILE,
            tooltip="Use a pretrained model shipped with napari-unet ('bundled' picks the one that suits "
            "the image: the stained-tissue model for brightfield RGB slides, else the fluorescence "
            "model), or a model file (.pt) saved by the Train widget or `napari-unet train`",
        )
        self.file = FileEdit(
            label="Model file",
            mode="r",
            filter="napari-unet models (*.pt);;All files (*)",
            tooltip="A napari-unet model file (.pt); loading it never runs code from it",
        )
        self.file.margins = (0, 0, 0, 0)  # line up with the other rows
        self.widgets = [self.source, self.file]
        self.source.changed.connect(self._sync)
        self._sync()

    def _sync(self, *_: Any) -> None:
        self.file.visible = self.source.value == self.FILE

    @property
    def path(self) -> Path | None:
        """The chosen model file, or None for the bundled model.

        Raises:
            ValueError: "model file" is chosen but no file is given.
        """
        if self.source.value == self.STAINED:
            from ..channels import bundled_path

            return bundled_path("stained")
        if self.source.value != self.FILE:
            return None
        value = self.file.value
        if value is None or str(value) in ("", ".") or Path(value).is_dir():
            # an empty FileEdit reports the current folder
            raise ValueError("No model file chosen: pick a .pt file, or choose the bundled model")
        return Path(value)

    def describe(self) -> str:
        try:
            p = self.path
        except ValueError:
            return "no model file"
        return "bundled model" if p is None else p.name


class DevicePicker:
    """Device choice (auto / cuda / mps / cpu) with a line saying what it resolves to.

    Add ``picker.widgets`` to the widget's container (see :class:`ModelPicker`).
    """

    def __init__(self, label: str = "Device") -> None:
        from ..device import DEVICE_CHOICES  # imports torch: widget creation, not napari start

        self.device = ComboBox(
            label=label,
            choices=list(DEVICE_CHOICES),
            value="auto",
            tooltip="Where the network runs. 'auto' picks a CUDA GPU, then Apple MPS, "
            "then the CPU",
        )
        self.info = wrapped(Label(label="Runs on", value=""))
        #: whether the network runs in bfloat16 on a CPU that has it (a 3D U-Net does not)
        self.bf16 = True
        self.device.changed.connect(self.refresh)
        self.refresh()

    @property
    def widgets(self) -> list[Any]:
        return [self.device, self.info]

    @property
    def value(self) -> str:
        return self.device.value

    @value.setter
    def value(self, v: str) -> None:
        self.device.value = v

    def resolve(self) -> torch.device:
        """The torch device for the current choice (``DeviceError`` if unavailable)."""
        from ..device import resolve_device

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # shown by refresh() instead
            return resolve_device(self.device.value)

    def refresh(self, *_: Any) -> None:
        """Show what the current choice resolves to, and any GPU/torch mismatch."""
        from ..device import DeviceError, cpu_only_torch_warning, describe_device

        try:
            dev = self.resolve()
        except DeviceError as exc:
            set_status(self.info, str(exc), "error")
            return
        text = describe_device(dev, self.bf16)
        warn = cpu_only_torch_warning() if dev.type == "cpu" else None
        if warn:
            set_status(self.info, f"{text}. Warning: {warn}", "warning")
        else:
            set_status(self.info, text)
        self.info.tooltip = f"{self.info.value}. {self.HELP}"

    HELP = ("What the network runs on: 'cpu' (the processor; threads: how many of its cores are used), 'cuda' "
            "(an NVIDIA graphics card) or 'mps' (an Apple GPU). bfloat16: a shorter number format the "
            "processor computes faster in, with no loss that matters for segmentation")


class RunControls:
    """Run and Cancel buttons, a progress bar and the status line (``widgets``, in that
    order; a widget may place them apart), and the :class:`TaskRunner` that drives them
    (:meth:`make_runner`, once the form is built)."""

    def __init__(
        self,
        run_text: str,
        run_tooltip: str,
        cancel_tooltip: str,
        *,
        progress_tooltip: str | None = None,
        status_text: str = "Status",
    ) -> None:
        self.run_button = PushButton(text=run_text, tooltip=run_tooltip)
        self.cancel_button = PushButton(text="Cancel", tooltip=cancel_tooltip)
        self.buttons = row(self.run_button, self.cancel_button)
        self.progress = ProgressBar(value=0, min=0, max=0, label="Progress", tooltip=progress_tooltip)
        self.status = status_label(label=status_text)

    @property
    def widgets(self) -> list[Any]:
        return [self.buttons, self.progress, self.status]

    def make_runner(self) -> TaskRunner:
        return TaskRunner(progress=self.progress, run_button=self.run_button,
                          cancel_button=self.cancel_button, status=self.status)


#: the arrows of a folded and an open section (:func:`folded`)
COLLAPSED_ARROW, EXPANDED_ARROW = "▶", "▼"


def folded(sections: list[tuple[str, Container]]) -> Container:
    """A magicgui row holding folded-away (superqt ``QCollapsible``) sections."""
    from qtpy.QtGui import QIcon
    from superqt import QCollapsible

    holder = Container(widgets=[], labels=False)
    holder.margins = (0, 0, 0, 0)
    layout = holder.native.layout()
    layout.setSpacing(2)
    holder.sections = []  # the QCollapsibles (tests and the screenshot script expand them)
    for title, inner in sections:
        inner.margins = (0, 0, 0, 0)
        # the arrow in the title's text, in the title's font: ▶ folded, ▼ open (superqt draws
        # a small ▲ icon for folded, which reads as open)
        box = QCollapsible(title, expandedIcon=QIcon(), collapsedIcon=QIcon())
        box.layout().setContentsMargins(0, 2, 0, 2)  # a folded section is one row high, like the others
        button = box.toggleButton()
        button.setToolTip(f"Show or hide: {title}")
        box.toggled.connect(
            lambda open_, b=button, t=title: b.setText(f"{EXPANDED_ARROW if open_ else COLLAPSED_ARROW} {t}"))
        box.addWidget(inner.native)
        box.collapse(animate=False)
        layout.addWidget(box)
        holder.sections.append(box)
    return holder


class LossPlotSection:
    """The Train widget's live loss plot (:class:`~._lossplot.LossPlot`) and the line above
    it (step, ETA, validation score)."""

    def __init__(self, dark: bool) -> None:
        from ._lossplot import LossPlot

        self.eta = wrapped(Label(value="", label=""))
        self.eta.native.setToolTip("Training steps done, time left, and the validation score (the best so "
                                   f"far in brackets). {AP_HELP}")
        self.plot = LossPlot(dark=dark)
        self.box = Container(widgets=[], labels=False)
        self.box.margins = (0, 0, 0, 0)
        self.box.native.layout().addWidget(self.plot)

    @property
    def widgets(self) -> list[Any]:
        return [self.eta, self.box]
