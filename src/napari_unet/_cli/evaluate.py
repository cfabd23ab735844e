"""``napari-unet evaluate GT PRED``: average precision of predicted labels against ground truth,
or with ``--em`` the EM scores of cells between membranes (adapted Rand error, variation of
information and, given the membrane probability, pixel error), per plane and averaged."""

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
    parser.add_argument("--em", action="store_true",
                        help="EM membrane scores instead of AP: adapted Rand error and variation of information "
                             "(GT: cells, 0 = membrane; a 0/1 interior mask is split into its components)")
    parser.add_argument("--membrane-probability", metavar="PROB", default=None,
                        help="with --em: the predicted membrane probability (e.g. channel 0 of "
                             "'napari-unet segment --probabilities'), to score the pixel error too")
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
    if args.em:
        return _run_em(args, gt, pred)
    if args.membrane_probability is not None:
        raise ValueError("--membrane-probability scores the pixel error of EM data: add --em")
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


def _run_em(args: argparse.Namespace, gt: np.ndarray, pred: np.ndarray) -> int:
    from ..metrics import em_scores
    from ..targets import cells_between_membranes

    prob = None
    if args.membrane_probability is not None:
        prob = np.asarray(read_image(args.membrane_probability)[0], dtype=np.float32)
        if prob.shape != gt.shape:
            raise ValueError(f"membrane probability {args.membrane_probability} has shape {prob.shape} "
                             f"but the ground truth has {gt.shape}")
        if prob.size and (np.nanmin(prob) < 0 or np.nanmax(prob) > 1):
            raise ValueError(f"{args.membrane_probability} holds values outside [0, 1]; pass a probability")
    planes = [()] if gt.ndim == 2 else list(np.ndindex(*gt.shape[:-2]))
    rows = []
    for plane in planes:
        g = cells_between_membranes(gt[plane])
        if not (g > 0).any():
            raise ValueError(f"ground truth plane {plane or 0} holds no cells (0 = membrane everywhere)")
        rows.append(em_scores(g, pred[plane], None if prob is None else prob[plane]))
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    if args.json:
        print(json.dumps({"planes": rows, "mean": mean}, indent=1))
        return 0
    names = [("pixel_error", "pixel error"), ("rand_error", "adapted Rand error"), ("vi", "VI"),
             ("vi_split", "VI split"), ("vi_merge", "VI merge")]
    print(f"{len(rows)} plane(s); mean over them:")
    for key, name in names:
        if key in mean:
            print(f"{name:>20}  {mean[key]:.4f}")
    return 0
