"""Progress records yielded by long-running core generators.

Long work (tiled prediction, training) is written as a generator that yields
:class:`Progress` records and *returns* its result. Scripts and tests call
:func:`drain`; the widgets run the same generator in a napari ``thread_worker`` and stop
it with ``worker.quit()``, which takes effect at the next ``yield`` (so cancelling is
as quick as one tile or one training step).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


@dataclass
class Progress:
    """One step of a long computation."""

    done: int
    total: int
    message: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


class ProgressBar(Protocol):
    """What :func:`drain` needs of a progress bar: tqdm and napari.utils.progress fit."""

    total: Any

    def update(self, n: int = 1) -> Any: ...


def relay(gen: Generator[Progress, None, T], each: Callable[[Progress], Progress]) -> Generator[Progress, None, T]:
    """Yield ``each(record)`` for every record of ``gen``, and return ``gen``'s result.

    ``each`` may amend a record (return a new one) or only look at it (return it as is),
    e.g. to keep the last device or cell size that the records reported.
    """
    while True:
        try:
            rec = next(gen)
        except StopIteration as stop:
            return stop.value
        yield each(rec)


def with_info(gen: Generator[Progress, None, T], extra: dict[str, Any]) -> Generator[Progress, None, T]:
    """Relay ``gen``'s records with ``extra`` added to their ``info``; return its result."""
    return relay(gen, lambda rec: Progress(rec.done, rec.total, rec.message, {**rec.info, **extra}))


def drain(gen: Generator[Progress, None, T], progress: ProgressBar | None = None) -> T:
    """Run a progress generator to the end and return its result.

    Args:
        gen: a generator yielding :class:`Progress` and returning the result.
        progress: optional tqdm-like bar; its ``total`` is set from the records and it is
            advanced with ``update``. ``set_description`` is called with the record's
            message when the bar has it.
    """
    shown = 0
    while True:
        try:
            rec = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None and isinstance(rec, Progress):
            if getattr(progress, "total", None) != rec.total:
                progress.total = rec.total
                if hasattr(progress, "refresh"):
                    progress.refresh()
            if rec.done > shown:
                progress.update(rec.done - shown)
                shown = rec.done
            if rec.message and hasattr(progress, "set_description"):
                progress.set_description(rec.message)


class LineProgress:
    """A tqdm-like bar for output that is not a terminal (CI logs, scripts, ``nohup``).

    A terminal bar redraws one line with carriage returns, which a log file keeps as one
    long line of fragments. This prints whole lines instead: one each time another tenth of
    the work is done (or every ``every_s`` seconds when the work is slow or its length is
    unknown), and a last one at :meth:`close`.
    """

    def __init__(self, desc: str = "", unit: str = "it", file: Any = None, every_s: float = 30.0) -> None:
        self.name, self.desc, self.unit, self.file, self.every_s = desc, desc, unit, file, every_s
        self.n = 0
        self.postfix = ""
        self._start = self._said_at = time.monotonic()
        self._said = (-1, -1)  # (n, tenth) of the last line printed
        self._total: Any = 0

    @property
    def total(self) -> Any:
        return self._total

    @total.setter
    def total(self, value: Any) -> None:  # a new stage of the work: count its tenths afresh
        self._total = value
        self._said = (self._said[0], self._tenth())

    def _out(self) -> Any:
        return self.file if self.file is not None else sys.stderr

    def _tenth(self) -> int:
        return int(10 * self.n / self.total) if self.total else 0

    def line(self) -> str:
        """The current state in words, e.g. ``training: 40% (40/100 it, 12 s, loss=0.31)``,
        or ``cells.tif: post-processing: 100% (124/124 step, 2 s)``."""
        seconds = f"{time.monotonic() - self._start:.0f} s"
        if self.total:
            done = f"{100 * self.n / self.total:.0f}% ({self.n}/{self.total} {self.unit}, {seconds}"
        else:
            done = f"{self.n} {self.unit} ({seconds}"
        what = [w for w in dict.fromkeys((self.name, self.desc)) if w]  # the file, then the stage of the work
        return ": ".join([*what, done + (", " + self.postfix if self.postfix else "") + ")"])

    def _say(self) -> None:
        print(self.line(), file=self._out(), flush=True)
        self._said, self._said_at = (self.n, self._tenth()), time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._tenth() > self._said[1] or time.monotonic() - self._said_at >= self.every_s:
            self._say()

    def refresh(self) -> None:
        pass

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc  # shown after the name given at the start

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in {**(ordered_dict or {}), **kwargs}.items())

    def write(self, s: str, file: Any = None, end: str = "\n") -> None:
        print(s, file=file if file is not None else self._out(), end=end, flush=True)

    def close(self) -> None:
        if self._said[0] != self.n:
            self._say()


def progress_bar(desc: str, unit: str = "it", file: Any = None) -> Any:
    """The command line's progress bar on ``file`` (default stderr): tqdm's on a terminal,
    :class:`LineProgress` (a few whole lines) anywhere else."""
    file = file if file is not None else sys.stderr
    isatty = getattr(file, "isatty", None)
    if isatty is not None and isatty():
        from tqdm import tqdm

        return tqdm(total=0, desc=desc, unit=unit, file=file, dynamic_ncols=True)
    return LineProgress(desc, unit, file)
