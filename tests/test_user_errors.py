"""Bad input ends in ONE line that names the problem.

Each test failed before its fix: a traceback, a bare ``TypeError``, "too many values to
unpack", PyTorch's multi-line weights-only text, or "image too small" for a channel
mismatch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_unet.data import TrainingSet, TrainingSetError
from napari_unet.diameter import measure_diameter
from napari_unet.model import ModelFileError, load_model
from napari_unet.synthetic import make_sample
from napari_unet.training import fine_tune

SRC = str(Path(__file__).resolve().parents[1] / "src")


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m napari_unet.cli ARGS`` in a subprocess importing this checkout's code."""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "napari_unet.cli", *args], capture_output=True, text=True,
                          timeout=240, env=env, cwd=cwd)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "%|" not in ln]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_device_cuda_without_cuda_is_one_line(tmp_path, model_path):
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((40, 40), np.uint16))
    line = one_line_error(cli("segment", str(tmp_path / "img.tif"), "-o", str(tmp_path / "out.tif"),
                              "--model", str(model_path), "--device", "cuda"))
    assert "cuda" in line.lower() and line.startswith("napari-unet segment: error:")


def test_garbage_model_file_is_one_sentence(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(2000))
    pickled = tmp_path / "pickled.pt"
    torch.save({"net": print}, pickled)  # loads only with weights_only=False: torch's long text
    for path in (junk, pickled):
        with pytest.raises(ModelFileError) as err:
            load_model(path)
        msg = str(err.value)
        assert "\n" not in msg and "not a napari-unet model file" in msg and "file an issue" not in msg.lower()
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((40, 40), np.uint16))
    line = one_line_error(cli("segment", str(tmp_path / "img.tif"), "-o", str(tmp_path / "o.tif"),
                              "--model", str(pickled)))
    assert "not a napari-unet model file" in line and "weights_only" not in line


def test_measure_diameter_reports_a_channel_mismatch_not_a_small_image(model_path):
    model = load_model(model_path)
    model.meta["diameter"] = 12.0
    two_channels = np.zeros((2, 200, 200), np.float32)
    with pytest.raises(ValueError, match="input channel"):
        measure_diameter(two_channels, model, axes="CYX")


def test_2d_image_with_3d_labels_names_the_shapes(model_path):
    img, lab = make_sample((64, 64), seed=1)
    with pytest.raises(ValueError, match=r"labels 0 have shape \(3, 64, 64\).*2D"):
        fine_tune([img], [np.stack([lab] * 3)], str(model_path), iterations=1, tile_size=16, device="cpu")


def _write_set(root: Path, entries: list[dict]) -> None:
    (root / "images").mkdir(parents=True)
    img, lab = make_sample((32, 32), seed=0)
    tifffile.imwrite(root / "images" / "a.tif", img)
    tifffile.imwrite(root / "images" / "b.tif", lab)
    (root / "index.json").write_text(json.dumps({"format": "napari-unet training set", "version": 1,
                                                 "samples": entries}))


def test_index_with_a_non_string_path_names_the_sample(tmp_path):
    _write_set(tmp_path / "set", [{"name": "x", "image": 5, "labels": "images/b.tif"}])
    with pytest.raises(TrainingSetError, match=r"sample 1 'x': the 'image' path must be a file name"):
        TrainingSet.load(tmp_path / "set")


@pytest.mark.parametrize("escape", ["../outside.tif", "/etc/hostname", "images/../../outside.tif"])
def test_index_paths_stay_inside_the_folder(tmp_path, escape):
    img, _ = make_sample((32, 32), seed=0)
    tifffile.imwrite(tmp_path / "outside.tif", img)  # a readable file the index must not reach
    _write_set(tmp_path / "set", [{"name": "x", "image": escape, "labels": "images/b.tif"}])
    with pytest.raises(TrainingSetError, match="outside the training-set folder"):
        TrainingSet.load(tmp_path / "set")
    ts = TrainingSet.load(tmp_path / "set", strict=False)
    assert len(ts) == 0 and "outside" in ts.errors[0]
