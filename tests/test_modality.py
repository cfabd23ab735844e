"""An image unlike the model's training data gets a one-sentence warning.

Before the check the bundled fluorescence model ran silently on H&E tiles (AP 0.00) and on
inverted (dark-on-bright) images.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from test_user_errors import cli

import napari_unet as nu

HE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "he_nuclei"


def he_like(seed: int = 0, shape: tuple[int, int] = (96, 96)) -> np.ndarray:
    """A stained-tissue-like RGB tile: pink, bright background with purple nuclei."""
    rng = np.random.default_rng(seed)
    _, labels = nu.make_sample(shape, seed=seed)
    rgb = np.empty((*shape, 3), np.float64)
    rgb[:] = (235, 190, 215)
    rgb[labels > 0] = (110, 60, 150)
    return np.clip(rgb + rng.normal(0, 8, rgb.shape), 0, 255).astype(np.uint8)


def _messages(fn, *args, **kwargs) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn(*args, **kwargs)
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_stained_rgb_on_a_fluorescence_model_warns(model_path):
    model = nu.load_model(model_path)
    said = _messages(nu.segment, he_like(), model)
    assert sum("looks like stained tissue" in m for m in said) == 1  # said once, in one sentence
    msg = next(m for m in said if "stained" in m)
    assert "fine-tune" in msg and msg.count(". ") == 0 and msg.endswith(".")
    assert any("stained tissue" in m for m in _messages(nu.predict, he_like(), model))


def test_dark_objects_on_bright_background_warn(model_path):
    image, _ = nu.make_sample((128, 128), seed=1)
    said = _messages(nu.segment, image.max() - image, nu.load_model(model_path))
    assert any("background of this image is bright" in m for m in said)


def test_fluorescence_images_do_not_warn(model_path):
    model = nu.load_model(model_path)
    for seed in range(3):
        image, _ = nu.make_sample((128, 128), seed=seed)
        said = _messages(nu.segment, image, model)
        assert not any("trained on" in m for m in said), said


def test_the_check_reads_the_modality_from_the_model_file(model_path):
    model = nu.load_model(model_path)
    model.meta["modality"] = "stained"
    assert not any("trained on" in m for m in _messages(nu.segment, he_like(), model))
    image, _ = nu.make_sample((96, 96), seed=0)
    assert any("does not look like one" in m for m in _messages(nu.segment, image, model))
    model.meta["modality"] = "electron microscopy"  # a modality this check knows nothing about: silent
    assert not any("trained on" in m for m in _messages(nu.segment, he_like(), model))


def test_the_cli_prints_the_warning_as_one_line(tmp_path, model_path):
    tifffile.imwrite(tmp_path / "he.tif", he_like(), photometric="rgb")
    proc = cli("segment", str(tmp_path / "he.tif"), "-o", str(tmp_path / "out.tif"), "--model", str(model_path))
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "stained tissue" in ln]
    assert len(lines) == 1 and lines[0].startswith("napari-unet segment: warning: This colour image")


@pytest.mark.skipif(not HE.is_dir(), reason="the real H&E tiles (../shared/data/he_nuclei) are not here")
def test_real_he_tiles_warn_with_the_bundled_model():
    from napari_unet.image_checks import modality_warning
    from napari_unet.tiling import parse_axes

    meta = nu.load_model().meta
    for path in sorted(HE.glob("*_image.tif")):
        image = tifffile.imread(path)
        assert "stained tissue" in (modality_warning(image, parse_axes(image.shape), meta) or ""), path.name


@pytest.mark.parametrize("diameter", [None, "auto", 40.0])
def test_said_once_whatever_the_diameter(model_path, diameter):
    model = nu.load_model(model_path)
    model.meta["diameter"] = 12.0
    said = _messages(nu.segment, he_like(shape=(128, 128)), model, diameter=diameter)
    assert sum("stained tissue" in m for m in said) == 1, said


def test_a_model_fine_tuned_on_stained_tiles_knows_them(model_path):
    # the fluorescence model widened and fine-tuned on H&E-like tiles records what it learnt
    # from, so segmenting such a tile afterwards gives no "unlike the training data" hint
    img = he_like(seed=1, shape=(96, 96))
    _, lab = nu.make_sample((96, 96), seed=1)
    start = nu.load_model(model_path)
    assert _messages(nu.segment, img, start, device="cpu")  # the hint, before fine-tuning
    tuned = nu.fine_tune([img], [lab], start, iterations=1, tile_size=16, device="cpu")
    assert tuned.meta["modality"] == "stained"
    assert not [m for m in _messages(nu.segment, img, tuned, device="cpu") if "trained on" in m]
