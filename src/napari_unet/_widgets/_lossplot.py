"""A live loss plot for the Train widget (matplotlib embedded in Qt).

Training yields a record after every step (tens per second for a small network), so the
plot must not redraw on each one: :meth:`LossPlot.add` only appends numbers to lists, and
a Qt timer redraws at most ``max_fps`` times a second, and only when something changed.
The redraw updates the existing line artists (``set_data``) instead of re-plotting.

Left axis (linear, from 0): training loss per step (thin, faint), its running mean
(solid) and the validation loss (markers).
Right axis: the validation score (0-1), named by the run's ``info["score"]``: AP@0.5, or
1 - Rand error for membranes, or mean IoU (:func:`napari_unet.metrics.score_name`).
"""

from __future__ import annotations

import math
from typing import Any

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

from ..metrics import DEFAULT_SCORE

# colours that read on napari's dark and light themes
TRAIN_COLOR = "#4c9be8"
VAL_COLOR = "#f0883e"
AP_COLOR = "#56c271"


class LossPlot(QWidget):
    """Train loss, validation loss and validation score against the iteration.

    Args:
        parent: Qt parent.
        max_fps: the most redraws per second.
        dark: colours for a dark background (napari's default theme).
    """

    def __init__(self, parent: QWidget | None = None, *, max_fps: float = 4.0, dark: bool = True) -> None:
        super().__init__(parent)
        self.train_x: list[int] = []
        self.train_y: list[float] = []
        self.smooth_y: list[float] = []
        self.val_x: list[int] = []
        self.val_loss: list[float] = []
        self.val_ap: list[float] = []
        self.draw_count = 0  # how often the canvas was redrawn (tests check the throttle)
        self._dirty = False

        fg, bg = ("#d7d9dc", "#262930") if dark else ("#202020", "#ffffff")
        self.figure = Figure(figsize=(3.6, 2.6), dpi=100, facecolor=bg, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.canvas.setMinimumHeight(220)
        ax = self.figure.add_subplot(111)
        ax.set_facecolor(bg)
        ax2 = ax.twinx()
        for a in (ax, ax2):
            a.tick_params(colors=fg, labelsize=8)
            for spine in a.spines.values():
                spine.set_color(fg)
        ax.set_xlabel("iteration", color=fg, fontsize=9)
        ax.set_ylabel("loss", color=fg, fontsize=9)
        ax2.set_ylabel(f"validation {DEFAULT_SCORE}", color=AP_COLOR, fontsize=9)  # renamed by the run's "score"
        ax2.set_ylim(0, 1)
        ax.grid(True, alpha=0.2, color=fg)
        (self._raw,) = ax.plot([], [], color=TRAIN_COLOR, lw=0.6, alpha=0.35)
        (self._smooth,) = ax.plot([], [], color=TRAIN_COLOR, lw=1.6, label="train loss")
        (self._val,) = ax.plot([], [], color=VAL_COLOR, lw=1.2, marker="o", ms=3, label="val. loss")
        (self._ap,) = ax2.plot([], [], color=AP_COLOR, lw=1.2, marker="s", ms=3, label=f"val. {DEFAULT_SCORE}")
        self.ax, self.ax_ap = ax, ax2
        self._fg = fg
        self.score_name = DEFAULT_SCORE
        self._legend = self._make_legend()
        # before the first step: a plain 0-1 frame and a word, not matplotlib's -0.04...0.04
        self._empty = ax.text(0.5, 0.5, "the loss appears here while training", transform=ax.transAxes,
                              ha="center", va="center", color=fg, alpha=0.6, fontsize=9)
        self._set_empty_limits()

        from ._common import AP_HELP

        self.setToolTip("Blue: the training loss (its running mean solid), orange: the loss on the held-out "
                        "validation images; both should fall. Green (right axis): the validation score, "
                        f"higher is better; the first point is the starting model's. {AP_HELP}")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self._timer = QTimer(self)
        self._timer.setInterval(max(1, int(1000 / max_fps)))
        self._timer.timeout.connect(self._redraw_if_dirty)
        self._timer.start()

    def _set_empty_limits(self) -> None:
        self.ax.set_xlim(0, 10)
        self.ax.set_ylim(0, 1)

    # -- data -------------------------------------------------------------------------

    def clear(self) -> None:
        """Forget all points (a new run starts)."""
        for seq in (self.train_x, self.train_y, self.smooth_y, self.val_x, self.val_loss, self.val_ap):
            seq.clear()
        self._dirty = True

    def add(self, info: dict[str, Any]) -> None:
        """Take the numbers of one training record (cheap: no drawing here)."""
        score = info.get("score")
        if score and score != self.score_name:
            self.set_score_name(score)
        it = info.get("iteration")
        if it is None:
            return
        loss = info.get("train_loss")
        if loss is not None and math.isfinite(loss) and loss > 0:
            self.train_x.append(int(it))
            self.train_y.append(float(loss))
            smooth = info.get("train_loss_smooth", loss)
            self.smooth_y.append(float(smooth) if smooth and smooth > 0 else float(loss))
            self._dirty = True
        if "val_loss" in info and "val_ap" in info and (not self.val_x or self.val_x[-1] != int(it)):
            self.val_x.append(int(it))
            self.val_loss.append(max(float(info["val_loss"]), 1e-6))
            self.val_ap.append(float(info["val_ap"]))
            self._dirty = True

    def set_score_name(self, name: str) -> None:
        """Name the validation score's axis and legend entry (AP@0.5, 1 - Rand error, mean IoU)."""
        self.score_name = name
        self.ax_ap.set_ylabel(f"validation {name}", color=AP_COLOR, fontsize=9)
        self._ap.set_label(f"val. {name}")
        self._legend.remove()
        self._legend = self._make_legend()
        self._dirty = True

    def _make_legend(self) -> Any:
        # above the axes, outside the data, so it never hides a curve
        return self.figure.legend(
            handles=[self._smooth, self._val, self._ap], loc="outside upper center", fontsize=8,
            ncol=3, frameon=False, labelcolor=self._fg, handlelength=1.5, columnspacing=1.0,
        )

    # -- drawing ----------------------------------------------------------------------

    def _redraw_if_dirty(self) -> None:
        if self._dirty and self.isVisible():
            self.redraw()

    def redraw(self) -> None:
        """Update the artists and repaint (at most ``max_fps`` times a second via the timer)."""
        self._dirty = False
        self._raw.set_data(self.train_x, self.train_y)
        self._smooth.set_data(self.train_x, self.smooth_y)
        self._val.set_data(self.val_x, self.val_loss)
        self._ap.set_data(self.val_x, self.val_ap)
        xs = self.train_x + self.val_x
        self._empty.set_visible(not xs)
        if xs:
            self.ax.set_xlim(0, max(max(xs), 10) * 1.02)
            # linear from 0: the first steps' loss sets the top, the fall stays visible
            self.ax.set_ylim(0, max(self.train_y + self.val_loss) * 1.05)
        else:
            self._set_empty_limits()
        self.canvas.draw_idle()
        self.draw_count += 1
