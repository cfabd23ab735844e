"""Labels -> training targets and the annotated-region mask (targets.py)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.targets import (
    annotated_mask,
    cell_rims,
    check_labels,
    labels_to_targets,
    touching_borders,
)


def two_touching_cells():
    lab = np.zeros((12, 16), np.int32)
    lab[2:8, 2:7] = 5
    lab[2:8, 7:12] = 9  # touches cell 5 along columns 6|7
    lab[9:11, 13:15] = 2  # alone
    return lab


def test_instance3_background_interior_rim():
    lab = two_touching_cells()
    t, mask = labels_to_targets(lab, "instance3", region="all")
    assert t.dtype == np.int64 and mask.all()
    assert set(np.unique(t)) == {0, 1, 2}
    assert np.all(t[lab == 0] == 0)
    # the 4-connected inner rim of every cell is class 2, including where cells touch
    assert np.all(t[2, 2:12] == 2) and np.all(t[7, 2:12] == 2)
    assert t[4, 6] == 2 and t[4, 7] == 2
    # interior
    assert np.all(t[3:7, 3:6] == 1) and np.all(t[3:7, 8:11] == 1)
    # a 2x2 cell is all rim
    assert np.all(t[9:11, 13:15] == 2)


def test_instance2_carves_touching_borders_only():
    lab = two_touching_cells()
    t, _ = labels_to_targets(lab, "instance2", region="all")
    assert set(np.unique(t)) == {0, 1}
    # the pixels where the two cells touch become background ...
    assert np.all(t[2:8, 6] == 0) and np.all(t[2:8, 7] == 0)
    # ... and nothing else of the cells
    assert np.all(t[2:8, 2:6] == 1) and np.all(t[2:8, 8:12] == 1)
    assert np.all(t[9:11, 13:15] == 1)
    # diagonal contact also counts (8-connected)
    lab2 = np.zeros((6, 6), np.int32)
    lab2[1:3, 1:3] = 1
    lab2[3:5, 3:5] = 2
    tb = touching_borders(lab2)
    assert tb[2, 2] and tb[3, 3] and tb.sum() == 2


def test_touching_borders_ignores_background_and_border_of_image():
    lab = np.zeros((5, 5), np.int32)
    lab[:, :2] = 3  # touches the image border, no other cell
    assert not touching_borders(lab).any()
    lab[:, 2:] = 1  # touches cell 3; id smaller than its neighbour
    tb = touching_borders(lab)
    assert np.all(tb[:, 1]) and np.all(tb[:, 2]) and tb.sum() == 10


def test_cell_rims_image_border_is_not_a_rim():
    lab = np.full((6, 6), 4, np.int32)
    # a cell filling the image has no neighbour: edge of the image is not a boundary
    assert not cell_rims(lab).any()


def test_semantic_keeps_values():
    lab = np.array([[0, 1, 2], [2, 2, 1]], np.uint8)
    t, mask = labels_to_targets(lab, "semantic", region="all")
    np.testing.assert_array_equal(t, lab)
    assert t.dtype == np.int64 and mask.all()


def test_region_none_is_cells_plus_margin():
    lab = np.zeros((40, 40), np.int32)
    lab[18:22, 18:22] = 1
    _, mask = labels_to_targets(lab, region=None, margin=5)
    assert mask[20, 20] and mask[20, 26] and not mask[20, 27]
    assert not mask[0, 0]
    _, mask0 = labels_to_targets(lab, region=None, margin=0)
    np.testing.assert_array_equal(mask0, lab > 0)


def test_explicit_region_mask():
    lab = two_touching_cells()
    region = np.zeros(lab.shape, bool)
    region[:8] = True
    _, mask = labels_to_targets(lab, region=region)
    np.testing.assert_array_equal(mask, region)
    with pytest.raises(ValueError, match="shape"):
        annotated_mask(lab, np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="region"):
        annotated_mask(lab, "some")


def test_empty_labels_need_a_region():
    lab = np.zeros((10, 10), np.int32)
    with pytest.raises(ValueError, match="empty"):
        labels_to_targets(lab)
    t, mask = labels_to_targets(lab, region="all")  # truly background: fine
    assert not t.any() and mask.all()


def test_3d_targets():
    lab = np.zeros((6, 8, 8), np.int32)
    lab[1:5, 1:5, 1:4] = 1
    lab[1:5, 1:5, 4:7] = 2
    t, _ = labels_to_targets(lab, "instance3", region="all")
    assert t[2, 2, 2] == 1 and t[2, 2, 1] == 2 and t[2, 2, 3] == 2
    t2, _ = labels_to_targets(lab, "instance2", region="all")
    assert np.all(t2[1:5, 1:5, 3:5] == 0) and t2[2, 2, 2] == 1


def test_check_labels():
    assert check_labels(np.array([[True, False]])).dtype == np.int32
    np.testing.assert_array_equal(check_labels(np.array([1.0, 2.0])), [1, 2])
    with pytest.raises(ValueError, match="integer"):
        check_labels(np.array([1.5]))
    with pytest.raises(ValueError, match="integer"):
        check_labels(np.array([np.nan]))
    with pytest.raises(ValueError, match="negative"):
        check_labels(np.array([-1, 2]))
    with pytest.raises(ValueError, match="integer"):
        check_labels(np.array(["a"]))
    assert check_labels(np.zeros((0, 3), np.int32)).shape == (0, 3)


def test_large_uint_ids():
    lab = np.zeros((6, 6), np.uint32)
    lab[1:3, 1:3] = 2**32 - 1
    lab[1:3, 3:5] = 7
    t, _ = labels_to_targets(lab, "instance2", region="all")
    assert np.all(t[1:3, 2:4] == 0) and t[1, 1] == 1 and t[1, 4] == 1
    tb = touching_borders(np.array([[2**63 - 1, 1]], np.uint64))  # would overflow int64+1
    assert tb.all()


def test_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        labels_to_targets(two_touching_cells(), "panoptic")
