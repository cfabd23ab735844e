"""No cells where there are none, and the user is told.

Before the fix the bundled model found hundreds of "cells" in empty camera fields (and
tens of thousands with ``diameter="auto"``), NaN pixels vanished without a word, and
training on an all-zero image ran its whole budget.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import napari_unet as nu
from napari_unet.image_checks import drop_faint_objects, noise_sigma
from napari_unet.training import fine_tune


@pytest.fixture(scope="module")
def bundled():
    return nu.load_model()


def _blank_fields() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    shape = (256, 256)
    return {
        "constant": np.full(shape, 100, np.uint16),
        "poisson": (100 + rng.poisson(50, shape)).astype(np.uint16),
        "dark read noise": np.round(100 + rng.normal(0, 2, shape)).astype(np.uint16),
        "8-bit poisson": np.clip(10 + rng.poisson(20, shape), 0, 255).astype(np.uint8),
    }


def _sparse_cells(n: int = 3, shape: tuple[int, int] = (512, 512)) -> tuple[np.ndarray, np.ndarray]:
    """A noisy camera field with ``n`` separate nuclei of radius ~10 px."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    truth = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(((120, 100), (300, 380), (420, 150))[:n], 1):
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 <= 10**2] = i
    signal = ndi.gaussian_filter((truth > 0).astype(float), 1.5) * 150
    image = np.round(100 + rng.poisson(20 + signal) + rng.normal(0, 2, shape)).astype(np.uint16)
    return image, truth


@pytest.mark.parametrize("diameter", [None, "auto"])
@pytest.mark.parametrize("name", list(_blank_fields()))
def test_blank_fields_give_no_cells_and_say_so(bundled, name, diameter):
    image = _blank_fields()[name]
    with pytest.warns(UserWarning, match="No cells found"):
        labels = nu.segment(image, bundled, diameter=diameter)
    assert labels.max() <= 2, f"{labels.max()} objects on an empty {name} field"


@pytest.mark.parametrize("diameter", [None, "auto"])
def test_a_few_cells_in_a_large_field_are_kept(bundled, diameter):
    image, truth = _sparse_cells(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "no cells" claim about this image
        if diameter == "auto":  # too few cells to measure their size: said, and segmented as it is
            with pytest.warns(UserWarning, match="cell size could not be measured"):
                labels = nu.segment(image, bundled, diameter=diameter)
        else:
            labels = nu.segment(image, bundled, diameter=diameter)
    assert nu.average_precision(truth, labels, (0.5,))[0.5] == 1.0


def test_the_sample_keeps_its_cells(bundled):
    from napari_unet._sample_data import SAMPLE_RECIPE, SAMPLE_SEED

    image, truth = nu.make_sample((256, 256), SAMPLE_SEED, kind="nuclei", **SAMPLE_RECIPE)
    full = nu.segment(image, bundled, min_object_z=None)
    tested = nu.segment(image, bundled)
    ap_full = nu.average_precision(truth, full, (0.5,))[0.5]
    assert ap_full > 0.9
    assert nu.average_precision(truth, tested, (0.5,))[0.5] >= ap_full - 0.01


def test_noise_sigma_is_the_noise_not_the_signal(rng):
    noise = rng.normal(0, 3.0, (300, 300))
    assert noise_sigma(noise) == pytest.approx(3.0, rel=0.05)
    with_cells = noise.copy()
    with_cells[50:150, 50:150] += 1000  # a big bright object barely changes it
    assert noise_sigma(with_cells) == pytest.approx(3.0, rel=0.05)


def test_drop_faint_objects_keeps_a_bright_object_and_drops_a_noise_blob(rng):
    x = rng.normal(0, 1.0, (100, 100))
    labels = np.zeros((100, 100), np.int32)
    labels[10:20, 10:20] = 1
    x[10:20, 10:20] += 2.0  # 2 sigma per pixel over 100 pixels: a real object
    labels[60:70, 60:70] = 2  # plain noise
    kept = drop_faint_objects(x, labels, 6.0)
    assert set(np.unique(kept)) == {0, 1}


def test_nan_pixels_are_reported(tiny_model):
    image, _ = nu.make_sample((64, 64), seed=2)
    image = image.astype(np.float32)
    image[10:20, 10:20] = np.nan
    with pytest.warns(UserWarning, match="NaN or infinite pixels"):
        nu.segment(image, tiny_model)
    with pytest.warns(UserWarning, match="NaN or infinite pixels"):
        nu.predict(image, tiny_model)


def test_training_on_an_all_zero_image_is_refused_at_once(tiny_model):
    _, labels = nu.make_sample((64, 64), seed=2)
    with pytest.raises(ValueError, match="training image 0 is constant"):
        fine_tune([np.zeros((64, 64), np.uint16)], [labels], tiny_model, iterations=2, tile_size=16, device="cpu",
                  val_fraction=0)
    with pytest.warns(UserWarning, match="Every training image is constant"):
        fine_tune([np.zeros((64, 64), np.uint16)], [np.zeros((64, 64), np.int32)], tiny_model, iterations=2,
                  tile_size=16, device="cpu", val_fraction=0, regions=["all"])


def test_a_flat_image_at_float32_rounding_is_not_stretched():
    from napari_unet.normalize import apply_normalization, percentile_range

    rng = np.random.default_rng(0)
    # a constant 1e6 whose float32 rounding flickers by one ulp (0.0625), as a zoomed copy does
    image = (1e6 + 0.0625 * rng.integers(0, 2, (64, 64))).astype(np.float32)
    lo, hi = percentile_range(image)
    assert hi > lo
    out = apply_normalization(image, lo, hi, channel_axis=0)
    assert np.abs(out).max() < 0.1  # not stretched to 0..1
    real = np.linspace(0, 1000, 64 * 64, dtype=np.float32).reshape(64, 64)
    lo, hi = percentile_range(real)
    assert apply_normalization(real, lo, hi, channel_axis=0).max() > 0.99  # a real range still is


def test_an_empty_stack_with_a_model_that_zooms_each_image_is_segmented_as_it_is():
    """A stained-tissue model measures every image's cell size (meta["zoom_each"]); on an
    empty Z stack nothing can be measured: a warning and the stack as it is, not an error."""
    from _helpers import threshold_unet

    m = threshold_unet()
    m.meta.update(diameter=12.0, zoom_each=True)
    stack = np.random.default_rng(0).normal(0.1, 0.01, (3, 64, 64)).astype(np.float32)
    with pytest.warns(UserWarning, match="could not be measured"):
        labels = nu.segment(stack, m, axes="ZYX", device="cpu")
    assert labels.shape == stack.shape
