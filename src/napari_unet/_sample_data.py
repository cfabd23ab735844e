"""napari sample data: a synthetic fluorescence image with its ground truth.

napari imports this module when it builds its File > Open Sample menu, so it imports
only numpy/scipy (through ``synthetic``), never torch or napari.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .synthetic import make_sample
from .synthetic_3d import make_stack

#: fixed recipe of the sample: moderate difficulty, some clumps, 12-bit camera
SAMPLE_SHAPE = (512, 512)
SAMPLE_SEED = 2015  # the year of the U-Net paper
SAMPLE_RECIPE: dict[str, Any] = dict(
    difficulty="normal", density=0.3, radius=10.0, bit_depth=12, offset=100.0,
    dynamic_range=0.25, photons=400.0, debris_density=6e-5,
)


def sample_nuclei() -> list[tuple[Any, dict[str, Any], str]]:
    """A 512x512 synthetic nuclei image and its instance labels, as napari layer data.

    Returns:
        ``[(image, image_kwargs, "image"), (labels, labels_kwargs, "labels")]``: ``image``
        is uint16 (12-bit range), ``labels`` int32 with one id per nucleus.
    """
    image, labels = make_sample(SAMPLE_SHAPE, SAMPLE_SEED, kind="nuclei", **SAMPLE_RECIPE)
    # the same percentiles the models normalise by, so the first view looks right
    lo, hi = (float(v) for v in np.percentile(image, (1.0, 99.8)))
    return [
        (image, {"name": "nuclei (synthetic)", "colormap": "gray", "contrast_limits": (lo, hi)},
         "image"),
        (labels, {"name": "nuclei ground truth", "opacity": 0.5}, "labels"),
    ]


#: the 3D sample: a confocal-like stack, Z step 3x the pixel (the layers' scale says so)
SAMPLE_3D_SHAPE = (24, 160, 160)
SAMPLE_3D_ANISOTROPY = 3.0


def sample_nuclei_3d() -> list[tuple[Any, dict[str, Any], str]]:
    """A synthetic confocal stack of nuclei (Z, Y, X) and its 3D labels, as napari layer data.

    Both layers carry ``scale=(3, 1, 1)``: the Segment widget reads the Z step from it.
    """
    image, labels = make_stack(SAMPLE_3D_SHAPE, SAMPLE_SEED, anisotropy=SAMPLE_3D_ANISOTROPY)
    lo, hi = (float(v) for v in np.percentile(image, (1.0, 99.8)))
    scale = (SAMPLE_3D_ANISOTROPY, 1.0, 1.0)
    return [
        (image, {"name": "nuclei 3D (synthetic)", "colormap": "gray", "contrast_limits": (lo, hi), "scale": scale},
         "image"),
        (labels, {"name": "nuclei 3D ground truth", "opacity": 0.5, "scale": scale}, "labels"),
    ]
