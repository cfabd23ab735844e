"""``napari-unet evaluate GT PRED``: average precision of predicted labels against ground truth."""

from __future__ import annotations

import argparse
import json

import numpy as np

from ._io import read_image


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ground_truth", metavar="GT", help="ground-truth labels (.tif, .npy or zarr)")
    parser.add_argument("prediction", metavar="PRED", help="predicted labels of the same shape")
    parser.add_argument("--thresholds", type=float, nargs="+", metavar="T",
                        default=[0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95],
                        help="IoU thresholds (default: 0.5 to 0.95 in steps of 0.05)")
    parser.add_argument("--json", action="store_true", help="print the scores as JSON instead of a table")


def _labels(path: str) -> np.ndarray:
    array, _ = read_image(path)
    array = np.asarray(array)
    if array.dtype.kind not in "biu":
        raise ValueError(f"{path} holds {array.dtype} values; labels must be integers")
    return array


def run(args: argparse.Namespace) -> int:
    from ..metrics import matching

    for t in args.thresholds:
        if not 0.0 < t < 1.0:
            raise ValueError(f"IoU thresholds must lie between 0 and 1, got {t}")
    gt = _labels(args.ground_truth)
    pred = _labels(args.prediction)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {args.ground_truth} has shape {gt.shape} but prediction "
                         f"{args.prediction} has {pred.shape}")
    rows = [matching(gt, pred, float(t)) for t in args.thresholds]
    mean_ap = float(np.mean([r["ap"] for r in rows]))
    if args.json:
        print(json.dumps({"thresholds": rows, "mean_ap": mean_ap}, indent=1))
        return 0
    print(f"{rows[0]['n_true']} true objects, {rows[0]['n_pred']} predicted")
    print("IoU threshold  AP     precision recall  TP    FP    FN")
    for r in rows:
        print(f"{r['threshold']:>13.2f}  {r['ap']:.3f}  {r['precision']:.3f}     {r['recall']:.3f}  "
              f"{r['tp']:>5d} {r['fp']:>5d} {r['fn']:>5d}")
    print(f"mean AP over {len(rows)} thresholds: {mean_ap:.3f}")
    return 0
