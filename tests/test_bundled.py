"""The bundled model: a plain-data file, documented by its card, good on the sample image."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import napari_unet as nu
from napari_unet.model import bundled_model_path

CARD = bundled_model_path().with_suffix(".md")
#: stated in the model card ("Sample image" section); measured 0.996
SAMPLE_AP50_FLOOR = 0.95


def test_bundled_file_is_small_and_loads_with_weights_only():
    path = bundled_model_path()
    assert path.is_file(), "the bundled model must ship with the package"
    assert path.stat().st_size < 10 * 2**20
    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert payload["format"] == "napari-unet-model"
    model = nu.load_model()
    assert model.meta["mode"] == "instance3"
    assert model.meta["class_names"] == ["background", "interior", "boundary"]
    assert model.meta["history"], "the training history travels with the model"


def test_config_matches_the_model_card():
    text = CARD.read_text()
    model = nu.load_model()
    found = re.search(r"`(UNetConfig\([^`]*\))`", text)
    assert found, "the card states the architecture as `UNetConfig(...)`"
    assert found.group(1) == repr(model.config)
    assert f"{model.meta['normalization']['low']:g}" in text and f"{model.meta['normalization']['high']:g}" in text


@pytest.mark.slow
def test_bundled_model_segments_the_sample_image():
    from napari_unet._sample_data import sample_nuclei

    (image, _, _), (gt, _, _) = sample_nuclei()
    labels = nu.segment(image)
    assert labels.shape == gt.shape and labels.dtype == np.int32
    ap = nu.average_precision(gt, labels, (0.5,))[0.5]
    assert ap >= SAMPLE_AP50_FLOOR, f"AP@0.5 on the sample image fell to {ap:.3f}"
