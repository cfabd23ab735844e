"""``napari-unet weight-map LABELS -o OUT``: the paper's boundary weight map of a label image."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ._io import read_image

OUT_SUFFIXES = (".tif", ".tiff", ".npy")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("labels", metavar="LABELS", help="instance labels (.tif, .npy or zarr), 2D or 3D")
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="where to write the float32 weight map (.tif or .npy)")
    parser.add_argument("--w0", type=float, default=10.0, help="weight of the border term (default 10)")
    parser.add_argument("--sigma", type=float, default=5.0,
                        help="width of the border term, in the units of --spacing (default 5 px)")
    parser.add_argument("--class-weights", choices=("none", "balanced"), default="none",
                        help="class balance w_c: none (1 everywhere) or balanced "
                        "(inverse class frequency, mean 1 over the image)")
    parser.add_argument("--spacing", type=float, nargs="+", metavar="S",
                        help="pixel size per axis (or one number) for anisotropic images")
    parser.add_argument("--per-plane", action="store_true",
                        help="treat a 3D (or higher) stack as independent 2D planes over its "
                        "leading axes (e.g. a time series) instead of one 3D volume")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def _write(path: Path, w: np.ndarray) -> None:
    if path.suffix.lower() == ".npy":
        np.save(path, w)
    else:
        import tifffile

        tifffile.imwrite(path, w, compression="zlib")


def run(args: argparse.Namespace) -> int:
    from .._progress import progress_bar
    from ..targets import check_labels
    from ..weights import weight_map

    out = Path(args.output)
    if out.suffix.lower() not in OUT_SUFFIXES:
        raise ValueError(f"output {out} must end in .tif, .tiff or .npy")
    if out.exists() and not args.overwrite:
        raise ValueError(f"output {out} exists; pass --overwrite to replace it")
    if not out.parent.exists():
        raise ValueError(f"output folder {out.parent} does not exist")
    array, _ = read_image(args.labels)
    labels = check_labels(np.asarray(array), name=f"labels in {args.labels}")
    if labels.ndim < 2:
        raise ValueError(f"{args.labels} is {labels.ndim}D; a label image must be 2D or 3D")
    if labels.ndim > 3 and not args.per_plane:
        raise ValueError(f"{args.labels} is {labels.ndim}D (shape {labels.shape}); "
                         "pass --per-plane to process it as 2D planes")
    kwargs = dict(w0=args.w0, sigma=args.sigma,
                  class_weights=None if args.class_weights == "none" else "balanced",
                  spacing=args.spacing)
    if args.per_plane and labels.ndim > 2:
        planes = labels.reshape((-1,) + labels.shape[-2:])
        w = np.empty(planes.shape, np.float32)
        bar = progress_bar("weight map", unit="plane")
        bar.total = len(planes)
        try:
            for i in range(len(planes)):
                w[i] = weight_map(planes[i], **kwargs)
                bar.update()
        finally:
            bar.close()
        w = w.reshape(labels.shape)
    else:
        w = weight_map(labels, **kwargs)
    _write(out, w)
    print(f"wrote {out}: {w.shape} float32, min {w.min():.3g}, max {w.max():.3g}")
    return 0
