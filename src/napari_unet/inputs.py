"""What an image is, decided once at the door, and how to segment it: the two things that
flow down the segmentation pipeline.

* :class:`ImageInput` (made by :func:`describe_input`) holds the facts about one image
  that every later stage needs: its axes (:class:`Layout`, :func:`parse_axes`: where the
  planes, the channel axis and Y/X are), how its channels meet the model's inputs, the
  image-wide normalisation, the voxel size, the model actually used and why it was
  picked, and the warnings found on the way in. The API (``napari_unet.segment``), the
  command line and the Segment widget each make it once; the zoom, the cell-size
  measurement, the prediction, the noise test and the 3D path read it and never derive
  any of it again. A zoomed copy, a crop or a plane of the image gets the same facts
  reshaped (:meth:`ImageInput.reshaped`, :meth:`ImageInput.plane`): it is normalised as
  its image, not by its own percentiles.
* :class:`SegmentOptions` holds the settings of a run (tile, device, precision, cell
  diameter, post-processing...), the same for the 2D, 3D and distributed paths.

What was done is reported from the description (:meth:`ImageInput.info`), so what the
widget and the command line show is what was done.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from .image_checks import MIN_OBJECT_Z, MIN_OBJECT_Z_STAINED, looks_stained, modality_warning
from .normalize import SUBSAMPLE_PIXELS, normalization_params, strided_sample

AXIS_LETTERS = "TZCSYXQ"

#: a first axis this short may be channels as well as planes: said when guessed
SHORT_AXIS = 4

#: the warning when the axes of an image with a short first axis were guessed
SHORT_AXIS_WARNING = (
    "The image's first axis has only {n} values, so they were segmented one by one as separate planes; if they "
    "are channels the model should read together, pass axes='CYX', and if they are a Z stack, axes='ZYX' (3D cells)."
)


# -- axes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where the image's planes, channels and Y/X live.

    ``out_shape`` is the image shape without its channel axis (the shape of the labels and,
    after the class axis, of the probabilities).
    """

    axes: str
    shape: tuple[int, ...]
    y: int
    x: int
    channel: int | None
    planes: tuple[int, ...]
    rgb: bool

    @property
    def plane_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[a] for a in self.planes)

    @property
    def yx_shape(self) -> tuple[int, int]:
        return self.shape[self.y], self.shape[self.x]

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(s for i, s in enumerate(self.shape) if i != self.channel)

    @property
    def channels(self) -> int:
        return 1 if self.channel is None else self.shape[self.channel]

    def plane_indices(self) -> list[tuple[int, ...]]:
        return list(np.ndindex(*self.plane_shape)) if self.planes else [()]

    def check_out(self, out: Any, what: str, classes: int | None = None) -> None:
        """Refuse an output array not shaped like the image without its channel axis
        (after a leading axis of ``classes``, for probabilities)."""
        need = self.out_shape if classes is None else (classes, *self.out_shape)
        if tuple(out.shape) != tuple(need):
            raise ValueError(f"out has shape {tuple(out.shape)} but the {what} need shape {tuple(need)}")

    def out_index(self, plane: tuple[int, ...], ys: slice, xs: slice) -> tuple[tuple[Any, ...], bool]:
        """Index into an array shaped like the image without its channel axis (+ leading
        axes), and whether Y/X are swapped there (X before Y)."""
        idx: list[Any] = []
        pl = dict(zip(self.planes, plane))
        for a in range(len(self.shape)):
            if a == self.channel:
                continue
            idx.append(ys if a == self.y else xs if a == self.x else pl[a])
        return tuple(idx), self.x < self.y


def parse_axes(shape: Sequence[int], axes: str | None = None) -> Layout:
    """Interpret an image's axes.

    Args:
        shape: the image shape.
        axes: one letter per axis (``"YX"``, ``"ZYX"``, ``"TZCYX"``, ``"YXS"``...): ``Y``
            and ``X`` are the image plane, ``C`` a channel axis, ``S`` RGB(A) samples (a
            channel axis whose 3 or 4 values are red, green, blue, alpha), every other
            letter (``T``, ``Z``, ``Q``...) an axis of planes processed one by one.
            ``None`` guesses: 2D = YX; a last axis of 3 or 4 on 3D or more = RGB(A);
            otherwise the leading axes are planes (ZYX, TZYX...).

    Returns:
        a :class:`Layout`.
    """
    shape = tuple(int(s) for s in shape)
    nd = len(shape)
    if axes is None:
        if nd < 2:
            raise ValueError(f"an image needs at least 2 dimensions (Y, X), got shape {shape}")
        if nd >= 3 and shape[-1] in (3, 4):
            axes = "Q" * (nd - 3) + "YXS"
        else:
            axes = "Q" * (nd - 2) + "YX"
    axes = str(axes).upper()
    if len(axes) != nd:
        raise ValueError(
            f"axes {axes!r} name {len(axes)} axes but the image has {nd} (shape {shape}); "
            "give one letter per axis, e.g. 'ZYX'"
        )
    bad = sorted(set(axes) - set(AXIS_LETTERS))
    if bad:
        raise ValueError(f"unknown axis letter(s) {bad} in {axes!r}; use T, Z, C, S (RGB), Y, X")
    for letter in "YX":
        if axes.count(letter) != 1:
            raise ValueError(f"axes {axes!r} must contain exactly one {letter}")
    chan = [i for i, a in enumerate(axes) if a in "CS"]
    if len(chan) > 1:
        raise ValueError(f"axes {axes!r} have more than one channel axis (C/S); select one channel first")
    planes = tuple(i for i, a in enumerate(axes) if a not in "CSYX")
    for a in planes:
        if axes[a] != "Q" and axes.count(axes[a]) > 1:
            raise ValueError(f"axis {axes[a]!r} appears twice in {axes!r}")
    channel = chan[0] if chan else None
    rgb = channel is not None and axes[channel] == "S"
    if any(s == 0 for s in shape):
        raise ValueError(f"the image is empty (shape {shape})")
    return Layout(axes, shape, axes.index("Y"), axes.index("X"), channel, planes, rgb)


# -- channels and normalisation --------------------------------------------------------------


def map_channels(x: np.ndarray, channel_map: str, axis: int = 0) -> np.ndarray:
    """``x`` with its channels (on ``axis``) as the model reads them (see :func:`choose_channel_map`)."""
    if channel_map == "gray":
        return np.take(x, [0, 1, 2], axis=axis).astype(np.float32).mean(axis=axis, keepdims=True)
    if channel_map == "rgb":
        return np.take(x, [0, 1, 2], axis=axis)
    return x


def choose_channel_map(layout: Layout, in_channels: int) -> str:
    """How an image's channels meet a model's ``in_channels``: ``"keep"`` (as they are),
    ``"gray"`` (RGB(A) averaged for a 1-channel model) or ``"rgb"`` (alpha dropped);
    :class:`ChannelMismatch` when they cannot."""
    c = layout.channels
    if c == in_channels:
        return "keep"
    if layout.rgb and c in (3, 4):
        # RGB(A) into a gray model: the mean of R, G and B (alpha ignored)
        if in_channels == 1:
            return "gray"
        if in_channels == 3 and c == 4:
            return "rgb"
    raise ChannelMismatch(layout, in_channels)


class ChannelMismatch(ValueError):
    """The model takes another number of channels than the image has.

    Carries the facts (``layout``, ``model_channels``), so each door words its own advice:
    the message is the API's (``axes=``); a widget speaks of its fields instead.
    """

    def __init__(self, layout: Layout, model_channels: int) -> None:
        self.layout = layout
        self.model_channels = model_channels
        c = layout.channels
        what = "no channel axis" if layout.channel is None else f"{c} channels on axis {layout.channel} ({layout.axes!r})"
        super().__init__(
            f"the model takes {model_channels} input channel(s) but the image has {what}; "
            + (
                "pick one channel (e.g. image[..., 0]) or pass axes= naming the channel axis 'C'"
                if model_channels == 1
                else f"give an image with {model_channels} channels and name its channel axis with axes="
            )
        )


def image_normalization(image: Any, layout: Layout, rule: dict[str, Any], channel_map: str = "keep") -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) per network input channel, computed once over the whole image.

    For RGB(A) into a 1-channel model (``channel_map="gray"``) the image is first turned
    into gray by averaging R, G and B, and the percentiles are those of that gray image.
    Lazy and large images are sampled on an even stride (at most a few million pixels
    per channel are read), so this never loads a huge image.
    """
    eager = isinstance(image, np.ndarray)
    if channel_map == "keep" and (eager or rule.get("kind", "percentile") != "percentile"):
        return normalization_params(image, rule, layout.channel)
    sample = strided_sample(image, SUBSAMPLE_PIXELS * layout.channels)
    if sample.dtype == bool:
        sample = sample.astype(np.uint8)
    axis = layout.channel
    if axis is not None and channel_map != "keep":
        sample = map_channels(sample, channel_map, axis)
        if channel_map == "gray":
            sample, axis = np.take(sample, 0, axis=axis), None
    return normalization_params(sample, rule, axis)


def out_index(layout: Layout, plane: tuple[int, ...], ys: slice, xs: slice) -> tuple[tuple[Any, ...], bool]:
    """:meth:`Layout.out_index`."""
    return layout.out_index(plane, ys, xs)


# -- the description -------------------------------------------------------------------------


#: the names of the bundled models a caller may give
BUNDLED_NAMES = ("fluorescence", "bundled", "stained")

#: what a model picked for an image was picked for
PICKED_FOR = {"stained": "a brightfield RGB image", "fluorescence": "a non-RGB image"}


@dataclass(frozen=True)
class ImageInput:
    """The facts about one image, decided once (see the module docs).

    Attributes:
        layout: the image's axes.
        channel_map: how its channels meet the model's inputs: ``"keep"``, ``"gray"``
            (RGB averaged for a 1-channel model) or ``"rgb"`` (alpha dropped).
        lo, hi: the image-wide normalisation, per model input channel (empty for a zoomed
            Z stack, which the 3D path normalises by its own percentiles, as it always has).
        model: the network that segments it.
        model_name: how the result layers name the model: its file's name (``"bundled"``
            and ``"stained"`` for the bundled ones, however they were picked), or the
            caller's name for it.
        why: why that model: ``"fluorescence"`` or ``"stained"`` (the bundled model picked
            for the image by its look), ``"file"`` (a model file or a bundled model's name
            given by the caller) or ``"given"`` (a network given by the caller).
        voxel_size: Z stacks: the ``(z, y, x)`` voxel size or one number (Z step / pixel);
            None = estimated from the cells.
        warnings: sentences found on the way in (unlike the training data...).
        net3d: Z stacks: the 3D network given as the model (``model`` is then the bundled
            2D network, which measures the Z step when the voxel size is not given).
    """

    layout: Layout
    channel_map: str
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    model: Any
    model_name: str = "model"
    why: str = "given"
    voxel_size: Any = None
    warnings: tuple[str, ...] = ()
    net3d: Any = None

    @property
    def axes(self) -> str:
        return self.layout.axes

    @property
    def normalization(self) -> tuple[np.ndarray, np.ndarray]:
        """``(lo, hi)`` as arrays, as :class:`napari_unet.tiling.Predictor` takes them."""
        return np.asarray(self.lo, float), np.asarray(self.hi, float)

    @property
    def model_line(self) -> str | None:
        """The line naming a model picked for the image (None when the caller chose it)."""
        if self.why not in PICKED_FOR:
            return None
        what = "an RGB fluorescence image" if self.why == "fluorescence" and self.layout.rgb else PICKED_FOR[self.why]
        return f"the {self.why} bundled model (picked for {what})"

    def info(self) -> dict[str, Any]:
        """What the result reports about its input (the progress records' ``info``)."""
        out: dict[str, Any] = {"axes": self.axes, "model_name": self.model_name, "model_why": self.why}
        if self.model_line:
            out["model"] = self.model_line
        return out

    def reshaped(self, shape: tuple[int, ...]) -> ImageInput:
        """The same facts for a copy of the image with another shape (zoomed in Y/X): same
        axes, channels, normalisation and model; its warnings were said already."""
        return dataclasses.replace(self, layout=dataclasses.replace(self.layout, shape=tuple(int(s) for s in shape)),
                                   warnings=())

    def plane(self, shape: tuple[int, ...] | None = None) -> ImageInput:
        """The same facts for one plane of the image with its channels (a crop of it when
        ``shape`` is given, in the plane's axes)."""
        lay = self.layout
        kept = [a for a in range(len(lay.shape)) if a not in lay.planes]
        plane = Layout(
            axes="".join(lay.axes[a] for a in kept),
            shape=tuple(lay.shape[a] for a in kept) if shape is None else tuple(int(s) for s in shape),
            y=kept.index(lay.y),
            x=kept.index(lay.x),
            channel=None if lay.channel is None else kept.index(lay.channel),
            planes=(),
            rgb=lay.rgb,
        )
        return dataclasses.replace(self, layout=plane, warnings=())

    def say_warnings(self) -> None:
        """Warn (``UserWarning``) with each sentence found on the way in (attributed to the
        caller: the door that described the image)."""
        for message in self.warnings:
            warnings.warn(message, UserWarning, stacklevel=2)


@dataclass(frozen=True)
class SegmentOptions:
    """The settings of a segmentation run (see :func:`napari_unet.segmentation.segment_iter`).

    ``postprocess``: further options of the post-processing (and of the 3D path); the
    model's ``meta["postprocess"]`` gives the defaults of those not given.
    """

    tile_size: int | None = None
    device: Any = None
    batch_size: int | None = None
    amp: bool | None = None
    channels_last: bool = True
    min_size: int | None = None
    mode: str | None = None
    diameter: float | str | None = None
    min_object_z: float | None = MIN_OBJECT_Z
    plane_by_plane: bool = False
    postprocess: Mapping[str, Any] = field(default_factory=dict)  # made read-only in __post_init__

    def __post_init__(self) -> None:
        object.__setattr__(self, "postprocess", MappingProxyType(dict(self.postprocess)))

    def replace(self, **changes: Any) -> SegmentOptions:
        return dataclasses.replace(self, **changes)

    @property
    def predict_kw(self) -> dict[str, Any]:
        """The prediction's settings (tile, device, batch, precision, memory layout)."""
        return dict(tile_size=self.tile_size, device=self.device, batch_size=self.batch_size, amp=self.amp,
                    channels_last=self.channels_last)


def describe_input(
    image: Any,
    model: Any = None,
    *,
    axes: str | Layout | None = None,
    voxel_size: Any = None,
    model_name: str | None = None,
    load: Callable[[Any], Any] | None = None,
    check: bool = True,
) -> ImageInput:
    """The facts about ``image`` (see :class:`ImageInput`): its axes are parsed, the model
    chosen (None: the bundled model that suits the image, :func:`napari_unet.channels.pick_bundled`),
    the image checked against it and its normalisation computed, each once.

    Args:
        image: any array-like with ``shape`` and numpy slicing (only samples are read).
        model: a UNet, a bundled model's name, a model file, or None.
        axes: axis letters (see :func:`napari_unet.tiling.parse_axes`); None = guessed; or
            the :class:`Layout` a door parsed already.
        voxel_size: Z stacks: see :class:`ImageInput`.
        model_name: how the result layers name a model the caller chose.
        load: reads a model file (default :func:`napari_unet.model.load_model`; a widget
            passes its cache).
        check: look for the warnings (an image unlike the model's training data, a short
            first axis); False for a caller that shows none, as the checks read a sample of
            the image.

    Raises:
        ValueError: axes that do not fit the image, an image of a dtype that cannot be
            segmented; :class:`ChannelMismatch`: channels the model cannot take.
    """
    from .channels import bundled_path, pick_bundled
    from .model import load_model

    load = load or load_model
    dtype = np.dtype(getattr(image, "dtype", np.float32))
    if dtype.kind not in "biuf":
        raise ValueError(f"cannot segment an image of dtype {dtype}; give a numeric or boolean image")
    layout = axes if isinstance(axes, Layout) else parse_axes(np.shape(image), axes)
    why, stained = "given", None
    if model is None:
        if layout.rgb:  # "is this a stained slide" is answered here, once
            s = strided_sample(image, 250_000)
            stained = looks_stained(np.moveaxis(s, layout.channel, -1).reshape(-1, layout.channels)[:, :3]
                                    .astype(np.float32))
        why = pick_bundled(layout.rgb, image, stained=stained)
        path = bundled_path(why)
        model, model_name = load(path), path.stem
    elif isinstance(model, (str, os.PathLike)):
        path = bundled_path("fluorescence" if model == "bundled" else model) if model in BUNDLED_NAMES else Path(model)
        model_name, why = model_name or path.stem, "file"
        model = load(path)
    if not hasattr(model, "config") or not hasattr(model, "meta"):
        raise TypeError(f"model must be a napari_unet.UNet (or wrap one), got {type(model).__name__}")
    net3d = None
    if getattr(model.config, "spatial_dims", 2) == 3:
        if "Z" not in layout.axes:
            raise ValueError(f"{model_name or 'the model'} is a 3D network: it segments Z stacks (axes with a Z), "
                             f"and the image's axes are {layout.axes}")
        net3d, model = model, load(bundled_path("fluorescence"))
    meta = model.meta
    found = []
    if check:
        message = modality_warning(image, layout, meta, stained)
        found = [message] if message else []
        if axes is None and len(layout.shape) == 3 and not layout.rgb and layout.shape[0] <= SHORT_AXIS:
            found.append(SHORT_AXIS_WARNING.format(n=layout.shape[0]))
    channel_map = choose_channel_map(layout, model.config.in_channels)
    lo, hi = image_normalization(image, layout, meta.get("normalization", {"kind": "percentile"}), channel_map)
    return ImageInput(layout, channel_map, tuple(float(v) for v in np.ravel(lo)), tuple(float(v) for v in np.ravel(hi)),
                      model, model_name or "model", why, voxel_size, tuple(found), net3d)


def each_channel_alone(axes: str, shape: Sequence[int], model_channels: int) -> tuple[str, str]:
    """Axes whose channel axis (``C``) the model cannot read together made an axis of
    planes, segmented one by one (``Q``), and a note saying so ("" when unchanged): for
    channels the file or the viewer named, not the person."""
    if "C" not in axes or len(axes) != len(shape) or shape[axes.index("C")] == model_channels:
        return axes, ""
    n = shape[axes.index("C")]
    return axes.replace("C", "Q"), f"the model reads {model_channels} channel(s), so each of the {n} is segmented on its own"


def options_from(model: Any, *, min_object_z: float | None = MIN_OBJECT_Z, **settings: Any) -> SegmentOptions:
    """:class:`SegmentOptions` from keyword arguments (those that are no option go to
    ``postprocess``), with the model's defaults: the noise
    test's default threshold for a model of stained tissue, and ``diameter`` None for a
    model trained with each image zoomed to its cell size (``meta["zoom_each"]``), ``"auto"``."""
    meta = getattr(model, "meta", {})
    if min_object_z == MIN_OBJECT_Z and meta.get("modality") == "stained":
        min_object_z = MIN_OBJECT_Z_STAINED  # the default, for stained tissue
    diameter = settings.pop("diameter", None)
    if isinstance(diameter, str) and diameter == "as is":
        diameter = None
    elif diameter is None and meta.get("zoom_each"):
        diameter = "auto"
    post = {k: settings.pop(k) for k in list(settings) if k not in _OPTION_NAMES}
    return SegmentOptions(min_object_z=min_object_z, diameter=diameter, postprocess=post, **settings)


_OPTION_NAMES = {f.name for f in dataclasses.fields(SegmentOptions)}


__all__ = [
    "AXIS_LETTERS",
    "ChannelMismatch",
    "ImageInput",
    "Layout",
    "SegmentOptions",
    "choose_channel_map",
    "describe_input",
    "each_channel_alone",
    "image_normalization",
    "map_channels",
    "options_from",
    "out_index",
    "parse_axes",
]
