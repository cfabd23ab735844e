"""Atomic file writes, shared by every module that writes a file others may read.

A file is written under a temporary name in the target's folder and then renamed over
the target (``os.replace`` is atomic on one file system), so a reader or a crash in the
middle of a save never sees a truncated file: it sees the old one or the new one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object], *, fsync: bool = True) -> Path:
    """Write a file through ``write(fh)`` and move it into place at ``path`` atomically.

    Args:
        path: The file to (over)write; its folder is created if missing.
        write: Called once with the open binary temporary file; writes the content.
        fsync: Flush the content to disk before the rename, so that the new file also
            survives a power cut. Writers of many small, recomputable files (resume
            markers) turn it off for speed.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        # the half-written temporary file is of no use to anyone: don't leave it behind
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
