"""``napari-unet segment IN... -o OUT``: overlap-tile segmentation from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ._io import FORMATS, create_output, discard_output, finish_output, output_format, read_image, refuse_existing


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="*", metavar="IN", help="images: .tif/.tiff, .npy or zarr directories")
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="output file (.tif, .npy or .zarr) or, with several inputs, a directory")
    parser.add_argument("--model", metavar="FILE",
                        help="model file, or a bundled model's name: 'fluorescence', 'stained' (default: the "
                             "bundled model that suits each image: 'stained' for RGB, else 'fluorescence')")
    parser.add_argument("--tile-size", type=int, metavar="N",
                        help="output tile edge in pixels (default: chosen from free memory)")
    parser.add_argument("--batch-size", type=int, metavar="N", help="tiles per forward pass (default: auto)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--axes", metavar="AXES",
                        help="axis letters of the input, e.g. ZYX, TCYX, YXS (default: from the file or guessed)")
    parser.add_argument("--min-size", type=int, metavar="PX", help="remove objects smaller than this (pixels)")
    parser.add_argument("--diameter", type=_diameter, metavar="PX|auto|as-is",
                        help="the cells' diameter in pixels, or 'auto' to measure it: the image is zoomed to "
                             "the cell size the model knows best; 'as-is': never zoom (default: as it is, or "
                             "'auto' for a model that zooms each image, like the stained-tissue model)")
    parser.add_argument("--voxel-size", type=float, nargs=3, metavar=("Z", "Y", "X"),
                        help="Z stacks: voxel size in any unit (default: the anisotropy is estimated from the cells)")
    parser.add_argument("--plane-by-plane", action="store_true",
                        help="Z stacks: label each plane on its own (unrelated sections) instead of 3D cells")
    parser.add_argument("--views", choices=("auto", "3d+xyz", "3d", "xyz", "xy"), default="auto",
                        help="Z stacks: what predicts the cells in 3D: auto (with the bundled models: "
                             "the 3D U-Net and the 2D network in three views; with a model file: that "
                             "model), 3d+xyz, 3d (the 3D U-Net only), xyz (the 2D network in the XY, XZ and YZ "
                             "planes), xy (XY planes only)")
    parser.add_argument("--probabilities", action="store_true",
                        help="also write class probabilities, as OUT_probabilities.<ext>")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace outputs that exist already (default: refuse them); with --scheduler/--workers, "
                             "restart a store that was begun with other settings instead of refusing it")
    parser.add_argument("--format", choices=FORMATS, default="tif",
                        help="output format when OUT is a directory (default: tif)")
    parser.add_argument("--no-amp", action="store_true",
                        help="compute in float32 (default: bfloat16/float16 where the device supports it)")
    parser.add_argument("--sample", action="store_true",
                        help="segment the bundled synthetic sample image and print its average precision")
    dist = parser.add_argument_group("distributed (Dask) inference; OUT is one zarr store")
    dist.add_argument("--scheduler", metavar="ADDRESS",
                      help="run as Dask tasks on this dask.distributed scheduler (e.g. tcp://host:8786)")
    dist.add_argument("--workers", type=int, metavar="N", help="run as Dask tasks on a local cluster of N processes")
    dist.add_argument("--block-size", type=int, default=2048, metavar="PX", help="output block edge per task (default 2048)")
    dist.add_argument("--overlap", type=int, default=128, metavar="PX",
                      help="margin post-processed around each block; larger than any clump of cells (default 128)")


def _diameter(text: str) -> float | str:
    if text.strip().lower() == "auto":
        return "auto"
    if text.strip().lower() in ("as-is", "as is"):
        return "as is"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels, 'auto' or 'as-is', got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"the diameter must be a positive number of pixels, got {text!r}")
    return value


def _load_model(path: str | None) -> Any:
    from ..channels import resolve_model

    # None stays None: each image picks its bundled model (RGB -> stained)
    return None if path is None else resolve_model(path, rgb=False)[0]


def _segment(image: Any, axes: str | None, model: Any, args: argparse.Namespace, out_path: Path | None,
             fmt: str, desc: str, file_axes: str | None = None) -> Any:
    from ..inputs import ChannelMismatch, describe_input, each_channel_alone

    if axes is None and file_axes is not None:  # the file's channels, which the model may not read together
        in_channels = 1 if model is None else model.config.in_channels
        axes, note = each_channel_alone(file_axes, image.shape, in_channels)
        if note:
            print(f"{desc}: axes {file_axes} from the file; {note}", file=sys.stderr)
    try:  # the image's facts, decided once: axes, model, normalisation, warnings
        facts = describe_input(image, model, axes=axes, voxel_size=tuple(args.voxel_size) if getattr(args, "voxel_size", None) else None)
    except ChannelMismatch as exc:
        lay = exc.layout
        raise ValueError(
            f"{desc}: the model reads {exc.model_channels} channel(s) but the image has {lay.channels} "
            f"(axes {lay.axes}); give --axes with Q for that axis to segment each channel on its own, or a model "
            f"trained on {lay.channels} channels"
        ) from None
    facts.say_warnings()
    if facts.model_line:
        print(f"{desc}: segmenting with {facts.model_line}", file=sys.stderr)
    layout = facts.layout
    labels_out = create_output(out_path, layout.out_shape, "int32", fmt) if out_path is not None else None
    probs_out = probs_path = None
    if args.probabilities and out_path is not None:
        probs_path = probabilities_path(out_path)
        probs_out = create_output(probs_path, (facts.model.config.num_classes, *layout.out_shape), "float32", fmt)
    try:
        labels = _run(image, facts, args, labels_out, probs_out, desc)
    except BaseException:
        for p in (out_path, probs_path):
            if p is not None:
                discard_output(p, fmt)
        raise
    if out_path is not None:
        finish_output(out_path, labels, fmt)
        if probs_path is not None:
            finish_output(probs_path, probs_out, fmt)
    return labels


def probabilities_path(out_path: Path) -> Path:
    """Where ``--probabilities`` writes beside ``out_path``."""
    return out_path.with_name(out_path.stem + "_probabilities" + out_path.suffix)


def _run(image: Any, facts: Any, args: argparse.Namespace, labels_out: Any, probs_out: Any, desc: str) -> Any:
    from ..inputs import options_from
    from ..segmentation import segment_input_iter
    from .._progress import drain, progress_bar, relay

    options = options_from(facts.model, tile_size=args.tile_size, device=args.device, batch_size=args.batch_size,
                           amp=False if args.no_amp else None, diameter=args.diameter, min_size=args.min_size,
                           plane_by_plane=bool(getattr(args, "plane_by_plane", False)),
                           **({} if getattr(args, "views", "auto") == "auto" else {"views": args.views}))
    gen = segment_input_iter(image, facts, options, out=labels_out, probabilities_out=probs_out)
    seen: dict[str, float] = {}
    seen3d: dict[str, Any] = {}

    def watch(rec: Any) -> Any:  # keep the diameter and zoom the records report
        if "zoom" in rec.info:
            seen.update(diameter=rec.info["diameter"], zoom=rec.info["zoom"])
        if "method" in rec.info:  # 3D: how the stack was segmented
            seen3d.update(rec.info)
        return rec

    bar = progress_bar(desc, unit="step")
    try:
        labels = drain(relay(gen, watch), bar)
    finally:
        bar.close()
    if seen:
        how = "as it is" if seen["zoom"] == 1 else f"zoomed {seen['zoom']:.2f}x"
        print(f"{desc}: cell diameter {seen['diameter']:.1f} px, segmented {how}", file=sys.stderr)
    if seen3d.get("anisotropy"):
        print(f"{desc}: 3D, Z step {seen3d['anisotropy']:.2f} px ({seen3d['anisotropy_source']}), "
              f"{seen3d['method']} on {seen3d.get('views', 'XY')}", file=sys.stderr)
    return labels


def _run_sample(args: argparse.Namespace, model: Any) -> int:
    try:
        from .._sample_data import SAMPLE_RECIPE, SAMPLE_SEED, SAMPLE_SHAPE
        from ..synthetic import make_sample
    except ImportError as exc:
        raise ValueError(f"the sample image is not available in this installation ({exc})") from exc
    from ..metrics import matching

    image, truth = make_sample(SAMPLE_SHAPE, SAMPLE_SEED, kind="nuclei", **SAMPLE_RECIPE)
    out_path = Path(args.output) if args.output else None
    fmt = output_format(out_path) if out_path is not None else "tif"
    if out_path is not None:
        refuse_existing([out_path] + ([probabilities_path(out_path)] if args.probabilities else []), args.overwrite)
    labels = _segment(image, None, model, args, out_path, fmt, "sample")
    print(f"sample image {image.shape[0]}x{image.shape[1]}: {int(truth.max())} true cells, "
          f"{int(labels.max())} found")
    print("IoU threshold  AP     TP   FP   FN")
    for t in (0.5, 0.6, 0.7, 0.8, 0.9):
        m = matching(truth, labels, t)
        print(f"{t:>13.2f}  {m['ap']:.3f} {m['tp']:>4d} {m['fp']:>4d} {m['fn']:>4d}")
    if out_path is not None:
        print(f"labels written to {out_path}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.tile_size is not None and args.tile_size < 1:
        raise ValueError(f"--tile-size must be a positive number of pixels, got {args.tile_size}")
    if not args.inputs and not args.sample:
        raise ValueError("give at least one input image (or --sample)")
    if args.inputs and not args.output:
        raise ValueError("give the output with -o OUT")
    if args.scheduler or args.workers:
        if args.diameter not in (None, "as is"):  # blocks are never zoomed
            raise ValueError("--diameter is not available with --scheduler/--workers; zoom the image beforehand")
        if "Z" in (args.axes or "").upper() and not args.plane_by_plane:
            raise ValueError("3D labels are not available with --scheduler/--workers; add --plane-by-plane")
        from ..distributed import run_cli

        return run_cli(args)
    from ..device import resolve_device

    resolve_device(args.device)  # a device that cannot be used is said before any work starts
    # open every input first: a typo in the last one should not cost the first one's run
    opened = [(Path(p), *read_image(p)) for p in args.inputs]
    model = _load_model(args.model)
    if args.sample:
        if args.inputs:
            raise ValueError("--sample segments the sample image only; drop the inputs or --sample")
        return _run_sample(args, model)
    out = Path(args.output)
    # an existing zarr output is a directory too, but it is one output, not a folder of them
    several = (len(opened) > 1 or (out.is_dir() and out.suffix.lower() != ".zarr")
               or args.output.endswith(("/", "\\")))
    if several:
        if out.exists() and not out.is_dir():
            raise ValueError(f"with several inputs OUT must be a directory, but {out} is a file")
    jobs = []
    for path, image, file_axes in opened:
        if several:
            fmt = args.format
            name = (path.stem if path.suffix.lower() != ".zarr" else path.name[:-5]) + "_labels." + fmt
            target = out / name
        else:
            fmt = output_format(out, default="")
            if not fmt:
                raise ValueError(f"cannot tell the output format of {out}: end it with .tif, .npy or .zarr")
            target = out
        if target.resolve() == path.resolve():
            raise ValueError(f"the output {target} would overwrite its input")
        jobs.append((path, image, file_axes, target, fmt))
    # every output is checked before the first run: none is replaced without --overwrite
    refuse_existing([t for *_, t, _f in jobs] + ([probabilities_path(t) for *_, t, _f in jobs] if args.probabilities
                                                 else []), args.overwrite)
    if several:
        out.mkdir(parents=True, exist_ok=True)
    for path, image, file_axes, target, fmt in jobs:
        _segment(image, args.axes, model, args, target, fmt, path.name, file_axes)
        print(f"{path} -> {target}", file=sys.stderr)
    return 0
