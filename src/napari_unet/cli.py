"""The ``napari-unet`` command line.

Each sub-command lives in ``napari_unet/_cli/<name>.py`` with ``add_arguments(parser)``
and ``run(args) -> int``. Bad input ends with exit status 2 and a one-line reason on
stderr (no traceback); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from importlib import import_module
from typing import Any

COMMANDS = {
    "segment": ("segment", "segment images with a model (overlap-tile inference)"),
    "weight-map": ("weight_map", "compute the paper's boundary weight map of a label image"),
    "train": ("train", "fine-tune a model on labelled images"),
    "evaluate": ("evaluate", "score predicted labels against ground truth (average precision)"),
    "export": ("export", "write a model as a bioimage.io model package (zip), to run it in other tools"),
}


class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-unet",
        description="U-Net segmentation (Ronneberger et al., 2015) from the command line.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, helptext) in COMMANDS.items():
        mod = import_module(f"napari_unet._cli.{module}")
        p = sub.add_parser(name, help=helptext, description=helptext)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(args.command)
            return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("napari-unet: interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, FileNotFoundError, OSError, MemoryError, RuntimeError) as exc:
        if args.debug or (isinstance(exc, RuntimeError) and not _is_device_error(exc)):
            raise
        msg = " ".join(str(exc).split())
        print(f"napari-unet {args.command}: error: {msg}", file=sys.stderr)
        return 2


def _one_line_warning(command: str) -> Any:
    """``warnings.showwarning`` that prints the core's warnings ("no cells found", "image unlike the
    model's training data", ...) as one line on stderr, without the source line."""

    def show(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        from tqdm import tqdm

        text = " ".join(str(message).split())
        tqdm.write(f"napari-unet {command}: warning: {text}", file=sys.stderr)  # on its own line, above any bar

    return show


def _is_device_error(exc: BaseException) -> bool:
    """A device that cannot be used (e.g. ``--device cuda`` without CUDA): the user's to fix."""
    from .device import DeviceError  # imports torch, which a device error has already loaded

    return isinstance(exc, DeviceError)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
