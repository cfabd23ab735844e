"""The U-Net of Ronneberger, Fischer and Brox (2015), and its model files.

The network uses *valid* (unpadded) 3x3 convolutions, so its output is smaller than its
input by a fixed margin (the "halo") on every side, and only some input sizes fit the
pooling grid. The size arithmetic lives here, next to the network, so that tiling,
training and the widgets all agree on it.

A model file is a single ``torch.save`` archive holding only tensors and plain Python
containers (str, int, float, bool, list, dict), loaded with ``weights_only=True``: loading
a file never executes code from it.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._files import write_atomic
from .modes import MODES  # noqa: F401 (importable from here too)

FORMAT_NAME = "napari-unet-model"
FORMAT_VERSION = 1

DEFAULT_CLASS_NAMES = {
    "instance3": ["background", "interior", "boundary"],
    "instance2": ["background", "cell"],
}


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a :class:`UNet`; everything needed to rebuild it."""

    in_channels: int = 1
    num_classes: int = 3
    depth: int = 4
    base_width: int = 64
    dropout: float = 0.5
    #: 2 (planes, the paper's network) or 3 (volumes: 3x3x3 convolutions and 2x2x2 pooling,
    #: Çiçek et al. 2016); the size arithmetic below holds along every axis either way
    spatial_dims: int = 2

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"UNet spatial_dims must be 2 or 3, got {self.spatial_dims!r}")
        for name in ("in_channels", "num_classes", "depth", "base_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"UNet {name} must be a positive integer, got {value!r}")
        if self.num_classes < 2:
            raise ValueError(f"UNet num_classes must be at least 2, got {self.num_classes}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"UNet dropout must be in [0, 1), got {self.dropout!r}")

    # -- size arithmetic -------------------------------------------------------------
    # Encoder level: n -> (n - 4) / 2 (two valid convs, then a 2x2 pool that must divide
    # evenly). Bottleneck: n -> n - 4. Decoder level: n -> 2n - 4. Hence, with
    # g = 2**depth and b the bottleneck's input size:
    #   input  = g*b + 4*(g - 1)
    #   output = g*(b - 4) - 4*(g - 1)
    #   input - output = 12*g - 8 = 2 * halo

    @property
    def grid(self) -> int:
        """Valid input (and output) sizes are spaced by this many pixels (2**depth)."""
        return 2**self.depth

    @property
    def halo(self) -> int:
        """Pixels lost on each side of the input: output = input - 2 * halo."""
        return 6 * self.grid - 4

    @property
    def _min_bottleneck(self) -> int:
        # smallest bottleneck input b whose output g*(b-4) - 4*(g-1) is at least 1 pixel
        g = self.grid
        return math.ceil((1 + 4 * (g - 1)) / g) + 4

    @property
    def min_input_size(self) -> int:
        """Smallest valid input edge (its output is a few pixels wide)."""
        return self.grid * self._min_bottleneck + 4 * (self.grid - 1)

    def output_size(self, input_size: int) -> int:
        """Output edge for an input edge; raises ``ValueError`` for an invalid size."""
        self.check_input_size(input_size)
        return int(input_size) - 2 * self.halo

    def is_valid_input_size(self, input_size: int) -> bool:
        g = self.grid
        rest = int(input_size) - 4 * (g - 1)
        return rest % g == 0 and rest // g >= self._min_bottleneck

    def input_size_for_output(self, output_size: int) -> int:
        """Smallest valid input edge whose output is at least ``output_size``."""
        g = self.grid
        b = max(self._min_bottleneck, math.ceil((int(output_size) + 4 * (g - 1)) / g) + 4)
        return g * b + 4 * (g - 1)

    def nearest_valid_input_sizes(self, input_size: int) -> tuple[int | None, int]:
        """The valid input edges just below (None if there is none) and just above."""
        g = self.grid
        rest = int(input_size) - 4 * (g - 1)
        below_b = math.floor(rest / g)
        below = g * below_b + 4 * (g - 1) if below_b >= self._min_bottleneck else None
        above_b = max(self._min_bottleneck, math.ceil(rest / g))
        above = g * above_b + 4 * (g - 1)
        if below == above:
            above += g
        return below, above

    def check_input_size(self, input_size: int) -> None:
        if self.is_valid_input_size(input_size):
            return
        below, above = self.nearest_valid_input_sizes(input_size)
        near = f"{below} or {above}" if below is not None else f"{above} (the smallest)"
        raise ValueError(
            f"input size {input_size} does not fit a depth-{self.depth} U-Net: with valid "
            f"3x3 convolutions and {self.depth} 2x2 poolings every feature map before a pool "
            f"must have an even size, so valid sizes are {self.grid}*k + {4 * (self.grid - 1)} "
            f"with k >= {self._min_bottleneck} (smallest {self.min_input_size}). "
            f"Nearest valid sizes: {near}."
        )


_LAYERS = {
    2: (nn.Conv2d, nn.BatchNorm2d, nn.Dropout2d, nn.MaxPool2d, nn.ConvTranspose2d),
    3: (nn.Conv3d, nn.BatchNorm3d, nn.Dropout3d, nn.MaxPool3d, nn.ConvTranspose3d),
}


def _double_conv(c_in: int, c_out: int, dropout: float = 0.0, dims: int = 2) -> nn.Sequential:
    # conv -> ReLU -> BatchNorm, twice (the paper's block, with BatchNorm added after each ReLU)
    conv, norm, drop = _LAYERS[dims][:3]
    layers: list[nn.Module] = [
        conv(c_in, c_out, 3),
        nn.ReLU(inplace=True),
        norm(c_out),
        conv(c_out, c_out, 3),
        nn.ReLU(inplace=True),
        norm(c_out),
    ]
    if dropout > 0:
        layers.append(drop(dropout))
    return nn.Sequential(*layers)


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop the last two axes of ``x`` to ``size`` around the centre (TorchScript-able: the
    bioimage.io export compiles it)."""
    h, w = x.shape[-2:]
    th, tw = size
    top, left = (h - th) // 2, (w - tw) // 2
    return x[..., top : top + th, left : left + tw]


def center_crop_3d(x: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Crop the last three axes of ``x`` to ``size`` around the centre."""
    d, h, w = x.shape[-3:]
    td, th, tw = size
    front, top, left = (d - td) // 2, (h - th) // 2, (w - tw) // 2
    return x[..., front : front + td, top : top + th, left : left + tw]


class UNet(nn.Module):
    """U-Net with valid convolutions (Ronneberger et al., 2015).

    Args:
        in_channels: channels of the input image (1 for fluorescence, 3 for RGB).
        num_classes: output classes; the network returns *logits* of this many channels
            (apply ``softmax(dim=1)`` for probabilities).
        depth: number of 2x2 poolings (4 in the paper).
        base_width: channels of the first level (64 in the paper); doubled each level.
        dropout: dropout probability in the bottleneck (0.5 in the paper).
        spatial_dims: 2 for images (the paper's), 3 for volumes (the 3D U-Net of Çiçek et
            al. 2016: the same network with 3x3x3 convolutions, 2x2x2 pooling and
            up-convolutions; input ``(batch, channel, z, y, x)`` on isotropic voxels).

    Besides the weights a model carries ``meta``, a dict of plain values saved with it:
    ``mode`` (``"instance3"``: background/interior/boundary, ``"instance2"``: the paper's
    background/cell, ``"semantic"``: label values are classes), ``class_names``,
    ``normalization`` (how an image is scaled before entering the network) and
    ``history`` (training records).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 3,
        depth: int = 4,
        base_width: int = 64,
        dropout: float = 0.5,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        self.config = UNetConfig(in_channels, num_classes, depth, base_width, dropout, spatial_dims)
        conv, _, _, pool, up_conv = _LAYERS[spatial_dims]
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        c = in_channels
        for w in widths[:-1]:
            self.down.append(_double_conv(c, w, dims=spatial_dims))
            c = w
        self.pool = pool(2, 2)
        self.bottleneck = _double_conv(c, widths[-1], dropout=dropout, dims=spatial_dims)
        self.up = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(up_conv(w * 2, w, 2, stride=2))
            self.up_conv.append(_double_conv(w * 2, w, dims=spatial_dims))
        self.head = conv(widths[0], num_classes, 1)
        self.meta: dict[str, Any] = default_meta(num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialisation as in the paper: N(0, sqrt(2/N)), N = k*k*C_in."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Conv3d, nn.ConvTranspose3d)):
                k = math.prod(m.kernel_size)
                c_in = m.in_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (k * c_in)))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # convenience pass-throughs of the size arithmetic
    @property
    def halo(self) -> int:
        return self.config.halo

    @property
    def grid(self) -> int:
        return self.config.grid

    def output_size(self, input_size: int) -> int:
        return self.config.output_size(input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = self.config.spatial_dims
        if x.ndim != dims + 2:
            axes = "(batch, channel, y, x)" if dims == 2 else "(batch, channel, z, y, x)"
            raise ValueError(f"UNet expects a {axes} tensor, got shape {tuple(x.shape)}")
        if x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"UNet expects {self.config.in_channels} input channel(s), got {x.shape[1]}"
            )
        for size in x.shape[2:]:
            self.config.check_input_size(int(size))
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, conv, skip in zip(self.up, self.up_conv, reversed(skips)):
            x = up(x)
            skip = center_crop(skip, x.shape[-2:]) if dims == 2 else center_crop_3d(skip, x.shape[-3:])
            x = torch.cat([skip, x], dim=1)
            x = conv(x)
        return self.head(x)


def default_meta(num_classes: int) -> dict[str, Any]:
    mode = "instance3" if num_classes == 3 else "instance2" if num_classes == 2 else "semantic"
    names = DEFAULT_CLASS_NAMES.get(mode, [f"class {i}" for i in range(num_classes)])
    return {
        "mode": mode,
        "class_names": list(names),
        "normalization": {"kind": "percentile", "low": 1.0, "high": 99.8},
        "history": [],
        "description": "",
    }


# -- model files ------------------------------------------------------------------------


class ModelFileError(ValueError):
    """A model file is missing, corrupt, or not a napari-unet model."""


def save_model(model: UNet, path: str | os.PathLike) -> Path:
    """Write ``model`` (config, weights, meta) to ``path`` atomically.

    The file is first written next to the target and then renamed over it, so an
    interrupted save never leaves a truncated model behind.
    """
    path = Path(path)
    if not isinstance(model, UNet):
        raise TypeError(f"save_model expects a napari_unet.UNet, got {type(model).__name__}")
    payload = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": _config_dict(model.config),
        "meta": copy.deepcopy(_plain(model.meta)),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    return save_atomic(payload, path)


def _config_dict(config: UNetConfig) -> dict[str, Any]:
    """The config as saved: a 2D network's without ``spatial_dims``, so that versions that
    know only 2D networks still read its file."""
    out = asdict(config)
    if out["spatial_dims"] == 2:
        del out["spatial_dims"]
    return out


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (see :func:`napari_unet._files.write_atomic`).

    Args:
        obj: What to save: tensors and plain containers.
        path: The file to (over)write.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    return write_atomic(path, lambda fh: torch.save(obj, fh))


def _plain(obj: Any) -> Any:
    """Check (and convert tuples in) meta so that it loads with ``weights_only=True``."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy / torch scalars
        return obj.item()
    raise TypeError(f"model meta may only hold plain values, got {type(obj).__name__}: {obj!r}")


def bundled_model_path() -> Path:
    return Path(__file__).parent / "models" / "bundled.pt"


def bundled_3d_model_path() -> Path:
    """The bundled 3D U-Net (``views="3d"`` of a Z stack's segmentation)."""
    return Path(__file__).parent / "models" / "bundled_3d.pt"


def load_model(path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu") -> UNet:
    """Load a model file, or the bundled model when ``path`` is None.

    Loading uses ``torch.load(weights_only=True)``: no code from the file runs.

    Raises:
        ModelFileError: the file is missing, truncated, corrupt or of another format.
    """
    if path is None:
        path = bundled_model_path()
        if not path.exists():
            raise ModelFileError(
                "the bundled model is not part of this installation yet "
                f"(expected {path}); pass a model file instead"
            )
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for bad files
        # torch's own text runs over many lines and suggests loading unsafely: say it in one sentence
        raise ModelFileError(f"{path} is not a napari-unet model file (not a readable PyTorch file)") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{path} is not a napari-unet model file")
    if int(payload.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} was written by a newer napari-unet (format {payload['format_version']}); "
            "please upgrade"
        )
    try:
        config = UNetConfig(**payload["config"])
        model = UNet(**asdict(config))
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path} holds an inconsistent model: {exc}") from exc
    meta = default_meta(config.num_classes)
    meta.update(payload.get("meta", {}))
    model.meta = meta
    model.eval()
    return model.to(device)


def clone_model(model: UNet) -> UNet:
    """A deep copy on the CPU (config, weights and meta)."""
    new = UNet(**asdict(model.config))
    new.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    new.meta = copy.deepcopy(model.meta)
    return new
