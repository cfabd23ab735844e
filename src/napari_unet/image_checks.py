"""Checks that tell the user when a result should not be trusted, in one sentence each.

Qt-free; the widgets show these warnings in their status line, the command line prints them.

* **Nothing here** (:func:`drop_faint_objects`): a U-Net asked to find cells finds
  them in pure camera noise too, because percentile normalisation stretches any noise to
  the full range. Each object the network finds is tested against the image's own noise:
  its mean intensity must stand out from the ring of background around it (brighter or
  darker) by :data:`MIN_OBJECT_Z` standard errors (the pixel noise ``sigma`` is measured robustly from
  differences of neighbouring pixels, so it is the image's noise, whatever its gain,
  offset, bit depth or size). Objects that do not are dropped; when nothing is left a
  :class:`UserWarning` says there are no cells.
* **NaN pixels** (:data:`NONFINITE_WARNING`): NaN and inf pixels are segmented as
  background; the user is told.
* **Unlike the training data** (:func:`modality_warning`): an image that looks like
  nothing the model learned from (a colour image of stained tissue for a fluorescence
  model, dark objects on a bright background, a channel count the model does not take)
  gets a warning that says so and what to do.

The model file records what it was trained on in ``model.meta["modality"]``:

* ``"fluorescence"`` (the default when the key is missing): bright objects on a dark
  background, one or more fluorescence channels;
* ``"stained"``: brightfield images of stained tissue (H&E and similar), RGB, dark nuclei on
  a bright background.

A model for another modality adds its name there; :func:`modality_warning` then checks
nothing it does not know about.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: the warning when NaN/inf pixels were replaced (one sentence)
NONFINITE_WARNING = (
    "The image holds NaN or infinite pixels, which were segmented as background, so cells under them are lost; "
    "fill them (e.g. numpy.nan_to_num) or crop them away."
)

#: the warning when the network found objects but none stands out from the image's noise
NOTHING_HERE_WARNING = (
    "No cells found: nothing in this image stands out from its noise (an empty field?); "
    "if there are cells, check the channel and the contrast."
)

#: an object is kept when its mean intensity exceeds its surroundings' by this many
#: standard errors of the image noise (benchmarks/bench_blank.py measures the choice:
#: objects the bundled model finds in pure noise score below about 6, real cells mostly far above)
MIN_OBJECT_Z = 6.0

#: the same for models of stained tissue (``meta["modality"] == "stained"``): tissue texture
#: counts as noise there, and 6 dropped a third of the real nuclei (stained model on the 5
#: shared H&E tiles, pooled AP@0.5: no check 0.52, 1: 0.54, 2: 0.56, 3: 0.54, 6: 0.35)
MIN_OBJECT_Z_STAINED = 2.0

#: width in pixels of the background ring an object is compared with
RING = 4

#: about this many pixels are used by :func:`noise_sigma`
NOISE_SAMPLE = 250_000

#: block edges (pixels) of the background block means :func:`noise_sigma` also compares,
#: and how many neighbouring pairs of such blocks it needs
NOISE_BLOCKS = (4, 8)
MIN_BLOCK_PAIRS = 200

#: rounds of :func:`drop_faint_objects` (objects without background around them are
#: tested again once faint neighbours are gone)
MAX_ROUNDS = 4


def _spread(d: np.ndarray) -> float:
    """Robust standard deviation of differences of neighbours, over sqrt 2.

    The standard deviation of the bulk of the differences: those within 4 robust standard
    deviations (median absolute deviation) of the median, or 2 quantisation steps, which
    leaves out the few large ones at cell edges. A median absolute deviation alone
    understates the noise of low, integer counts (Poisson noise of a few photons).
    """
    d = d[np.isfinite(d)]
    if d.size == 0:
        return 0.0
    centred = np.abs(d - np.median(d))
    robust = 1.4826 * float(np.median(centred))
    steps = centred[centred > 0]
    bound = max(4.0 * robust, 2.0 * float(steps.min()) if steps.size else 0.0)
    bulk = d[centred <= bound]
    return float(bulk.std()) / math.sqrt(2.0) if bulk.size > 1 else 0.0


def noise_sigma(x: np.ndarray, background: np.ndarray | None = None, blocks: tuple[int, ...] = NOISE_BLOCKS) -> float:
    """Robust standard deviation of the pixel noise of a 2D image, as it matters for the
    mean of an object.

    From the differences of horizontally neighbouring pixels (a median absolute
    deviation: cell edges touch few pairs, so this is the noise, not the signal). Noise
    correlated between neighbours (a blurred, binned or resampled image) makes an
    object's mean vary more than single pixels say; where ``background`` (a mask of pixels
    far from any object) holds enough whole ``b x b`` blocks, the differences of
    neighbouring block means, scaled by ``b``, measure that, and the largest estimate is
    returned (they agree for independent pixels).
    """
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[-1] < 2:
        return 0.0
    step = max(1, x.size // NOISE_SAMPLE)  # every k-th row is plenty for a robust spread
    sigma = _spread(np.diff(x[::step].astype(np.float64), axis=-1).ravel())
    if background is None:
        return sigma
    for b in blocks:
        h, w = (x.shape[0] // b) * b, (x.shape[1] // b) * b
        if h < b or w < 2 * b:
            continue
        means = x[:h, :w].astype(np.float64).reshape(h // b, b, w // b, b).mean(axis=(1, 3))
        clear = background[:h, :w].reshape(h // b, b, w // b, b).all(axis=(1, 3))
        pairs = clear[:, 1:] & clear[:, :-1]
        if pairs.sum() >= MIN_BLOCK_PAIRS:
            sigma = max(sigma, b * _spread(np.diff(means, axis=-1)[pairs]))
    return sigma


def object_contrast(x: np.ndarray, labels: np.ndarray, ring: int = RING, sigma: float | None = None) -> np.ndarray:
    """Per object, its mean minus the mean of the background ring around it, in standard
    errors of the pixel noise (a z-score); index ``i - 1`` is object ``i``.

    The ring is the background within ``ring`` pixels (a square neighbourhood) of the
    object. Objects without background around them (cells packed wall to wall) get
    ``+inf``: there is nothing to compare them with, so they are never dropped for it.

    Args:
        sigma: the pixel noise (None: :func:`noise_sigma` of ``x``).
    """
    from scipy import ndimage as ndi

    labels = np.asarray(labels)
    n = int(labels.max(initial=0))
    if n == 0:
        return np.zeros(0)
    x = np.asarray(x, np.float64)
    sigma = noise_sigma(x) if sigma is None else sigma
    flat = labels.ravel()
    area = np.bincount(flat, minlength=n + 1)[1:]
    inside = np.bincount(flat, x.ravel(), minlength=n + 1)[1:]
    # background pixels near an object belong to its ring (to the larger id where two are near)
    owner = ndi.maximum_filter(labels, size=2 * ring + 1, mode="constant")
    near = (labels == 0) & (owner > 0)
    ring_n = np.bincount(owner[near], minlength=n + 1)[1:]
    ring_sum = np.bincount(owner[near], x[near], minlength=n + 1)[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = inside / np.maximum(area, 1) - ring_sum / np.maximum(ring_n, 1)
        se = sigma * np.sqrt(1.0 / np.maximum(area, 1) + 1.0 / np.maximum(ring_n, 1))
        z = np.where(se > 0, diff / se, np.where(diff != 0, np.inf, 0.0))
    z[ring_n == 0] = np.inf
    return z


def drop_faint_objects(x: np.ndarray, labels: np.ndarray, min_z: float = MIN_OBJECT_Z) -> np.ndarray:
    """``labels`` with the objects that do not stand out from the noise of ``x`` set to 0.

    Test at the image's own resolution: a zoomed copy has smoothed, correlated noise, whose
    pixel differences understate it.

    Args:
        x: the plane as the network sees it, normalised, ``(Y, X)`` or ``(C, Y, X)``
            (channels averaged); or a stack, ``(Z, Y, X)``, with 3D labels.
        labels: instance labels of that plane or stack (ids kept; dropped objects become 0).
        min_z: see :data:`MIN_OBJECT_Z`.
    """
    x = np.asarray(x, np.float32)
    if x.ndim == labels.ndim + 1:
        x = x.mean(axis=0)
    from scipy import ndimage as ndi

    out = labels
    # the background: pixels farther than the ring from every object the network found
    background = ndi.maximum_filter(labels, size=2 * RING + 1, mode="constant") == 0
    # a stack: the noise of its planes' rows, one after the other
    sigma = noise_sigma(x.reshape(-1, x.shape[-1]), background.reshape(-1, x.shape[-1]))
    for _ in range(MAX_ROUNDS):
        # either sign: a model for stained tissue finds dark nuclei on a bright background
        z = np.abs(object_contrast(x, out, sigma=sigma))
        faint = z < min_z
        if not faint.any():
            break
        keep = np.concatenate([[True], ~faint])  # lookup by id; 0 stays 0
        out = np.where(keep[out], out, 0).astype(labels.dtype, copy=False)
        if not np.isinf(z[~faint]).any():
            break  # every object left was compared with its own background: no second round needed
        # objects packed among dropped ones had no background to compare with: test them again
    return out


def modality_warning(image: Any, layout: Any, meta: dict[str, Any], stained: bool | None = None) -> str | None:
    """One sentence when ``image`` looks unlike what the model was trained on, else None.

    (A channel count the model cannot take is an error, raised by the tiling itself.)

    Args:
        image: the image (any array-like; only a strided sample of about a million
            values is read).
        layout: its :class:`napari_unet.tiling.Layout`.
        meta: the model's ``meta`` (``meta.get("modality", "fluorescence")``).
        stained: whether an RGB image's colours were found H&E-like already
            (:func:`looks_stained`; None: looked at here).
    """
    from .normalize import strided_sample

    modality = meta.get("modality", "fluorescence")
    if modality not in ("fluorescence", "stained"):
        return None
    sample = np.asarray(strided_sample(image, 1_000_000), np.float64)
    if layout.channel is not None:
        sample = np.moveaxis(sample, layout.channel, -1).reshape(-1, layout.channels)
    else:
        sample = sample.reshape(-1, 1)
    sample = sample[np.isfinite(sample).all(axis=1)]
    if sample.size == 0:
        return None
    if layout.rgb and stained is None:
        stained = looks_stained(sample[:, :3])
    if modality == "fluorescence":
        if layout.rgb and stained:
            return ("This colour image looks like stained tissue (brightfield), but the model was trained on "
                    "fluorescence images, so expect poor results; fine-tune it on a few labelled tiles of "
                    "these images, or use a model for stained tissue.")
        gray = sample[:, :3].mean(axis=1) if layout.rgb else sample.mean(axis=1)
        if bright_background(gray):
            return ("The background of this image is bright and the objects dark, but the model was trained on "
                    "bright cells on a dark background (fluorescence); invert the image (e.g. image.max() - image) "
                    "or fine-tune the model on these images.")
    elif modality == "stained" and not (layout.rgb and stained):
        return ("The model was trained on colour images of stained tissue (brightfield), and this image does not "
                "look like one; use a fluorescence model, or fine-tune this one on these images.")
    return None


def modality_of(images: Any, in_channels: int, default: str = "fluorescence") -> str:
    """What a model trained on ``images`` knows, for ``model.meta["modality"]``.

    ``"stained"`` for RGB brightfield tissue, ``"brightfield"`` for dark objects on a
    bright background (EM, brightfield; not checked by :func:`modality_warning`),
    ``"fluorescence"`` otherwise; ``default`` for other channel counts. The same tests
    :func:`modality_warning` applies, so a model never warns about images like its own.

    Args:
        images: the training images, 2D ``(Y, X)`` or with a channel axis.
        in_channels: the model's input channels.
    """
    from .normalize import strided_sample

    if in_channels not in (1, 3):
        return default
    per_image = max(10_000, 1_000_000 // max(1, len(images)))
    pixels = []
    for img in list(images)[:16]:
        arr = np.asarray(strided_sample(img, per_image), np.float64)
        if in_channels == 3:
            arr = arr.reshape(-1, 3) if arr.shape[-1] == 3 else np.moveaxis(arr, 0, -1).reshape(-1, 3)
        pixels.append(arr.reshape(-1, in_channels))
    sample = np.concatenate(pixels)
    sample = sample[np.isfinite(sample).all(axis=1)]
    if sample.size == 0:
        return default
    if in_channels == 3 and looks_stained(sample):
        return "stained"
    return "brightfield" if bright_background(sample.mean(axis=1)) else "fluorescence"


def bright_background(gray: np.ndarray) -> bool:
    """True for dark objects on a bright background (brightfield, an inverted image).

    Fluorescence intensities are skewed to the bright side (a dark background and few
    bright cells: skewness +0.7 to +10 on the images benchmarks/bench_blank.py uses; pure
    noise -0.1 to +0.4); dark objects on a bright background skew them the other way, or
    put the median high in the range.
    """
    gray = np.asarray(gray, np.float64).ravel()
    sd = float(gray.std())
    if sd == 0 or not np.isfinite(sd):
        return False
    skew = float(np.mean(((gray - gray.mean()) / sd) ** 3))
    lo, med, hi = np.percentile(gray, (1.0, 50.0, 99.8))
    return bool(skew < -0.5 or (hi > lo and (med - lo) / (hi - lo) > 0.6 and skew < 0))


def looks_stained(rgb: np.ndarray) -> bool:
    """True for RGB pixels like brightfield stained tissue: a bright, coloured background
    (most pixels light) and clearly coloured pixels (saturation), as H&E gives."""
    if rgb.shape[-1] < 3 or rgb.size == 0:
        return False
    top = float(np.percentile(rgb, 99.8))
    if top <= 0:
        return False
    v = rgb / top
    mx, mn = v.max(axis=1), v.min(axis=1)
    saturation = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-12), 0.0)
    return bool(np.median(mx) > 0.5 and np.median(saturation) > 0.08)


__all__ = [
    "MIN_OBJECT_Z",
    "MIN_OBJECT_Z_STAINED",
    "NONFINITE_WARNING",
    "NOTHING_HERE_WARNING",
    "drop_faint_objects",
    "modality_of",
    "modality_warning",
    "noise_sigma",
    "object_contrast",
]
