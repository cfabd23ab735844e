"""Weight maps (eq. 2) against a slow reference written here from the formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

import napari_unet as nu
from napari_unet.synthetic import touching_cells
from napari_unet.weights import TOLERANCE, class_weight_map, cutoff_distance, weight_map


def reference_weight_map(labels, w0=10.0, sigma=5.0, spacing=None):
    """The straightforward formula: one whole-image distance transform per cell."""
    ids = [i for i in np.unique(labels) if i != 0]
    w = np.ones(labels.shape, np.float64)
    if len(ids) < 2:
        return w
    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    for i in ids:
        d = ndi.distance_transform_edt(labels != i, sampling=spacing)
        d2 = np.minimum(d2, np.maximum(d1, d))
        d1 = np.minimum(d1, d)
    bg = labels == 0
    w[bg] += w0 * np.exp(-((d1[bg] + d2[bg]) ** 2) / (2 * sigma**2))
    return w


@pytest.mark.parametrize(
    "shape, n, radius, seed",
    [
        ((96, 128), 25, 14, 0),
        ((120, 90), 40, 10, 1),
        ((64, 64), 12, 16, 2),  # big cells, many cut by the image border
        ((150, 150), 60, 9, 3),
    ],
)
def test_matches_reference_2d(shape, n, radius, seed):
    lab = touching_cells(shape, n, radius, seed)
    assert len(np.unique(lab)) > 5
    border = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    assert (border > 0).any()  # cells cut by the image border
    w = weight_map(lab)
    ref = reference_weight_map(lab)
    assert w.dtype == np.float32 and w.shape == lab.shape
    assert np.abs(w - ref).max() <= 1e-3
    assert ref.max() > 5  # touching cells: the border term is really exercised


@pytest.mark.parametrize("sigma, w0", [(2.0, 10.0), (8.0, 50.0), (5.0, 0.5)])
def test_matches_reference_other_parameters(sigma, w0):
    lab = touching_cells((100, 110), 30, 12, seed=7)
    w = weight_map(lab, w0=w0, sigma=sigma)
    assert np.abs(w - reference_weight_map(lab, w0, sigma)).max() <= 1e-3


def test_matches_reference_3d():
    lab = touching_cells((24, 40, 36), 20, 8, seed=4)
    w = weight_map(lab, sigma=3.0)
    ref = reference_weight_map(lab, sigma=3.0)
    assert np.abs(w - ref).max() <= 1e-3
    assert ref.max() > 5


@pytest.mark.parametrize("spacing", [(2.0, 0.7), 1.5])
def test_matches_reference_anisotropic(spacing):
    lab = touching_cells((80, 120), 30, 12, seed=5)
    w = weight_map(lab, sigma=6.0, spacing=spacing)
    ref = reference_weight_map(lab, sigma=6.0, spacing=spacing if np.ndim(spacing) else (spacing,) * 2)
    assert np.abs(w - ref).max() <= 1e-3


def test_anisotropic_3d():
    lab = touching_cells((12, 40, 40), 15, 8, seed=9)
    sp = (3.0, 1.0, 1.0)
    w = weight_map(lab, sigma=4.0, spacing=sp)
    assert np.abs(w - reference_weight_map(lab, sigma=4.0, spacing=sp)).max() <= 1e-3


def test_non_touching_cells_and_consecutive_ids_give_same_map():
    lab = np.zeros((60, 80), np.int32)
    lab[10:20, 10:20] = 3
    lab[10:20, 26:36] = 900  # 6 px gap
    lab[40:55, 60:78] = 17  # far away
    w = weight_map(lab)
    assert np.abs(w - reference_weight_map(lab)).max() <= 1e-3
    # relabelling to consecutive ids changes nothing
    cons = np.searchsorted([0, 3, 17, 900], lab).astype(np.int32)
    np.testing.assert_array_equal(weight_map(cons), w)


def test_no_cell_and_one_cell_give_class_weights_only():
    empty = np.zeros((30, 40), np.uint16)
    np.testing.assert_array_equal(weight_map(empty), np.ones((30, 40), np.float32))
    one = empty.copy()
    one[5:15, 5:15] = 7
    np.testing.assert_array_equal(weight_map(one), np.ones((30, 40), np.float32))
    wb = weight_map(one, class_weights="balanced")
    np.testing.assert_allclose(wb, class_weight_map(one, "balanced"))


def test_border_term_peaks_in_gaps_and_vanishes_far_away():
    lab = np.zeros((80, 200), np.int32)
    lab[20:60, 20:60] = 1
    lab[20:60, 63:103] = 2  # 3 px gap to cell 1
    lab[20:60, 160:195] = 3  # 57 px from cell 2
    w = weight_map(lab, w0=10, sigma=5)
    gap = w[20:60, 60:63]
    # a 3 px gap: pixel centres 1 + 3 = 2 + 2 = 4 from the two cells (term ~ 7.26)
    assert gap.max() == pytest.approx(1 + 10 * math.exp(-16 / 50), abs=1e-3)
    assert gap.min() > 7
    # cell pixels carry no border term
    assert np.all(w[lab > 0] == 1)
    # between cells 2 and 3 (57 px apart) the term is negligible
    assert np.all(w[20:60, 120:140] - 1 < 1e-3)
    # the gap between the touching pair is where the map peaks
    peak = np.unravel_index(np.argmax(w), w.shape)
    assert 60 <= peak[1] < 63


def test_cutoff_distance_bounds_the_term():
    for w0, sigma in [(10.0, 5.0), (50.0, 6.0), (1.0, 2.0)]:
        d = cutoff_distance(w0, sigma)
        assert w0 * math.exp(-(d**2) / (2 * sigma**2)) == pytest.approx(TOLERANCE, rel=1e-9)
        assert w0 * math.exp(-((d + 0.01) ** 2) / (2 * sigma**2)) < TOLERANCE
    assert cutoff_distance(1e-5, 5.0) == 0.0
    # a gap just inside the cutoff keeps its term; just outside is dropped (< tol)
    d = cutoff_distance(10.0, 5.0)
    for gap, kept in [(int(d) - 3, True), (int(d) + 2, False)]:
        lab = np.zeros((40, 120), np.int32)
        lab[10:30, 10:30] = 1
        lab[10:30, 30 + gap : 50 + gap] = 2
        w = weight_map(lab)
        ref = reference_weight_map(lab)
        assert np.abs(w - ref).max() < TOLERANCE * 1.01
        assert (w.max() - 1 > TOLERANCE) == kept


def test_class_weights_balanced_mean_one():
    lab = np.zeros((40, 50), np.int32)
    lab[:10, :20] = 5  # 200 of 2000 pixels are cells
    wc = class_weight_map(lab, "balanced")
    assert wc.mean() == pytest.approx(1.0, rel=1e-6)
    assert wc[0, 0] == pytest.approx(2000 / (2 * 200))
    assert wc[-1, -1] == pytest.approx(2000 / (2 * 1800))
    # each class carries half of the total weight
    assert wc[lab > 0].sum() == pytest.approx(wc[lab == 0].sum())
    w = weight_map(lab, class_weights="balanced")
    np.testing.assert_allclose(w, wc)  # one cell: no border term


def test_class_weights_mapping_and_border_term_add():
    lab = touching_cells((60, 60), 15, 10, seed=11)
    w_none = weight_map(lab)
    w_map = weight_map(lab, class_weights={0: 2.0, 1: 0.5})
    fg = lab > 0
    np.testing.assert_allclose(w_map[fg], 0.5)
    np.testing.assert_allclose(w_map[~fg], w_none[~fg] + 1.0, atol=1e-5)
    # the functional API is the same function
    np.testing.assert_array_equal(nu.weight_map(lab), w_none)


@pytest.mark.parametrize(
    "labels, kwargs, match",
    [
        (np.full((10, 10), 0.5), {}, "integer"),
        (-np.ones((10, 10), np.int32), {}, "negative"),
        (np.zeros((10, 10), np.int32), {"sigma": 0}, "sigma"),
        (np.zeros((10, 10), np.int32), {"w0": -1}, "w0"),
        (np.zeros((10, 10), np.int32), {"class_weights": "inverse"}, "class_weights"),
        (np.zeros((10, 10), np.int32), {"class_weights": {2: 1.0}}, "keys"),
        (np.zeros((10, 10), np.int32), {"spacing": (1.0, 2.0, 3.0)}, "spacing"),
        (np.zeros((10, 10), np.int32), {"spacing": (1.0, 0.0)}, "spacing"),
        (np.zeros((10,), np.int32), {}, "2D or 3D"),
        (np.full((10, 10), np.nan), {}, "integer"),
    ],
)
def test_bad_inputs(labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        weight_map(labels, **kwargs)


def test_whole_valued_float_and_bool_labels_are_accepted():
    lab = touching_cells((50, 50), 10, 9, seed=2)
    np.testing.assert_array_equal(weight_map(lab.astype(np.float64)), weight_map(lab))
    np.testing.assert_array_equal(weight_map(lab > 0), weight_map((lab > 0).astype(np.uint8)))


def test_one_and_two_workers_agree():
    lab = touching_cells((300, 280), 120, 12, seed=6)  # enough cells for the threaded path
    np.testing.assert_array_equal(weight_map(lab, workers=1), weight_map(lab, workers=2))


def test_cli_weight_map(tmp_path, capsys):
    import tifffile

    from napari_unet.cli import main

    lab = touching_cells((60, 70), 15, 10, seed=12)
    src = tmp_path / "labels.tif"
    tifffile.imwrite(src, lab)
    out = tmp_path / "w.tif"
    assert main(["weight-map", str(src), "-o", str(out), "--sigma", "4", "--class-weights", "balanced"]) == 0
    np.testing.assert_allclose(tifffile.imread(out), weight_map(lab, sigma=4, class_weights="balanced"))
    # .npy in and out, anisotropic spacing
    np.save(tmp_path / "labels.npy", lab)
    out2 = tmp_path / "w.npy"
    assert main(["weight-map", str(tmp_path / "labels.npy"), "-o", str(out2), "--spacing", "2", "1"]) == 0
    np.testing.assert_allclose(np.load(out2), weight_map(lab, spacing=(2, 1)))
    # a stack of planes
    np.save(tmp_path / "stack.npy", np.stack([lab, lab[::-1]]))
    out3 = tmp_path / "s.npy"
    assert main(["weight-map", str(tmp_path / "stack.npy"), "-o", str(out3), "--per-plane"]) == 0
    np.testing.assert_allclose(np.load(out3)[1], weight_map(lab[::-1]))
    capsys.readouterr()
    # bad input: exit status 2 and a one-line reason
    np.save(tmp_path / "bad.npy", lab.astype(np.float32) + 0.5)
    assert main(["weight-map", str(tmp_path / "bad.npy"), "-o", str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err
    assert "integer" in err and len(err.strip().splitlines()) == 1
    assert main(["weight-map", str(src), "-o", str(out)]) == 2  # exists, no --overwrite
    assert "overwrite" in capsys.readouterr().err
    assert main(["weight-map", str(tmp_path / "missing.tif"), "-o", str(tmp_path / "y.tif")]) == 2


def test_huge_ids_and_thread_counts_give_same_map():
    lab = touching_cells((80, 90), 20, 11, seed=13)
    w = weight_map(lab)
    big = np.where(lab > 0, lab.astype(np.int64) + 2**40, 0)  # ids past int32
    np.testing.assert_array_equal(weight_map(big), w)
    np.testing.assert_array_equal(weight_map(lab, workers=1), w)
    np.testing.assert_array_equal(weight_map(lab, workers=3), w)
    lab3 = touching_cells((6, 40, 50), 10, 8, seed=4)  # fewer planes than pieces: split along x
    np.testing.assert_array_equal(weight_map(lab3, workers=1), weight_map(lab3, workers=4))


@pytest.mark.parametrize("shape", [(37, 41), (9, 23, 17)])
def test_two_nearest_on_scattered_pieces(shape):
    """Cells made of many scattered pieces (the same id again and again along a line)
    stress the "two nearest *distinct* labels" bookkeeping of the separable passes."""
    from napari_unet.weights import border_distances

    rng = np.random.default_rng(len(shape))
    lab = np.where(rng.random(shape) < 0.08, rng.integers(1, 5, shape), 0)
    spacing = (2.0,) + (1.0,) * (len(shape) - 1)
    d1, d2 = border_distances(lab, spacing=spacing)
    per_cell = np.stack([ndi.distance_transform_edt(lab != i, sampling=spacing) for i in range(1, 5)])
    per_cell.sort(axis=0)
    bg = lab == 0
    np.testing.assert_allclose(d1[bg], per_cell[0][bg], rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(d2[bg], per_cell[1][bg], rtol=1e-6, atol=1e-5)


def test_border_distances_without_cutoff_are_exact_everywhere():
    from napari_unet.weights import border_distances

    lab = touching_cells((50, 60), 8, 9, seed=14)
    d1, d2 = border_distances(lab)
    ids = [i for i in np.unique(lab) if i]
    per_cell = np.stack([ndi.distance_transform_edt(lab != i) for i in ids])
    per_cell.sort(axis=0)
    bg = lab == 0
    np.testing.assert_allclose(d1[bg], per_cell[0][bg], atol=1e-4)
    np.testing.assert_allclose(d2[bg], per_cell[1][bg], atol=1e-4)
    assert np.all(d1[~bg] == 0) and np.all(d2[~bg] == 0)


def test_distances_computed_once_serve_smaller_cutoffs():
    from napari_unet.weights import border_distances, weight_map_from_distances

    lab = touching_cells((90, 100), 25, 11, seed=15)
    d1, d2 = border_distances(lab, cutoff_distance(10.0, 8.0))
    for sigma in (8.0, 5.0, 2.5):
        for cw in (None, "balanced"):
            w = weight_map_from_distances(lab, d1, d2, w0=10.0, sigma=sigma, class_weights=cw)
            assert np.abs(w - weight_map(lab, sigma=sigma, class_weights=cw)).max() <= 2 * TOLERANCE
    with pytest.raises(ValueError, match="shape"):
        weight_map_from_distances(lab, d1[:-1], d2[:-1])
