"""Synthetic stained-tissue images (H&E and other brightfield stains) with nuclei labels.

The stained bundled model (``models/stained.pt``) is pretrained only on images from this
module. The nuclei's geometry and chromatin come from :mod:`napari_unet.synthetic` (its
``render`` places irregular, crowded, touching, dividing and overlapping objects); this
module turns them into light absorbed by stains on a slide:

* **nuclei**: hematoxylin (blue-purple), dark and dense or pale and vesicular (a dark rim
  and coarse chromatin), round at 20x and 40x scales or elongated spindles in stroma;
* **tissue**: eosin (pink) with texture: collagen fibres along a local direction,
  cytoplasm around the nuclei, pale or white holes (fat, vacuoles, lumen, tears), red
  blood cells, a faint hematoxylin tint, unlabelled out-of-focus nuclei;
* **stain**: Beer-Lambert absorption ``I = I0 * exp(-sum(density * stain OD vector))``
  with the Ruifrok-Johnston H&E vectors perturbed per image (stain variation between
  labs and scanners), or another brightfield stain pair (hematoxylin + DAB, or a gray
  brightfield image);
* **optics and file**: blur, uneven illumination, sensor noise, JPEG compression.

``make_tissue_sample`` returns ``(image, labels)``: ``image`` uint8 RGB ``(H, W, 3)``,
``labels`` int32 instance ids ``1..N`` (0 = background). Everything is seeded.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from skimage.segmentation import find_boundaries

from .synthetic import _smooth_noise, random_params, render

__all__ = ["STAINS", "make_tissue_sample"]

#: optical density per unit stain, in R, G, B (Ruifrok & Johnston 2001)
STAINS = {
    "hematoxylin": (0.65, 0.70, 0.29),
    "eosin": (0.07, 0.99, 0.11),
    "dab": (0.27, 0.57, 0.78),
}
#: stain kinds and how often they are drawn
KINDS = (("he", 0.8), ("hdab", 0.1), ("gray", 0.1))
#: nucleus radius (px) ranges at 20x and 40x (median label diameters about 14 and 26 px,
#: like the MICCAI tiles' 10-16 px at 20x and 23-27 px at 40x)
SCALES = {"20x": (4.5, 11.0), "40x": (9.0, 20.0)}


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _stain_vectors(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(nuclear stain, counterstain) OD vectors, perturbed (stain and scanner variation)."""
    h = np.asarray(STAINS["hematoxylin"]) + rng.normal(0, 0.08, 3)
    if kind == "hdab":
        e = np.asarray(STAINS["dab"]) + rng.normal(0, 0.08, 3)
    elif kind == "gray":
        h = np.ones(3) + rng.normal(0, 0.03, 3)
        e = np.ones(3) + rng.normal(0, 0.03, 3)
    else:
        # eosin from pink to purple-red; some labs' hematoxylin is bluer or browner
        e = np.asarray(STAINS["eosin"]) + rng.normal(0, 0.08, 3) + np.array([rng.uniform(0, 0.2), 0, rng.uniform(0.0, 0.35)])
    return _unit(np.clip(h, 0.02, None)), _unit(np.clip(e, 0.02, None))


def _fibres(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Collagen-like streaks: noise smeared along a slowly varying direction, in [0, 1]."""
    h, w = shape
    angle = rng.uniform(0, np.pi)
    # smear along one direction: anisotropic blur of noise on a rotated, padded canvas
    n = int(np.ceil(np.hypot(h, w))) + 8
    base = rng.standard_normal((n, n)).astype(np.float32)
    streak = ndi.gaussian_filter(base, (scale * 0.6, scale * rng.uniform(3, 10)))
    streak = ndi.rotate(streak, np.degrees(angle), reshape=False, order=1, mode="reflect")
    y0, x0 = (n - h) // 2, (n - w) // 2
    f = streak[y0:y0 + h, x0:x0 + w]
    # bend the streaks: warp by a smooth displacement field
    amp = rng.uniform(0, 12)
    if amp > 0.5:
        dy = _smooth_noise(rng, shape, 40) * amp
        dx = _smooth_noise(rng, shape, 40) * amp
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        f = ndi.map_coordinates(f, [yy + dy, xx + dx], order=1, mode="reflect")
    f = (f - f.mean()) / (f.std() + 1e-6)
    # loose stroma: dense bundles with pale gaps between them
    return np.clip(0.5 + rng.uniform(0.3, 0.8) * f, 0, 1).astype(np.float32)


def _discs(rng: np.random.Generator, shape: tuple[int, int], n: int, r_lo: float, r_hi: float) -> np.ndarray:
    """Soft filled discs (0..1) at random places: red blood cells, holes, blobs."""
    out = np.zeros(shape, np.float32)
    h, w = shape
    for _ in range(n):
        r = rng.uniform(r_lo, r_hi)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        q = rng.uniform(0.6, 1.0)
        a = rng.uniform(0, np.pi)
        e = int(np.ceil(r / np.sqrt(q))) + 2
        y0, y1 = max(int(cy) - e, 0), min(int(cy) + e + 1, h)
        x0, x1 = max(int(cx) - e, 0), min(int(cx) + e + 1, w)
        if y1 <= y0 or x1 <= x0:
            continue
        yy = np.arange(y0, y1)[:, None] - cy
        xx = np.arange(x0, x1)[None, :] - cx
        u = (xx * np.cos(a) + yy * np.sin(a)) / (r / np.sqrt(q))
        v = (yy * np.cos(a) - xx * np.sin(a)) / (r * np.sqrt(q))
        d = np.hypot(u, v)
        out[y0:y1, x0:x1] = np.maximum(out[y0:y1, x0:x1], np.clip((1.0 - d) * 4, 0, 1))
    return out


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def _nuclei(rng: np.random.Generator, shape: tuple[int, int], scale: str,
            overrides: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, Any]:
    """Nuclei: geometry and chromatin from the fluorescence generator (without its camera),
    as labels, a hematoxylin density and the geometry's recipe."""
    p = random_params(rng, str(rng.choice(["normal", "hard"], p=[0.6, 0.4])), "nuclei")
    r_lo, r_hi = SCALES[scale]
    spindle = rng.uniform() < 0.25  # stroma: elongated, dark, wavy nuclei
    geo = dict(
        radius=float(np.exp(rng.uniform(np.log(r_lo), np.log(r_hi)))),
        coverage=float(rng.uniform(0.06, 0.4)),
        min_axis_ratio=float(rng.uniform(0.15, 0.4) if spindle else rng.uniform(0.45, 0.85)),
        irregularity=float(rng.uniform(0.04, 0.16)),
        dome=float(rng.uniform(-0.5, 0.3)),  # negative: vesicular nuclei, darker rim
        texture=float(rng.uniform(0.15, 0.6)),
        texture_scale=float(rng.uniform(0.8, 2.0)),
        nucleoli=float(rng.uniform(0, 1.5)),
        psf_sigma=0.0, background=0.0, haze=0.0, illumination=0.0, vignetting=0.0,
        debris_density=0.0, photons=1.0,
    )
    geo.update(overrides)
    p = dataclasses.replace(p, **geo)
    nuc = render(p, shape, rng)
    labels = nuc.labels
    # hematoxylin density of the nuclei: the chromatin signal, scaled per nucleus darkness
    signal = nuc.clean.astype(np.float32)
    inside = labels > 0
    ref = float(np.median(signal[inside])) if inside.any() else 1.0
    darkness = rng.uniform(0.6, 1.6)  # OD of a typical nucleus (x the stain vector)
    h_dens = _vesicular(rng, labels, darkness, darkness * signal / max(ref, 1e-6))
    # the stain thins out over the last pixel or two inside the outline (annotators draw
    # the outline around the whole nucleus, not around its dark core)
    d_in = ndi.distance_transform_edt(~find_boundaries(labels, mode="inner")) * inside
    h_dens = h_dens * (0.4 + 0.6 * np.clip(d_in / rng.uniform(0.8, 2.0), 0, 1))
    return labels, np.clip(h_dens, 0, 3.0), p


def _vesicular(rng: np.random.Generator, labels: np.ndarray, darkness: float, h_dens: np.ndarray) -> np.ndarray:
    """Vesicular nuclei (a share of them, per image): pale, with a dark nuclear membrane,
    coarse chromatin clumps and a nucleolus, instead of a dense dark stain."""
    n_lab = int(labels.max())
    vesicular = np.zeros(n_lab + 1, bool)
    vesicular[1:] = rng.uniform(0, 1, n_lab) < rng.choice([0.0, rng.uniform(0.2, 1.0)], p=[0.4, 0.6])
    ves = vesicular[labels]
    if not ves.any():
        return h_dens
    edges = find_boundaries(labels, mode="inner")
    rim = np.exp(-ndi.distance_transform_edt(~edges) / rng.uniform(0.8, 1.8))
    clumps = np.clip(_smooth_noise(rng, labels.shape, rng.uniform(0.6, 1.4)) - rng.uniform(0.3, 1.2), 0, None)
    pale_level = rng.uniform(0.15, 0.45)
    v_dens = darkness * (pale_level + rng.uniform(0.4, 1.0) * rim + rng.uniform(0.4, 1.2) * clumps)
    return np.where(ves, v_dens, h_dens)


def _tissue(rng: np.random.Generator, shape: tuple[int, int], inside: np.ndarray, p: Any,
            radii: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Tissue around the nuclei: eosin density with texture (fibres, cytoplasm, holes, red
    blood cells) and the faint hematoxylin of the background (tint, granules, ghosts)."""
    h, w = shape
    r_lo, r_hi = radii
    fib = _fibres(rng, shape, rng.uniform(1.0, 4.0))
    blob = 0.5 + 0.25 * _smooth_noise(rng, shape, rng.uniform(3, 12))
    mix = rng.uniform(0, 1)  # fibrous stroma vs cellular / textured parenchyma
    e_dens = mix * fib + (1 - mix) * blob
    # cytoplasm: a pinker halo around nuclei
    dist = ndi.distance_transform_edt(~inside)
    e_dens = e_dens + rng.uniform(0, 0.5) * np.exp(-dist / max(p.radius, 2.0))
    # fine grain (neuropil / cytoplasm granularity)
    e_dens = e_dens * (1 + rng.uniform(0.1, 0.5) * _smooth_noise(rng, shape, rng.uniform(0.7, 1.5)))
    # pale and white holes: fat, vacuoles, lumen, tears
    holes = np.clip((_smooth_noise(rng, shape, rng.uniform(4, 20)) - rng.uniform(0.8, 3.0)) * 3, 0, 1)
    holes = np.maximum(holes, _discs(rng, shape, int(rng.poisson(h * w / 4000 * rng.uniform(0, 1))), 2, 3 * p.radius))
    if rng.uniform() < 0.3:  # vacuolated (bubbly) tissue: many small pale holes
        n_bub = int(h * w / (np.pi * (0.8 * p.radius) ** 2) * rng.uniform(0.1, 0.5))
        holes = np.maximum(holes, _discs(rng, shape, n_bub, 0.3 * p.radius, 1.2 * p.radius) * rng.uniform(0.6, 1.0))
    holes[inside] = 0
    hole_rims = np.abs(ndi.gaussian_filter(holes, 1.2) - holes) * rng.uniform(0, 3)  # membranes between vacuoles
    e_dens = (np.clip(e_dens, 0, None) * (1 - holes) + hole_rims) * rng.uniform(0.3, 1.4)
    # red blood cells: small bright-red discs, off the nuclei
    rbc = _discs(rng, shape, int(rng.poisson(h * w / 8000 * rng.uniform(0, 1))), 2.5, 0.6 * r_hi)
    rbc[inside] = 0
    e_dens = e_dens + rbc * rng.uniform(0.8, 2.0)
    # faint hematoxylin in the tissue (mucin, purple tint), unlabelled out-of-focus nuclei
    h_bg = rng.uniform(0.0, 0.1) * (1 - holes) * (0.6 + 0.4 * blob) + hole_rims * rng.uniform(0, 0.3)
    # purple granules (neuropil, cell debris, fibre crossings): fine, unlabelled
    granules = np.clip(_smooth_noise(rng, shape, rng.uniform(0.5, 1.2)) - rng.uniform(1.0, 2.5), 0, None)
    h_bg = h_bg + granules * rng.uniform(0, 0.8) * (1 - holes)
    ghosts = ndi.gaussian_filter(
        _discs(rng, shape, int(rng.poisson(h * w * p.coverage / (np.pi * p.radius**2) * 0.15)), r_lo, r_hi),
        rng.uniform(1.5, 4),
    )
    ghosts[inside] = 0
    h_bg = h_bg + ghosts * rng.uniform(0.1, 0.4)
    e_in_nuc = rng.uniform(0.1, 0.5)  # cytoplasm under / around the nucleus
    e_dens = np.where(inside, e_dens * (1 - e_in_nuc) + e_in_nuc * 0.5, e_dens)
    return e_dens, h_bg


def _slide(rng: np.random.Generator, kind: str, h_dens: np.ndarray, e_dens: np.ndarray) -> np.ndarray:
    """Beer-Lambert absorption with this slide's stains, then optics and the file: blur,
    uneven illumination, white balance, sensor noise, JPEG (uint8 RGB)."""
    h, w = h_dens.shape
    hv, ev = _stain_vectors(rng, kind)
    od = h_dens[..., None] * hv + e_dens[..., None] * ev
    if kind == "gray":
        od = od * rng.uniform(0.4, 0.8)
    blur = rng.uniform(0.4, 1.5)
    od = ndi.gaussian_filter(od, (blur, blur, 0))
    illum = 1.0 + rng.uniform(0, 0.08) * _smooth_noise(rng, (h, w), max(h, w) / 4)
    white = rng.uniform(215, 255) * np.clip(1 + rng.normal(0, 0.04, 3), 0.85, 1.0)  # white balance
    rgb = white * illum[..., None] * np.exp(-od)
    rgb = rgb + rng.normal(0, rng.uniform(0.5, 4.0), rgb.shape)
    rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    if rng.uniform() < 0.8:
        rgb = _jpeg(rgb, int(rng.uniform(40, 95)))
    return rgb


def make_tissue_sample(
    shape: tuple[int, int] = (256, 256),
    seed: int = 0,
    *,
    stain: str | None = None,
    scale: str | None = None,
    **overrides: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic stained-tissue RGB image and its nuclei instance labels.

    Args:
        shape: ``(height, width)``, each at least 32.
        seed: random seed; the same arguments always give the same arrays.
        stain: ``"he"`` (hematoxylin and eosin), ``"hdab"`` (hematoxylin and DAB brown),
            ``"gray"`` (gray brightfield); None = drawn (80% H&E).
        scale: ``"20x"`` or ``"40x"`` (nucleus size); None = drawn.
        **overrides: fields of :class:`napari_unet.synthetic.SyntheticParams` for the
            nuclei's geometry (e.g. ``coverage=0.4``, ``radius=6``).

    Returns:
        ``(image, labels)``: uint8 ``(H, W, 3)`` RGB and int32 labels (0 = background).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or min(shape) < 32:
        raise ValueError(f"shape must be (height, width) with both >= 32, got {shape}")
    rng = np.random.default_rng(seed)
    kinds, probs = zip(*KINDS)
    stain = stain or str(rng.choice(kinds, p=probs))
    if stain not in kinds:
        raise ValueError(f"stain must be one of {kinds}, got {stain!r}")
    scale = scale or str(rng.choice(list(SCALES)))
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {tuple(SCALES)}, got {scale!r}")
    labels, h_dens, p = _nuclei(rng, shape, scale, overrides)
    e_dens, h_bg = _tissue(rng, shape, labels > 0, p, SCALES[scale])
    rgb = _slide(rng, stain, h_dens + h_bg, e_dens)
    return np.ascontiguousarray(rgb), labels.astype(np.int32)
