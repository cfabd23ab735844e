"""Image normalisation: part of the model, computed once per image, never per tile.

The rule (percentiles ``low``/``high`` mapped to 0/1, per channel) is stored in the
model's ``meta["normalization"]`` and applied identically in training and inference.
Percentiles are computed on the whole image, or on an evenly strided subsample of it when
the image is large or lazy (dask, zarr, memory-mapped), so a tile never sees statistics
other than its image's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: above this many pixels per channel, percentiles are taken on a strided subsample
SUBSAMPLE_PIXELS = 4_000_000

#: a percentile range narrower than this share of the intensities is flat (64 float32 ulps)
FLAT_RELATIVE = 64 * float(np.finfo(np.float32).eps)


def strided_sample(image: Any, max_pixels: int) -> np.ndarray:
    """An evenly strided view/read of ``image`` with at most ~``max_pixels`` elements."""
    shape = image.shape
    n = int(np.prod(shape, dtype=np.int64))
    if n <= max_pixels:
        return np.asarray(image)
    # one stride for every axis, so the sample covers the whole image evenly
    step = int(np.ceil((n / max_pixels) ** (1.0 / len(shape))))
    sl = tuple(slice(None, None, min(step, max(1, s // 2))) for s in shape)
    sample = image[sl]
    if hasattr(sample, "compute"):
        sample = sample.compute()
    return np.asarray(sample)


def percentile_range(
    image: Any,
    low: float = 1.0,
    high: float = 99.8,
    channel_axis: int | None = None,
    max_pixels: int = SUBSAMPLE_PIXELS,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (lo, hi) intensities at the given percentiles.

    Args:
        image: array-like (numpy, dask, zarr, memmap); NaN and inf are ignored.
        channel_axis: axis holding channels, or None for a single channel.

    Returns:
        ``(lo, hi)``, float64 arrays of shape (C,) (C = 1 without a channel axis).
    """
    if channel_axis is None:
        arrs = [image]
    else:
        ax = channel_axis % image.ndim
        arrs = [image[(slice(None),) * ax + (c,)] for c in range(image.shape[ax])]
    los, his = [], []
    for a in arrs:
        s = strided_sample(a, max_pixels).astype(np.float64, copy=False).ravel()
        s = s[np.isfinite(s)]
        if s.size == 0:
            los.append(0.0)
            his.append(1.0)
            continue
        lo, hi = np.percentile(s, [low, high])
        los.append(float(lo))
        his.append(float(hi))
    return np.asarray(los), np.asarray(his)


def normalization_params(image: Any, rule: dict[str, Any], channel_axis: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) for ``image`` under a model's normalisation ``rule``."""
    kind = rule.get("kind", "percentile")
    if kind == "percentile":
        return percentile_range(image, rule.get("low", 1.0), rule.get("high", 99.8), channel_axis)
    if kind == "fixed":
        return np.atleast_1d(np.asarray(rule["lo"], float)), np.atleast_1d(np.asarray(rule["hi"], float))
    raise ValueError(f"unknown normalisation kind {kind!r} in the model")


def apply_normalization(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, channel_axis: int = 0) -> np.ndarray:
    """Map ``lo``→0 and ``hi``→1 per channel; float32 out, NaN/inf replaced by 0.

    ``channel_axis`` is the axis of ``x`` that ``lo``/``hi`` index (size 1 or C).
    """
    x = np.asarray(x, dtype=np.float32)
    shape = [1] * x.ndim
    shape[channel_axis] = -1
    lo32 = np.asarray(lo, np.float32).reshape(shape)
    scale = np.asarray(hi - lo, np.float64)
    # flat: a range within float32 rounding of the values themselves (an absolute floor
    # would stretch the rounding noise of a constant image, e.g. after zooming it, to 0..1)
    flat = scale <= FLAT_RELATIVE * np.maximum(np.abs(np.asarray(lo, np.float64)), np.abs(np.asarray(hi, np.float64))) + 1e-30
    scale = np.where(flat, 1.0, scale).astype(np.float32).reshape(shape)
    out = (x - lo32) / scale
    if not np.isfinite(out).all():
        out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
    return out
