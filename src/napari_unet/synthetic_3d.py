"""Synthetic confocal stacks of nuclei (Z, Y, X) with 3D instance ground truth.

What a confocal z-stack of nuclei looks like, and what this module draws:

* nuclei as irregular ellipsoids (random axes and orientation, low-frequency surface
  noise), packed so that many touch; where two touch, the voxel goes to the nucleus whose
  surface is nearer, so touching nuclei share a surface without gaps;
* chromatin texture (a grain, smooth to mottled, bright clumps and dark nucleoli), a
  centre-to-edge fall-off and per-nucleus brightness (reusing ``synthetic``'s noise),
  dimmer with depth (attenuation);
* the microscope: a Gaussian PSF elongated along Z (``axial_blur`` times the lateral
  sigma), then sampling every ``anisotropy`` pixels in Z (planes are coarser than pixels,
  typically 2-5x in confocal), a little out-of-focus haze, Poisson shot noise and read
  noise on a 12-bit camera with an offset.

Everything is drawn on an isotropic grid (``Z * anisotropy`` planes) and then sampled, so
the labels are what an expert annotating the stack plane by plane would draw: the
nucleus that occupies each voxel's centre.

Typical use::

    image, labels = make_stack((24, 128, 128), seed=0, anisotropy=3.0)
"""

from __future__ import annotations

import math


import numpy as np
from scipy import ndimage as ndi

from .synthetic import _smooth_noise

__all__ = ["HELD_OUT", "make_stack", "sample_settings"]


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A random 3D rotation matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _place(rng: np.random.Generator, shape: tuple[int, int, int], radius: float, radius_cv: float,
           coverage: float, touching: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Centres and semi-axes of the nuclei (isotropic grid), by rejection sampling."""
    volume = math.prod(shape)
    target = coverage * volume
    centres: list[np.ndarray] = []
    radii: list[float] = []
    out = []
    filled = 0.0
    for _ in range(60 * max(1, int(target / (4 / 3 * math.pi * radius**3)))):
        if filled >= target:
            break
        r = float(np.clip(radius * math.exp(rng.standard_normal() * radius_cv), 0.6 * radius, 1.6 * radius))
        c = rng.uniform(-0.2 * r, np.array(shape) + 0.2 * r)
        if centres and np.any(np.linalg.norm(np.array(centres) - c, axis=1) < touching * (np.array(radii) + r)):
            continue
        # semi-axes: one ellipsoid axis ratio in [0.65, 1] for each of two axes
        axes = r * np.array([1.0, rng.uniform(0.7, 1.0), rng.uniform(0.65, 1.0)])
        axes *= r / np.cbrt(np.prod(axes))  # keep the volume of a ball of radius r
        centres.append(c)
        radii.append(r)
        out.append((c, axes))
        filled += 4 / 3 * math.pi * r**3
    return out


def _nucleoli(rng: np.random.Generator, local: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Where the nucleoli of one nucleus lie (0-1, soft-edged) at ``local`` (nucleus frame)."""
    mask = np.zeros(len(local), np.float32)
    size = 0.25 * float(np.mean(axes))
    for _ in range(int(rng.integers(1, 4))):
        u = rng.standard_normal(3)
        spot = axes * 0.45 * rng.uniform() ** (1 / 3) * u / np.linalg.norm(u)
        d = np.sqrt(((local - spot.astype(np.float32)) ** 2).sum(-1)) / (size * rng.uniform(0.7, 1.3))
        mask = np.maximum(mask, 1 / (1 + np.exp(6 * (d - 1))))
    return mask


def make_stack(
    shape: tuple[int, int, int] = (24, 128, 128),
    seed: int = 0,
    *,
    anisotropy: float = 3.0,
    radius: float = 10.0,
    radius_cv: float = 0.15,
    coverage: float = 0.3,
    touching: float = 0.85,
    irregularity: float = 0.08,
    psf_sigma: float = 1.0,
    axial_blur: float = 3.0,
    attenuation: float = 0.3,
    photons: float = 300.0,
    read_noise: float = 3.0,
    background: float = 0.06,
    uneven: float = 0.0,
    brightness_cv: float = 0.25,
    texture: float = 0.2,
    clumps: float = 0.0,
    grain: float = 1.2,
    nucleoli: float = 0.0,
    return_isotropic: bool = False,
) -> tuple[np.ndarray, ...]:
    """A synthetic confocal stack of nuclei and its 3D instance labels.

    Args:
        shape: ``(Z, Y, X)`` of the stack, in voxels (Z in planes).
        seed: random seed; the same arguments give the same arrays.
        anisotropy: Z step / XY pixel size (1 = isotropic voxels; confocal is usually 2-5).
        radius: typical nucleus radius in XY pixels.
        radius_cv: spread of the radii (log-normal sigma).
        coverage: fraction of the volume covered by nuclei.
        touching: minimum centre distance / (r1 + r2); below 1 nuclei touch.
        irregularity: amplitude of the surface noise (fraction of the radius).
        psf_sigma: lateral PSF sigma in pixels.
        axial_blur: axial PSF sigma / lateral sigma (confocal: about 3).
        attenuation: fraction of the brightness lost from the first to the last plane.
        photons: photons at a typical nucleus' brightness (lower = noisier).
        read_noise: camera read noise (electrons).
        background: background level relative to a typical nucleus (dim stacks: 0.3-0.6,
            nuclei only 2-3x brighter than the space between them).
        uneven: amplitude of a smooth background field across the stack (uneven
            illumination, out-of-focus haze), relative to a typical nucleus.
        brightness_cv: spread of the nuclei's brightness (log-normal sigma).
        texture: amplitude of the fine chromatin grain (a relative standard deviation;
            above about 0.5 a nucleus is mottled, with dark gaps inside).
        clumps: brightness of coarser chromatin clumps (chromocentres, 2-3 px), relative
            to the nucleus (0: none).
        grain: size of the chromatin grain (Gaussian sigma, pixels).
        nucleoli: darkness of the nucleoli, one to three dark round spots a quarter of a
            nucleus across (0: none; 1: black).
        return_isotropic: also return the isotropic labels (``Z * anisotropy`` planes).

    Returns:
        ``(image, labels)``: ``image`` uint16 (12-bit counts with an offset), ``labels``
        int32 with ids ``1..N`` (0 = background); with ``return_isotropic`` a third array.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1 or min(shape[1:]) < 16:
        raise ValueError(f"shape must be (Z, Y, X) with Y and X at least 16, got {shape}")
    if not anisotropy >= 1:
        raise ValueError(f"anisotropy (Z step / pixel size) must be at least 1, got {anisotropy}")
    rng = np.random.default_rng(seed)
    nz = max(1, int(round(shape[0] * anisotropy)))
    iso = (nz, shape[1], shape[2])
    nuclei = _place(rng, iso, radius, radius_cv, coverage, touching)

    # each voxel goes to the nucleus of smallest normalised "radius" rho (< 1 = inside)
    best = np.full(iso, np.inf, np.float32)
    labels = np.zeros(iso, np.int32)
    bright = np.zeros(iso, np.float32)
    surface = _smooth_noise(rng, iso, max(2.0, radius / 2.5))
    grain_field = _smooth_noise(rng, iso, 1.2)
    # streams of their own: the stacks of earlier settings stay the same, voxel for voxel
    coarse = np.maximum(_smooth_noise(np.random.default_rng([seed, 1]), iso, 1.5) - 1.0, 0) if clumps else 0.0
    if grain != 1.2:
        grain_field = _smooth_noise(np.random.default_rng([seed, 3]), iso, grain)
    spots = np.random.default_rng([seed, 2])
    for i, (c, axes) in enumerate(nuclei, start=1):
        rot = _rotation(rng)
        reach = axes.max() * (1 + 3 * irregularity) + 1
        lo = np.maximum(np.floor(c - reach).astype(int), 0)
        hi = np.minimum(np.ceil(c + reach).astype(int) + 1, iso)
        if np.any(hi <= lo):
            continue
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        grid = np.stack(np.meshgrid(*(np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi)), indexing="ij"), -1)
        local = (grid - c.astype(np.float32)) @ rot.astype(np.float32)
        rho = np.sqrt(((local / axes.astype(np.float32)) ** 2).sum(-1)) * (1 + irregularity * surface[box])
        win = (rho < 1) & (rho < best[box])
        best[box][win] = rho[win]
        labels[box][win] = i
        level = math.exp(rng.standard_normal() * brightness_cv)
        chromatin = np.maximum(1 + texture * grain_field[box][win], 0)
        if clumps:
            chromatin = chromatin + clumps * coarse[box][win]
        if nucleoli:
            chromatin = chromatin * (1 - nucleoli * _nucleoli(spots, local[win], axes))
        bright[box][win] = level * (1 - 0.25 * rho[win] ** 2) * chromatin

    z = np.linspace(0, 1, nz, dtype=np.float32)[:, None, None]
    signal = bright * (1 - attenuation * z) + background
    if uneven > 0:
        field = _smooth_noise(rng, iso, max(8.0, min(iso[1:]) / 3))
        signal += uneven * (field - field.min()) / max(float(np.ptp(field)), 1e-6)
    sz = psf_sigma * axial_blur
    signal = ndi.gaussian_filter(signal, (sz, psf_sigma, psf_sigma)) + 0.08 * ndi.gaussian_filter(signal, 4 * sz)
    # optical sections: one every `anisotropy` isotropic planes, at the centre of its slab
    planes = np.minimum(((np.arange(shape[0]) + 0.5) * anisotropy).astype(int), nz - 1)
    photo = rng.poisson(signal[planes] * photons).astype(np.float32)
    counts = photo + rng.standard_normal(photo.shape).astype(np.float32) * read_noise
    gain = 0.3 * (4095 - 100) / photons
    image = np.clip(np.rint(counts * gain + 100), 0, 4095).astype(np.uint16)
    lab = labels[planes]
    # ids 1..N in the sampled stack (a nucleus between two planes can vanish)
    ids = np.unique(lab[lab > 0])
    lut = np.zeros(len(nuclei) + 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1)
    if return_isotropic:
        keep = np.zeros_like(lut)
        keep[ids] = lut[ids]
        return image, lut[lab], keep[labels]
    return image, lut[lab]



#: ranges that :func:`sample_settings` draws from (uniform; ``photons`` log-uniform)
RANGES: dict[str, tuple[float, float]] = {
    "radius": (4.0, 15.0),  # nuclei 8-30 px across
    "anisotropy": (1.0, 4.0),
    "psf_sigma": (0.7, 2.0),
    "axial_blur": (2.0, 4.5),
    "photons": (30.0, 600.0),
    "read_noise": (2.0, 8.0),
    "background": (0.02, 0.6),
    "uneven": (0.0, 0.4),
    "brightness_cv": (0.1, 0.45),
    "coverage": (0.2, 0.45),
    "touching": (0.75, 0.95),
    "attenuation": (0.0, 0.4),
    "irregularity": (0.03, 0.12),
}

#: chromatin ranges that :func:`sample_settings` draws from (uniform), after those of
#: :data:`RANGES` (whose draws stay as they were)
CHROMATIN_RANGES: dict[str, tuple[float, float]] = {"texture": (0.1, 0.6), "clumps": (0.0, 1.0)}

#: grain size and nucleoli ranges that :func:`sample_settings` draws from (uniform), after
#: those of :data:`CHROMATIN_RANGES`
NUCLEOLUS_RANGES: dict[str, tuple[float, float]] = {"grain": (0.8, 2.5), "nucleoli": (0.0, 0.8)}

#: settings outside the ranges below in at least one value (never drawn for training), each
#: ``(name, shape, settings)``: a dim (nuclei 1.4x the background, signal / noise about 3),
#: noisy (read noise 10), blurred, packed stack of nuclei 13 px across at Z step 2; a coarse
#: Z step; large, very blurred nuclei; mottled nuclei with bright chromatin clumps; nuclei
#: with black nucleoli and a coarse grain
HELD_OUT: list[tuple[str, tuple[int, int, int], dict[str, float]]] = [
    ("dim small packed, Z step 2", (28, 64, 64),
     {"anisotropy": 2.0, "radius": 6.5, "psf_sigma": 1.3, "axial_blur": 3.5, "photons": 120.0,
      "read_noise": 10.0, "background": 0.45, "uneven": 0.2, "coverage": 0.35, "touching": 0.8}),
    ("Z step 5", (12, 96, 96),
     {"anisotropy": 5.0, "radius": 9.0, "psf_sigma": 1.2, "axial_blur": 3.0, "photons": 80.0,
      "background": 0.3, "coverage": 0.35, "touching": 0.8}),
    ("large very blurred", (24, 128, 128),
     {"anisotropy": 2.5, "radius": 14.0, "psf_sigma": 2.4, "axial_blur": 4.0, "photons": 60.0,
      "background": 0.4, "uneven": 0.3, "coverage": 0.45}),
    ("mottled nuclei, Z step 3", (20, 96, 96),
     {"anisotropy": 3.0, "radius": 8.0, "texture": 0.8, "clumps": 1.5, "photons": 150.0, "background": 0.2,
      "coverage": 0.4, "touching": 0.8}),
    ("black nucleoli, coarse grain", (24, 96, 96),
     {"anisotropy": 2.5, "radius": 9.0, "texture": 0.5, "grain": 3.0, "nucleoli": 1.0, "photons": 100.0,
      "background": 0.15, "coverage": 0.35, "touching": 0.8}),
]


def sample_settings(rng: np.random.Generator, side: int = 96,
                    depth: float = 64.0) -> tuple[tuple[int, int, int], dict[str, float]]:
    """A stack shape and random :func:`make_stack` settings from :data:`RANGES`: nuclei of
    8-30 px, Z steps 1-4, dim to bright, sharp to blurred, sparse to packed, smooth to
    mottled (:data:`CHROMATIN_RANGES`), fine to coarse grain, with or without dark nucleoli
    (:data:`NUCLEOLUS_RANGES`).

    ``side``: Y and X of the stack; ``depth``: its depth in pixels (planes times the Z step).
    """
    kw = {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in RANGES.items()}
    lo, hi = RANGES["photons"]
    kw["photons"] = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    kw.update({k: float(rng.uniform(lo, hi)) for k, (lo, hi) in CHROMATIN_RANGES.items()})
    kw.update({k: float(rng.uniform(lo, hi)) for k, (lo, hi) in NUCLEOLUS_RANGES.items()})
    shape = (max(4, round(depth / kw["anisotropy"])), side, side)
    return shape, kw
