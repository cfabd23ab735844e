"""Segmentation scores: IoU matching and DSB-style average precision (nuclei, cells), and
the EM scores of the ISBI 2012 challenge (membranes): pixel error, adapted Rand error and
variation of information.

The EM scores follow scikit-image (``skimage.metrics.adapted_rand_error`` and
``variation_of_information``; the tests check the values agree) and are computed from
one contingency table of (true id, predicted id) pairs. As in the challenge, the adapted
Rand error ignores the true membrane (id 0): the cells are scored, not where the
membranes lie. Predicted 0 pixels count as one region of their own, so a segmentation
that leaves gaps between cells is penalised; :func:`em_scores` is the one call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from .targets import check_labels

DEFAULT_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def restrict_to_region(labels: Any, region: Any) -> np.ndarray:
    """Keep only the objects lying at least half inside ``region`` (the rest set to 0).

    This is how a prediction (or an annotation) is compared on an annotated region: an
    object cut by the region's edge counts when most of it is inside, as in training's
    validation (the one definition: annotation scores and training's validation use it).
    """
    lab = check_labels(labels)
    reg = np.asarray(region, bool)
    if reg.shape != lab.shape:
        raise ValueError(f"region shape {reg.shape} does not match the labels' shape {lab.shape}")
    if reg.all():
        return lab
    ids = lab.ravel().astype(np.int64)
    n = int(ids.max(initial=0)) + 1
    inside = np.bincount(ids[reg.ravel()], minlength=n)
    total = np.bincount(ids, minlength=n)
    keep = inside * 2 >= total
    keep[0] = True
    return np.where(keep[lab], lab, 0)


def iou_matrix(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every (gt cell, predicted cell) pair that overlaps.

    Returns ``(iou, gt_ids, pred_ids)``; ``iou`` has shape (len(gt_ids), len(pred_ids)).
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth shape {gt.shape} and prediction shape {pred.shape} differ")
    g_ids, g_inv = np.unique(gt.ravel(), return_inverse=True)
    p_ids, p_inv = np.unique(pred.ravel(), return_inverse=True)
    # contingency table (overlap areas) via one bincount over pair codes
    overlap = np.bincount(g_inv * len(p_ids) + p_inv, minlength=len(g_ids) * len(p_ids))
    overlap = overlap.reshape(len(g_ids), len(p_ids)).astype(np.float64)
    g_area = overlap.sum(1, keepdims=True)
    p_area = overlap.sum(0, keepdims=True)
    union = g_area + p_area - overlap
    iou = np.divide(overlap, union, out=np.zeros_like(overlap), where=union > 0)
    g_keep = g_ids != 0
    p_keep = p_ids != 0
    return iou[np.ix_(g_keep, p_keep)], g_ids[g_keep], p_ids[p_keep]


def matching(gt: np.ndarray, pred: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """One-to-one matching at an IoU threshold: counts and the DSB score."""
    iou, g_ids, p_ids = iou_matrix(gt, pred)
    return _match(iou, threshold)


def _match(iou: np.ndarray, threshold: float) -> dict[str, Any]:
    n_gt, n_pred = iou.shape
    if n_gt == 0 or n_pred == 0:
        tp = 0
    elif threshold >= 0.5:
        # IoU > 0.5 pairs are unique on both sides: no assignment problem to solve
        tp = int((iou > threshold).sum())
    else:
        cost = -(iou * (iou > threshold))
        rows, cols = linear_sum_assignment(cost)
        tp = int((iou[rows, cols] > threshold).sum())
    fp = n_pred - tp
    fn = n_gt - tp
    denom = tp + fp + fn
    return {
        "threshold": threshold,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "n_true": n_gt,
        "n_pred": n_pred,
        "ap": tp / denom if denom else 1.0,
        "precision": tp / n_pred if n_pred else (1.0 if n_gt == 0 else 0.0),
        "recall": tp / n_gt if n_gt else 1.0,
    }


def average_precision(
    gt_labels: np.ndarray, pred_labels: np.ndarray, thresholds: float | Sequence[float] = DEFAULT_THRESHOLDS
) -> dict[float, float]:
    """DSB-2018-style average precision TP / (TP + FP + FN) at each IoU threshold.

    Args:
        gt_labels: ground-truth instance labels (0 = background).
        pred_labels: predicted instance labels of the same shape.
        thresholds: one IoU threshold or several.

    Returns:
        ``{threshold: score}``. Both images empty scores 1.0.
    """
    if np.isscalar(thresholds):
        thresholds = (float(thresholds),)
    iou, _, _ = iou_matrix(gt_labels, pred_labels)
    return {float(t): _match(iou, float(t))["ap"] for t in thresholds}


# -- EM (membrane) scores ----------------------------------------------------------------


def _pair_counts(gt: np.ndarray, pred: np.ndarray, ignore_labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sizes of the (true, predicted) overlaps, of the true and of the predicted regions,
    over the pixels whose true id is not in ``ignore_labels``."""
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth shape {gt.shape} and prediction shape {pred.shape} differ")
    g, p = gt.ravel(), pred.ravel()
    if len(ignore_labels):
        keep = ~np.isin(g, list(ignore_labels))
        g, p = g[keep], p[keep]
    _, g_inv = np.unique(g, return_inverse=True)
    _, p_inv = np.unique(p, return_inverse=True)
    n_p = int(p_inv.max(initial=-1)) + 1
    _, joint = np.unique(g_inv.astype(np.int64) * n_p + p_inv, return_counts=True)
    return joint.astype(np.float64), np.bincount(g_inv).astype(np.float64), np.bincount(p_inv).astype(np.float64)


def adapted_rand_error(gt_labels: Any, pred_labels: Any, ignore_labels: Sequence[int] = (0,)) -> tuple[float, float, float]:
    """Adapted Rand error of the ISBI 2012 challenge (scikit-image's definition).

    Args:
        gt_labels: true regions (e.g. cells; 0 = membrane).
        pred_labels: predicted regions of the same shape.
        ignore_labels: true ids whose pixels are not scored (default: the membrane, 0).

    Returns:
        ``(error, precision, recall)``: ``error = 1 - F`` of the pair precision and
        recall, as ``skimage.metrics.adapted_rand_error`` returns them (0 is perfect).
    """
    joint, a, b = _pair_counts(gt_labels, pred_labels, ignore_labels)
    n = joint.sum()
    if n == 0:
        raise ValueError("no pixel is scored: the ground truth holds only ignored ids")
    pairs = joint @ joint - n
    sum_a, sum_b = a @ a - n, b @ b - n
    precision = pairs / sum_a if sum_a else 1.0
    recall = pairs / sum_b if sum_b else 1.0
    denom = 0.5 * (sum_a + sum_b)
    return (float(1.0 - pairs / denom) if denom else 0.0), float(precision), float(recall)


def variation_of_information(gt_labels: Any, pred_labels: Any, ignore_labels: Sequence[int] = ()) -> tuple[float, float]:
    """Variation of information in bits, split into its two parts (scikit-image's order).

    Returns:
        ``(H(pred | true), H(true | pred))``: the first grows with split cells (false
        splits), the second with merged cells (false merges); VI is their sum (0 is
        perfect).
    """
    joint, a, b = _pair_counts(gt_labels, pred_labels, ignore_labels)
    n = joint.sum()
    if n == 0:
        raise ValueError("no pixel is scored: the ground truth holds only ignored ids")

    def entropy(c: np.ndarray) -> float:
        q = c[c > 0] / n
        return float(-(q * np.log2(q)).sum())

    h_joint = entropy(joint)
    return h_joint - entropy(a), h_joint - entropy(b)


def pixel_error(gt_membrane: Any, membrane_probability: Any, threshold: float = 0.5) -> float:
    """Share of pixels whose membrane/cell class is wrong (``p > threshold`` = membrane).

    Args:
        gt_membrane: bool (True = membrane) or labels (0 = membrane, any id = cell).
        membrane_probability: predicted membrane probability, same shape.
        threshold: probability above which a pixel is called membrane.
    """
    gt = np.asarray(gt_membrane)
    prob = np.asarray(membrane_probability, dtype=np.float64)
    if gt.shape != prob.shape:
        raise ValueError(f"ground truth shape {gt.shape} and probability shape {prob.shape} differ")
    membrane = gt if gt.dtype == bool else gt == 0
    return float(np.mean((prob > threshold) != membrane))


def em_scores(gt_labels: Any, pred_labels: Any, membrane_probability: Any = None) -> dict[str, float]:
    """The EM scores of one image: adapted Rand error (true membrane ignored), variation
    of information (split and merge parts, true membrane ignored too, so both scores see
    the same pixels) and, given the membrane probability, the pixel error.

    Args:
        gt_labels: true cells, 0 = membrane.
        pred_labels: predicted cells.
        membrane_probability: optional predicted membrane probability.

    Returns:
        ``{"rand_error", "rand_precision", "rand_recall", "vi", "vi_split", "vi_merge"}``
        and ``"pixel_error"`` when the probability is given.
    """
    are, prec, rec = adapted_rand_error(gt_labels, pred_labels)
    split, merge = variation_of_information(gt_labels, pred_labels, ignore_labels=(0,))
    out = {"rand_error": are, "rand_precision": prec, "rand_recall": rec,
           "vi": merge + split, "vi_split": split, "vi_merge": merge}
    if membrane_probability is not None:
        out["pixel_error"] = pixel_error(gt_labels, membrane_probability)
    return out


#: the validation score of instance modes (see :func:`score_name`)
DEFAULT_SCORE = "AP@0.5"


def score_name(mode: str, membranes: bool) -> str:
    """What the validation score (``val_ap``) of a training run in this mode measures, for display."""
    if mode == "semantic":
        return "mean IoU"
    return "1 - Rand error" if membranes else DEFAULT_SCORE
