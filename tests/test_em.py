"""EM membranes: the scores (against scikit-image), both input forms, the preset, the CLI."""

import json

import numpy as np
import pytest
import tifffile
import torch
from _helpers import membrane_image
from scipy import ndimage as ndi
from skimage.metrics import adapted_rand_error as sk_rand
from skimage.metrics import variation_of_information as sk_vi

import napari_unet as nu
from napari_unet.cli import main
from napari_unet.postprocess import probabilities_to_labels
from napari_unet.targets import looks_like_membranes, membrane_mask_to_cells


def test_em_scores_agree_with_scikit_image():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, (30, 40))
    pred = rng.integers(0, 7, (30, 40))
    np.testing.assert_allclose(nu.adapted_rand_error(gt, pred), sk_rand(gt, pred), rtol=1e-12)
    np.testing.assert_allclose(nu.variation_of_information(gt, pred), sk_vi(gt, pred), rtol=1e-12)
    np.testing.assert_allclose(nu.variation_of_information(gt, pred, (0,)), sk_vi(gt, pred, ignore_labels=(0,)),
                               rtol=1e-12)
    # a realistic case: two of the cells merged, one split; ids need not be consecutive
    _, cells, _ = membrane_image()
    pred = ndi.grey_dilation(cells, size=3) * 7
    pred[pred == 7 * 3] = 7 * 4
    pred[:, :20][pred[:, :20] == 7 * 5] = 999
    np.testing.assert_allclose(nu.adapted_rand_error(cells, pred), sk_rand(cells, pred), rtol=1e-12)
    np.testing.assert_allclose(nu.variation_of_information(cells, pred), sk_vi(cells, pred), rtol=1e-12)
    scores = nu.em_scores(cells, pred)
    assert scores["rand_error"] == pytest.approx(sk_rand(cells, pred)[0])
    assert scores["vi"] == pytest.approx(sum(sk_vi(cells, pred, ignore_labels=(0,))))


def test_pixel_error_counts_wrong_membrane_calls():
    gt = np.array([[0, 1, 1, 1], [0, 2, 2, 0]])  # 0 = membrane
    prob = np.array([[0.9, 0.6, 0.1, 0.2], [0.4, 0.0, 0.5, 0.8]])  # 0.5 itself is not membrane
    assert nu.pixel_error(gt, prob) == pytest.approx(2 / 8)
    assert nu.pixel_error(gt == 0, prob) == pytest.approx(2 / 8)


def test_evaluate_cli_prints_em_scores(tmp_path, capsys):
    _, cells, membrane = membrane_image()
    pred = ndi.grey_dilation(cells, size=3)
    prob = ndi.gaussian_filter(membrane.astype(np.float32), 1.0)
    tifffile.imwrite(tmp_path / "gt.tif", (cells > 0).astype(np.uint8))  # the ISBI form: 1 = interior
    np.save(tmp_path / "pred.npy", pred)
    np.save(tmp_path / "prob.npy", prob)
    args = ["evaluate", str(tmp_path / "gt.tif"), str(tmp_path / "pred.npy"), "--em"]
    assert main(args + ["--membrane-probability", str(tmp_path / "prob.npy"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["mean"]
    want = nu.em_scores(cells, pred, prob)
    assert got == pytest.approx(want)
    assert main(args) == 0
    assert f"adapted Rand error  {want['rand_error']:.4f}" in capsys.readouterr().out
    assert main(args[:-1] + ["--membrane-probability", str(tmp_path / "prob.npy")]) == 2
    assert "add --em" in capsys.readouterr().err


def test_membrane_labels_are_recognised():
    _, cells, membrane = membrane_image()
    assert looks_like_membranes(cells)
    np.testing.assert_array_equal(membrane_mask_to_cells(membrane) > 0, cells > 0)
    nuclei = nu.make_sample((96, 96))[1]
    assert not looks_like_membranes(nuclei)


FAST = dict(batch_size=2, tile_size=48, device="cpu", amp=False, val_fraction=0.0, lr=3e-3)


def _tiny2():
    torch.manual_seed(0)
    m = nu.UNet(1, 2, depth=2, base_width=8, dropout=0.0)
    m.meta["mode"] = "instance2"
    return m


def test_both_input_forms_train_and_segment_cells():
    torch.set_num_threads(1)
    data = [membrane_image(seed=s) for s in range(3)]
    img, cells, _ = membrane_image(seed=10)
    imgs = [d[0] for d in data]
    start = _tiny2()
    from_cells = nu.fine_tune(imgs, [d[1] for d in data], start, preset="membranes", iterations=60, **FAST)
    from_mask = nu.fine_tune(imgs, [d[2] for d in data], start, preset="membrane-mask", iterations=60, **FAST)
    assert from_cells.meta["preset"] == from_mask.meta["preset"] == "membranes"
    assert from_cells.meta["history"][-1]["preset"] == "membranes"
    # the painted mask is turned into the same cells: the two runs are the same run
    for a, b in zip(from_cells.state_dict().values(), from_mask.state_dict().values()):
        torch.testing.assert_close(a, b)
    probs = nu.predict(img, model=from_cells)
    seg = nu.segment(img, model=from_cells)
    np.testing.assert_array_equal(seg, probabilities_to_labels(probs, "instance2", membranes=True))
    before = nu.em_scores(cells, nu.segment(img, model=start), nu.predict(img, model=start)[0])
    after = nu.em_scores(cells, seg, probs[0])
    assert after["pixel_error"] < 0.25 < before["pixel_error"], (before, after)
    assert after["rand_error"] < 0.2 < before["rand_error"], (before, after)


def test_instance2_from_scratch_on_membrane_labels_gets_the_preset():
    torch.set_num_threads(1)
    img, cells, _ = membrane_image()
    m = nu.fine_tune([img], [cells], "scratch", mode="instance2", regions=["all"], iterations=1, **FAST)
    assert m.meta["preset"] == "membranes"
    nuclei_img, nuclei = nu.make_sample((96, 96))
    m = nu.fine_tune([nuclei_img], [nuclei], "scratch", mode="instance2", iterations=1, **FAST)
    assert "preset" not in m.meta
    with pytest.raises(ValueError, match="preset 'membranes' trains mode 'instance2'"):
        nu.fine_tune([img], [cells], "scratch", mode="instance3", preset="membranes", iterations=1, **FAST)
    with pytest.raises(ValueError, match="unknown preset"):
        nu.fine_tune([img], [cells], "scratch", preset="EM", iterations=1, **FAST)


def test_cli_train_from_a_membrane_mask(tmp_path, capsys):
    _, _, membrane = membrane_image()
    img = membrane_image()[0]
    tifffile.imwrite(tmp_path / "em.tif", img)
    tifffile.imwrite(tmp_path / "em_membranes.tif", membrane.astype(np.uint8))
    start = tmp_path / "start.pt"
    nu.save_model(_tiny2(), start)
    out = tmp_path / "out.pt"
    assert main(["train", "--images", str(tmp_path / "em.tif"), "--labels", str(tmp_path / "em_membranes.tif"),
                 "-o", str(out), "--model", str(start), "--preset", "membrane-mask", "--iterations", "2",
                 "--device", "cpu", "--tile-size", "32", "--batch-size", "2", "--val-fraction", "0.5"]) == 0
    assert nu.load_model(out).meta["preset"] == "membranes"
    out = capsys.readouterr().out
    assert "validation 1 - Rand error" in out and "AP@" not in out  # not "AP" for membranes
