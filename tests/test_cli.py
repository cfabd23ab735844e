"""The command line: segment and evaluate, in-process and once as a real subprocess."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile

import napari_unet as nu
from napari_unet.cli import main
from napari_unet.tiling import segment


@pytest.fixture
def model_file(tiny_model, tmp_path):
    return str(nu.save_model(tiny_model, tmp_path / "tiny.pt"))


@pytest.fixture
def tif(tmp_path, rng):
    image = (rng.random((3, 50, 61)) * 4000).astype(np.uint16)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, image, imagej=True, metadata={"axes": "ZYX"})
    return path, image


def test_segment_tiff_in_process(tif, model_file, tiny_model, tmp_path, capsys):
    path, image = tif
    out = tmp_path / "labels.tif"
    assert main(["segment", str(path), "-o", str(out), "--model", model_file, "--tile-size", "24",
                 "--no-amp", "--probabilities"]) == 0
    labels = tifffile.imread(out)
    assert labels.shape == image.shape and labels.dtype == np.int32
    # an ImageJ ZYX stack: 3D labels, as segment(..., axes="ZYX") gives
    np.testing.assert_array_equal(labels, segment(image, tiny_model, axes="ZYX", amp=False, tile_size=24))
    probs = tifffile.imread(tmp_path / "labels_probabilities.tif")
    assert probs.shape == (3, *image.shape)
    assert "%" in capsys.readouterr().err  # the tqdm bar went to stderr


def test_segment_views_chooses_the_3d_method(tif, model_file, tiny_model, tmp_path, capsys):
    path, image = tif
    out = tmp_path / "labels.tif"
    assert main(["segment", str(path), "-o", str(out), "--model", model_file, "--tile-size", "24", "--no-amp",
                 "--voxel-size", "2", "1", "1", "--views", "xy"]) == 0
    err = capsys.readouterr().err
    assert "on XY" in err and "XZ" not in err
    np.testing.assert_array_equal(tifffile.imread(out), segment(image, tiny_model, axes="ZYX", amp=False, tile_size=24,
                                                                voxel_size=(2, 1, 1), views="xy"))
    with pytest.raises(SystemExit) as exc:
        main(["segment", str(path), "-o", str(out), "--views", "4d"])
    assert exc.value.code == 2


def test_segment_diameter_as_is_never_zooms(tif, model_file, tiny_model, tmp_path):
    """--diameter as-is: the image as it is, also with a model that zooms each image."""
    path, image = tif
    out = tmp_path / "labels.tif"
    tiny_model.meta.update(diameter=3.0, zoom_each=True)  # would measure and zoom by default
    zooming = str(nu.save_model(tiny_model, tmp_path / "zooming.pt"))
    assert main(["segment", str(path), "-o", str(out), "--model", zooming, "--tile-size", "24", "--no-amp",
                 "--diameter", "as-is", "--plane-by-plane"]) == 0
    plain = segment(image, tiny_model, axes="ZYX", amp=False, tile_size=24, diameter="as is", plane_by_plane=True)
    np.testing.assert_array_equal(tifffile.imread(out), plain)
    with pytest.raises(SystemExit) as exc:  # argparse: one usage line and status 2
        main(["segment", str(path), "-o", str(out), "--model", model_file, "--diameter", "wide"])
    assert exc.value.code == 2


def test_segment_several_inputs_to_zarr_directory(tif, model_file, tmp_path, rng):
    zarr = pytest.importorskip("zarr")
    path, image = tif
    npy = tmp_path / "plane.npy"
    np.save(npy, image[0])
    zin = tmp_path / "img.zarr"
    z = zarr.open_array(str(zin), mode="w", shape=image[1].shape, chunks=(32, 32), dtype="u2")
    z[:] = image[1]
    outdir = tmp_path / "out"
    assert main(["segment", str(path), str(npy), str(zin), "-o", str(outdir), "--model", model_file,
                 "--format", "zarr", "--no-amp"]) == 0
    stack = zarr.open_array(str(outdir / "stack_labels.zarr"), mode="r")
    assert stack.shape == image.shape and stack.dtype == np.int32
    assert zarr.open_array(str(outdir / "plane_labels.zarr"), mode="r").shape == image[0].shape
    assert zarr.open_array(str(outdir / "img_labels.zarr"), mode="r").shape == image[1].shape
    # a single input over an existing zarr output replaces it with --overwrite (it is not a folder of outputs)
    single = outdir / "stack_labels.zarr"
    assert main(["segment", str(npy), "-o", str(single), "--model", model_file, "--no-amp", "--overwrite"]) == 0
    assert zarr.open_array(str(single), mode="r").shape == image[0].shape


def test_bad_inputs_exit_2_with_one_line(tmp_path, model_file, capsys):
    assert main(["segment", str(tmp_path / "missing.tif"), "-o", str(tmp_path / "o.tif"), "--model", model_file]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("napari-unet segment: error:") and "missing.tif" in err and "\n" not in err
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff at all")
    assert main(["segment", str(bad), "-o", str(tmp_path / "o.tif"), "--model", model_file]) == 2
    assert "not a readable TIFF" in capsys.readouterr().err
    np.save(tmp_path / "one.npy", np.zeros(10))
    assert main(["segment", str(tmp_path / "one.npy"), "-o", str(tmp_path / "o.tif"), "--model", model_file]) == 2
    assert "at least 2 dimensions" in capsys.readouterr().err
    assert main(["segment", str(tmp_path / "one.npy"), "-o", str(tmp_path / "o.tif"),
                 "--model", str(tmp_path / "no_model.pt")]) == 2
    assert "model file not found" in capsys.readouterr().err


def test_evaluate_prints_ap_table(tmp_path, capsys):
    gt = np.zeros((40, 40), np.int32)
    gt[2:12, 2:12] = 1
    gt[20:30, 20:30] = 2
    pred = gt.copy()
    pred[pred == 2] = 0  # one cell missed
    tifffile.imwrite(tmp_path / "gt.tif", gt)
    np.save(tmp_path / "pred.npy", pred)
    assert main(["evaluate", str(tmp_path / "gt.tif"), str(tmp_path / "pred.npy"), "--thresholds", "0.5", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "0.50  0.500" in out and "mean AP over 2 thresholds: 0.500" in out
    np.save(tmp_path / "small.npy", pred[:10])
    assert main(["evaluate", str(tmp_path / "gt.tif"), str(tmp_path / "small.npy")]) == 2
    assert "shape" in capsys.readouterr().err


def test_sample_prints_average_precision(model_file, capsys):
    assert main(["segment", "--sample", "--model", model_file, "--no-amp"]) == 0
    out = capsys.readouterr().out
    assert "true cells" in out and "IoU threshold" in out


def test_progress_off_a_terminal_is_a_few_whole_lines(model_file, tmp_path, rng, capsys):
    """In a log file or a pipe (CI, scripts, nohup) the progress is whole lines: no carriage
    returns, about one line per tenth of the work, the last one at 100%."""
    np.save(tmp_path / "planes.npy", (rng.random((4, 120, 130)) * 4000).astype(np.uint16))
    assert main(["segment", str(tmp_path / "planes.npy"), "-o", str(tmp_path / "out.tif"), "--model", model_file,
                 "--tile-size", "24", "--no-amp", "--axes", "ZYX", "--plane-by-plane"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    bar = [line for line in err.splitlines() if line.startswith("planes.npy: ")]
    steps = int(bar[-1].split("/")[1].split()[0])
    assert steps > 50, "the test needs many more steps than lines"
    assert 3 <= len(bar) <= 12, bar
    assert bar[-1].split(": ")[-1].startswith(f"100% ({steps}/{steps} step, ")
    # the weight map of a stack, plane by plane
    np.save(tmp_path / "labels.npy", np.repeat(np.eye(40, dtype=np.int32)[None], 25, axis=0))
    assert main(["weight-map", str(tmp_path / "labels.npy"), "-o", str(tmp_path / "w.npy"), "--per-plane"]) == 0
    err = capsys.readouterr().err
    bar = [line for line in err.splitlines() if line.startswith("weight map: ")]
    assert "\r" not in err and 3 <= len(bar) <= 11 and bar[-1].startswith("weight map: 100% (25/25 plane, "), err


def test_subprocess_segment_and_bad_input(tif, model_file, tmp_path):
    path, image = tif
    out = tmp_path / "sub.tif"
    ok = subprocess.run([sys.executable, "-m", "napari_unet.cli", "segment", str(path), "-o", str(out),
                         "--model", model_file, "--no-amp"], capture_output=True, timeout=120)
    err = ok.stderr.decode()  # bytes: text mode would turn carriage returns into newlines
    assert ok.returncode == 0, err
    assert "\r" not in err and "stack.tif: " in err  # a pipe gets whole lines, not a redrawn bar
    assert tifffile.imread(out).shape == image.shape
    bad = subprocess.run([sys.executable, "-m", "napari_unet.cli", "segment", str(path), "-o", str(tmp_path / "x.tif"),
                          "--model", model_file, "--axes", "QQYX"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "axes 'QQYX'" in lines[0]
