"""``napari-unet export [MODEL] -o OUT.zip``: a model as a bioimage.io model package."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", metavar="MODEL", help="model file (default: the bundled model)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.zip", help="the package to write")
    parser.add_argument("--name", help="the model's name in the package")
    parser.add_argument("--description", help="one paragraph describing the model")
    parser.add_argument("--author", action="append", metavar="NAME", help="an author (repeat for several)")
    parser.add_argument("--test-image", metavar="IMAGE",
                        help="image for the package's test tensors (.tif/.npy; default: a synthetic one)")
    parser.add_argument("--license", default="BSD-3-Clause", metavar="SPDX",
                        help="licence of the weights, an SPDX identifier (default: BSD-3-Clause, napari-unet's)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def run(args: argparse.Namespace) -> int:
    from ..export import export_bioimageio

    test_image = None
    if args.test_image:
        from ._io import read_image

        test_image, _ = read_image(args.test_image)
    path = export_bioimageio(
        args.model, args.output, name=args.name, description=args.description, authors=args.author,
        test_image=test_image, license=args.license, overwrite=args.overwrite,
    )
    print(f"wrote {path}: a bioimage.io model package (rdf.yaml, TorchScript weights, test tensors)",
          file=sys.stderr)
    return 0
