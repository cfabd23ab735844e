"""Overlap-tile prediction of a volume with a 3D U-Net (``UNet(spatial_dims=3)``).

The 2D strategy of :mod:`napari_unet.tiling` in three dimensions: the volume is mirrored
past its edges by the network's halo, cut into cubes of the tile's input size whose
outputs abut exactly, and each output cube is written where it belongs. With valid
convolutions and the network in eval mode (BatchNorm with its running statistics), the
result does not depend on the tile size: tiles are seamless.

The volume is given already normalised and on isotropic voxels (``volume`` resamples a
stack along Z first).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
import torch

from ._progress import Progress
from .calibration import class_probabilities
from .device import autocast, resolve_device
from .tiling import prepare_network, reflect_indices

#: input edge of a cube when none is given: 116 voxels in, 76 out for the bundled 3D
#: network (a third of the voxels computed are kept; about 0.5 GB of activations on a CPU)
DEFAULT_TILE = 116


def cube_size(config: Any, tile_size: int | None) -> int:
    """A valid input edge at or below ``tile_size`` (:data:`DEFAULT_TILE` when None)."""
    want = DEFAULT_TILE if tile_size is None else int(tile_size)
    if config.is_valid_input_size(want):
        return want
    below, above = config.nearest_valid_input_sizes(want)
    return below if below is not None else above


def predict_volume_iter(volume: np.ndarray, model: Any, *, tile_size: int | None = None, device: Any = None,
                        amp: bool | None = None) -> Generator[Progress, None, np.ndarray]:
    """Probabilities ``(classes, Z, Y, X)`` (float32) of a normalised isotropic volume.

    Args:
        volume: ``(Z, Y, X)`` array, already normalised.
        model: a 3D :class:`~napari_unet.model.UNet` (a copy in eval mode is run).
        tile_size: input edge of a cube (rounded down to a valid size; None =
            :data:`DEFAULT_TILE`). Cubes larger than the padded volume are shrunk to it.
        device: ``"cpu"``, ``"cuda"``, ``"mps"`` or None (the best available).
        amp: mixed precision on a GPU (None = on for CUDA).

    Yields:
        Progress, one record per cube.
    """
    config = model.config
    if config.spatial_dims != 3:
        raise ValueError("predict_volume needs a 3D network (UNet(spatial_dims=3))")
    vol = np.asarray(volume, np.float32)
    if vol.ndim != 3:
        raise ValueError(f"predict_volume expects a (Z, Y, X) volume, got shape {vol.shape}")
    dev = resolve_device(device)
    amp = dev.type == "cuda" if amp is None else bool(amp)
    halo = config.halo
    size = cube_size(config, tile_size)
    # no larger than needed to cover the biggest axis in one cube
    size = min(size, config.input_size_for_output(max(vol.shape)))
    out_edge = config.output_size(size)
    n_out = [(-(-n // out_edge)) * out_edge for n in vol.shape]
    index = [reflect_indices(np.arange(-halo, m + halo), n) for m, n in zip(n_out, vol.shape)]
    padded = vol[np.ix_(*index)]
    origins = [(z, y, x) for z in range(0, n_out[0], out_edge) for y in range(0, n_out[1], out_edge)
               for x in range(0, n_out[2], out_edge)]
    net = prepare_network(model, dev, channels_last=False)
    probs = np.zeros((config.num_classes, *vol.shape), np.float32)
    for k, (z, y, x) in enumerate(origins):
        cube = np.ascontiguousarray(padded[z:z + size, y:y + size, x:x + size])
        with torch.inference_mode(), autocast(dev, amp):
            p = class_probabilities(net, torch.from_numpy(cube)[None, None].to(dev))[0].float().cpu().numpy()
        keep = [min(out_edge, n - o) for n, o in zip(vol.shape, (z, y, x))]
        probs[:, z:z + keep[0], y:y + keep[1], x:x + keep[2]] = p[:, :keep[0], :keep[1], :keep[2]]
        yield Progress(k + 1, len(origins), f"3D network: cube {k + 1} of {len(origins)}")
    return probs


def predict_volume(volume: np.ndarray, model: Any, **kw: Any) -> np.ndarray:
    """:func:`predict_volume_iter` run to the end."""
    from ._progress import drain

    return drain(predict_volume_iter(volume, model, **kw))
