"""Progress records yielded by long-running core generators.

Long work (tiled prediction, training) is written as a generator that yields
:class:`Progress` records and *returns* its result. Scripts and tests call
:func:`drain`; the widgets run the same generator in a napari ``thread_worker`` and stop
it with ``worker.quit()``, which takes effect at the next ``yield`` (so cancelling is
as quick as one tile or one training step).
"""

from __future__ import annotations

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
