"""Synthetic fluorescence microscopy images with instance ground truth.

The bundled model is pretrained only on images from this module, so they have to look
like raw microscope output, not like clean drawings: irregular nuclei (or whole cells) of
varied size and shape, sparse to crowded with touching and some overlapping objects,
dividing and bright mitotic cells, chromatin texture and nucleoli, per-cell out-of-focus
blur and a PSF blur, uneven illumination and background, unlabelled autofluorescent
debris, Poisson shot noise and Gaussian read noise, 8/12/16-bit ranges with an offset,
varied use of the dynamic range and occasional saturation.

Conventions:

* ``make_sample`` returns ``(image, labels)``: ``image`` is **uint16** raw counts (values
  ``<= 2**bit_depth - 1``, including a camera offset; an 8-bit image is still returned as
  uint16 with values ``<= 255``), ``labels`` is **int32** with ids ``1..N`` (0 =
  background), every object one unique id. Labels equal the object masks exactly: where
  two objects overlap the one on top owns the pixels while their light adds up.
  Debris is never labelled. Normalise images by percentiles before feeding a network (the
  models do this).
* Everything is seeded: the same ``(shape, seed, kind, density, difficulty, overrides)``
  gives bit-identical output.
* Objects are drawn in their own bounding boxes, so a 256x256 image takes a few tens of
  milliseconds.

Typical use::

    image, labels = make_sample((256, 256), seed=3, difficulty="hard")
    params = random_params(np.random.default_rng(0), "normal")   # a drawn recipe
    sample = render(params, (256, 256), np.random.default_rng(1)) # image, labels, debris
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "SyntheticParams",
    "SyntheticSample",
    "DIFFICULTIES",
    "KINDS",
    "DENSITIES",
    "random_params",
    "render",
    "make_sample",
    "make_sample_full",
]

DIFFICULTIES = ("easy", "normal", "hard")
KINDS = ("nuclei", "cells")
#: named densities -> fraction of the image area covered by objects
DENSITIES = {"sparse": 0.08, "medium": 0.25, "crowded": 0.5}

_N_HARMONICS = 5  # Fourier harmonics 2..6 of the radius perturbation


@dataclass(frozen=True)
class SyntheticParams:
    """The recipe of one synthetic image (all fields immutable scalars).

    Sizes are in pixels, intensities relative to a typical object's brightness (1.0).
    """

    kind: str = "nuclei"
    # --- geometry
    coverage: float = 0.25  #: target fraction of the image covered by objects
    radius: float = 9.0  #: typical object radius (px)
    radius_cv: float = 0.2  #: per-object spread of the radius (log-normal sigma)
    min_axis_ratio: float = 0.6  #: minor/major axis ratio drawn in [min_axis_ratio, 1]
    irregularity: float = 0.08  #: amplitude of the low-frequency Fourier radius noise
    touching: float = 0.92  #: min centre distance / (r1 + r2); < 1 makes objects touch
    clustering: float = 0.3  #: fraction of objects placed in clumps
    overlap_fraction: float = 0.03  #: fraction of objects lying on top of others
    dividing_fraction: float = 0.02  #: fraction of objects that are dividing pairs
    mitotic_fraction: float = 0.02  #: fraction of bright compact mitotic objects
    # --- appearance
    brightness_cv: float = 0.25  #: per-object brightness spread (log-normal sigma)
    dome: float = 0.2  #: centre-to-edge fall-off of intensity (negative = rim-bright)
    texture: float = 0.2  #: chromatin texture amplitude
    texture_scale: float = 1.5  #: chromatin texture grain (px)
    nucleoli: float = 0.3  #: mean number of nucleoli per object, >= 0
    out_of_focus_fraction: float = 0.05  #: fraction of objects blurred by defocus
    defocus_sigma: float = 2.5  #: maximum per-object defocus blur (px)
    psf_sigma: float = 1.0  #: global PSF blur (px)
    # --- background and illumination
    background: float = 0.08  #: autofluorescent background level
    haze: float = 0.1  #: out-of-focus glow around objects (fraction of their light)
    illumination: float = 0.2  #: strength of the uneven illumination (gradient, modes)
    vignetting: float = 0.1  #: darkening towards the corners
    debris_density: float = 2e-4  #: unlabelled debris spots per pixel
    debris_brightness: float = 1.5  #: typical debris brightness
    # --- camera
    photons: float = 500.0  #: photons collected at a typical object's brightness
    read_noise: float = 2.0  #: Gaussian read noise (electrons)
    bit_depth: int = 16  #: 8, 12 or 16
    offset: float = 100.0  #: camera offset (counts)
    dynamic_range: float = 0.3  #: fraction of the full scale a typical object reaches

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not 0.0 <= self.coverage <= 0.9:
            raise ValueError(f"coverage must be in [0, 0.9], got {self.coverage}")
        if self.radius < 2.0:
            raise ValueError(f"radius must be at least 2 px, got {self.radius}")
        if self.bit_depth not in (8, 10, 12, 14, 16):
            raise ValueError(f"bit_depth must be 8, 10, 12, 14 or 16, got {self.bit_depth}")
        if self.photons <= 0:
            raise ValueError(f"photons must be positive, got {self.photons}")
        if not 0.0 < self.min_axis_ratio <= 1.0:
            raise ValueError(f"min_axis_ratio must be in (0, 1], got {self.min_axis_ratio}")
        for name in ("overlap_fraction", "dividing_fraction", "mitotic_fraction",
                     "out_of_focus_fraction", "clustering"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")


@dataclass(frozen=True)
class SyntheticSample:
    """One rendered image with its ground truth and what else the tests need to check."""

    image: np.ndarray  #: uint16 raw counts
    labels: np.ndarray  #: int32 instance labels, 0 = background
    debris: np.ndarray  #: bool mask of the debris spots (never labelled)
    clean: np.ndarray  #: float32 noise-free signal in photons (before the camera)
    params: SyntheticParams


# ----------------------------------------------------------------------------- recipes

# (low, high) ranges per difficulty; "log" ranges are drawn log-uniformly
_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "easy": dict(
        coverage=(0.08, 0.3), radius_cv=(0.08, 0.2), min_axis_ratio=(0.65, 0.9),
        irregularity=(0.02, 0.07), touching=(0.95, 1.15), clustering=(0.0, 0.3),
        overlap_fraction=(0.0, 0.0), dividing_fraction=(0.0, 0.02), mitotic_fraction=(0.0, 0.02),
        brightness_cv=(0.08, 0.25), dome=(0.0, 0.25), texture=(0.03, 0.15),
        nucleoli=(0.0, 0.5), out_of_focus_fraction=(0.0, 0.03), psf_sigma=(0.5, 1.0),
        background=(0.01, 0.08), haze=(0.0, 0.1), illumination=(0.0, 0.15), vignetting=(0.0, 0.1),
        debris_density=(0.0, 5e-5), photons=(800.0, 5000.0), read_noise=(1.0, 3.0),
        dynamic_range=(0.1, 0.5),
    ),
    "normal": dict(
        coverage=(0.06, 0.5), radius_cv=(0.1, 0.3), min_axis_ratio=(0.45, 0.85),
        irregularity=(0.04, 0.12), touching=(0.82, 1.05), clustering=(0.0, 0.6),
        overlap_fraction=(0.0, 0.06), dividing_fraction=(0.0, 0.04), mitotic_fraction=(0.0, 0.05),
        brightness_cv=(0.15, 0.45), dome=(-0.15, 0.35), texture=(0.08, 0.3),
        nucleoli=(0.0, 1.5), out_of_focus_fraction=(0.0, 0.15), psf_sigma=(0.6, 1.6),
        background=(0.02, 0.2), haze=(0.0, 0.25), illumination=(0.0, 0.4), vignetting=(0.0, 0.25),
        debris_density=(0.0, 2e-4), photons=(60.0, 3000.0), read_noise=(1.0, 6.0),
        dynamic_range=(0.03, 0.6),
    ),
    "hard": dict(
        coverage=(0.15, 0.65), radius_cv=(0.2, 0.45), min_axis_ratio=(0.3, 0.75),
        irregularity=(0.07, 0.18), touching=(0.75, 0.98), clustering=(0.2, 0.9),
        overlap_fraction=(0.02, 0.1), dividing_fraction=(0.02, 0.06), mitotic_fraction=(0.02, 0.08),
        brightness_cv=(0.3, 0.7), dome=(-0.3, 0.45), texture=(0.2, 0.45),
        nucleoli=(0.5, 2.5), out_of_focus_fraction=(0.1, 0.3), psf_sigma=(1.0, 2.2),
        background=(0.08, 0.4), haze=(0.1, 0.4), illumination=(0.2, 0.6), vignetting=(0.1, 0.4),
        debris_density=(1e-4, 5e-4), photons=(12.0, 300.0), read_noise=(2.0, 10.0),
        dynamic_range=(0.02, 0.9),
    ),
}
_LOG_FIELDS = {"photons", "debris_density", "dynamic_range"}
_RADIUS = {"nuclei": (4.0, 20.0), "cells": (12.0, 32.0)}


def random_params(
    rng: np.random.Generator, difficulty: str = "normal", kind: str = "nuclei"
) -> SyntheticParams:
    """Draw a random recipe, for diversity when pretraining.

    Args:
        rng: the random generator (seed it for reproducibility).
        difficulty: ``"easy"``, ``"normal"`` or ``"hard"``: sets the ranges of density,
            shape irregularity, blur, noise and artefacts.
        kind: ``"nuclei"`` (compact bright blobs) or ``"cells"`` (larger, more irregular,
            dimmer cytoplasm-like objects).

    Returns:
        A ``SyntheticParams``.
    """
    if difficulty not in _RANGES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    values: dict[str, Any] = {}
    for name, (lo, hi) in _RANGES[difficulty].items():
        if name in _LOG_FIELDS and lo > 0:
            values[name] = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        else:
            values[name] = float(rng.uniform(lo, hi))
    r_lo, r_hi = _RADIUS[kind]
    values["radius"] = float(np.exp(rng.uniform(np.log(r_lo), np.log(r_hi))))
    values["texture_scale"] = float(rng.uniform(0.8, 2.5)) * (2.0 if kind == "cells" else 1.0)
    values["defocus_sigma"] = float(rng.uniform(1.5, 4.0))
    values["debris_brightness"] = float(np.exp(rng.uniform(np.log(0.4), np.log(4.0))))
    if kind == "cells":
        # cytoplasm: irregular outlines, flatter and smoother, no nucleoli, packed tightly
        values["irregularity"] *= 1.6
        values["min_axis_ratio"] *= 0.8
        values["coverage"] = min(0.75, values["coverage"] * 1.4)  # cultures are often confluent
        values["texture"] *= 0.6
        values["nucleoli"] = 0.0
        values["touching"] *= 0.92
        values["dome"] = float(rng.uniform(-0.2, 0.2))
        values["dividing_fraction"] *= 0.3
    # camera: bit depth and its usual offset (8-bit frame grabbers have ~no offset)
    bits = int(rng.choice([8, 12, 16], p=[0.25, 0.35, 0.4]))
    values["bit_depth"] = bits
    values["offset"] = {8: float(rng.uniform(0, 12)), 12: float(rng.uniform(0, 200)),
                        16: float(rng.uniform(0, 1000))}[bits]
    return SyntheticParams(kind=kind, **values)


# ----------------------------------------------------------------------------- rendering


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-filtered white noise."""
    f = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, truncate=3.0)
    s = float(f.std())
    return f / s if s > 0 else f


def _illumination(rng: np.random.Generator, p: SyntheticParams, shape: tuple[int, int]) -> np.ndarray:
    """Multiplicative illumination field around 1: gradient, vignetting, long waves."""
    h, w = shape
    y = (np.arange(h, dtype=np.float32) - h / 2) / max(h, w)
    x = (np.arange(w, dtype=np.float32) - w / 2) / max(h, w)
    yy, xx = y[:, None], x[None, :]
    a = rng.uniform(0, 2 * np.pi)
    field = 1.0 + p.illumination * 1.2 * (np.cos(a) * xx + np.sin(a) * yy)
    # a few long-wavelength modes (dirty optics, uneven excitation)
    for _ in range(3):
        k = rng.uniform(0.3, 2.0) * 2 * np.pi
        b = rng.uniform(0, 2 * np.pi)
        field = field + p.illumination * 0.25 * np.cos(k * (np.cos(b) * xx + np.sin(b) * yy) + rng.uniform(0, 2 * np.pi))
    cy, cx = rng.uniform(-0.15, 0.15, 2)
    field = field * (1.0 - p.vignetting * 2.0 * ((yy - cy) ** 2 + (xx - cx) ** 2))
    return np.clip(field, 0.05, None).astype(np.float32)


def _place(rng: np.random.Generator, p: SyntheticParams, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Object centres, radii and roles by sequential rejection sampling.

    Returns arrays ``y, x, r, role`` with role 0 = normal, 1 = on top (overlapping),
    2 = dividing daughter, 3 = mitotic.
    """
    h, w = shape
    area = h * w
    r0 = p.radius
    mean_area = np.pi * r0**2 * np.exp(2 * p.radius_cv**2)
    n_target = int(round(p.coverage * area / mean_area))
    if n_target == 0:
        return {k: np.zeros(0) for k in ("y", "x", "r", "role")}
    n_cand = 4 * n_target + 20
    # candidate centres: uniform, plus clumps around a few cluster centres
    n_clust = int(round(p.clustering * n_cand))
    ys = rng.uniform(-0.3 * r0, h + 0.3 * r0, n_cand)
    xs = rng.uniform(-0.3 * r0, w + 0.3 * r0, n_cand)
    if n_clust:
        k = max(1, int(round(area / (40 * r0) ** 2)))
        cy = rng.uniform(0, h, k)
        cx = rng.uniform(0, w, k)
        which = rng.integers(0, k, n_clust)
        spread = r0 * rng.uniform(2.0, 5.0, k)
        ys[:n_clust] = cy[which] + rng.standard_normal(n_clust) * spread[which]
        xs[:n_clust] = cx[which] + rng.standard_normal(n_clust) * spread[which]
        perm = rng.permutation(n_cand)
        ys, xs = ys[perm], xs[perm]
    rs = r0 * np.exp(rng.standard_normal(n_cand) * p.radius_cv)
    rs = np.clip(rs, 2.5, 3.0 * r0)
    u = rng.uniform(0, 1, n_cand)
    role = np.zeros(n_cand, np.int8)
    role[u < p.overlap_fraction] = 1
    role[(u >= p.overlap_fraction) & (u < p.overlap_fraction + p.mitotic_fraction)] = 3
    div = (u >= 0.9999 - p.dividing_fraction)
    axis = rng.uniform(0, np.pi, n_cand)

    ay = np.empty(2 * n_cand)
    ax = np.empty(2 * n_cand)
    ar = np.empty(2 * n_cand)
    arole = np.empty(2 * n_cand, np.int8)
    n = 0
    covered = 0.0
    target_area = p.coverage * area
    for i in range(n_cand):
        if covered >= target_area:
            break
        if div[i]:
            # two small daughters side by side along the division axis
            rd = rs[i] * 0.62
            dy, dx = np.sin(axis[i]) * rd * 0.95, np.cos(axis[i]) * rd * 0.95
            cand = [(ys[i] - dy, xs[i] - dx, rd, 2), (ys[i] + dy, xs[i] + dx, rd, 2)]
        elif role[i] == 3:
            cand = [(ys[i], xs[i], rs[i] * 0.7, 3)]
        else:
            cand = [(ys[i], xs[i], rs[i], int(role[i]))]
        ok = True
        if n:
            for cy_, cx_, cr, crole in cand:
                d = np.hypot(ay[:n] - cy_, ax[:n] - cx_)
                f = np.where((arole[:n] == 1) | (crole == 1), 0.62, p.touching)
                if np.any(d < f * (ar[:n] + cr)):
                    ok = False
                    break
        if not ok:
            continue
        for cy_, cx_, cr, crole in cand:
            ay[n], ax[n], ar[n], arole[n] = cy_, cx_, cr, crole
            n += 1
            covered += np.pi * cr**2
    return {"y": ay[:n], "x": ax[:n], "r": ar[:n], "role": arole[:n]}


def _appearance(rng: np.random.Generator, p: SyntheticParams, role: np.ndarray) -> dict[str, np.ndarray]:
    """Per-object shape and appearance: axis ratio, angle, outline harmonics, brightness,
    dome, texture, defocus and nucleoli (role 2 daughters and 3 mitoses get their own)."""
    n = len(role)
    q = rng.uniform(p.min_axis_ratio, 1.0, n)  # minor/major axis ratio
    q[role == 2] = np.minimum(q[role == 2], rng.uniform(0.55, 0.85, int((role == 2).sum())))
    bar = (role == 3) & (rng.uniform(0, 1, n) < 0.4)  # metaphase plates: bright bars
    q[bar] = rng.uniform(0.3, 0.5, int(bar.sum()))
    angle = rng.uniform(0, np.pi, n)
    k = np.arange(2, 2 + _N_HARMONICS)
    amp = (p.irregularity * rng.standard_normal((n, _N_HARMONICS)) / (k - 1) ** 1.3).astype(np.float32)
    amp[role == 3] *= 0.4
    phase = rng.uniform(0, 2 * np.pi, (n, _N_HARMONICS)).astype(np.float32)
    bright = np.exp(rng.standard_normal(n) * p.brightness_cv)
    bright[role == 2] *= rng.uniform(1.5, 2.5, int((role == 2).sum()))
    bright[role == 3] *= rng.uniform(1.8, 3.2, int((role == 3).sum()))
    if p.kind == "cells":
        bright *= 0.6
    dome = p.dome + 0.1 * rng.standard_normal(n)
    tex_amp = p.texture * rng.uniform(0.5, 1.5, n)
    tex_amp[role >= 2] *= 1.5
    defocus = np.where(rng.uniform(0, 1, n) < p.out_of_focus_fraction,
                       rng.uniform(0.8, 1.0, n) * p.defocus_sigma, 0.0)
    bright[defocus > 0] *= rng.uniform(0.4, 0.9, int((defocus > 0).sum()))
    n_nucleoli = rng.poisson(p.nucleoli, n)
    n_nucleoli[role >= 2] = 0
    return {"q": q, "angle": angle, "k": k, "amp": amp, "phase": phase, "bright": bright, "dome": dome,
            "tex_amp": tex_amp, "defocus": defocus, "n_nucleoli": n_nucleoli}


def _rho(pl: dict[str, np.ndarray], a: dict[str, np.ndarray], i: int,
         shape: tuple[int, int]) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Object ``i``'s box and normalised radial distance over it (< 1 inside its outline);
    None when the box lies outside the image."""
    h, w = shape
    q, amp = a["q"][i], a["amp"][i]
    ext = pl["r"][i] * (1.0 + np.abs(amp).sum()) / np.sqrt(q) + 1.5
    y0, y1 = int(np.floor(pl["y"][i] - ext)), int(np.ceil(pl["y"][i] + ext)) + 1
    x0, x1 = int(np.floor(pl["x"][i] - ext)), int(np.ceil(pl["x"][i] + ext)) + 1
    y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
    if y1 <= y0 or x1 <= x0:
        return None
    dy = (np.arange(y0, y1, dtype=np.float32) - pl["y"][i])[:, None]
    dx = (np.arange(x0, x1, dtype=np.float32) - pl["x"][i])[None, :]
    ca, sa = np.cos(a["angle"][i]), np.sin(a["angle"][i])
    a_ax = pl["r"][i] / np.sqrt(q)
    b_ax = pl["r"][i] * np.sqrt(q)
    u = (dx * ca + dy * sa) / a_ax
    v = (dy * ca - dx * sa) / b_ax
    s = np.hypot(u, v)
    th = np.arctan2(v, u)
    k = a["k"]
    rf = 1.0 + np.tensordot(amp, np.cos(k[:, None, None] * th[None] + a["phase"][i][:, None, None]), 1)
    rho = (s / np.maximum(rf, 0.3)).astype(np.float32)
    return (slice(y0, y1), slice(x0, x1)), rho


def _geometry(pl: dict[str, np.ndarray], a: dict[str, np.ndarray], shape: tuple[int, int]) -> tuple[np.ndarray, list]:
    """Pass 1: the label image and each object's (box, rho).

    Normal objects compete for pixels by their normalised radial distance rho (a
    multiplicatively weighted Voronoi split), which gives the flat contact faces of
    crowded nuclei; objects "on top" (role 1) simply paint over afterwards, unless that
    would bury an object (then they become normal: ``pl["role"]`` is updated).
    """
    role = pl["role"]
    n = len(role)
    labels = np.zeros(shape, np.int32)
    best = np.full(shape, np.inf, np.float32)
    geo: list[tuple[tuple[slice, slice], np.ndarray] | None] = [None] * n
    order = np.argsort(role == 1, kind="stable")  # on-top objects last
    for i in order:
        box = _rho(pl, a, i, shape)
        if box is None:
            continue
        sl, rho = box
        inside = rho < 1.0
        if role[i] == 1:
            lab = labels[sl]
            under = lab[inside]
            if under.size and np.any(under):
                # do not bury an object: at most ~45% of any object may be covered
                ids, cnt = np.unique(under[under > 0], return_counts=True)
                areas = np.array([np.count_nonzero(labels == j) for j in ids]) if len(ids) < 8 else None
                if areas is not None and np.any(cnt > 0.45 * areas):
                    role[i] = 0
            if role[i] == 1:
                lab[inside] = i + 1
                geo[i] = (sl, rho)
                continue
        win = inside & (rho < best[sl])
        best[sl][win] = rho[win]
        labels[sl][win] = i + 1
        geo[i] = (sl, rho)
    return labels, geo


def _nucleoli(rng: np.random.Generator, em: np.ndarray, sl: tuple[slice, slice], y: float, x: float, r: float,
              count: int) -> np.ndarray:
    """``count`` nucleoli (mostly DAPI-dark, sometimes bright chromocentres) on an object's emission."""
    for _ in range(count):
        cy_ = rng.uniform(0.2, 0.8) * rng.choice([-1, 1])
        cx_ = rng.uniform(0.2, 0.8) * rng.choice([-1, 1])
        yy = np.arange(sl[0].start, sl[0].stop, dtype=np.float32)[:, None] - (y + cy_ * 0.6 * r)
        xx = np.arange(sl[1].start, sl[1].stop, dtype=np.float32)[None, :] - (x + cx_ * 0.6 * r)
        sn = max(0.8, r * rng.uniform(0.1, 0.22))
        depth = rng.uniform(0.3, 0.7) if rng.uniform() < 0.7 else -rng.uniform(0.3, 0.8)
        em = em * (1.0 - depth * np.exp(-(yy * yy + xx * xx) / (2 * sn * sn)))
    return em


def _light(rng: np.random.Generator, p: SyntheticParams, pl: dict[str, np.ndarray], a: dict[str, np.ndarray],
           labels: np.ndarray, geo: list, keep: np.ndarray, tex: np.ndarray) -> np.ndarray:
    """Pass 2: the clean signal. Each kept object emits over its own pixels (normal
    objects: the pixels they won; on-top objects: their whole shape, so light adds where
    they overlap); a defocused object blurs its own light."""
    h, w = labels.shape
    role = pl["role"]
    signal = np.zeros(labels.shape, np.float32)
    for i in range(len(role)):
        if geo[i] is None or not keep[i + 1]:
            continue
        sl, rho = geo[i]
        mask = rho < 1.0 if role[i] == 1 else labels[sl] == i + 1
        if role[i] != 1:
            # an on-top neighbour covers part of us: we still shine underneath it
            mask = mask | ((rho < 1.0) & (labels[sl] > 0) & (role[np.maximum(labels[sl] - 1, 0)] == 1))
        prof = 1.0 - a["dome"][i] * np.minimum(rho, 1.0) ** 2
        em = a["bright"][i] * prof * (1.0 + a["tex_amp"][i] * tex[sl])
        if p.kind == "cells":
            # the nucleus inside a cytoplasm stain: a darker (sometimes brighter) core
            em = em * (1.0 - rng.uniform(-0.2, 0.45) * np.exp(-(rho / 0.45) ** 4))
        em = _nucleoli(rng, em, sl, pl["y"][i], pl["x"][i], pl["r"][i], int(a["n_nucleoli"][i]))
        em = np.where(mask, np.maximum(em, 0.0), 0.0).astype(np.float32)
        defocus = a["defocus"][i]
        if defocus > 0:
            # defocused object: blur its own light over a padded box
            pad = int(np.ceil(3 * defocus))
            ys0, ys1 = max(sl[0].start - pad, 0), min(sl[0].stop + pad, h)
            xs0, xs1 = max(sl[1].start - pad, 0), min(sl[1].stop + pad, w)
            big = np.zeros((ys1 - ys0, xs1 - xs0), np.float32)
            big[sl[0].start - ys0:sl[0].stop - ys0, sl[1].start - xs0:sl[1].stop - xs0] = em
            signal[ys0:ys1, xs0:xs1] += ndi.gaussian_filter(big, defocus, truncate=3.0)
        else:
            signal[sl] += em
    return signal


def _debris(rng: np.random.Generator, p: SyntheticParams, labels: np.ndarray, signal: np.ndarray) -> np.ndarray:
    """Small bright unlabelled spots, only on background well away from objects, added to
    ``signal`` in place; returns their mask."""
    h, w = labels.shape
    n_debris = rng.poisson(p.debris_density * h * w)
    debris = np.zeros(labels.shape, bool)
    if not n_debris:
        return debris
    far = ndi.distance_transform_edt(labels == 0)
    dys = rng.uniform(0, h, n_debris * 3).astype(int)
    dxs = rng.uniform(0, w, n_debris * 3).astype(int)
    sig = rng.uniform(0.6, 2.2, n_debris * 3)
    ok = far[dys, dxs] > 3.0 * sig + 2.0 + p.psf_sigma
    dys, dxs, sig = dys[ok][:n_debris], dxs[ok][:n_debris], sig[ok][:n_debris]
    for yy_, xx_, s_ in zip(dys, dxs, sig):
        rad = int(np.ceil(2.5 * s_))
        y0, y1 = max(yy_ - rad, 0), min(yy_ + rad + 1, h)
        x0, x1 = max(xx_ - rad, 0), min(xx_ + rad + 1, w)
        g = np.exp(-((np.arange(y0, y1)[:, None] - yy_) ** 2 + (np.arange(x0, x1)[None, :] - xx_) ** 2) / (2 * s_ * s_))
        b = p.debris_brightness * np.exp(rng.standard_normal() * 0.5)
        signal[y0:y1, x0:x1] += (b * g).astype(np.float32)
        debris[y0:y1, x0:x1] |= g > 0.1
    return debris & (labels == 0)


def _haze(p: SyntheticParams, signal: np.ndarray) -> np.ndarray:
    """Out-of-focus light around objects, on a coarse grid (a cheap wide blur)."""
    h, w = signal.shape
    f = 4
    small = signal[: h - h % f or h, : w - w % f or w]
    hs, ws = small.shape[0] // f, small.shape[1] // f
    if p.haze <= 0 or hs < 2 or ws < 2:
        return signal
    coarse = small[: hs * f, : ws * f].reshape(hs, f, ws, f).mean((1, 3))
    coarse = ndi.gaussian_filter(coarse, 2.5, mode="reflect")
    haze = ndi.zoom(coarse, (h / hs, w / ws), order=1, grid_mode=True, mode="nearest")[:h, :w]
    return signal + p.haze * haze.astype(np.float32)


def _camera(rng: np.random.Generator, p: SyntheticParams, photons: np.ndarray) -> np.ndarray:
    """Photons -> Poisson -> electrons + read noise -> uint16 counts with offset, clipped."""
    detected = rng.poisson(photons).astype(np.float32)
    full = float(2**p.bit_depth - 1)
    gain = p.dynamic_range * (full - p.offset) / p.photons  # counts per photon
    counts = (detected + rng.standard_normal(photons.shape).astype(np.float32) * np.float32(p.read_noise)) * np.float32(gain)
    return np.clip(np.rint(counts + np.float32(p.offset)), 0, full).astype(np.uint16)


def render(params: SyntheticParams, shape: tuple[int, int], rng: np.random.Generator) -> SyntheticSample:
    """Render one image from a recipe.

    Args:
        params: the recipe.
        shape: ``(height, width)``, each at least 16.
        rng: the random generator that draws everything not fixed by ``params``.

    Returns:
        A ``SyntheticSample`` (image uint16, labels int32, debris mask, clean signal).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or min(shape) < 16:
        raise ValueError(f"shape must be (height, width) with both >= 16, got {shape}")
    p = params
    pl = _place(rng, p, shape)
    n = len(pl["r"])
    a = _appearance(rng, p, pl["role"])
    # two texture grains shared by all objects (cheaper than one field per object)
    tex = 0.7 * _smooth_noise(rng, shape, p.texture_scale) + 0.3 * _smooth_noise(rng, shape, p.texture_scale * 3)
    labels, geo = _geometry(pl, a, shape)
    # drop slivers (objects cut by the border or squeezed out); they are rendered dark
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    keep = areas >= max(6, int(0.15 * np.pi * max(p.radius, 2.5) ** 2 * 0.25))
    keep[0] = False
    signal = _light(rng, p, pl, a, labels, geo, keep, tex)
    # final labels: sequential ids 1..N in placement order
    lut = np.zeros(n + 1, np.int32)
    kept = np.flatnonzero(keep)
    lut[kept] = np.arange(1, len(kept) + 1, dtype=np.int32)
    labels = lut[labels]
    debris = _debris(rng, p, labels, signal)
    signal = _haze(p, signal)
    signal = (signal + p.background) * _illumination(rng, p, shape)
    if p.psf_sigma > 0:
        signal = ndi.gaussian_filter(signal, p.psf_sigma, truncate=3.0)
    photons = np.maximum(signal, 0.0) * np.float32(p.photons)
    return SyntheticSample(image=_camera(rng, p, photons), labels=labels, debris=debris,
                           clean=photons.astype(np.float32), params=p)


def make_sample(
    shape: tuple[int, int] = (256, 256),
    seed: int = 0,
    *,
    kind: str = "nuclei",
    density: float | str | None = None,
    difficulty: str = "normal",
    **overrides: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic fluorescence image and its instance labels.

    The recipe is drawn at random for ``difficulty`` from ``seed`` (see ``random_params``);
    ``density`` and ``overrides`` then fix any of its fields.

    Args:
        shape: ``(height, width)``, each at least 16.
        seed: random seed; the same arguments always give the same arrays.
        kind: ``"nuclei"`` or ``"cells"`` (larger, irregular, dimmer cytoplasm-like objects).
        density: fraction of the area covered by objects (0-0.9), or ``"sparse"``,
            ``"medium"``, ``"crowded"``; None = drawn for ``difficulty``.
        difficulty: ``"easy"``, ``"normal"`` or ``"hard"``.
        **overrides: any ``SyntheticParams`` field, e.g. ``radius=12, photons=50``.

    Returns:
        ``(image, labels)``: ``image`` uint16 raw counts (<= 2**bit_depth - 1, with a
        camera offset), ``labels`` int32 with unique ids 1..N and 0 for background.
    """
    return make_sample_full(shape, seed, kind=kind, density=density, difficulty=difficulty,
                            **overrides)[:2]


def make_sample_full(
    shape: tuple[int, int] = (256, 256),
    seed: int = 0,
    *,
    kind: str = "nuclei",
    density: float | str | None = None,
    difficulty: str = "normal",
    **overrides: Any,
) -> tuple[np.ndarray, np.ndarray, SyntheticSample]:
    """Like ``make_sample`` but also returns the full ``SyntheticSample`` (debris mask,
    clean signal, the recipe used)."""
    rng = np.random.default_rng(seed)
    params = random_params(rng, difficulty, kind)
    if density is not None:
        if isinstance(density, str):
            if density not in DENSITIES:
                raise ValueError(f"density must be a fraction or one of {tuple(DENSITIES)}, got {density!r}")
            density = DENSITIES[density]
        overrides = {"coverage": float(density), **overrides}
    unknown = set(overrides) - {f.name for f in dataclasses.fields(SyntheticParams)}
    if unknown:
        raise ValueError(f"unknown synthetic parameter(s) {sorted(unknown)}; see SyntheticParams")
    if overrides:
        params = dataclasses.replace(params, **overrides)
    sample = render(params, shape, rng)
    return sample.image, sample.labels, sample


def touching_cells(
    shape: tuple[int, ...],
    n: int,
    radius: float,
    seed: int = 0,
    *,
    ids: str = "random",
    size_range: tuple[float, float] = (0.6, 1.2),
) -> np.ndarray:
    """Label image of ``n`` cells, many touching: Voronoi cells of random seeds, each cut
    to a disc (ball, in 3D) of random radius around its seed.

    A cheap stress test for code that must tell touching cells apart (weight maps,
    targets): no intensity image, just labels.

    Args:
        shape: Image shape (2D or 3D).
        n: Number of seeds (cells whose seeds coincide merge, so a few may be missing).
        radius: Typical cell radius in pixels.
        seed: Random seed; the same arguments give the same labels.
        ids: ``"random"`` for non-consecutive ids (a random pick of ``1..10 n``),
            ``"consecutive"`` for ids ``1..n``.
        size_range: Each cell's radius is ``radius`` times a uniform draw from this range.

    Returns:
        int32 labels, 0 = background.
    """
    if ids not in ("random", "consecutive"):
        raise ValueError(f"ids must be 'random' or 'consecutive', got {ids!r}")
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, bool)
    pts = tuple(rng.integers(0, s, n) for s in shape)
    seeds[pts] = True
    d, idx = ndi.distance_transform_edt(~seeds, return_indices=True)
    sid = np.zeros(shape, np.int64)
    sid[pts] = np.arange(1, n + 1)
    vor = sid[tuple(idx)]
    rad = rng.uniform(size_range[0], size_range[1], n + 1) * radius
    lab = np.where(d < rad[vor], vor, 0)
    if ids == "random":
        perm = rng.permutation(10 * n)[: n + 1] + 1
        perm[0] = 0  # background stays 0
        lab = perm[lab]
    return lab.astype(np.int32)
