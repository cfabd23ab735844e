"""Training sets and their folder format (napari_unet.data)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_unet.data import TrainingSet, TrainingSetError


def make_set(rng):
    ts = TrainingSet()
    lab = np.zeros((20, 24), np.int32)
    lab[2:8, 3:9] = 1
    lab[10:15, 10:20] = 7
    region = np.zeros((20, 24), bool)
    region[:16] = True
    ts.add(rng.random((20, 24)).astype(np.float32), lab, region, name="first")
    ts.add(rng.integers(0, 4000, (12, 10)).astype(np.uint16), np.ones((12, 10), np.uint16), None, name="second")
    ts.add(rng.integers(0, 255, (9, 11, 3)).astype(np.uint8), np.zeros((9, 11), np.int64), np.ones((9, 11), bool),
           name="rgb")
    return ts


def assert_same(a, b):
    assert len(a) == len(b)
    for s, t in zip(a.samples, b.samples):
        assert s.name == t.name
        assert s.image.dtype == t.image.dtype and np.array_equal(s.image, t.image)
        assert s.labels.dtype == t.labels.dtype and np.array_equal(s.labels, t.labels)
        assert (s.region is None) == (t.region is None)
        if s.region is not None:
            assert t.region.dtype == bool and np.array_equal(s.region, t.region)


def test_round_trip(tmp_path, rng):
    ts = make_set(rng)
    ts.save(tmp_path / "set")
    back = TrainingSet.load(tmp_path / "set")
    assert_same(ts, back)
    index = json.loads((tmp_path / "set" / "index.json").read_text())
    assert index["format"] == "napari-unet training set" and index["samples"][1]["region"] is None
    # saving a smaller set in the same folder leaves no stale files behind
    ts.remove(0)
    ts.save(tmp_path / "set", overwrite=True)
    assert_same(ts, TrainingSet.load(tmp_path / "set"))
    assert sorted(p.name for p in (tmp_path / "set" / "labels").iterdir()) == ["0000.tif", "0001.tif"]


@pytest.mark.parametrize("damage, reason", [
    ("missing", "missing file labels/0001.tif"),
    ("shape", "does not match"),
    ("dtype", "must be integers"),
    ("region", "0/1 mask"),
    ("garbage", "not a readable TIFF"),
])
def test_broken_sample_is_named_and_the_rest_kept(tmp_path, rng, damage, reason):
    ts = make_set(rng)
    root = ts.save(tmp_path / "set")
    if damage == "missing":
        (root / "labels" / "0001.tif").unlink()
    elif damage == "shape":
        tifffile.imwrite(root / "labels" / "0001.tif", np.ones((5, 5), np.uint16))
    elif damage == "dtype":
        tifffile.imwrite(root / "labels" / "0001.tif", np.full((12, 10), 0.5, np.float32))
    elif damage == "region":
        tifffile.imwrite(root / "regions" / "0000.tif", np.full((20, 24), 3, np.uint8))
    else:
        (root / "images" / "0001.tif").write_bytes(b"not a tiff")
    with pytest.raises(TrainingSetError, match=reason):
        TrainingSet.load(root)
    partial = TrainingSet.load(root, strict=False)
    broken = 0 if damage == "region" else 1
    assert len(partial) == 2 and len(partial.errors) == 1
    assert ts.samples[broken].name in partial.errors[0] and reason.split()[0] in partial.errors[0]
    assert [s.name for s in partial.samples] == [s.name for i, s in enumerate(ts.samples) if i != broken]


def test_not_a_set_and_bad_samples(tmp_path, rng):
    with pytest.raises(TrainingSetError, match="no index.json"):
        TrainingSet.load(tmp_path)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(TrainingSetError, match="cannot be read"):
        TrainingSet.load(tmp_path)
    (tmp_path / "index.json").write_text('{"samples": 3}')
    with pytest.raises(TrainingSetError, match="no 'samples' list"):
        TrainingSet.load(tmp_path)
    ts = TrainingSet()
    with pytest.raises(ValueError, match="does not match"):
        ts.add(np.zeros((5, 6)), np.zeros((6, 5), np.int32))
    with pytest.raises(ValueError, match="must be 2D"):
        ts.add(np.zeros((5, 6, 2)), np.zeros((5, 6, 2), np.int32))
    with pytest.raises(ValueError, match="integers"):
        ts.add(np.zeros((5, 6)), np.zeros((5, 6), np.float32))
    assert len(ts) == 0
