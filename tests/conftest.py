"""Shared fixtures: tiny networks and small images keep the suite fast on 2 cores."""

from __future__ import annotations

import os

import numpy as np
import pytest

# one BLAS/torch thread pool per core is plenty for tiny networks
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def tiny_model():
    """A depth-2, width-4 U-Net with random weights, in eval mode (deterministic)."""
    import torch

    from napari_unet import UNet

    torch.manual_seed(0)
    model = UNet(in_channels=1, num_classes=3, depth=2, base_width=4)
    # give BatchNorm non-trivial running statistics so eval mode is not an identity
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture
def model_path(tmp_path):
    """A model file of ``_helpers.threshold_unet``: finds bright blobs, deterministically."""
    from _helpers import threshold_unet

    from napari_unet import save_model

    return save_model(threshold_unet(), tmp_path / "threshold.pt")


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
