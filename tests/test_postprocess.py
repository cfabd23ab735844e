"""Probabilities → labels: touching cells separate, small objects go, ids are consecutive."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.metrics import average_precision
from napari_unet.postprocess import probabilities_to_labels
from napari_unet.targets import labels_to_targets


def _two_touching_discs(shape=(64, 80), r=14):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    a = (yy - 32) ** 2 + (xx - 26) ** 2 <= r**2
    b = (yy - 32) ** 2 + (xx - 26 - 2 * r + 1) ** 2 <= r**2  # overlaps a by a sliver
    labels = np.zeros(shape, np.int32)
    labels[a] = 1
    labels[b & ~a] = 2
    return labels


def _soft_onehot(classes, k, blur=1.0, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    p = np.stack([ndi.gaussian_filter((classes == c).astype(np.float32), blur) for c in range(k)])
    p += rng.uniform(0, noise, p.shape).astype(np.float32)
    return p / p.sum(0, keepdims=True)


def test_instance3_separates_two_touching_discs():
    labels = _two_touching_discs()
    assert ndi.label(labels > 0)[1] == 1  # one blob for connected components
    targets, _ = labels_to_targets(labels, "instance3")
    probs = _soft_onehot(targets, 3, blur=0.5)
    pred = probabilities_to_labels(probs, "instance3")
    assert pred.dtype == np.int32 and pred.shape == labels.shape
    assert set(np.unique(pred)) == {0, 1, 2}
    assert average_precision(labels, pred, 0.8)[0.8] == 1.0


def test_instance2_components_keep_the_carved_gap():
    labels = _two_touching_discs()
    targets, _ = labels_to_targets(labels, "instance2")
    probs = _soft_onehot(targets, 2, blur=0.3, noise=0.0)
    pred = probabilities_to_labels(probs, "instance2")
    assert pred.max() == 2
    assert average_precision(labels, pred, 0.7)[0.7] == 1.0


def test_semantic_is_argmax():
    rng = np.random.default_rng(0)
    probs = rng.random((4, 10, 12))
    np.testing.assert_array_equal(probabilities_to_labels(probs, "semantic"), probs.argmax(0))


def test_small_objects_removed_and_ids_consecutive():
    classes = np.zeros((40, 40), int)
    classes[2:12, 2:12] = 1  # 100 px
    classes[20:22, 20:22] = 1  # 4 px speck
    classes[25:35, 25:35] = 1
    probs = _soft_onehot(classes, 2, blur=0.01, noise=0.0)
    pred = probabilities_to_labels(probs, "instance2", min_size=10)
    assert sorted(np.unique(pred)) == [0, 1, 2]
    assert pred[21, 21] == 0
    assert probabilities_to_labels(probs, "instance2", min_size=1).max() == 3


def test_unseeded_foreground_becomes_its_own_object():
    classes = np.zeros((30, 30), int)
    classes[5:15, 5:15] = 2  # boundary only: the interior was missed
    probs = _soft_onehot(classes, 3, blur=0.01, noise=0.0)
    pred = probabilities_to_labels(probs, "instance3")
    assert pred.max() == 1 and (pred > 0).sum() == 100


def test_stack_ids_unique_across_planes():
    labels = _two_touching_discs()
    targets, _ = labels_to_targets(labels, "instance3")
    probs = _soft_onehot(targets, 3, blur=0.5)
    stack = np.stack([probs, probs], axis=1)  # (3, Z=2, Y, X)
    pred = probabilities_to_labels(stack, "instance3")
    assert pred.shape == (2, *labels.shape)
    assert set(np.unique(pred[0])) == {0, 1, 2} and set(np.unique(pred[1])) == {0, 3, 4}


def test_bad_inputs():
    with pytest.raises(ValueError, match="needs 3 classes"):
        probabilities_to_labels(np.zeros((2, 5, 5)), "instance3")
    with pytest.raises(ValueError, match="unknown mode"):
        probabilities_to_labels(np.zeros((3, 5, 5)), "blobs")


def test_segment_end_to_end_with_tiny_model(tiny_model, rng):
    from napari_unet.tiling import segment

    stack = rng.normal(0, 1, (2, 40, 44)).astype(np.float32)
    # noise in, so keep every object (the test against the image's noise would drop them all)
    lab = segment(stack, tiny_model, min_size=1, amp=False, min_object_z=None)
    assert lab.shape == (2, 40, 44) and lab.dtype == np.int32
    ids0, ids1 = set(np.unique(lab[0])) - {0}, set(np.unique(lab[1])) - {0}
    assert ids0 and ids1 and min(ids1) > max(ids0)  # unique across the stack
    # the same as predicting and post-processing the whole stack at once
    from napari_unet.tiling import predict

    probs = predict(stack, tiny_model, amp=False)
    np.testing.assert_array_equal(lab, probabilities_to_labels(probs, "instance3", min_size=1))


def test_distance_split_separates_cells_joined_by_a_bridge_of_interior():
    """Two discs whose interiors touch through a narrow neck: one seed each by default."""
    from napari_unet.postprocess import probabilities_to_labels

    yy, xx = np.mgrid[:60, :90]
    a = (yy - 30) ** 2 + (xx - 28) ** 2 < 15**2
    b = (yy - 30) ** 2 + (xx - 60) ** 2 < 15**2
    neck = (abs(yy - 30) <= 2) & (xx > 35) & (xx < 55)
    interior = (a | b | neck).astype(np.float32)
    probs = np.stack([1 - interior, interior, np.zeros_like(interior)])
    split = probabilities_to_labels(probs, "instance3")
    merged = probabilities_to_labels(probs, "instance3", split="interior")
    assert merged.max() == 1
    assert split.max() == 2
    # each disc centre is in its own object
    assert split[30, 28] != split[30, 60] and split[30, 28] > 0 and split[30, 60] > 0
    with pytest.raises(ValueError, match="split"):
        probabilities_to_labels(probs, "instance3", split="nope")


def _two_cells_across_a_leaky_membrane(gap=2):
    """Two cells filling a 60x90 image, split by a 3-px membrane with a ``gap``-px hole."""
    cells = np.ones((60, 90), np.int32)
    cells[:, 45:] = 2
    membrane = np.zeros(cells.shape, bool)
    membrane[:, 43:46] = True
    leaky = membrane.copy()
    leaky[29 : 29 + gap, 43:46] = False  # the network missed these membrane pixels
    p_membrane = ndi.gaussian_filter(leaky.astype(np.float32), 0.7)
    p_membrane = np.clip(p_membrane / p_membrane.max(), 0.02, 0.98)
    return np.where(membrane, 0, cells), np.stack([p_membrane, 1 - p_membrane])


def test_membrane_watershed_keeps_two_cells_apart_across_a_gap():
    cells, probs = _two_cells_across_a_leaky_membrane(gap=2)
    assert probabilities_to_labels(probs, "instance2").max() == 1  # components leak through the gap
    pred = probabilities_to_labels(probs, "instance2", membranes=True)
    assert pred.max() == 2 and (pred > 0).all()  # every pixel, membrane too, is in a cell
    from napari_unet.metrics import adapted_rand_error

    assert adapted_rand_error(cells, pred)[0] < 0.01


def test_membrane_watershed_merges_tiny_fragments():
    cells, probs = _two_cells_across_a_leaky_membrane(gap=0)
    # a small closed ring of membrane-like texture inside a cell encloses a fragment
    ring = np.zeros(cells.shape, bool)
    ring[6:32, 6:32] = True
    ring[9:29, 9:29] = False
    probs[0][ring] = 0.95
    probs[1] = 1 - probs[0]
    assert probabilities_to_labels(probs, "instance2", membranes=True, min_size=1).max() >= 3
    pred = probabilities_to_labels(probs, "instance2", membranes=True, min_size=1000)
    assert pred.max() == 2 and (pred > 0).all()  # merged into its cell, not left a hole


def test_weak_borders_merge_and_membranes_with_a_gap_do_not():
    from napari_unet.postprocess import membrane_watershed, merge_weak_borders

    # three segments in a row; the border 1|2 has no membrane, 2|3 a membrane with a 2-px gap
    labels = np.ones((40, 60), np.int32)
    labels[:, 20:] = 2
    labels[:, 40:] = 3
    p = np.full(labels.shape, 0.05, np.float32)
    p[:, 38:42] = 0.9
    p[18:20, 38:42] = 0.05
    merged = merge_weak_borders(labels, p, 0.4)
    assert (merged[:, :40] == merged[0, 0]).all() and (merged[:, 40:] == merged[0, -1]).all()
    assert merged[0, 0] != merged[0, -1]
    assert (merge_weak_borders(labels, p, 0.01) == labels).all()  # nothing is weak enough
    # merges chain: a weak border to a segment that has already merged still merges
    p[:, 38:42] = 0.05
    assert len(np.unique(merge_weak_borders(labels, p, 0.4))) == 1
    # a cell the distance seeds split in two at a waist (short membrane stubs) is one cell again
    p = np.full((44, 88), 0.02, np.float32)
    p[:2], p[-2:], p[:, :2], p[:, -2:] = 0.98, 0.98, 0.98, 0.98  # a frame of membrane
    p[:8, 42:46], p[-8:, 42:46] = 0.98, 0.98  # the stubs: 16 of the waist's 44 px
    split = membrane_watershed(p, h=1, merge=None, min_size=1)
    assert split[22, 20] != split[22, 68]
    whole = membrane_watershed(p, h=1, min_size=1)
    assert whole[22, 20] == whole[22, 68]


def test_a_low_foreground_threshold_widens_cells_but_makes_no_faint_ones():
    classes = np.zeros((40, 80), int)
    classes[10:30, 10:30] = 1  # a cell the model is sure of
    probs = _soft_onehot(classes, 3, blur=0.01, noise=0.0)
    faint = np.zeros((40, 80), bool)
    faint[10:30, 50:70] = True  # a smudge: 40 % foreground, never more
    probs[:, faint] = np.array([0.6, 0.25, 0.15], np.float32)[:, None]
    pred = probabilities_to_labels(probs, "instance3", foreground_threshold=0.3, seed_threshold=0.2)
    assert pred.max() == 1 and (pred[10:30, 10:30] > 0).all() and not pred[faint].any()
