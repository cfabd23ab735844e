"""bioimage.io export: a package the official validator accepts, whose TorchScript gives
napari-unet's own probabilities."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
from _helpers import threshold_unet

import napari_unet as nu
from napari_unet.export import export_bioimageio, min_input_size, preprocess

spec = pytest.importorskip("bioimageio.spec")


def _open(path):
    z = zipfile.ZipFile(path)
    net = torch.jit.load(io.BytesIO(z.read("weights.pt")))
    return z, net


def _validate(path):
    descr = spec.load_description(path)
    summary = descr.validation_summary
    assert type(descr).__name__ == "ModelDescr", summary.format()
    assert summary.status in ("valid-format", "passed"), summary.format()
    return descr


def test_tiny_model_package_is_valid_and_matches_predict(tmp_path):
    torch.manual_seed(0)
    model = nu.UNet(in_channels=1, num_classes=3, depth=2, base_width=4, dropout=0.0).eval()
    model.meta["diameter"] = 11.0
    rng = np.random.default_rng(0)
    test = rng.normal(100, 20, (70, 90)).astype(np.float32)
    out = export_bioimageio(model, tmp_path / "tiny.zip", test_image=test, authors=["A. Person"])
    descr = _validate(out)
    z, net = _open(out)
    import yaml

    assert yaml.safe_load(z.read("rdf.yaml"))["config"]["napari_unet"]["meta"]["diameter"] == 11.0
    assert [a.name for a in descr.authors] == ["A. Person"]
    assert {"rdf.yaml", "weights.pt", "README.md", "cover.png", "test_input.npy", "test_output.npy"} <= set(z.namelist())
    # the test tensors are what the package computes, and what napari-unet predicts
    t_in, t_out = np.load(io.BytesIO(z.read("test_input.npy"))), np.load(io.BytesIO(z.read("test_output.npy")))
    assert t_in.shape == (1, 1, 70, 90) and t_out.shape == (1, 3, 70, 90)
    with torch.no_grad():
        np.testing.assert_allclose(net(torch.from_numpy(preprocess(t_in, model))).numpy(), t_out, atol=1e-6)
        odd = rng.normal(50, 10, (min_input_size(model) + 7, 101)).astype(np.float32)  # any size works
        got = net(torch.from_numpy(preprocess(odd[None, None], model))).numpy()[0]
    np.testing.assert_allclose(got, nu.predict(odd, model, amp=False, device="cpu"), atol=1e-4)


def test_bundled_model_package(tmp_path):
    out = export_bioimageio(None, tmp_path / "bundled.zip")
    _validate(out)
    z, _ = _open(out)
    readme = z.read("README.md").decode()
    assert "Model card" in readme and "## Validation" in readme


def test_fixed_normalisation_and_two_channels(tmp_path):
    model = threshold_unet(in_channels=2)
    model.meta["normalization"] = {"kind": "fixed", "lo": [0.0, 10.0], "hi": [2.0, 30.0]}
    img = np.random.default_rng(1).uniform(0, 2, (2, 64, 80)).astype(np.float32)
    img[1] = img[1] * 10 + 10
    out = export_bioimageio(model, tmp_path / "fixed.zip", test_image=img)
    descr = _validate(out)
    assert "scale_linear" in [p.id for p in descr.inputs[0].preprocessing]
    _, net = _open(out)
    with torch.no_grad():
        got = net(torch.from_numpy(preprocess(img[None], model))).numpy()[0]
    np.testing.assert_allclose(got, nu.predict(img, model, axes="CYX", amp=False, device="cpu"), atol=1e-4)


def test_a_membrane_models_class_bias_is_exported(tmp_path):
    torch.manual_seed(1)
    model = nu.UNet(in_channels=1, num_classes=2, depth=2, base_width=4, dropout=0.0).eval()
    model.meta.update(mode="instance2", preset="membranes", class_bias=[-0.85, 0.0])
    img = np.random.default_rng(2).normal(100, 20, (64, 72)).astype(np.float32)
    _, net = _open(export_bioimageio(model, tmp_path / "em.zip", test_image=img))
    with torch.no_grad():
        got = net(torch.from_numpy(preprocess(img[None, None], model))).numpy()[0]
    want = nu.predict(img, model, amp=False, device="cpu")
    np.testing.assert_allclose(got, want, atol=1e-4)
    # the bias moved the probabilities: without it they differ from predict's
    model.meta.pop("class_bias")
    assert np.abs(nu.predict(img, model, amp=False, device="cpu") - want).max() > 0.05
    model.meta["class_bias"] = [0.5]  # one value for two classes
    with pytest.raises(ValueError, match="class_bias has 1 values for 2 classes"):
        export_bioimageio(model, tmp_path / "bad.zip", test_image=img)


def test_bad_requests_say_so(tmp_path, capsys):
    from napari_unet.cli import main

    model = threshold_unet()
    with pytest.raises(ValueError, match="zip"):
        export_bioimageio(model, tmp_path / "m.tar")
    with pytest.raises(ValueError, match="at least"):
        export_bioimageio(model, tmp_path / "m.zip", test_image=np.zeros((20, 20), np.float32))
    path = nu.save_model(model, tmp_path / "m.pt")
    assert main(["export", str(path), "-o", str(tmp_path / "m.zip")]) == 0
    assert main(["export", str(path), "-o", str(tmp_path / "m.zip")]) == 2  # exists
    assert "overwrite" in capsys.readouterr().err
    assert main(["export", str(path), "-o", str(tmp_path / "m.zip"), "--overwrite"]) == 0
