"""Membrane models' test-time flips and fitted membrane bias (napari_unet.calibration)."""

import math

import numpy as np
import pytest
import torch

import napari_unet as nu
from napari_unet.calibration import BIAS_THRESHOLDS, MEMBRANE_TEST_TIME_FLIPS, calibrate_membranes, fit_membrane_bias
from napari_unet.model import UNet

from _helpers import membrane_image


def _tiny2(seed=0):
    torch.manual_seed(seed)
    m = UNet(in_channels=1, num_classes=2, depth=2, base_width=8, dropout=0.0)
    m.meta["mode"] = "instance2"
    return m.eval()


def test_flipped_tiles_stitch_like_flipped_images():
    """Flips per tile == predicting the four flipped images and flipping back (the
    tiles, several per image here, stitch without seams; a wrong flip-back fails)."""
    torch.set_num_threads(1)
    # edges a multiple of the pooling grid (4): a flipped image then keeps its pixels'
    # pooling phase, so the image-level reference is exact
    img = membrane_image((96, 80), seed=3)[0]
    m = _tiny2()
    m.meta["normalization"] = {"kind": "fixed", "lo": [0.0], "hi": [1.0]}  # the same for a flipped image
    plain = [nu.predict(np.ascontiguousarray(img[sy, sx]), model=m, tile_size=32, amp=False)[:, sy, sx]
             for sy, sx in [(slice(None), slice(None)), (slice(None), slice(None, None, -1)),
                            (slice(None, None, -1), slice(None)), (slice(None, None, -1), slice(None, None, -1))]]
    m.meta["test_time_flips"] = True
    flipped = nu.predict(img, model=m, tile_size=32, amp=False)
    np.testing.assert_allclose(flipped, np.mean(plain, 0), atol=1e-5)
    assert np.abs(flipped - plain[0]).max() > 1e-3  # the flips do change an untrained network's output


def test_class_bias_moves_the_membrane_decision():
    torch.set_num_threads(1)
    img = membrane_image(seed=4)[0]
    m = _tiny2()
    p = nu.predict(img, model=m, amp=False)[0].astype(np.float64)
    m.meta["class_bias"] = [-0.8, 0.0]
    q = nu.predict(img, model=m, amp=False)
    np.testing.assert_allclose(q[0], 1 / (1 + np.exp(-(np.log(p / (1 - p)) - 0.8))), atol=1e-5)
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-5)


def test_fit_membrane_bias_finds_the_best_threshold():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, (64, 64))
    assert fit_membrane_bias([p], [p > 0.5]) == 0.0
    b = fit_membrane_bias([p], [p > 0.62])  # the network over-calls membrane
    assert 1 / (1 + math.exp(b)) == pytest.approx(0.62)
    # only the masked pixels count
    mask = np.zeros_like(p, bool)
    mask[:32] = True
    truth = np.where(mask, p > 0.4, p > 0.6)
    assert 1 / (1 + math.exp(fit_membrane_bias([p], [truth], [mask]))) == pytest.approx(0.4)
    assert fit_membrane_bias([p], [p > 0.9]) == pytest.approx(-math.log(BIAS_THRESHOLDS[-1] / (1 - BIAS_THRESHOLDS[-1])))
    with pytest.raises(ValueError, match="differ in shape"):
        fit_membrane_bias([p], [p[:10] > 0.5])


def test_calibrate_membranes_fits_the_decision_on_the_given_pixels():
    torch.set_num_threads(1)
    img, _, membrane = membrane_image(seed=5)
    m = _tiny2()
    m.meta["normalization"] = {"kind": "fixed", "lo": [0.0], "hi": [1.0]}  # predict reads img as given
    m.meta["test_time_flips"] = True
    p = nu.predict(img, model=m, amp=False)[0]
    errors = [np.mean((p > t) != membrane) for t in BIAS_THRESHOLDS]
    bias = calibrate_membranes(m, [img[None]], [membrane], flips=True)
    assert m.meta["test_time_flips"] is True and m.meta["class_bias"] == [bias, 0.0]
    calibrated = np.mean((nu.predict(img, model=m, amp=False)[0] > 0.5) != membrane)
    assert calibrated == pytest.approx(min(errors), abs=2e-4)
    assert calibrated < np.mean((p > 0.5) != membrane)  # an untrained network: 0.5 is not its best threshold


def test_membrane_training_switches_calibration_on(tmp_path):
    torch.set_num_threads(1)
    img, cells, _ = membrane_image(seed=6)
    fast = dict(batch_size=2, tile_size=48, device="cpu", amp=False, lr=3e-3, iterations=2)
    m = nu.fine_tune([img] * 4, [cells] * 4, _tiny2(), preset="membranes", checkpoint_dir=tmp_path, **fast)
    assert m.meta["test_time_flips"] is MEMBRANE_TEST_TIME_FLIPS
    assert len(m.meta["class_bias"]) == 2 and np.isfinite(m.meta["class_bias"]).all()
    # the checkpoint's best model is calibrated too (what a resumed or cancelled run hands out)
    assert nu.load_model(tmp_path / "best.pt").meta.get("class_bias") is not None
    nuclei_img, nuclei = nu.make_sample((96, 96))
    other = nu.fine_tune([nuclei_img] * 4, [nuclei] * 4, _tiny2(), **fast)
    assert "test_time_flips" not in other.meta and "class_bias" not in other.meta
