"""Instance segmentation scores: IoU matching and DSB-style average precision."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

DEFAULT_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


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
