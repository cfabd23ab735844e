"""Resizing images and labels along chosen axes (numpy and scipy only).

Images are resampled linearly between pixel centres, with a Gaussian pre-filter along an
axis that shrinks (no aliasing of fine texture); labels take the nearest pixel centre.
Used to zoom an image to the model's cell size and back (:mod:`napari_unet.segmentation`,
:mod:`napari_unet.volume`, training-data rescaling) and to resample a stack along Z.
"""

from __future__ import annotations

import numpy as np


def resize_axis(x: np.ndarray, axis: int, n: int, edge: str = "reflect") -> np.ndarray:
    """``x`` (float32) resized to ``n`` samples along ``axis``: linear between sample centres.

    Args:
        edge: how the pre-filter of a shrinking axis extends the edge (a mode of
            ``scipy.ndimage.gaussian_filter``: ``"reflect"`` for images, ``"nearest"`` for
            a stack's Z axis).
    """
    m = x.shape[axis]
    if n == m:
        return np.asarray(x, np.float32)
    if n < m:
        from scipy import ndimage as ndi

        sigma = [0.0] * x.ndim
        sigma[axis] = (m / n - 1) / 2
        x = ndi.gaussian_filter(np.asarray(x, np.float32), sigma, mode=edge)
    c = np.clip((np.arange(n) + 0.5) * (m / n) - 0.5, 0, m - 1)
    i0 = np.floor(c).astype(np.int64)
    i1 = np.minimum(i0 + 1, m - 1)
    f = (c - i0).astype(np.float32).reshape([-1 if k == axis else 1 for k in range(x.ndim)])
    return np.take(x, i0, axis=axis) * (1 - f) + np.take(x, i1, axis=axis) * f


def nearest_axis(x: np.ndarray, axis: int, n: int) -> np.ndarray:
    """``x`` resized to ``n`` samples along ``axis`` by the nearest sample centre (labels, masks)."""
    src = np.minimum(((np.arange(n) + 0.5) * (x.shape[axis] / n)).astype(np.int64), x.shape[axis] - 1)
    return np.take(x, src, axis=axis)


def resize_image(image: np.ndarray, axes: str, yx_shape: tuple[int, int]) -> np.ndarray:
    """``image`` (float32) with its Y and X axes resized to ``yx_shape``; other axes unchanged.

    Bilinear between pixel centres, with a Gaussian pre-filter along an axis that shrinks
    (no aliasing of fine texture).
    """
    x = np.asarray(image, np.float32)
    for letter, n in zip("YX", yx_shape):
        x = resize_axis(x, axes.index(letter), n)
    return x


def resize_nearest(labels: np.ndarray, axes: str, yx_shape: tuple[int, int]) -> np.ndarray:
    """Labels with their Y and X axes resized to ``yx_shape`` (nearest pixel centre)."""
    out = labels
    for letter, n in zip("YX", yx_shape):
        out = nearest_axis(out, axes.index(letter), n)
    return out


def zoomed_shape(yx_shape: tuple[int, int], zoom: float) -> tuple[int, int]:
    """The Y, X size of an image of ``yx_shape`` zoomed by ``zoom``."""
    return max(1, round(yx_shape[0] * zoom)), max(1, round(yx_shape[1] * zoom))


__all__ = ["nearest_axis", "resize_axis", "resize_image", "resize_nearest", "zoomed_shape"]
