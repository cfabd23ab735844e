"""napari-unet: the U-Net of Ronneberger et al. (2015) for napari, usable without a screen.

The public API is imported lazily, so that napari's start-up (which imports this package
to read its manifest) does not pay for importing torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._version import __version__

_API = {
    # name: module that defines it
    "UNet": "model",
    "UNetConfig": "model",
    "load_model": "model",
    "save_model": "model",
    "ModelFileError": "model",
    "predict": "tiling",
    "segment": "segmentation",
    "probabilities_to_labels": "postprocess",
    "weight_map": "weights",
    "measure_diameter": "diameter",
    "export_bioimageio": "export",
    "labels_to_targets": "targets",
    "fine_tune": "training",
    "fine_tune_3d": "training_3d",
    "average_precision": "metrics",
    "pixel_error": "metrics",
    "adapted_rand_error": "metrics",
    "variation_of_information": "metrics",
    "em_scores": "metrics",
    "make_sample": "synthetic",
    "resolve_device": "device",
    "Progress": "_progress",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(import_module(f".{_API[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'napari_unet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from ._progress import Progress
    from .diameter import measure_diameter
    from .export import export_bioimageio
    from .device import resolve_device
    from .metrics import adapted_rand_error, average_precision, em_scores, pixel_error, variation_of_information
    from .model import ModelFileError, UNet, UNetConfig, load_model, save_model
    from .postprocess import probabilities_to_labels
    from .synthetic import make_sample
    from .targets import labels_to_targets
    from .segmentation import segment
    from .tiling import predict
    from .training import fine_tune
    from .training_3d import fine_tune_3d
    from .weights import weight_map
