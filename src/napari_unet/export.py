"""Export a model to the bioimage.io model format (``rdf.yaml`` 0.5 in a zip), so that it
runs in other tools (bioimage.io, deepImageJ, ilastik, the bioimageio Python packages).

What the package holds:

* ``weights.pt``: TorchScript of the network *with* softmax (after the model's class bias,
  ``meta["class_bias"]``, which membrane models fit at the end of training; test-time flips,
  off unless ``meta["test_time_flips"]``, are not exported) and mirror padding: any image
  of at least :func:`min_input_size` pixels per side goes in, class probabilities of the
  same size come out (the padding makes every size valid; the border is mirrored like
  :func:`napari_unet.predict` does it). Consumers that tile should drop ``halo`` pixels at
  each inner tile edge, as the output axes declare.
* the normalisation as a bioimage.io preprocessing step (``scale_range`` for the
  percentile rule, ``scale_linear`` for a fixed range), so consumers normalise the same way;
* a test input and the output the package computes for it (consumers check themselves
  against these), a cover image, and ``README.md`` (the model card, or one written from
  the model's training history);
* the model's own ``meta`` (mode, class names, cell diameter, history) under
  ``config.napari_unet``.

The post-processing into instance labels (seeded watershed) is not part of the format;
consumers get the probabilities (background / interior / boundary for instance3 models).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._files import write_atomic
from ._version import __version__
from .metrics import score_name
from .model import UNet, bundled_model_path, center_crop, clone_model

FORMAT_VERSION = "0.5.4"

PAPER = {
    "text": "Ronneberger, Fischer and Brox. U-Net: Convolutional Networks for Biomedical Image "
    "Segmentation. MICCAI 2015.",
    "doi": "10.1007/978-3-319-24574-4_28",
}


class _Level(nn.Module):
    def __init__(self, up: nn.Module, conv: nn.Module) -> None:
        super().__init__()
        self.up = up
        self.conv = conv

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        return self.conv(torch.cat([center_crop(skip, (x.shape[-2], x.shape[-1])), x], dim=1))


class ExportedUNet(nn.Module):
    """The network in a scriptable form: mirror padding, U-Net, class bias, softmax, crop.

    Same layers and weights as the :class:`~napari_unet.model.UNet` (shared modules of a
    copy), written so that ``torch.jit.script`` can compile it for any input size.
    """

    def __init__(self, model: UNet) -> None:
        super().__init__()
        net = clone_model(model).eval().float()
        self.down = net.down
        self.pool = net.pool
        self.bottleneck = net.bottleneck
        self.levels = nn.ModuleList([_Level(u, c) for u, c in zip(net.up, net.up_conv)])
        self.head = net.head
        self.grid = int(net.config.grid)
        self.halo = int(net.config.halo)
        # softmax(log softmax(z) + b) = softmax(z + b): the bias napari_unet.calibration applies
        bias = torch.zeros(net.config.num_classes)
        if model.meta.get("class_bias") is not None:
            bias = torch.as_tensor(model.meta["class_bias"], dtype=torch.float32).reshape(-1)
            if bias.numel() != net.config.num_classes:
                raise ValueError(f"the model's class_bias has {bias.numel()} values for "
                                 f"{net.config.num_classes} classes")
        self.register_buffer("class_bias", bias.reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        g = self.grid
        # valid outputs are 4 more than a multiple of the grid: pad the far side up to one
        eh = ((4 - h) % g + g) % g
        ew = ((4 - w) % g + g) % g
        x = F.pad(x, [self.halo, self.halo + ew, self.halo, self.halo + eh], mode="reflect")
        skips: list[torch.Tensor] = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        n = len(skips)
        i = 0
        for level in self.levels:
            x = level(x, skips[n - 1 - i])
            i += 1
        x = torch.softmax(self.head(x) + self.class_bias, dim=1)
        return x[:, :, :h, :w]


def min_input_size(model: UNet) -> int:
    """Smallest edge the exported network takes: more than twice the halo (so a tile keeps
    pixels after a consumer drops the halo on both sides), rounded up to the grid."""
    g, halo = model.config.grid, model.config.halo
    return int(-(-(2 * halo + g) // g) * g)


def _preprocessing(model: UNet) -> list[dict[str, Any]]:
    rule = model.meta.get("normalization", {"kind": "percentile", "low": 1.0, "high": 99.8})
    kind = rule.get("kind", "percentile")
    if kind == "percentile":
        return [{"id": "scale_range", "kwargs": {
            "axes": ["y", "x"], "min_percentile": float(rule.get("low", 1.0)),
            "max_percentile": float(rule.get("high", 99.8)), "eps": 1e-6,
        }}]
    if kind == "fixed":
        lo = np.atleast_1d(np.asarray(rule["lo"], float))
        hi = np.atleast_1d(np.asarray(rule["hi"], float))
        gain = 1.0 / np.maximum(hi - lo, 1e-12)
        if gain.size == 1:
            return [{"id": "scale_linear", "kwargs": {"gain": float(gain[0]), "offset": float(-lo[0] * gain[0])}}]
        return [{"id": "scale_linear", "kwargs": {
            "axis": "channel", "gain": [float(v) for v in gain], "offset": [float(v) for v in -lo * gain],
        }}]
    raise ValueError(f"cannot express the model's normalisation {kind!r} in the bioimage.io format")


def preprocess(image: np.ndarray, model: UNet) -> np.ndarray:
    """What a bioimage.io consumer does to a ``(1, C, Y, X)`` input before the network."""
    x = np.asarray(image, np.float32)
    step = _preprocessing(model)[0]
    kw = step["kwargs"]
    if step["id"] == "scale_range":
        lo = np.percentile(x, kw["min_percentile"], axis=(2, 3), keepdims=True)
        hi = np.percentile(x, kw["max_percentile"], axis=(2, 3), keepdims=True)
        return ((x - lo) / (hi - lo + kw["eps"])).astype(np.float32)
    gain = np.asarray(kw["gain"], np.float32).reshape(1, -1, 1, 1)
    offset = np.asarray(kw["offset"], np.float32).reshape(1, -1, 1, 1)
    return (x * gain + offset).astype(np.float32)


def _default_test_image(model: UNet) -> np.ndarray:
    from .synthetic import make_sample

    if model.meta.get("input", {}).get("channel_names") == ["red", "green", "blue"]:
        from .synthetic_tissue import make_tissue_sample

        rgb, _ = make_tissue_sample((256, 256), seed=2015, stain="he")
        return np.moveaxis(rgb, -1, 0).astype(np.float32)
    img, _ = make_sample((256, 256), seed=2015, kind="nuclei", difficulty="easy")
    img = img.astype(np.float32)
    return np.repeat(img[None], model.config.in_channels, axis=0)


def _as_cyx(image: Any, model: UNet) -> np.ndarray:
    x = np.asarray(image, np.float32)
    c = model.config.in_channels
    if x.ndim == 2 and c == 1:
        x = x[None]
    elif x.ndim == 3 and x.shape[-1] == c and x.shape[0] != c:
        x = np.moveaxis(x, -1, 0)
    if x.ndim != 3 or x.shape[0] != c:
        raise ValueError(f"the test image must be (Y, X) or ({c}, Y, X) for this model, got shape {np.shape(image)}")
    m = min_input_size(model)
    if min(x.shape[1:]) < m:
        raise ValueError(f"the test image must be at least {m} px per side for this model, got {x.shape[1:]}")
    return x


def _cover(image: np.ndarray, probs: np.ndarray, path: Path) -> None:
    """Input (gray) beside the predicted classes (argmax as colours)."""
    from skimage.io import imsave

    gray = image[0]
    lo, hi = np.percentile(gray, (1, 99.8))
    g = np.clip((gray - lo) / max(hi - lo, 1e-6), 0, 1)
    left = (np.stack([g] * 3, -1) * 255).astype(np.uint8)
    palette = np.array([[0, 0, 0], [60, 180, 75], [255, 225, 25], [0, 130, 200], [230, 25, 75]], np.uint8)
    cls = probs[0].argmax(0)
    right = palette[cls % len(palette)]
    sep = np.full((g.shape[0], 4, 3), 255, np.uint8)
    imsave(path, np.concatenate([left, sep, right], axis=1), check_contrast=False)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _documentation(model: UNet, bundled: Path | None) -> str:
    if bundled is not None:
        card = bundled.with_suffix(".md")
        if card.is_file():
            return card.read_text(encoding="utf-8")
    hist = model.meta.get("history", [])
    lines = [
        f"# {model.meta.get('description') or 'U-Net exported by napari-unet'}",
        "",
        "A U-Net (Ronneberger et al., 2015) trained with napari-unet "
        f"({model.config.depth} levels, base width {model.config.base_width}).",
        "",
        f"- Classes: {', '.join(model.meta.get('class_names', []))} ({model.meta.get('mode', '')}).",
        f"- Cell diameter it knows best: {model.meta.get('diameter', 'not recorded')} px.",
        "- Input: normalised with the declared preprocessing; output: class probabilities.",
        "- Instance labels: napari-unet's seeded watershed on the probabilities (not part of this format).",
        "",
        "## Validation",
        "",
        "Validation scores recorded during training (on held-out images), run by run:",
        "",
    ]
    for rec in hist:
        name = score_name(str(rec.get("mode", "")), rec.get("preset") == "membranes")
        lines.append(f"- {rec.get('iterations', '?')} iterations: best validation {name} "
                     f"{rec.get('best_val_ap', 'not measured')}")
    lines += ["", "## Training history", ""]
    for rec in hist:
        lines.append("- " + json.dumps(rec, default=str)[:500])
    return "\n".join(lines) + "\n"


def _plain(value: Any) -> Any:
    """``meta`` as JSON-like values (YAML-safe)."""
    return json.loads(json.dumps(value, default=str))


def _rdf(model: UNet, d: Path, *, name: str | None, description: str | None, authors: list[str] | None,
         license: str, bundled: bool) -> dict[str, Any]:
    """The package's ``rdf.yaml`` (bioimage.io model spec), for the files written in ``d``."""
    cfg = model.config
    preprocessing = _preprocessing(model)
    class_names = [str(c) for c in model.meta.get("class_names", [f"class {i}" for i in range(cfg.num_classes)])]
    desc = description or str(model.meta.get("description") or "U-Net trained with napari-unet")
    stained = model.meta.get("modality") == "stained"
    title = name or (f"napari-unet bundled {'stained-tissue ' if stained else ''}nuclei U-Net" if bundled else "napari-unet U-Net")
    channel_names = model.meta.get("input", {}).get("channel_names") or [f"channel{i}" for i in range(cfg.in_channels)]
    m = min_input_size(model)
    space_in = [{"type": "space", "id": ax, "size": {"min": m, "step": 1}} for ax in ("y", "x")]
    space_out = [
        {"type": "space", "id": ax, "size": {"tensor_id": "raw", "axis_id": ax}, "halo": int(cfg.halo)}
        for ax in ("y", "x")
    ]
    rdf = {
        "type": "model",
        "format_version": FORMAT_VERSION,
        "name": title,
        "description": desc[:1000],
        "authors": [{"name": a} for a in (authors or ["napari-unet"])],
        "cite": [PAPER],
        "license": license,
        "tags": ["unet", "segmentation", "instance-segmentation", "nuclei",
                 "histology" if stained else "fluorescence-light-microscopy", "2d", "pytorch", "napari-unet"],
        "documentation": "README.md",
        "covers": ["cover.png"],
        "inputs": [{
            "id": "raw",
            "description": "image, normalised by the preprocessing below",
            "axes": [
                {"type": "batch"},
                {"type": "channel", "channel_names": channel_names},
                *space_in,
            ],
            "test_tensor": {"source": "test_input.npy", "sha256": _sha256(d / "test_input.npy")},
            "sample_tensor": {"source": "sample_input.tif", "sha256": _sha256(d / "sample_input.tif")},
            "data": {"type": "float32"},
            "preprocessing": preprocessing,
        }],
        "outputs": [{
            "id": "probabilities",
            "description": "class probabilities (softmax): " + ", ".join(class_names),
            "axes": [
                {"type": "batch"},
                {"type": "channel", "channel_names": [n.replace(" ", "_") for n in class_names]},
                *space_out,
            ],
            "test_tensor": {"source": "test_output.npy", "sha256": _sha256(d / "test_output.npy")},
            "sample_tensor": {"source": "sample_output.tif", "sha256": _sha256(d / "sample_output.tif")},
            "data": {"type": "float32", "range": [0.0, 1.0]},
        }],
        "weights": {"torchscript": {
            "source": "weights.pt",
            "sha256": _sha256(d / "weights.pt"),
            "pytorch_version": torch.__version__.split("+")[0],
        }},
        "config": {"napari_unet": {"version": __version__, "meta": _plain(model.meta)}},
    }
    return rdf


def export_bioimageio(
    model: UNet | str | Path | None,
    path: str | Path,
    *,
    name: str | None = None,
    description: str | None = None,
    authors: list[str] | None = None,
    test_image: Any = None,
    license: str = "BSD-3-Clause",
    overwrite: bool = False,
) -> Path:
    """Write ``model`` as a bioimage.io model package (a zip with ``rdf.yaml``).

    Args:
        model: a UNet, a model file, or None for the bundled model.
        path: the zip to write (written atomically).
        name: the model's name (default: from its description, or "napari-unet U-Net").
        description: one paragraph (default: the model's ``meta["description"]``).
        authors: names (default: "napari-unet").
        test_image: ``(Y, X)`` or ``(C, Y, X)`` image for the test tensors (default: a 256 px
            synthetic nuclei image); at least :func:`min_input_size` px per side.
        license: SPDX identifier of the weights' licence (default: napari-unet's own).
        overwrite: replace an existing file.

    Returns:
        the path written.
    """
    import yaml

    from .model import load_model

    from .channels import BUNDLED, bundled_path

    bundled = bundled_model_path() if model is None else None
    if isinstance(model, str) and model in BUNDLED:
        bundled = bundled_path(model)
        model = bundled
    if not isinstance(model, UNet):
        model = load_model(model)
    if model.config.spatial_dims != 2:
        raise ValueError("only 2D networks can be exported for bioimage.io so far; this is a 3D network")
    path = Path(path)
    if path.suffix.lower() != ".zip":
        raise ValueError(f"the bioimage.io package is a .zip file, got {path}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    _preprocessing(model)  # refuses, before any work, a normalisation the format cannot express
    if model.meta.get("test_time_flips"):
        warnings.warn("the model averages test-time flips, which the bioimage.io package does not: "
                      "its probabilities differ a little from napari-unet's", stacklevel=2)
    with warnings.catch_warnings():  # TorchScript is deprecated in torch, but it is what consumers run
        warnings.simplefilter("ignore", DeprecationWarning)
        exported = torch.jit.script(ExportedUNet(model))
    image = _as_cyx(_default_test_image(model) if test_image is None else test_image, model)[None]
    with torch.inference_mode():
        probs = exported(torch.from_numpy(preprocess(image, model))).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        exported.save(str(d / "weights.pt"))
        np.save(d / "test_input.npy", image)
        np.save(d / "test_output.npy", probs)
        import tifffile

        tifffile.imwrite(d / "sample_input.tif", image[0], photometric="minisblack")
        tifffile.imwrite(d / "sample_output.tif", probs[0], photometric="minisblack")
        _cover(image[0], probs, d / "cover.png")
        (d / "README.md").write_text(_documentation(model, bundled), encoding="utf-8")
        rdf = _rdf(model, d, name=name, description=description, authors=authors, license=license,
                   bundled=bundled is not None)
        (d / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False), encoding="utf-8")

        def write(fh: Any) -> None:
            with zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as z:
                for f in ("rdf.yaml", "weights.pt", "test_input.npy", "test_output.npy", "sample_input.tif",
                          "sample_output.tif", "cover.png", "README.md"):
                    z.write(d / f, f)

        write_atomic(path, write)
    return path


__all__ = ["ExportedUNet", "export_bioimageio", "min_input_size", "preprocess"]
