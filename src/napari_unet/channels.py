"""Input channels: fit a model to an image's channels, and pick a bundled model by image.

**Widening** (the colour rule). A 1-channel model (the fluorescence bundled model) can be
fine-tuned on an RGB or multichannel image: :func:`widen_input` replaces its first
convolution by one that takes C channels, each with 1/C of the old filter, so at the start
the network sees the mean of the (per-channel normalised) channels, the image's
luminance, exactly as Segment showed it the image. For brightfield images (dark objects on
a bright background, e.g. H&E) the filters are negated and the bias corrected, so the
network starts out seeing the *inverted* luminance ``1 - mean`` and finds the dark nuclei
where the fluorescence model expects bright ones. The result is an ordinary C-channel
model; inference feeds it the image's channels normalised as in training, and the rule is
recorded in ``meta["input"]`` (``{"channels": C, "widened_from": 1, "inverted": bool}``),
which the model file and the bioimage.io export keep.

**Picking.** With no model chosen, :func:`pick_bundled` takes the stained model
(``models/stained.pt``) for brightfield RGB(A) images (most pixels bright: a stained slide)
and the fluorescence model otherwise (gray, multichannel, or RGB with a dark
background), and says which it took.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

#: bundled model names -> file names in ``napari_unet/models``
BUNDLED = {"fluorescence": "bundled.pt", "stained": "stained.pt"}
RGB_NAMES = ["red", "green", "blue"]


def is_brightfield(chw: np.ndarray) -> bool:
    """True when a normalised (C, H, W) image is mostly bright: objects are dark on it."""
    lum = np.asarray(chw, np.float32).mean(axis=0)
    return bool(np.median(lum) > 0.5)


def widen_input(model: Any, channels: int, invert: bool = False, channel_names: list[str] | None = None) -> Any:
    """A copy of a 1-channel ``model`` whose first convolution takes ``channels`` inputs.

    Each input channel gets ``1/channels`` of the old filter, so the new network's output on
    C channels equals the old one's on their mean; with ``invert`` it equals the old one's
    on ``1 - mean``. Records the rule in ``meta["input"]``.
    """
    from .model import UNet, clone_model

    if model.config.in_channels != 1:
        raise ValueError(f"only a 1-channel model can be widened, this one takes {model.config.in_channels}")
    cfg = model.config
    new = UNet(channels, cfg.num_classes, cfg.depth, cfg.base_width, cfg.dropout)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    w = state["down.0.0.weight"]  # (out, 1, 3, 3)
    b = state["down.0.0.bias"]
    sign = -1.0 if invert else 1.0
    state["down.0.0.weight"] = (sign * w / channels).repeat(1, channels, 1, 1)
    # conv(1 - x) = sum(w) - conv(x): the bias takes the constant part
    state["down.0.0.bias"] = b + w.sum(dim=(1, 2, 3)) if invert else b
    new.load_state_dict(state)
    new.meta = clone_model(model).meta
    new.meta["input"] = {"channels": int(channels), "widened_from": 1, "inverted": bool(invert)}
    if channel_names:
        new.meta["input"]["channel_names"] = list(channel_names)
    return new.train(model.training)


def describe_input(meta: dict[str, Any], in_channels: int) -> str:
    """One line saying how the model reads an image's channels (for widgets and logs)."""
    rule = meta.get("input") or {}
    names = ", ".join(rule.get("channel_names", [])) or f"{in_channels} channels"
    if rule.get("widened_from"):
        inv = "inverted " if rule.get("inverted") else ""
        return f"{names} (first layer widened from 1 channel, started on {inv}luminance)"
    if in_channels == 1:
        return "1 channel (RGB is averaged to gray)"
    return names


def bundled_path(name: str) -> Any:
    from pathlib import Path

    if name not in BUNDLED:
        raise ValueError(f"unknown bundled model {name!r}; choose one of {', '.join(BUNDLED)}")
    return Path(__file__).parent / "models" / BUNDLED[name]


def looks_brightfield(image: Any) -> bool:
    """True when most of an image (any layout, lazy or not; a strided sample is read) is
    bright relative to its range: dark objects on a bright background."""
    from .normalize import strided_sample

    s = strided_sample(image, 250_000).astype(np.float32, copy=False)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return False
    lo, med, hi = np.percentile(s, [1.0, 50.0, 99.8])
    return bool(hi > lo and (med - lo) / (hi - lo) > 0.5)


def _looks_stained(image: Any) -> bool:
    """H&E-like colours (:func:`napari_unet.image_checks.looks_stained`, the modality check's
    test): a slide crowded with dark nuclei has its median below mid-range (a 40x tile
    measured 0.48), so :func:`looks_brightfield` alone sent it to the fluorescence model."""
    from .image_checks import looks_stained
    from .normalize import strided_sample

    s = strided_sample(image, 250_000)
    return s.ndim >= 2 and s.shape[-1] >= 3 and looks_stained(s.reshape(-1, s.shape[-1])[:, :3].astype(np.float32))


def pick_bundled(rgb: bool, image: Any = None, stained: bool | None = None) -> str:
    """The bundled model's name for an image: ``"stained"`` for a brightfield RGB(A) image
    (dark nuclei on a bright slide; when that model is installed), else ``"fluorescence"``.
    ``image`` None: judge by ``rgb`` alone. ``stained``: whether the image's colours were
    found H&E-like already (None: looked at here)."""
    if not (rgb and bundled_path("stained").is_file()):
        return "fluorescence"
    if image is None or looks_brightfield(image) or (_looks_stained(image) if stained is None else stained):
        return "stained"
    return "fluorescence"


def resolve_model(model: Any, rgb: bool, image: Any = None) -> tuple[Any, str | None]:
    """The model to run on an image, and a line saying which bundled model was picked.

    Args:
        model: a UNet (returned as it is), None (the bundled model suited to the image:
            :func:`pick_bundled`), a bundled model's name (``"fluorescence"`` or
            ``"bundled"``, ``"stained"``) or a model file path.
        rgb: whether the image is RGB(A).
        image: the image itself (to tell brightfield from fluorescence RGB), or None.

    Returns:
        ``(model, note)``; ``note`` is None unless the model was picked for the image.
    """
    from .model import load_model

    if model is None:
        name = pick_bundled(rgb, image)
        what = "a brightfield RGB image" if name == "stained" else "an RGB fluorescence image" if rgb else "a non-RGB image"
        return load_model(bundled_path(name)), f"the {name} bundled model (picked for {what})"
    if isinstance(model, str) and model in (*BUNDLED, "bundled"):
        return load_model(bundled_path("fluorescence" if model == "bundled" else model)), None
    if isinstance(model, (str, os.PathLike)):
        return load_model(model), None
    return model, None


def fit_channels(net: Any, in_channels: int, first_image: Any, rule: dict[str, Any], rgb: bool = False) -> Any:
    """``net`` ready for images of ``in_channels`` channels: as it is, widened, or refused.

    A 1-channel model is widened (:func:`widen_input`), starting on inverted luminance
    when ``first_image`` (C, H, W, normalised with the model's ``rule``) is brightfield.
    ``rgb``: the images are RGB (their channels are recorded as red, green, blue).

    Raises:
        ValueError: a multichannel model and images of another channel count.
    """
    from .normalize import apply_normalization, normalization_params

    have = net.config.in_channels
    if have == in_channels:
        return net
    if have != 1:
        raise ValueError(
            f"the images have {in_channels} channel(s) but the model was trained on {have}; only a "
            f"1-channel model can learn new channels, so give {have}-channel images or start from a "
            "1-channel model (e.g. model='fluorescence')"
        )
    chw = np.asarray(first_image, np.float32)
    lo, hi = normalization_params(chw, rule, channel_axis=0)
    names = RGB_NAMES if rgb and in_channels == 3 else None
    return widen_input(net, in_channels, invert=is_brightfield(apply_normalization(chw, lo, hi)), channel_names=names)
