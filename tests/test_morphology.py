"""The compiled h-maxima and reconstruction against scikit-image's, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.morphology import h_maxima as skimage_h_maxima
from skimage.morphology import reconstruction

from napari_unet._morphology import edt, h_maxima, reconstruction_by_dilation


@pytest.mark.parametrize("seed", range(12))
def test_same_as_scikit_image(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(1, 70, 2))
    img = ndi.gaussian_filter(rng.random(shape), rng.uniform(0, 3))
    if seed % 3 == 0:
        img = np.round(img * 8) / 8  # plateaus: maxima many pixels wide
    for h in (0.005, 0.05, 0.3):
        np.testing.assert_array_equal(h_maxima(img, h), skimage_h_maxima(img, h))
    mask = rng.random(shape)
    marker = mask - rng.random(shape) * 0.5
    np.testing.assert_array_equal(reconstruction_by_dilation(marker, mask), reconstruction(np.minimum(marker, mask), mask))


def test_distance_map_peaks():
    """Two discs joined by a bridge: two h-maxima (the split the post-processing relies on)."""
    yy, xx = np.mgrid[:60, :100]
    blob = ((yy - 30) ** 2 + (xx - 30) ** 2 < 400) | ((yy - 30) ** 2 + (xx - 70) ** 2 < 400)
    blob |= (abs(yy - 30) < 3) & (xx > 30) & (xx < 70)
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(blob), 1.0)
    peaks = h_maxima(dist, 1.0)
    assert ndi.label(peaks)[1] == 2
    np.testing.assert_array_equal(peaks, skimage_h_maxima(dist, 1.0))
    assert not h_maxima(np.zeros((5, 5)), 1.0).any()  # flat: no maxima
    with pytest.raises(ValueError):
        h_maxima(dist, 0)


@pytest.mark.parametrize("seed", range(8))
def test_edt_same_as_scipy(seed):
    rng = np.random.default_rng(100 + seed)
    shape = tuple(int(n) for n in rng.integers(1, 80, 2))
    mask = rng.random(shape) < rng.uniform(0.5, 0.999)
    if seed == 0:
        mask[:] = True
        mask[-1, -1] = False  # one far corner: long distances across the whole image
    np.testing.assert_array_equal(edt(mask), ndi.distance_transform_edt(mask))
    np.testing.assert_array_equal(edt(np.ones((4, 5), bool)), ndi.distance_transform_edt(np.ones((4, 5), bool)))
