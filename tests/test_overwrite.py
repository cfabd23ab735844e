"""Nothing the user made is replaced without asking.

CLI outputs that exist are refused unless ``--overwrite``; results are written under a
temporary name and renamed; a training set is saved atomically and only files the old
set listed are removed. Before the fix every one of these files was overwritten (a zarr
output was even emptied before the run started).
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from test_user_errors import cli, one_line_error

from napari_unet.data import TrainingSet
from napari_unet.synthetic import make_sample


@pytest.fixture
def image_file(tmp_path):
    image, labels = make_sample((64, 64), seed=4)
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lab.tif", labels)
    return tmp_path / "img.tif"


def test_segment_refuses_an_existing_output_unless_overwrite(tmp_path, image_file, model_path):
    out = tmp_path / "mine.tif"
    out.write_bytes(b"the user's own file")
    line = one_line_error(cli("segment", str(image_file), "-o", str(out), "--model", str(model_path)))
    assert "exists already" in line and "--overwrite" in line
    assert out.read_bytes() == b"the user's own file"
    ok = cli("segment", str(image_file), "-o", str(out), "--model", str(model_path), "--overwrite")
    assert ok.returncode == 0, ok.stderr
    assert tifffile.imread(out).shape == (64, 64)
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []  # no temporary file left


def test_existing_zarr_output_is_untouched_without_overwrite(tmp_path, image_file, model_path):
    zarr = pytest.importorskip("zarr")
    store = tmp_path / "result.zarr"
    z = zarr.open_array(str(store), mode="w", shape=(64, 64), chunks=(32, 32), dtype="i4")
    z[:] = 7
    one_line_error(cli("segment", str(image_file), "-o", str(store), "--model", str(model_path)))
    assert (zarr.open_array(str(store), mode="r")[:] == 7).all()
    ok = cli("segment", str(image_file), "-o", str(store), "--model", str(model_path), "--overwrite")
    assert ok.returncode == 0, ok.stderr
    assert not (zarr.open_array(str(store), mode="r")[:] == 7).all()


def test_several_inputs_refuse_before_the_first_run(tmp_path, image_file, model_path):
    second = tmp_path / "img2.tif"
    second.write_bytes(image_file.read_bytes())
    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / "img2_labels.tif").write_bytes(b"keep me")
    one_line_error(cli("segment", str(image_file), str(second), "-o", str(outdir), "--model", str(model_path)))
    assert sorted(p.name for p in outdir.iterdir()) == ["img2_labels.tif"]  # not even the first was written


def test_train_refuses_to_replace_its_starting_model(tmp_path, image_file, model_path):
    before = model_path.read_bytes()
    args = ("train", "--images", str(image_file), "--labels", str(tmp_path / "lab.tif"), "--iterations", "1",
            "--tile-size", "16", "--device", "cpu")
    line = one_line_error(cli(*args, "--model", str(model_path), "-o", str(model_path)))
    assert "is the starting model" in line and "--overwrite" in line
    assert model_path.read_bytes() == before
    other = tmp_path / "other.pt"
    other.write_bytes(b"someone's model")
    assert "exists already" in one_line_error(cli(*args, "--model", str(model_path), "-o", str(other)))
    assert other.read_bytes() == b"someone's model"


def test_training_set_save_refuses_then_replaces_only_its_own_files(tmp_path):
    def make(n: int) -> TrainingSet:
        ts = TrainingSet()
        for i in range(n):
            img, lab = make_sample((32, 32), seed=i)
            ts.add(img, lab, name=f"s{i}")
        return ts

    root = make(3).save(tmp_path / "set")
    user_file = root / "images" / "0099.tif"  # not listed by the index: the user's, never touched
    tifffile.imwrite(user_file, np.ones((4, 4), np.uint8))
    with pytest.raises(ValueError, match="holds a training set already"):
        make(1).save(root)
    assert len(TrainingSet.load(root)) == 3
    make(1).save(root, overwrite=True)
    assert len(TrainingSet.load(root)) == 1
    assert sorted(p.name for p in (root / "images").iterdir()) == ["0000.tif", "0099.tif"]
    assert not list(root.rglob("*.tmp"))
    # a folder with the user's own 0000.tif (no index) is refused too
    other = tmp_path / "other"
    (other / "images").mkdir(parents=True)
    (other / "images" / "0000.tif").write_bytes(b"mine")
    with pytest.raises(ValueError, match="already has images/0000.tif"):
        make(1).save(other)
    assert (other / "images" / "0000.tif").read_bytes() == b"mine"
