"""The Qt-free annotation helpers (napari_unet.annotate)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.annotate import (
    Edit,
    bounding_box,
    count_cells,
    default_region,
    diff_edit,
    fill_from_prediction,
    fill_holes,
    merge_labels,
    next_free_id,
    polyline_pixels,
    region_from_shapes,
    remove_small_pieces,
    split_label,
)


def disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


# -- next free id -------------------------------------------------------------------------


def test_next_free_id():
    assert next_free_id(np.zeros((4, 4), np.uint8)) == 1
    lab = np.zeros((4, 4), np.int32)
    lab[0, 0], lab[3, 3] = 2, 7
    assert next_free_id(lab) == 8  # one past the largest, gaps are not reused
    assert next_free_id(np.zeros((0, 3), np.int32)) == 1


def test_next_free_id_dtype_full_and_bad_input():
    lab = np.full((2, 2), 255, np.uint8)
    with pytest.raises(ValueError, match="cannot hold another id"):
        next_free_id(lab)
    with pytest.raises(ValueError, match="integer"):
        next_free_id(np.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="negative"):
        next_free_id(np.array([[-1, 0]]))


# -- edits --------------------------------------------------------------------------------


def test_diff_edit_and_in_plane_round_trip(rng):
    old = rng.integers(0, 4, (6, 7)).astype(np.int32)
    new = old.copy()
    new[2:4, 1:5] = 9
    e = diff_edit(old, new)
    assert e.size == np.count_nonzero(old != new)
    assert np.array_equal(e.apply(old.copy()), new)
    stack = np.zeros((3, 6, 7), np.int32)
    stack[1] = old
    e.in_plane((1,)).apply(stack)
    assert np.array_equal(stack[1], new) and not stack[0].any() and not stack[2].any()
    assert not diff_edit(old, old)
    with pytest.raises(ValueError, match="shapes"):
        diff_edit(old, new[:3])


# -- remove small pieces ------------------------------------------------------------------


def test_remove_small_pieces_removes_fragments_and_tiny_cells():
    lab = np.zeros((20, 20), np.int32)
    lab[2:8, 2:8] = 1  # 36 px
    lab[15, 15] = 1  # stray fragment of cell 1
    lab[10:12, 10:12] = 2  # tiny cell, 4 px
    lab[12:18, 2:8] = 3  # 36 px, touches nothing
    e = remove_small_pieces(lab, 5)
    out = e.apply(lab.copy())
    assert out[15, 15] == 0 and not (out == 2).any()
    assert (out == 1).sum() == 36 and (out == 3).sum() == 36
    assert "2 pieces" in e.message
    assert not remove_small_pieces(lab, 1)  # nothing is smaller than 1 px


def test_remove_small_pieces_diagonal_connectivity_and_errors():
    lab = np.zeros((6, 6), np.int32)
    lab[1, 1] = lab[2, 2] = lab[3, 3] = 4  # 3 pixels touching only diagonally
    assert remove_small_pieces(lab, 2, connectivity=1).size == 3
    assert remove_small_pieces(lab, 2, connectivity=2).size == 0
    assert not remove_small_pieces(np.zeros((5, 5), np.int32), 3)
    with pytest.raises(ValueError, match="at least 1"):
        remove_small_pieces(lab, 0)
    with pytest.raises(ValueError, match="connectivity"):
        remove_small_pieces(lab, 2, connectivity=3)


def test_remove_small_pieces_touching_cells_are_separate_pieces():
    lab = np.zeros((10, 10), np.int32)
    lab[2:8, 2:5] = 1  # 18 px
    lab[2:4, 5:7] = 2  # 4 px, touching cell 1
    out = remove_small_pieces(lab, 10).apply(lab.copy())
    assert (out == 1).sum() == 18 and not (out == 2).any()


# -- fill holes ---------------------------------------------------------------------------


def test_fill_holes_fills_only_holes_inside_one_cell():
    lab = np.zeros((20, 30), np.int32)
    lab[2:12, 2:12] = 1
    lab[5:7, 5:7] = 0  # hole inside cell 1
    # gap enclosed by two cells together: must stay background
    lab[2:12, 15:20] = 2
    lab[2:12, 21:26] = 3
    lab[2, 20] = 2
    lab[11, 20] = 3
    # background touching the border inside a U-shaped cell is not a hole
    lab[14:20, 2:10] = 4
    lab[15:20, 4:8] = 0
    e = fill_holes(lab)
    out = e.apply(lab.copy())
    assert (out[5:7, 5:7] == 1).all()
    assert (out[3:11, 20] == 0).all()
    assert (out[15:20, 4:8] == 0).all()
    assert e.size == 4 and "1 hole" in e.message


def test_fill_holes_max_size_3d_and_empty():
    lab = np.zeros((12, 12), np.int32)
    lab[1:11, 1:11] = 5
    lab[3:8, 3:8] = 0  # 25 px hole
    assert not fill_holes(lab, max_size=10)
    assert fill_holes(lab, max_size=25).size == 25
    vol = np.zeros((5, 8, 8), np.int32)
    vol[1:4, 1:7, 1:7] = 2
    vol[2, 3:5, 3:5] = 0
    assert fill_holes(vol).size == 4
    assert not fill_holes(np.zeros((4, 4), np.int32))
    assert not fill_holes(np.ones((4, 4), np.int32))


# -- split --------------------------------------------------------------------------------


def test_split_label_along_line_keeps_area():
    lab = np.zeros((30, 40), np.int32)
    lab[5:25, 5:35] = 3
    lab[0:3, 0:3] = 1
    line = [(0, 20), (29, 20)]  # vertical line across the whole cell
    e = split_label(lab, line)
    out = e.apply(lab.copy())
    ids = set(np.unique(out)) - {0}
    assert ids == {1, 3, 4}  # new id is next_free_id
    assert (out > 0).sum() == (lab > 0).sum()  # line pixels were given back
    assert (out[5:25, 5:19] == 3).all() or (out[5:25, 5:19] == 4).all()
    assert len(np.unique(out[5:25, 5:19])) == 1 and len(np.unique(out[5:25, 22:35])) == 1
    assert out[10, 6] != out[10, 33]
    assert "split cell 3" in e.message


def test_split_label_polyline_diagonal_and_explicit_id():
    lab = np.zeros((30, 30), np.int32)
    lab[disc((30, 30), 15, 15, 10)] = 2
    lab[0:2, 0:2] = 9
    e = split_label(lab, [(2, 2), (15, 14), (28, 27)], label_id=2)
    out = e.apply(lab.copy())
    assert set(np.unique(out)) == {0, 2, 9, 10}
    assert (out == 2).sum() > 50 and (out == 10).sum() > 50


def test_split_label_errors():
    lab = np.zeros((20, 20), np.int32)
    lab[5:15, 5:15] = 1
    with pytest.raises(ValueError, match="does not cross any cell"):
        split_label(lab, [(0, 0), (0, 19)])
    with pytest.raises(ValueError, match="does not cut"):
        split_label(lab, [(0, 10), (8, 10)])  # stops halfway
    with pytest.raises(ValueError, match="no cell with id 7"):
        split_label(lab, [(0, 10), (19, 10)], label_id=7)
    with pytest.raises(ValueError, match="2D"):
        split_label(np.zeros((2, 2, 5, 5), np.int32), [(0, 0), (4, 4)])  # 3D stacks split, 4D not
    with pytest.raises(ValueError, match="at least 2 points"):
        split_label(lab, [(0, 10)])


def test_polyline_pixels_clipped_and_connected():
    rr, cc = polyline_pixels([(-5, 2), (8, 2)], (6, 6))
    assert rr.min() == 0 and rr.max() == 5 and (cc == 2).all()
    rr, cc = polyline_pixels([(0, 0), (5, 3), (5, 5)], (6, 6))
    steps = np.abs(np.diff(np.stack([rr, cc]), axis=1))
    assert steps.max() <= 1  # 8-connected


# -- merge --------------------------------------------------------------------------------


def test_merge_labels():
    lab = np.zeros((6, 6), np.int32)
    lab[0:2] = 4
    lab[3:5] = 2
    lab[5] = 6
    out = merge_labels(lab, [4, 2]).apply(lab.copy())
    assert set(np.unique(out)) == {0, 2, 6} and (out == 2).sum() == 24
    out = merge_labels(lab, [4, 2, 6], into=6).apply(lab.copy())
    assert set(np.unique(out)) == {0, 6}
    with pytest.raises(ValueError, match="two different ids"):
        merge_labels(lab, [4, 4])
    with pytest.raises(ValueError, match="background"):
        merge_labels(lab, [0, 4])
    with pytest.raises(ValueError, match="no cell with id 5"):
        merge_labels(lab, [4, 5])
    with pytest.raises(ValueError, match="must be one of"):
        merge_labels(lab, [4, 2], into=6)


# -- predict to annotate -----------------------------------------------------------------


def test_fill_from_prediction_keeps_user_labels():
    user = np.zeros((20, 20), np.int32)
    user[0:5, 0:5] = 1
    pred = np.zeros((20, 20), np.int32)
    pred[0:6, 0:6] = 1  # mostly the user's cell: skipped
    pred[10:15, 10:15] = 2  # on empty pixels: added with a fresh id
    pred[4:9, 10:14] = 3  # overlaps nothing
    e = fill_from_prediction(user, pred)
    out = e.apply(user.copy())
    assert (out[0:5, 0:5] == 1).all() and (out[5, 0:6] == 0).all()
    assert set(np.unique(out)) == {0, 1, 2, 3}
    assert len(np.unique(out[10:15, 10:15])) == 1 and out[12, 12] >= 2
    assert "2 predicted cells" in e.message


def test_fill_from_prediction_region_and_replace():
    user = np.zeros((20, 20), np.int32)
    user[2:6, 2:6] = 5
    pred = np.zeros((20, 20), np.int32)
    pred[2:8, 2:8] = 1
    pred[12:18, 12:18] = 2
    region = np.zeros((20, 20), bool)
    region[0:10, 0:10] = True
    out = fill_from_prediction(user, pred, region).apply(user.copy())
    assert not out[12:18, 12:18].any()  # outside the region: untouched
    assert (out[2:6, 2:6] == 5).all()  # overlap 16/36 > 20%: skipped
    out = fill_from_prediction(user, pred, region, replace=True).apply(user.copy())
    assert (out[2:8, 2:8] == 6).all() and not (out == 5).any()  # replaced inside the region
    assert not out[12:18, 12:18].any()
    with pytest.raises(ValueError, match="does not match"):
        fill_from_prediction(user, pred[:10])


# -- regions ------------------------------------------------------------------------------


def test_region_from_shapes_rectangle_polygon_ellipse():
    rect = np.array([[2, 3], [2, 8], [6, 8], [6, 3]], float)
    m = region_from_shapes([rect], ["rectangle"], (10, 12))
    assert m.sum() > 0 and m[4, 5] and not m[0, 0] and not m[8, 5]
    tri = np.array([[0, 0], [0, 9], [9, 0]], float)
    m = region_from_shapes([tri], ["polygon"], (10, 10))
    assert m[1, 1] and not m[8, 8]
    ell = np.array([[10, 10], [10, 30], [30, 30], [30, 10]], float)
    m = region_from_shapes([ell], ["ellipse"], (40, 40))
    assert m[20, 20] and not m[11, 11]
    assert not region_from_shapes([np.array([[0, 0], [5, 5]])], ["line"], (8, 8)).any()
    with pytest.raises(ValueError, match="unsupported"):
        region_from_shapes([rect], ["star"], (10, 12))


def test_region_from_shapes_on_stack_plane():
    rect3 = np.array([[1, 2, 2], [1, 2, 6], [1, 6, 6], [1, 6, 2]], float)
    m = region_from_shapes([rect3], ["rectangle"], (3, 10, 10))
    assert m[1].any() and not m[0].any() and not m[2].any()
    m = region_from_shapes([rect3[:, 1:]], ["rectangle"], (3, 10, 10))  # 2D shape: all planes
    assert m[0].any() and m[2].any()


def test_default_region_and_bounding_box():
    lab = np.zeros((40, 40), np.int32)
    lab[18:22, 18:22] = 1
    r = default_region(lab, margin=5)
    assert r[20, 20] and r[20, 26] and not r[20, 30] and not r[0, 0]
    assert not default_region(np.zeros((5, 5), np.int32)).any()
    stack = np.zeros((2, 40, 40), np.int32)
    stack[1] = lab
    rs = default_region(stack, margin=5)
    assert not rs[0].any() and np.array_equal(rs[1], r)
    assert bounding_box(r) == (slice(13, 27), slice(13, 27))
    assert bounding_box(r, pad=20) == (slice(0, 40), slice(0, 40))
    assert bounding_box(np.zeros((3, 3), bool)) is None
    assert count_cells(stack) == 1


def test_edit_is_frozen_and_reports_size():
    e = Edit((np.array([0]), np.array([1])), np.array([3]))
    assert e.size == 1 and bool(e)
    with pytest.raises(AttributeError):
        e.message = "x"  # type: ignore[misc]


def test_region_from_shapes_single_plane():
    rect3 = np.array([[1, 2, 2], [1, 2, 6], [1, 6, 6], [1, 6, 2]], float)
    assert region_from_shapes([rect3], ["rectangle"], (3, 10, 10), plane=(1,)).any()
    assert not region_from_shapes([rect3], ["rectangle"], (3, 10, 10), plane=(0,)).any()
    assert region_from_shapes([rect3[:, 1:]], ["rectangle"], (3, 10, 10), plane=(2,)).shape == (10, 10)
    with pytest.raises(ValueError, match="plane"):
        region_from_shapes([rect3], ["rectangle"], (3, 10, 10), plane=(0, 1))


def test_restrict_to_region_and_region_score():
    from napari_unet.annotate import region_score, restrict_to_region

    gt = np.zeros((20, 20), np.int32)
    gt[1:5, 1:5] = 1
    gt[1:5, 12:16] = 2  # outside the region
    gt[8:12, 7:11] = 3  # 3/4 inside the region
    region = np.zeros((20, 20), bool)
    region[:, :10] = True
    r = restrict_to_region(gt, region)
    assert set(np.unique(r)) == {0, 1, 3}
    pred = gt.copy()
    pred[pred == 2] = 0  # missing outside the region: does not count
    assert region_score(gt, pred, region) == 1.0
    pred[pred == 3] = 0  # a miss inside: 1 TP, 1 FN
    assert region_score(gt, pred, region) == pytest.approx(0.5)
    assert region_score(gt, pred) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="does not match"):
        region_score(gt, pred[:5])
