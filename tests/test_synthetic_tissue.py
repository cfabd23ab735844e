"""The synthetic stained-tissue generator: seeded, valid labels, brightfield-looking RGB."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.synthetic_tissue import make_tissue_sample


def test_seeded_rgb_with_dark_labelled_nuclei():
    img, lab = make_tissue_sample((128, 160), seed=7, stain="he", scale="20x")
    again, lab2 = make_tissue_sample((128, 160), seed=7, stain="he", scale="20x")
    np.testing.assert_array_equal(img, again)
    np.testing.assert_array_equal(lab, lab2)
    assert img.shape == (128, 160, 3) and img.dtype == np.uint8 and lab.dtype == np.int32
    ids = np.unique(lab)
    assert ids[0] == 0 and np.array_equal(ids, np.arange(len(ids))) and len(ids) > 5
    lum = img.astype(float).mean(-1)
    # brightfield: nuclei absorb, so they are darker than the tissue around them
    assert lum[lab > 0].mean() < lum[lab == 0].mean() - 20
    # H&E: the nuclei are bluer (less red relative to blue) than the eosin background
    r_b = img[..., 0].astype(float) - img[..., 2]
    assert r_b[lab > 0].mean() < r_b[lab == 0].mean()


def test_scales_and_stains():
    from napari_unet.diameter import label_diameter

    d20 = np.median([label_diameter([make_tissue_sample((128, 128), seed=s, scale="20x")[1]]) for s in range(2)])
    d40 = np.median([label_diameter([make_tissue_sample((128, 128), seed=s, scale="40x")[1]]) for s in range(2)])
    assert 1.5 < d40 / d20 < 2.6
    gray, _ = make_tissue_sample((64, 64), seed=1, stain="gray")
    assert np.abs(gray[..., 0].astype(int) - gray[..., 2]).mean() < 12
    with pytest.raises(ValueError, match="stain must be one of"):
        make_tissue_sample((64, 64), stain="pap")
