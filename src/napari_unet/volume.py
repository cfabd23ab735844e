"""3D instances of Z stacks: one id per cell across the planes of a stack.

``segment(stack, axes="ZYX")`` comes here (``segmentation.segment_iter`` dispatches stacks whose
axes name a ``Z``; ``plane_by_plane=True`` keeps the per-plane labels of before).

How a ZYX volume is segmented:

1. The classes (background / interior / boundary) of every voxel are predicted
   (``views``):

   * by the 2D network in every XY plane and, where the sampling allows (anisotropy ``a``
     = Z step / pixel size at most :data:`MAX_MULTIVIEW_ANISOTROPY`), in the XZ and YZ
     planes of the stack resampled along Z to isotropic voxels; the three probability
     volumes are averaged on the stack's own grid, the XY view weighing
     :data:`XY_VIEW_WEIGHT` of a side view (an XY plane cannot tell a nucleus from the
     blur of one above or below it);
   * by the 3D U-Net (``tiling_3d``) on the stack resampled along Z to cubic voxels (and
     shrunk when its cells are wider than :data:`NET3D_DIAMETER`): the default for a
     stack left to the bundled models (:data:`DEFAULT_3D`);
   * by both, averaged (:data:`NET3D_WEIGHT`).
2. One seeded 3D watershed: seeds are the h-maxima of the anisotropic distance transform
   of the interior (voxels ``a`` times longer in Z) plus the interior-minus-boundary
   probability, flooding the foreground; each cell is then cut along Z where the image
   falls under half its height (:func:`trim_to_half_maximum`: the microscope's axial
   blur stretches the cells along Z in the networks' eyes).
3. Strongly anisotropic stacks (``a`` above :data:`MAX_WATERSHED_ANISOTROPY`, where a
   cell spans only a couple of planes and distances along Z mean little) fall back to
   2D labels per plane linked to the next plane's by overlap.

The anisotropy comes from ``voxel_size`` (Z, Y, X in any unit, e.g. a napari layer's
``scale``); without it, it is estimated from the cells themselves
(:func:`estimate_anisotropy`: nuclei are about as deep as they are wide, so the ratio of
their lateral to axial spread, in pixels and planes, allowing for the microscope's axial
blur, is the Z step in pixels; the result's info says when that estimate is uncertain).

Large stacks are cut into blocks of the full depth with a halo in Y and X (bounded
memory; lazy zarr/dask stacks are read block by block); a cell cut by a block edge is
joined by its overlap in the halo. ``stack_planes`` turns a labelled stack into 2D
training planes of all three orientations.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Generator, Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ._progress import Progress, with_info
from .diameter import diameter_to_use, model_diameter, zoom_for
from .image_checks import NOTHING_HERE_WARNING, drop_faint_objects
from .resize import nearest_axis, resize_axis, resize_image, resize_nearest, zoomed_shape
from .inputs import (
    ImageInput,
    Layout,
    SegmentOptions,
    choose_channel_map,
    image_normalization,
    out_index,
    parse_axes,
)
from .tiling import Predictor

#: multi-view prediction (XY + XZ + YZ) up to this anisotropy; beyond, XY only. Measured
#: on synthetic stacks (radius 10 px), 3D AP@0.5 with the Z step given, XY only -> three
#: views: 1.0 -> 0.98 (a = 1), 0.97 -> 0.98 (2), 0.92 -> 0.99 (3), 0.67 -> 0.98 (4),
#: 0.81 -> 0.92 (5); radius 7 px, a = 2: 0.61 -> 0.83
MAX_MULTIVIEW_ANISOTROPY = 6.0
#: weight of the XY view against each of the XZ and YZ views in the averaged probabilities.
#: Every view stretches the cells along Z (axial blur), the XY view most: its cells reached
#: 1.2-1.8x their true depth where the side views' reached 1.0-1.6x. With the bundled model,
#: the cells trimmed (:data:`HALF_MAXIMUM`) and ``H_3D`` 0.35, Z step estimated: mean 3D
#: AP@0.5 / AP@0.7 and counts within 10% over the 11 stacks of ``bench_3d.py --part ap``
#: and over 22 other ``synthetic_3d`` stacks (other seeds of the held-out settings, dim
#: packed nuclei of radius 5-10 and Z step 1.5-3, random settings 9004-9013): weight 1
#: (a plain mean) 0.906 / 0.653, 9 of 11 and 0.833 / 0.516, 19 of 22; 0.75: 0.906 / 0.651,
#: 10 and 0.837 / 0.522, 17; 0.5: 0.903 / 0.669, 9 and 0.844 / 0.529, 18; 0.25: 0.911 /
#: 0.656, 8 and 0.842 / 0.533, 19; side views only: 0.894 / 0.636, 9 and 0.835 / 0.533, 19
#: (large nuclei over-split: 12 for 11)
XY_VIEW_WEIGHT = 0.5
#: the 3D network sees cells at most this wide (pixels): a stack of larger ones is shrunk
#: first (its receptive field is 40 voxels; large nuclei were split)
NET3D_DIAMETER = 16.0
#: and at least this wide: a stack of smaller ones is enlarged first (the 2D network's
#: measure of small blurred nuclei runs 1.2-1.4x their true width). Bundled 3D U-Net, 3D
#: AP@0.5 at 0 / 12 / 14 / 16: dim packed nuclei 10 px across (``synthetic_3d``) 0.75 /
#: 0.76 / 0.82 / 0.84, 13 px 0.86 / 0.86 / 0.94 / 0.94; a simulator written apart from
#: ``synthetic_3d`` (not in the repository), nuclei 8-11 px 0.76 / 0.79 / 0.79 / 0.81,
#: 6-9 px 0.25 / 0.29 / 0.38 / 0.44; nuclei 12 px at Z step 3 0.64 / 0.67 / 0.62 / 0.40
#: (its shapes lost at 16)
NET3D_MIN_DIAMETER = 14.0
#: what ``views="auto"`` uses for a stack left to the bundled models (no model given):
#: ``"3d"`` (the bundled 3D U-Net), ``"3d+xyz"`` (it and the bundled 2D network in three
#: views, averaged) or ``"auto"`` (the 2D network in three views). Z step estimated, on the
#: 11 + 22 stacks of :data:`XY_VIEW_WEIGHT` (mean 3D AP@0.5 / AP@0.7, object count within
#: 10% of the truth): ``"3d"`` 0.979 / 0.872, 11 of 11 and 0.940 / 0.794, 20 of 22;
#: ``"3d+xyz"`` 0.974 / 0.842, 11 and 0.932 / 0.778, 20; ``"auto"`` 0.909 / 0.674, 9 and
#: 0.846 / 0.531, 18. The stardist stack: 53 objects for 51 either way, AP@0.7 0.651
#: against 0.600 (the 3D U-Net's shapes are closer)
DEFAULT_3D = "3d"
#: the ``views`` of :func:`segment_volume_iter`
VIEWS = ("auto", "xy", "xyz", "3d", "3d+xyz")
#: ``views="3d+xyz"``: the weight of the 3D network's probabilities against the 2D
#: network's three views
NET3D_WEIGHT = 0.5
#: 3D watershed up to this anisotropy; beyond, per-plane labels linked by overlap
MAX_WATERSHED_ANISOTROPY = 6.0
#: estimated anisotropies are clipped to this range
ANISOTROPY_RANGE = (1.0, 10.0)
#: seeds: h-maxima height of the seed map (:func:`watershed_3d`, pixels of distance).
#: Small, blurred, touching nuclei need a low one and the probabilities in the map: with the
#: Z step given, the bundled model, 3D AP@0.5 of the distance alone at h = 1 -> the map at
#: h = 0.5: the stardist wheel's synthetic stack 0.52 -> 0.68, dim packed 13 px nuclei
#: (``synthetic_3d.HELD_OUT``, two seeds) 0.30 -> 0.73 and 0.47 -> 0.67, Z step 5 0.70 ->
#: 0.97 and 0.91 -> 0.96, large very blurred nuclei 0.56 -> 0.71 and 0.71 -> 0.64, packed
#: 7 px nuclei 0.32 -> 0.66; bright separated nuclei 1.0 either way. With the views
#: weighted (:data:`XY_VIEW_WEIGHT`) and the cells trimmed, Z step estimated, on the 11 +
#: 22 stacks there: h = 0.5 / 0.4 / 0.35 / 0.3 / 0.25: mean AP@0.5 0.893 / 0.896 / 0.903 /
#: 0.897 / 0.901 and 0.837 / 0.843 / 0.844 / 0.848 / 0.853, object count within 10% of the
#: truth on 8 / 9 / 9 / 9 / 8 of 11 and 14 / 17 / 18 / 18 / 19 of 22 (fewer merged dim
#: packed nuclei); the stardist stack 55 / 56 / 56 / 56 / 57 objects for 51
H_3D = 0.35
#: ... and, on the 3D U-Net's probabilities, at least this fraction of the typical nucleus'
#: inner radius (the median of the interior's pieces' deepest points, pixels): a mottled
#: nucleus' seed map has bumps that grow with it. Mean 3D AP@0.5 at 0 / 0.2 / 0.3 / 0.4 /
#: 0.5, Z step estimated: 12 stacks (the stardist stack, a real confocal stack, 8 of a
#: simulator written apart from ``synthetic_3d``, two of its held-out mottled setting)
#: 0.735 / 0.781 / 0.798 / 0.808 / 0.816; the 11 + 22 stacks of :data:`XY_VIEW_WEIGHT`
#: 0.976 / 0.980 / 0.977 / 0.973 / 0.970 and 0.939 / 0.940 / 0.934 / 0.933 / 0.930 (dim
#: packed nuclei 10 px across merge). On the 2D network's three views it merges touching
#: nuclei (0.909 -> 0.866 and 0.846 -> 0.785 at 0.3), so it is not used there.
H_3D_RELATIVE = 0.3
#: weight of ``p(interior) - p(boundary)`` in the seed map (pixels of distance): 2 / 4 / 8
#: gave mean AP@0.5 0.80 / 0.81 / 0.81 on those stacks and four of random settings, 8
#: over-splitting (64 objects for 51 on the stardist stack, 58 at 4)
SEED_WEIGHT = 4.0
#: objects whose mean foreground probability is under this are dropped (faint blobs of an
#: uneven background the network is unsure of): on the stacks above, 3D AP@0.5 unchanged
#: or better with 0.7 (large very blurred nuclei 0.64 -> 0.69, 13 px nuclei at Z step 1.7
#: 0.84 -> 1.0, the stardist stack 0.68 -> 0.73); 0.75 cost the dim packed stacks 0.01-0.03
MIN_MEAN_FOREGROUND = 0.7
#: objects whose doubt (1 - mean foreground probability) is over this many times that of
#: the stack's typical object (the median) are dropped too: blurred glow between nuclei,
#: fragments and dim objects the network sees as unlike the others of the stack. A
#: multiple, not a level: small nuclei carry more edge and are all less sure. Bundled 3D
#: U-Net, Z step estimated, on the 11 + 22 stacks of :data:`XY_VIEW_WEIGHT`: off / 3 /
#: 2.5 / 2.2 / 2.0 / 1.8: mean 3D AP@0.5 0.943 / 0.946 / 0.953 / 0.957 / 0.956 / 0.961
#: and 0.937 / 0.937 / 0.934 / 0.934 / 0.932 / 0.928, object count within 10% of the truth
#: on 10 / 10 / 10 / 11 / 11 / 10 of 11 and 21 / 21 / 21 / 21 / 21 / 20 of 22; the
#: stardist stack 65 -> 54 objects for 51 at 2.2 (AP@0.5 0.785 -> 0.944)
RELATIVE_DOUBT = 2.2
#: :func:`trim_to_half_maximum`: a blurred edge lies where the image has fallen half way
#: from its peak to the background. On the 11 + 22 stacks of :data:`XY_VIEW_WEIGHT` (Z step
#: estimated), mean 3D AP@0.7 untrimmed 0.578 and 0.441 -> trimmed at 0.3 / 0.5 / 0.6 / 0.7
#: of the height: 0.598 / 0.669 / 0.649 / 0.313 and 0.465 / 0.529 / 0.492 / 0.267 (AP@0.5
#: 0.896 -> 0.903 and 0.819 -> 0.844 at 0.5; the stardist stack 0.81 / 0.32 -> 0.81 /
#: 0.43). Each cell cut at half its height as a whole, not column by column along Z (one
#: background level per block): AP@0.7 0.350 and 0.286, the cells' lateral edges lost
HALF_MAXIMUM = 0.5
#: smoothing of the image before trimming (Gaussian sigma, pixels; in Z divided by the Z
#: step): 0.5 / 1 / 1.5 px gave mean AP@0.7 0.552 / 0.675 / 0.669 and 0.370 / 0.522 / 0.529
TRIM_SMOOTH = 1.5
#: reach of the local background of :func:`trim_to_half_maximum` (Gaussian sigma, pixels;
#: in Z divided by the Z step): the background varies across a stack, and a level taken
#: near each cell does not depend on the block it is segmented in. One level for the whole
#: block / 5 / 10 / 20 px: mean AP@0.7 0.635 / 0.679 / 0.669 / 0.664 and 0.521 / 0.531 /
#: 0.529 / 0.529 (5 px within 0.01 of 10 px; 10 px reaches past the nearest nuclei)
TRIM_BACKGROUND = 10.0
#: the axial blur of a microscope stretches every cell along Z in the image, and in the
#: network's labels: the ratio of spreads underestimates the Z step, the more so the
#: smaller the cells. :func:`estimate_anisotropy` allows for a Gaussian blur of this sigma
#: (pixels) along Z: measured with the bundled model on ``synthetic_3d`` stacks (nuclei
#: 12-28 px, Z steps 1.2-5, axial blur 2-4.5x), 8 of 9 estimates within 25% of the truth
#: (3.0 / 4.5 px: 6 / 9 of 9, but 4.5 px overestimates 1.3x on sharper stacks of axial
#: blur 3 px; the constant factor 1.3 used before: 7 of 9, 0.6x the truth for the two of
#: nuclei 12-14 px across)
AXIAL_BLUR = 3.7
#: Z step used when the cells give none that makes sense (they look taller than wide even
#: allowing for :data:`AXIAL_BLUR`: a stronger blur than that, whose Z step cannot be told
#: from the cells): a common confocal sampling, said in the result's info
FALLBACK_ANISOTROPY = 2.0
#: linking: a 2D object joins the object of the previous plane it overlaps most when the
#: overlap covers at least this fraction of the smaller of the two
LINK_OVERLAP = 0.5

_SIX = ndi.generate_binary_structure(3, 1)


def check_voxel_size(voxel_size: Any) -> float | None:
    """Anisotropy (Z step / pixel size) from ``voxel_size`` ``(z, y, x)`` or a number; None stays None."""
    if voxel_size is None:
        return None
    try:
        v = np.atleast_1d(np.asarray(voxel_size, dtype=float)).ravel()
    except (TypeError, ValueError):
        raise ValueError(f"voxel_size must be (z, y, x) numbers or one number, got {voxel_size!r}") from None
    if v.size == 1:
        a = float(v[0])
    elif v.size >= 3:
        z, y, x = v[-3:]
        if min(y, x) <= 0:
            raise ValueError(f"voxel_size must be positive, got {tuple(v)}")
        a = float(z) / math.sqrt(y * x)
    else:
        raise ValueError(f"voxel_size must be (z, y, x) or one number (Z step / pixel size), got {tuple(v)}")
    if not (math.isfinite(a) and a > 0):
        raise ValueError(f"voxel_size must give a positive Z step, got {tuple(v)}")
    return a


# -- per-plane labels linked by overlap ----------------------------------------------------


def link_planes(labels: np.ndarray, min_overlap: float = LINK_OVERLAP) -> np.ndarray:
    """Join per-plane 2D labels (Z, Y, X) into 3D objects by overlap with the previous plane.

    Each 2D object takes the id of the object of the previous plane it overlaps most, when
    that overlap covers at least ``min_overlap`` of the smaller of the two and no larger
    object of its plane claimed that id first; otherwise it starts a new object.

    Returns:
        int32 labels with ids 1..N.
    """
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, np.int64)
    next_id = 0
    prev = None
    for z in range(labels.shape[0]):
        cur = labels[z]
        ids, inv = np.unique(cur, return_inverse=True)
        inv = inv.reshape(cur.shape)
        new = np.zeros(len(ids), np.int64)
        fg = ids != 0
        if prev is not None and fg.any():
            pids, pinv = np.unique(prev, return_inverse=True)
            table = np.bincount(inv.ravel() * len(pids) + pinv.ravel(), minlength=len(ids) * len(pids))
            table = table.reshape(len(ids), len(pids))
            table[:, pids == 0] = 0
            area = np.bincount(inv.ravel(), minlength=len(ids))
            parea = np.bincount(pinv.ravel(), minlength=len(pids))
            taken: set[int] = set()
            for i in np.argsort(-area):
                if ids[i] == 0:
                    continue
                j = int(np.argmax(table[i]))
                if table[i, j] == 0 or pids[j] in taken:
                    continue
                if table[i, j] >= min_overlap * min(area[i], parea[j]):
                    new[i] = pids[j]
                    taken.add(int(pids[j]))
        for i in np.flatnonzero(fg & (new == 0)):
            next_id += 1
            new[i] = next_id
        out[z] = new[inv]
        prev = out[z]
    return _relabel(out)


def _relabel(labels: np.ndarray) -> np.ndarray:
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(labels)[0].astype(np.int32, copy=False)


# -- anisotropy from the cells ---------------------------------------------------------------


def estimate_anisotropy(labels: np.ndarray, blur_correction: float | None = None) -> float | None:
    """The Z step in pixels, from 3D objects (Z, Y, X) assumed about as deep as wide.

    For each object spanning at least 3 planes: its lateral spread (the mean variance of
    its voxels' Y and X, in pixels squared) against its axial one (in planes squared). With
    ``blur_correction`` None (labels of a blurred image), the axial spread is taken as the
    object's own plus a blur of :data:`AXIAL_BLUR` pixels, so the Z step is
    ``sqrt((lateral + AXIAL_BLUR**2) / axial)``; with a number (1 for unblurred labels,
    e.g. ground truth), ``sqrt(lateral / axial)`` times that number. The median over
    objects, clipped to :data:`ANISOTROPY_RANGE`; None when fewer than 3 objects qualify.
    """
    ratios = _ratios(labels, blur_correction)
    if ratios is None:
        return None
    return float(np.clip(np.median(ratios), *ANISOTROPY_RANGE))


def _spreads(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Axial variance (planes squared) and lateral variance (the mean of Y's and X's, pixels
    squared) of each object spanning at least 3 planes; None when fewer than 3 do."""
    labels = np.asarray(labels)
    n = int(labels.max(initial=0))
    if n == 0:
        return None
    idx = np.nonzero(labels)
    lab = labels[idx]
    count = np.bincount(lab, minlength=n + 1).astype(float)
    var = []
    for coord in idx:
        c = coord.astype(float)
        m1 = np.bincount(lab, c, minlength=n + 1)
        m2 = np.bincount(lab, c * c, minlength=n + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            var.append(m2 / count - (m1 / count) ** 2)
    zmin = np.full(n + 1, np.iinfo(np.int64).max)
    zmax = np.full(n + 1, -1)
    np.minimum.at(zmin, lab, idx[0])
    np.maximum.at(zmax, lab, idx[0])
    deep = (zmax - zmin + 1) >= 3
    deep[0] = False
    vz, vy, vx = var
    ok = deep & (vz > 0)
    if ok.sum() < 3:
        return None
    return vz[ok], (vy[ok] + vx[ok]) / 2


def _ratios(labels: np.ndarray, blur_correction: float | None) -> np.ndarray | None:
    """Per-object Z step estimates of :func:`estimate_anisotropy` (None: fewer than 3)."""
    spreads = _spreads(labels)
    if spreads is None:
        return None
    vz, lateral = spreads
    if blur_correction is None:
        return np.sqrt((lateral + AXIAL_BLUR**2) / vz)
    return np.sqrt(lateral / vz) * blur_correction


def cell_diameter_xy(labels: np.ndarray) -> float | None:
    """Median diameter in Y and X (pixels) of 3D objects (Z, Y, X) spanning at least 3
    planes, from their lateral spread (a ball of radius r spreads r**2 / 5 along each
    axis); None when fewer than 3 objects qualify."""
    spreads = _spreads(labels)
    return None if spreads is None else float(np.median(2 * np.sqrt(5 * spreads[1])))


#: fewer cells spanning 3 planes than this make the Z step uncertain
MIN_CELLS_Z = 8


def anisotropy_from_cells(labels: np.ndarray) -> tuple[float | None, str | None]:
    """The Z step from linked per-plane labels of the network, and why it is uncertain.

    Returns:
        ``(anisotropy, doubt)``: ``doubt`` None when the estimate can be trusted, else a
        few words saying why not. When the cells look taller than wide even allowing for
        the axial blur, the estimate is :data:`FALLBACK_ANISOTROPY`.
    """
    ratios = _ratios(labels, None)
    if ratios is None:
        return None, None
    a = float(np.median(ratios))
    if a < ANISOTROPY_RANGE[0]:
        return FALLBACK_ANISOTROPY, ("the cells look taller than wide even allowing for blur, so a usual "
                                     "confocal Z step is assumed; give the voxel size")
    a = float(np.clip(a, *ANISOTROPY_RANGE))
    if len(ratios) < MIN_CELLS_Z:
        return a, f"only {len(ratios)} cells span 3 planes; give the voxel size"
    return a, None


# -- 3D watershed ----------------------------------------------------------------------------


def watershed_3d(probs: np.ndarray, anisotropy: float, *, min_size: int, foreground_threshold: float = 0.5,
                 seed_threshold: float = 0.5, h: float = H_3D, relative_h: float = 0.0,
                 image: np.ndarray | None = None) -> np.ndarray:
    """3D instances from background / interior / boundary probabilities ``(3, Z, Y, X)``.

    The seed map is the distance transform of the interior (voxels ``anisotropy`` pixels
    deep) plus :data:`SEED_WEIGHT` times ``p(interior) - p(boundary)``, smoothed over about
    a pixel; its h-maxima (height ``h``, or ``relative_h`` times the typical nucleus'
    inner radius when that is more) seed a watershed of the negated map that floods
    the foreground; foreground no seed reaches becomes objects of its own; objects whose
    mean foreground probability is under :data:`MIN_MEAN_FOREGROUND`, or whose doubt (one
    minus that mean) is over :data:`RELATIVE_DOUBT` times the typical object's, are
    dropped; with ``image`` (the stack, ``(Z, Y, X)``), the cells are trimmed along Z
    (:func:`trim_to_half_maximum`); then objects under ``min_size`` voxels are dropped.
    """
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    foreground = (1.0 - probs[0]) > foreground_threshold
    interior = (probs[1] > seed_threshold) & foreground
    if not interior.any():
        return np.zeros(probs.shape[1:], np.int32)
    dist = ndi.distance_transform_edt(interior, sampling=(anisotropy, 1.0, 1.0)).astype(np.float32)
    score = ndi.gaussian_filter(dist + SEED_WEIGHT * (probs[1] - probs[2]), (1.0 / anisotropy, 1.0, 1.0))
    if relative_h:  # the typical nucleus' depth: the median over the interior's pieces of their deepest point
        pieces, n = ndi.label(interior, structure=_SIX)
        h = max(h, relative_h * float(np.median(ndi.maximum(dist, pieces, np.arange(1, n + 1)))))
    seeds, _ = ndi.label((h_maxima(score, h) > 0) & foreground, structure=_SIX)
    labels = watershed(-score, markers=seeds, mask=foreground, connectivity=1)
    orphans, m = ndi.label(foreground & (labels == 0), structure=_SIX)
    if m:
        labels = np.where(orphans > 0, orphans + int(labels.max(initial=0)), labels)
    ids = np.arange(1, int(labels.max(initial=0)) + 1)
    if len(ids):
        mean = ndi.mean(1.0 - probs[0], labels, ids)
        sure = mean >= MIN_MEAN_FOREGROUND
        if sure.any():
            # a cell's edge voxels alone make a typical doubt of 0.05 or more: not below 0.04
            typical = max(1.0 - float(np.median(mean[sure])), 0.04)
            sure &= 1.0 - mean <= RELATIVE_DOUBT * typical
        labels = np.concatenate([[0], np.where(sure, ids, 0)])[labels]
    if image is not None:
        labels = trim_to_half_maximum(labels, image, ~foreground, anisotropy)
    from .postprocess import remove_small_and_relabel

    return remove_small_and_relabel(labels, min_size)


def trim_to_half_maximum(labels: np.ndarray, image: np.ndarray, background: np.ndarray, anisotropy: float,
                         fraction: float = HALF_MAXIMUM) -> np.ndarray:
    """``labels`` (Z, Y, X) with each cell cut along Z where the image falls under half its height.

    The axial blur spreads a nucleus over the planes above and below it, where the network
    still sees it. The image is smoothed (:data:`TRIM_SMOOTH`) and its local background
    taken (the mean of the image over ``background``, weighted by a Gaussian of
    :data:`TRIM_BACKGROUND`). In each (y, x) column of a cell, the column keeps the planes
    from the first to the last where the image stands above the background by at least
    ``fraction`` of what the column's brightest voxel in the cell does. A column keeps that
    voxel, so a cell keeps its outline in Y and X, unless it is darker than the background
    (the column goes); darker spots inside a column stay. Cells darker than the background
    (stained tissue) are trimmed the same way, the image negated.
    """
    inside = labels > 0
    if not inside.any() or not background.any():
        return labels
    x = ndi.gaussian_filter(np.asarray(image, np.float32), (TRIM_SMOOTH / anisotropy, TRIM_SMOOTH, TRIM_SMOOTH))
    wide = (TRIM_BACKGROUND / anisotropy, TRIM_BACKGROUND, TRIM_BACKGROUND)
    weight = ndi.gaussian_filter(background.astype(np.float32), wide)
    local = ndi.gaussian_filter(np.where(background, x, 0), wide)
    zz, yy, xx = np.nonzero(inside)
    w = weight[zz, yy, xx]
    level = np.where(w > 1e-3, local[zz, yy, xx] / np.maximum(w, 1e-3), np.median(x[background]))
    value = x[zz, yy, xx] - level
    if np.median(value) < 0:
        value = -value
    ids = labels[zz, yy, xx].astype(np.int64)
    _, column = np.unique((ids * labels.shape[1] + yy) * labels.shape[2] + xx, return_inverse=True)
    n = int(column.max()) + 1
    peak = np.full(n, -np.inf, np.float32)
    np.maximum.at(peak, column, value)
    high = value >= fraction * peak[column]
    first = np.full(n, labels.shape[0])
    last = np.full(n, -1)
    np.minimum.at(first, column[high], zz[high])
    np.maximum.at(last, column[high], zz[high])
    cut = (zz < first[column]) | (zz > last[column])
    out = labels.copy()
    out[zz[cut], yy[cut], xx[cut]] = 0
    return out


# -- resampling along Z ----------------------------------------------------------------------


def resample_axis(x: np.ndarray, axis: int, n: int) -> np.ndarray:
    """``x`` (float32) resized to ``n`` samples along ``axis``: linear between sample centres
    (:func:`napari_unet.resize.resize_axis`, the edge extended by its nearest plane)."""
    return resize_axis(x, axis, n, edge="nearest")


#: planes of a side view predicted at a time (bounds the side views' memory)
SIDE_CHUNK = 32


def side_views(image: np.ndarray, anisotropy: float, predict: Any) -> Generator[Progress, None, np.ndarray]:
    """Mean of the XZ and YZ predictions of a (Z, Y, X) volume, on its own grid: ``(k, Z, Y, X)``.

    The volume is first resampled along Z to isotropic voxels (``Z * anisotropy`` planes),
    so that the side views look like the XY planes the network learned from; they are
    predicted :data:`SIDE_CHUNK` planes at a time and brought back to the stack's planes.
    ``predict(array_QYX, view)`` is a progress generator returning ``(k, Q, Y, X)``.
    """
    nz = image.shape[0]
    iso = resample_axis(image, 0, max(1, round(nz * anisotropy)))
    total = None
    for view, axis in (("XZ", 1), ("YZ", 2)):
        for start in range(0, image.shape[axis], SIDE_CHUNK):
            part = np.take(iso, np.arange(start, min(start + SIDE_CHUNK, image.shape[axis])), axis=axis)
            p = yield from predict(np.ascontiguousarray(np.moveaxis(part, axis, 0)), view)  # (k, n, Ziso, other)
            p = resample_axis(np.moveaxis(p, 1, axis + 1), 1, nz)  # (k, Z, ...) with the chunk at `axis`
            if total is None:
                total = np.zeros((p.shape[0], *image.shape), np.float32)
            index = [slice(None)] * 4
            index[axis + 1] = slice(start, start + p.shape[axis + 1])
            total[tuple(index)] += p
    return total / 2


# -- the pipeline --------------------------------------------------------------------------


class _Views:
    """Predicts arrays with the network, all normalised as one image (the whole volume)."""

    def __init__(self, net: Any, norm: tuple[np.ndarray, np.ndarray], predict_kw: dict[str, Any],
                 vlay: Layout, net3d: Any = None) -> None:
        self.net, self.norm, self.kw, self.vlay, self.net3d = net, norm, predict_kw, vlay, net3d
        self.zoom3d = 1.0  # the 3D network's zoom: large cells shrunk to NET3D_DIAMETER

    def volume(self, vol: np.ndarray, anisotropy: float) -> Generator[Progress, None, np.ndarray]:
        """Probabilities ``(k, Z, Y, X)`` of a gray (Z, Y, X) block by the 3D network: the
        block normalised as the whole volume, resampled along Z to isotropic voxels (and
        zoomed by :attr:`zoom3d` along every axis), predicted in overlapping cubes and
        brought back to its own grid."""
        from .tiling_3d import predict_volume_iter

        lo, hi = (float(np.ravel(v)[0]) for v in self.norm)
        x = (np.asarray(vol, np.float32) - lo) / max(hi - lo, 1e-6)
        shape = x.shape
        zoom = self.zoom3d
        want = (max(1, round(shape[0] * anisotropy * zoom)), max(1, round(shape[1] * zoom)),
                max(1, round(shape[2] * zoom)))
        for axis, n in enumerate(want):
            x = resample_axis(x, axis, n)
        p = yield from predict_volume_iter(x, self.net3d, device=self.kw.get("device"), amp=self.kw.get("amp"))
        for axis, n in enumerate(shape):
            p = resample_axis(p, axis + 1, n)
        return p

    def __call__(self, x: Any, view: str, axes: str = "QYX") -> Generator[Progress, None, np.ndarray]:
        """Probabilities ``(k, *x's shape without channels)`` of ``x`` (axes ``axes``)."""
        kw = self.kw
        # the volume's axes (a block of it) or a stack of gray planes (a side view): known, not parsed again
        known = self.vlay.axes if axes == self.vlay.axes else "QYX" if axes == "QYX" else None
        layout = None if known is None else (dataclasses.replace(self.vlay, shape=tuple(x.shape)) if known != "QYX"
                                             else Layout("QYX", tuple(x.shape), 1, 2, None, (0,), False))
        pred = Predictor(x, self.net, kw.get("tile_size"), kw.get("device"), axes, kw.get("batch_size"),
                          kw.get("amp"), kw.get("channels_last", True), normalization=self.norm, layout=layout)
        lay = pred.layout
        out = np.zeros((pred.config.num_classes, *lay.out_shape), np.float32)

        def write(plane: tuple[int, ...], oy: int, ox: int, probs: np.ndarray) -> None:
            idx, transpose = out_index(lay, plane, slice(oy, oy + probs.shape[1]), slice(ox, ox + probs.shape[2]))
            out[(slice(None),) + idx] = probs.transpose(0, 2, 1) if transpose else probs

        inner = pred.run(lay.plane_indices(), write, 0)
        while True:
            try:
                rec = next(inner)
            except StopIteration:
                return out
            yield Progress(rec.done, rec.total, f"{view}: {rec.message}", rec.info)


def segment_volume_iter(
    image: Any,
    model: Any = None,
    *,
    axes: str,
    voxel_size: Any = None,
    diameter: float | str | None = None,
    views: str = "auto",
    min_size: int | None = None,
    mode: str | None = None,
    out: Any = None,
    probabilities_out: Any = None,
    block_voxels: int | None = None,
    h: float = H_3D,
    foreground_threshold: float = 0.5,
    seed_threshold: float = 0.5,
    min_object_z: float | None = None,
    **predict_kw: Any,
) -> Generator[Progress, None, Any]:
    """3D labels of a stack with a ``Z`` axis (each time point / other plane axis on its own).

    Large volumes are processed in blocks of the full depth and a part of the Y/X plane,
    each with a halo (the network's plus a cell diameter) so that the cells at its edge
    are whole; a cell cut by a block edge gets one id, as both blocks see it whole in
    their halos. Memory is bounded by the blocks plus the labels (``out`` may be a zarr
    array on disk); lazy inputs are read block by block.

    Args:
        image: array-like with axes ``axes`` (``"ZYX"``, ``"TZYX"``, ``"ZCYX"``...).
        model: the 2D network (None = bundled).
        axes: axis letters; must contain ``Z``.
        voxel_size: ``(z, y, x)`` voxel size in any unit (a napari layer's ``scale``), or
            one number (Z step / pixel size); None = estimated from the cells
            (:func:`estimate_anisotropy`).
        diameter: the cells' diameter in XY pixels, ``"auto"`` (measured by the model) or
            None; as for ``segment``: when it is far from the model's, the stack is zoomed
            in Y and X (its planes kept, the anisotropy scaled with the zoom).
        views: what predicts the classes: ``"xyz"`` (the 2D network in the XY, XZ and YZ
            planes), ``"xy"`` (XY planes only), ``"3d"`` (the 3D U-Net: the bundled one, or a
            3D network given as ``model``), ``"3d+xyz"`` (the two averaged) or ``"auto"``:
            :data:`DEFAULT_3D` for a stack left to the bundled models, the 3D network for a
            3D model, else XY + XZ + YZ up to :data:`MAX_MULTIVIEW_ANISOTROPY` and XY beyond.
            Side views and the 3D U-Net need a single-channel image and a Z step up to
            :data:`MAX_MULTIVIEW_ANISOTROPY`.
        min_size: objects with fewer voxels are removed; None = the 2D default (16 px)
            times 8 pixels of depth, in planes.
        mode: as for ``segment``; ``"semantic"`` gives the per-voxel class.
        out, probabilities_out: optional arrays to write (labels; averaged probabilities).
        block_voxels: voxels of one block with its halo (None = from the free memory,
            :func:`default_block_voxels`).
        h, foreground_threshold, seed_threshold: of :func:`watershed_3d`.
        min_object_z: objects whose mean does not stand out from the background around
            them by this many standard errors of the stack's noise are dropped, and a
            ``UserWarning`` says when none is left (as for ``segment``; see
            :mod:`napari_unet.image_checks`). None keeps every object.
        **predict_kw: ``tile_size``, ``device``, ``batch_size``, ``amp``, ``channels_last``.

    Yields:
        Progress; ``info`` holds ``anisotropy``, ``anisotropy_source`` (``"voxel size"``,
        ``"estimated"``, ``"uncertain: <why>"`` or ``"unknown"``), ``anisotropy_uncertain``
        (True when the Z step was estimated and is not to be trusted: give ``voxel_size``),
        ``method``, ``views`` and ``blocks``.

    Returns:
        int32 labels shaped like the image without its channel axis (ids unique over the
        whole array), or ``out``.
    """
    from .inputs import describe_input

    if not hasattr(image, "shape") or not hasattr(image, "__getitem__"):
        image = np.asarray(image)
    facts = describe_input(image, "fluorescence" if model is None else model, axes=axes, voxel_size=voxel_size,
                           check=False)
    options = SegmentOptions(diameter=diameter, min_size=min_size, mode=mode, min_object_z=min_object_z,
                             postprocess=dict(views=views, block_voxels=block_voxels, h=h,
                                              foreground_threshold=foreground_threshold, seed_threshold=seed_threshold),
                             **predict_kw)
    return (yield from volume_iter(image, facts, options, out=out, probabilities_out=probabilities_out))


def volume_iter(image: Any, facts: ImageInput, options: SegmentOptions, *, out: Any = None,
                probabilities_out: Any = None) -> Generator[Progress, None, Any]:
    """:func:`segment_volume_iter` of a stack described at the door (``facts``: its axes,
    model, normalisation and voxel size) with ``options`` (``options.postprocess``: ``views``,
    ``block_voxels``, ``h``, ``foreground_threshold``, ``seed_threshold``)."""
    net, lay = facts.model, facts.layout
    if "Z" not in lay.axes:
        raise ValueError(f"3D segmentation needs a Z axis in axes, got {lay.axes!r}")
    post = dict(options.postprocess)
    views, block_voxels = post.get("views", "auto"), post.get("block_voxels")
    if views not in VIEWS:
        raise ValueError(f"views must be one of {', '.join(map(repr, VIEWS))}, got {views!r}")
    net3d = facts.net3d if facts.net3d is not None else post.get("net3d")
    # the bundled 3D U-Net is the default for a stack left to the bundled models
    if views == "auto" and net3d is None and facts.why == "fluorescence":
        views = DEFAULT_3D
    if net3d is not None and views == "auto":
        views = "3d"  # a 3D network the caller gave (fine-tuned on their stacks, say): alone
    if views.startswith("3d") and net3d is None:
        from .model import bundled_3d_model_path, load_model

        net3d = load_model(bundled_3d_model_path())
    mode = options.mode or net.meta.get("mode", "instance3")
    min_size, min_object_z, predict_kw = options.min_size, options.min_object_z, options.predict_kw
    given = check_voxel_size(facts.voxel_size)
    ws = dict(h=post.get("h", H_3D), foreground_threshold=post.get("foreground_threshold", 0.5),
              seed_threshold=post.get("seed_threshold", 0.5))
    if options.diameter is not None:
        return (yield from _zoomed(image, facts, options, given, out, probabilities_out))
    k = net.config.num_classes
    if out is None:
        out = np.zeros(lay.out_shape, np.int32)
    lay.check_out(out, "labels")
    if probabilities_out is not None:
        lay.check_out(probabilities_out, "probabilities", k)
    zi = lay.axes.index("Z")
    outer = [a for a in lay.planes if a != zi]
    vol_axes = "".join(lay.axes[i] for i in range(len(lay.shape)) if i not in outer)
    out_axes = "".join(a for i, a in enumerate(lay.axes) if i != lay.channel)
    offset = 0
    for t in np.ndindex(*(lay.shape[a] for a in outer)):
        index: list[Any] = [slice(None)] * len(lay.shape)
        for a, i in zip(outer, t):
            index[a] = i
        vol = image[tuple(index)] if outer else image  # lazy arrays stay lazy
        oidx = tuple(i for j, i in enumerate(index) if j != lay.channel)
        sink = _Sink(out, oidx, out_axes)
        psink = None if probabilities_out is None else _Sink(probabilities_out, oidx, out_axes, classes=True)
        # one stack: normalised as described at the door; a time point of several: on its own
        norm = facts.normalization if not outer and facts.lo else None
        n = yield from _segment_volume(vol, vol_axes, net, given, views, mode, min_size, ws, predict_kw,
                                       block_voxels or default_block_voxels(), sink, psink, offset, min_object_z,
                                       norm, None if outer else lay, net3d)
        if mode != "semantic":
            offset += n
            if offset > np.iinfo(np.int32).max:
                raise ValueError("more objects than int32 labels can hold")
    if mode != "semantic" and min_object_z is not None and offset == 0:
        warnings.warn(NOTHING_HERE_WARNING, UserWarning, stacklevel=2)
    return out


#: peak memory per voxel of a block with its halo: +410 MiB for blocks of 2**22 voxels
#: (``benchmarks/bench_3d.py --part memory``, XY + XZ + YZ views)
BLOCK_BYTES_PER_VOXEL = 100
#: voxels of a block: a quarter of the free memory, within these bounds (16 Mvoxel: a
#: 64x512x512 stack is one block, about 1.6 GB)
BLOCK_VOXELS = (2**22, 2**24)


def default_block_voxels() -> int:
    """Voxels of one block with its halo, from the free memory (see :data:`BLOCK_VOXELS`)."""
    import torch

    from .device import available_memory

    free = available_memory(torch.device("cpu"))
    return int(np.clip(0.25 * free / BLOCK_BYTES_PER_VOXEL, *BLOCK_VOXELS))


class _Sink:
    """Reads and writes (Z, Y, X)-ordered blocks of one volume inside a larger array.

    ``index``: per axis of ``arr`` (after a leading class axis when ``classes``), an int
    (another plane axis: the time point) or ``slice(None)``; ``letters``: the axis letters.
    """

    def __init__(self, arr: Any, index: tuple[Any, ...], letters: str, classes: bool = False) -> None:
        self.arr, self.index, self.letters, self.classes = arr, index, letters, classes
        spatial = [c for c, i in zip(letters, index) if isinstance(i, slice)]
        self.order = [spatial.index(c) for c in "ZYX"]
        self.back = [int(b) for b in np.argsort(self.order)]

    def _at(self, ys: slice, xs: slice) -> tuple[Any, ...]:
        idx = tuple(ys if c == "Y" else xs if c == "X" else i for c, i in zip(self.letters, self.index))
        return ((slice(None),) if self.classes else ()) + idx

    def _perm(self, order: list[int]) -> list[int]:
        return [0] + [1 + o for o in order] if self.classes else order

    def get(self, ys: slice, xs: slice) -> np.ndarray:
        return np.asarray(self.arr[self._at(ys, xs)]).transpose(self._perm(self.order))

    def put(self, value: np.ndarray, ys: slice, xs: slice) -> None:
        self.arr[self._at(ys, xs)] = value.transpose(self._perm(self.back))


def _blocks(n: int, core: int, halo: int) -> list[tuple[int, int, int, int]]:
    """(core start, core stop, halo start, halo stop) along an axis of ``n`` pixels."""
    k = max(1, math.ceil(n / core))
    edges = [round(i * n / k) for i in range(k + 1)]
    return [(a, b, max(0, a - halo), min(n, b + halo)) for a, b in zip(edges[:-1], edges[1:])]


def _read(vol: Any, vol_axes: str, ys: slice, xs: slice) -> np.ndarray:
    index = [slice(None)] * len(vol_axes)
    index[vol_axes.index("Y")], index[vol_axes.index("X")] = ys, xs
    return np.asarray(vol[tuple(index)])


def _segment_volume(vol: Any, vol_axes: str, net: Any, given: float | None, views: str, mode: str,
                    min_size: int | None, ws: dict[str, Any], predict_kw: dict[str, Any], block_voxels: int,
                    sink: _Sink, psink: _Sink | None, offset: int,
                    min_object_z: float | None = None,
                    norm: tuple[np.ndarray, np.ndarray] | None = None,
                    vlay: Any = None, net3d: Any = None) -> Generator[Progress, None, int]:
    """Segment one volume into ``sink`` with ids from ``offset + 1``; returns how many.
    ``norm``, ``vlay``: the volume's ``(lo, hi)`` and layout (None: found here)."""
    from .postprocess import probabilities_to_labels

    vlay = parse_axes(vol.shape, vol_axes) if vlay is None else vlay
    if norm is None:
        rule = net.meta.get("normalization", {"kind": "percentile"})
        norm = image_normalization(vol, vlay, rule, choose_channel_map(vlay, net.config.in_channels))
    run = _Views(net, norm, predict_kw, vlay, net3d)
    spatial = [c for c in vol_axes if c not in "CS"]
    order = [spatial.index(c) for c in "ZYX"]
    Z, H, W = (vlay.out_shape[o] for o in order)
    halo = int(net.config.halo + round(net.meta.get("diameter") or 20))
    info: dict[str, Any] = {"anisotropy": given, "anisotropy_source": "voxel size", "anisotropy_uncertain": False}
    a = given
    gray = not any(c in vol_axes for c in "CS")
    want3d = views in ("3d", "3d+xyz") and net3d is not None and mode != "semantic" and gray
    zoom3d = 1.0
    if (a is None or want3d) and mode != "semantic":
        # from a central crop: cells linked across planes, lateral vs axial spread (the Z
        # step), and for the 3D network their size
        side = 384
        y0, x0 = max(0, (H - side) // 2), max(0, (W - side) // 2)
        crop = _read(vol, vol_axes, slice(y0, y0 + side), slice(x0, x0 + side))
        p = yield from run(crop, "XY (cells' size)" if a is not None else "XY (Z step)", vol_axes)
        p = p.transpose([0] + [1 + o for o in order])
        linked = link_planes(probabilities_to_labels(p, mode))
        if a is None:
            a, doubt = anisotropy_from_cells(linked)
            info.update(anisotropy=a, anisotropy_source="unknown" if a is None else f"uncertain: {doubt}" if doubt
                        else "estimated", anisotropy_uncertain=a is None or doubt is not None)
        d = cell_diameter_xy(linked) if want3d else None
        if d is not None and d > NET3D_DIAMETER:
            zoom3d = NET3D_DIAMETER / d
        elif d is not None and d < NET3D_MIN_DIAMETER:
            zoom3d = NET3D_MIN_DIAMETER / d
    # the 3D network where it applies: one channel, a known Z step within the side views' range
    use3d = want3d and a is not None and a <= MAX_MULTIVIEW_ANISOTROPY
    if use3d:
        run.zoom3d = zoom3d
        info["zoom_3d"] = zoom3d
        if given is None:
            a = yield from _anisotropy_of_3d_cells(run, _gray_zyx(crop, vol_axes), a, min_size, ws)
            info["anisotropy"] = a
        halo = max(halo, int(net3d.config.halo / zoom3d + round(net.meta.get("diameter") or 20)))
    core = max(64, int(math.sqrt(block_voxels / Z)) - 2 * halo)
    by, bx = _blocks(H, core, halo), _blocks(W, core, halo)
    info["blocks"] = len(by) * len(bx)
    parent: dict[int, int] = {}

    def find(i: int) -> int:
        while parent.get(i, i) != i:
            parent[i] = parent.get(parent[i], parent[i])
            i = parent[i]
        return i

    done: list[tuple[int, int, int, int]] = []  # cores written so far
    nxt = offset
    for bi, (cy0, cy1, hy0, hy1) in enumerate(by):
        for bj, (cx0, cx1, hx0, hx1) in enumerate(bx):
            sub = _read(vol, vol_axes, slice(hy0, hy1), slice(hx0, hx1))
            p3 = (yield from run.volume(_gray_zyx(sub, vol_axes), a)) if use3d else None
            if use3d and views == "3d":
                p = p3
            else:
                p = yield from run(sub, "XY", vol_axes)
                p = np.ascontiguousarray(p.transpose([0] + [1 + o for o in order]))
            block_views = views if use3d else "auto" if views.startswith("3d") else views
            labels, p, binfo = yield from _block_labels(sub, vol_axes, order, p, a, block_views, mode, min_size, run,
                                                        ws, p3)
            if mode != "semantic" and min_object_z is not None:
                labels = drop_faint_objects(_gray_zyx(sub, vol_axes), labels, min_object_z)
            info.update(binfo)
            yield Progress(bi * len(bx) + bj + 1, info["blocks"], f"3D labels: {info['method']}", info)
            cy, cx = slice(cy0 - hy0, cy1 - hy0), slice(cx0 - hx0, cx1 - hx0)
            if psink is not None:
                psink.put(p[:, :, cy, cx], slice(cy0, cy1), slice(cx0, cx1))
            if mode == "semantic":
                sink.put(labels[:, cy, cx].astype(np.int32), slice(cy0, cy1), slice(cx0, cx1))
                continue
            glob = np.where(labels > 0, labels.astype(np.int64) + nxt, 0)
            # the halo over cores already written: the same cells, seen whole here
            for (dy0, dy1, dx0, dx1) in done:
                oy0, oy1, ox0, ox1 = max(dy0, hy0), min(dy1, hy1), max(dx0, hx0), min(dx1, hx1)
                if oy0 >= oy1 or ox0 >= ox1:
                    continue
                mine = glob[:, oy0 - hy0 : oy1 - hy0, ox0 - hx0 : ox1 - hx0]
                theirs = sink.get(slice(oy0, oy1), slice(ox0, ox1)).astype(np.int64)
                _merge(mine, theirs, parent, find)
            sink.put(glob[:, cy, cx].astype(np.int32), slice(cy0, cy1), slice(cx0, cx1))
            done.append((cy0, cy1, cx0, cx1))
            nxt += int(labels.max(initial=0))
    if mode == "semantic":
        return 0
    # one id per merged cell, numbered offset+1.. without gaps
    lut = np.arange(nxt + 1, dtype=np.int64)
    for i in parent:
        lut[i] = find(i)
    present = np.zeros(nxt + 1, bool)
    for (cy0, cy1, cx0, cx1) in done:
        present[lut[sink.get(slice(cy0, cy1), slice(cx0, cx1))]] = True
    present[: offset + 1] = False
    final = np.zeros(nxt + 1, np.int64)
    final[present] = np.arange(offset + 1, offset + 1 + int(present.sum()))
    lut = final[lut]
    for (cy0, cy1, cx0, cx1) in done:
        sink.put(lut[sink.get(slice(cy0, cy1), slice(cx0, cx1))].astype(np.int32), slice(cy0, cy1), slice(cx0, cx1))
    return int(present.sum())


def _anisotropy_of_3d_cells(run: _Views, crop: np.ndarray, a: float, min_size: int | None,
                            ws: dict[str, Any]) -> Generator[Progress, None, float]:
    """The Z step estimated again from the 3D network's cells of ``crop`` (Z, Y, X), found
    with the first estimate ``a``: cut along Z where the image falls to half its height,
    their depth is the nuclei's, no longer stretched by the axial blur the 2D network's
    linked planes carry (so taken as unblurred). On the 11 + 22 stacks of
    :data:`XY_VIEW_WEIGHT`, the error of the Z step (median / largest) 12% / 28% -> 6% /
    21%, mean 3D AP@0.5 0.957 -> 0.979 and 0.934 -> 0.941. ``a`` when fewer than 3 cells
    span 3 planes."""
    p = yield from run.volume(crop, a)
    labels = watershed_3d(p, a, min_size=_min_size_3d(min_size, a), relative_h=H_3D_RELATIVE, image=crop, **ws)
    ratios = _ratios(labels, 1.0)
    return a if ratios is None else float(np.clip(np.median(ratios), *ANISOTROPY_RANGE))


def _min_size_3d(min_size: int | None, a: float) -> int:
    """``min_size``, or by default the 2D one scaled to voxels of a stack of Z step ``a``."""
    from .postprocess import DEFAULT_MIN_SIZE

    return max(1, round(DEFAULT_MIN_SIZE * 8 / a)) if min_size is None else min_size


def _gray_zyx(block: np.ndarray, vol_axes: str) -> np.ndarray:
    """A block's intensities, channels averaged, in (Z, Y, X) order (for the noise test:
    its z-scores do not change with the normalisation's scale and offset)."""
    x = np.asarray(block, np.float32)
    letters = vol_axes
    for c in "CS":
        if c in letters:
            x = x.mean(axis=letters.index(c))
            letters = letters.replace(c, "")
    return x.transpose([letters.index(c) for c in "ZYX"])


def _merge(mine: np.ndarray, theirs: np.ndarray, parent: dict[int, int], find: Any) -> None:
    """Join ids of ``mine`` and ``theirs`` (same region) that are the same cell: each is
    the other's largest overlap, and that overlap covers at least half of the smaller of the
    two there. (Near the far edge of a halo, where the network sees less around it, two
    cells may come out as one: it is joined with one of them, not both.)"""
    both = (mine > 0) & (theirs > 0)
    if not both.any():
        return
    pairs, count = np.unique(np.stack([mine[both], theirs[both]]), axis=1, return_counts=True)
    m_ids, m_n = np.unique(mine[mine > 0], return_counts=True)
    t_ids, t_n = np.unique(theirs[theirs > 0], return_counts=True)
    m_size = dict(zip(m_ids.tolist(), m_n.tolist()))
    t_size = dict(zip(t_ids.tolist(), t_n.tolist()))
    best_m: dict[int, tuple[int, int]] = {}  # id of mine -> (overlap, id of theirs), and back
    best_t: dict[int, tuple[int, int]] = {}
    for (i, j), c in zip(pairs.T.tolist(), count.tolist()):
        best_m[i] = max(best_m.get(i, (0, 0)), (c, j))
        best_t[j] = max(best_t.get(j, (0, 0)), (c, i))
    for (i, j), c in zip(pairs.T.tolist(), count.tolist()):
        if best_m[i][1] == j and best_t[j][1] == i and c >= LINK_OVERLAP * min(m_size[i], t_size[j]):
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)


def _block_labels(vol: np.ndarray, vol_axes: str, order: list[int], p: np.ndarray, a: float | None, views: str,
                  mode: str, min_size: int | None, run: Any, ws: dict[str, Any],
                  p3: np.ndarray | None = None) -> Generator[Progress, None, tuple]:
    """Labels (Z, Y, X) of one block from its XY probabilities ``p`` (k, Z, Y, X); ``views``
    ``"3d"``: ``p`` is the 3D network's; ``"3d+xyz"``: the 3D network's ``p3`` is averaged
    with the 2D network's three views."""
    from .postprocess import probabilities_to_labels, remove_small_and_relabel

    if mode == "semantic":
        return np.argmax(p, 0).astype(np.int32), p, {"method": "semantic"}
    if a is None:
        # fewer than 3 cells span 3 planes: far too coarse in Z for 3D distances
        return link_planes(probabilities_to_labels(p, mode)), p, {"method": "linked planes", "views": "XY"}
    info = {"views": "XY"}
    if views == "3d":  # p is the 3D network's
        info["views"] = "3D network"
    elif (views in ("xyz", "3d+xyz") or (views == "auto" and a <= MAX_MULTIVIEW_ANISOTROPY)) \
            and not any(c in vol_axes for c in "CS"):
        s = yield from side_views(np.asarray(vol, np.float32).transpose(order), a, run)
        p = (XY_VIEW_WEIGHT * p + 2 * s) / (XY_VIEW_WEIGHT + 2)
        info["views"] = "XY, XZ, YZ"
        if p3 is not None:
            p = NET3D_WEIGHT * p3 + (1 - NET3D_WEIGHT) * p
            info["views"] = "3D network + XY, XZ, YZ"
    min_size = _min_size_3d(min_size, a)
    if mode == "instance2":
        fg, _ = ndi.label((1.0 - p[0]) > ws["foreground_threshold"], structure=_SIX)
        return remove_small_and_relabel(fg, min_size), p, {**info, "method": "3D components"}
    if a > MAX_WATERSHED_ANISOTROPY:
        return link_planes(probabilities_to_labels(p, mode)), p, {**info, "method": "linked planes"}
    rel = H_3D_RELATIVE if views == "3d" else 0.0
    return (watershed_3d(p, a, min_size=min_size, relative_h=rel, image=_gray_zyx(vol, vol_axes), **ws), p,
            {**info, "method": "3D watershed"})


def _zoomed(image: Any, facts: ImageInput, options: SegmentOptions, given: float | None, out: Any,
            probabilities_out: Any) -> Generator[Progress, None, Any]:
    """:func:`volume_iter` with a cell diameter: zoom Y and X to the model's cell size."""
    net, lay = facts.model, facts.layout
    target = model_diameter(net)
    diameter = yield from diameter_to_use(image, facts, options.diameter, device=options.device, what="stack")
    zoom = zoom_for(target, diameter)
    extra = {"diameter": float(diameter), "zoom": zoom}
    voxel = None if given is None else given * zoom
    options = options.replace(diameter=None)
    if zoom == 1:
        inner = volume_iter(image, dataclasses.replace(facts, voxel_size=voxel), options, out=out,
                            probabilities_out=probabilities_out)
        return (yield from with_info(inner, extra))
    if out is not None:
        lay.check_out(out, "labels")
    zoomed = resize_image(np.asarray(image), lay.axes, zoomed_shape(lay.yx_shape, zoom))
    if options.min_size is not None:
        options = options.replace(min_size=max(1, round(options.min_size * zoom * zoom)))
    probs = None
    if probabilities_out is not None:
        probs = np.zeros((net.config.num_classes, *(s for i, s in enumerate(zoomed.shape) if i != lay.channel)),
                         np.float32)
    # the zoomed stack is normalised by its own percentiles (lo, hi unset)
    small_facts = dataclasses.replace(facts.reshaped(zoomed.shape), voxel_size=voxel, lo=(), hi=())
    small = yield from with_info(volume_iter(zoomed, small_facts, options, probabilities_out=probs), extra)
    out_axes = "".join(a for i, a in enumerate(lay.axes) if i != lay.channel)
    labels = resize_nearest(small, out_axes, lay.yx_shape)
    if (options.mode or net.meta.get("mode", "instance3")) != "semantic":
        labels = _relabel(labels)
    if probabilities_out is not None:
        probabilities_out[...] = resize_image(probs, "C" + out_axes, lay.yx_shape)
    if out is None:
        return labels
    out[...] = labels
    return out


# -- training planes from 3D annotations ---------------------------------------------------


def stack_planes(image: Any, labels: Any, region: Any = None, voxel_size: Any = None,
                 side_planes: int | None = None) -> tuple[list, list, list]:
    """2D training planes from a labelled (Z, Y, X) stack: XY planes, and XZ and YZ planes
    resampled along Z to isotropic voxels, so the 2D network learns the cells as they
    look in every orientation the 3D path predicts.

    Args:
        image, labels: the stack and its 3D instance labels (same shape).
        region: None, ``"all"`` or a bool (Z, Y, X) mask of the annotated part.
        voxel_size: ``(z, y, x)`` or Z step / pixel size; None = estimated from the
            labels (:func:`estimate_anisotropy` without blur correction, since
            annotations are not blurred; 1 when too few cells span 3 planes).
        side_planes: XZ and YZ planes taken each (evenly spaced); None = as many as the
            stack has Z planes (all three orientations weigh about the same).

    Returns:
        ``(images, labels, regions)``: lists of 2D arrays (regions: None/"all"/masks).
    """
    img = np.asarray(image, np.float32)
    lab = np.asarray(labels)
    if img.shape != lab.shape or img.ndim != 3:
        raise ValueError(f"a 3D training stack and its labels need the same (Z, Y, X) shape, got {img.shape} and {lab.shape}")
    a = check_voxel_size(voxel_size)
    if a is None:
        a = estimate_anisotropy(lab, blur_correction=1.0) or 1.0
    reg = region if region is None or isinstance(region, str) else np.asarray(region, bool)
    nz = lab.shape[0]
    n_iso = max(1, round(nz * a))
    iso_img = resample_axis(img, 0, n_iso)
    iso_lab = nearest_axis(lab, 0, n_iso)
    plain = reg is None or isinstance(reg, str)
    iso_reg = None if plain else nearest_axis(reg, 0, n_iso)
    ims, lbs, rgs = list(img), list(lab), [reg] * nz if plain else list(reg)
    k = nz if side_planes is None else int(side_planes)
    for axis in (1, 2):
        for i in np.linspace(0, lab.shape[axis] - 1, min(k, lab.shape[axis])).round().astype(int):
            ims.append(np.take(iso_img, i, axis=axis))
            lbs.append(np.take(iso_lab, i, axis=axis))
            rgs.append(reg if plain else np.take(iso_reg, i, axis=axis))
    return ims, lbs, rgs


def expand_stacks(images: Sequence[Any], labels: Sequence[Any], regions: Sequence[Any] | None,
                  voxel_size: Any = None) -> tuple[list, list, list | None]:
    """Training lists with every labelled (Z, Y, X) stack replaced by its :func:`stack_planes`."""
    out_i: list = []
    out_l: list = []
    out_r: list = []
    for j, (im, lb) in enumerate(zip(images, labels)):
        rg = None if regions is None else regions[j]
        if np.ndim(lb) == 3 and np.shape(im) == np.shape(lb):
            i2, l2, r2 = stack_planes(im, lb, rg, voxel_size)
        else:
            i2, l2, r2 = [im], [lb], [rg]
        out_i += i2
        out_l += l2
        out_r += r2
    return out_i, out_l, (None if regions is None and all(r is None for r in out_r) else out_r)
