"""Input channels: RGB / multichannel fine-tuning of 1-channel models, the colour rule in
the model file and the export, picking the bundled model by image, and normalisation of
training crops with the whole image's statistics."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
from _helpers import run_to_end

import napari_unet as nu
from napari_unet.channels import bundled_path, resolve_model, widen_input
from napari_unet.synthetic_tissue import make_tissue_sample
from napari_unet.training import train_iter


@pytest.fixture(scope="module")
def he_tile():
    return make_tissue_sample((96, 96), seed=3, stain="he", scale="20x")


def test_widened_network_sees_the_luminance_or_its_inverse(tiny_model):
    x = torch.rand(1, 1, 92, 92)
    for invert in (False, True):
        wide = widen_input(tiny_model, 3, invert=invert).eval()
        assert wide.config.in_channels == 3 and wide.meta["input"]["inverted"] is invert
        with torch.no_grad():
            want = tiny_model(1 - x if invert else x)
            got = wide(x.repeat(1, 3, 1, 1))
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_rgb_fine_tunes_from_the_fluorescence_model_and_segments(he_tile, tmp_path):
    img, lab = he_tile
    model, records = run_to_end(train_iter([img], [lab], "fluorescence", regions=["all"], iterations=2,
                                           batch_size=1, tile_size=32, val_fraction=0, device="cpu"))
    assert model.config.in_channels == 3
    # H&E is brightfield: the fluorescence filters start out on the inverted luminance
    assert model.meta["input"] == {"channels": 3, "widened_from": 1, "inverted": True,
                                   "channel_names": ["red", "green", "blue"]}
    assert model.meta["history"][-1]["input"]["inverted"] is True
    labels = nu.segment(img, model=model, device="cpu")
    assert labels.shape == img.shape[:2] and labels.dtype == np.int32
    # the rule survives the model file
    again = nu.load_model(nu.save_model(model, tmp_path / "rgb.pt"))
    assert again.meta["input"] == model.meta["input"] and again.config.in_channels == 3
    np.testing.assert_array_equal(nu.segment(img, model=again, device="cpu"), labels)


def test_rgb_without_a_model_starts_from_the_stained_model(he_tile):
    img, lab = he_tile
    _, records = run_to_end(train_iter([img], [lab], None, regions=["all"], iterations=1,
                                       batch_size=1, tile_size=32, val_fraction=0, device="cpu"))
    assert "stained bundled model" in records[0].message
    assert records[0].info["start_model"].startswith("the stained bundled model")


def test_segment_picks_the_model_from_the_image(he_tile):
    img, _ = he_tile
    _, recs = run_to_end(nu.tiling.segment_iter(img, device="cpu"))
    picked = {r.info.get("model") for r in recs} - {None}
    assert picked == {"the stained bundled model (picked for a brightfield RGB image)"}
    gray = img.mean(-1)
    _, recs = run_to_end(nu.tiling.segment_iter(gray, device="cpu"))
    assert {r.info.get("model") for r in recs} - {None} == {"the fluorescence bundled model (picked for a non-RGB image)"}
    # an RGB fluorescence image (bright nuclei on black) is not a slide
    fluo, _ = nu.make_sample((96, 96), seed=1)
    fluo_rgb = np.stack([fluo, fluo // 2, fluo // 3], -1)
    _, recs = run_to_end(nu.tiling.segment_iter(fluo_rgb, device="cpu"))
    assert {r.info.get("model") for r in recs} - {None} == {"the fluorescence bundled model (picked for an RGB fluorescence image)"}
    net, note = resolve_model("stained", rgb=False)
    assert net.meta["modality"] == "stained" and net.config.in_channels == 3 and note is None


def test_two_channels_widen_a_one_channel_model_and_are_refused_by_a_three_channel_one(tiny_model, rng):
    img = rng.uniform(0, 1, (2, 64, 64)).astype(np.float32)
    lab = np.zeros((64, 64), np.int32)
    lab[10:20, 10:20], lab[40:52, 30:44] = 1, 2
    img[:, lab > 0] += 2
    model = nu.fine_tune([img], [lab], tiny_model, regions=["all"], iterations=1, batch_size=1, tile_size=16,
                         val_fraction=0, device="cpu")
    assert model.config.in_channels == 2 and model.meta["input"]["inverted"] is False
    assert nu.segment(img, model=model, axes="CYX", device="cpu").shape == (64, 64)
    rgb_model = widen_input(tiny_model, 3)
    with pytest.raises(ValueError, match="the images have 2 channel") as err:
        nu.fine_tune([img], [lab], rgb_model, regions=["all"], iterations=1, val_fraction=0, device="cpu")
    assert "\n" not in str(err.value)


def test_colour_rule_survives_the_bioimageio_export(tiny_model, he_tile, tmp_path):
    import yaml

    from napari_unet.export import preprocess

    img, _ = he_tile
    model = widen_input(tiny_model, 3, invert=True, channel_names=["red", "green", "blue"]).eval()
    out = nu.export_bioimageio(model, tmp_path / "rgb.zip", test_image=img)
    with zipfile.ZipFile(out) as z:
        rdf = yaml.safe_load(z.read("rdf.yaml"))
        net = torch.jit.load(z.extract("weights.pt", tmp_path))
    assert rdf["config"]["napari_unet"]["meta"]["input"] == model.meta["input"]
    assert rdf["inputs"][0]["axes"][1]["channel_names"] == ["red", "green", "blue"]
    cyx = np.moveaxis(img, -1, 0).astype(np.float32)[None]
    with torch.no_grad():
        got = net(torch.from_numpy(preprocess(cyx, model))).numpy()[0]
    np.testing.assert_allclose(got, nu.predict(img, model, amp=False, device="cpu"), atol=1e-4)


def test_training_crops_use_the_whole_images_percentiles(tiny_model):
    # the bottom strip (held out for validation) is far brighter than the top one: the
    # training strip must be scaled by the whole image's percentiles, as inference does
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 10, (100, 64)).astype(np.float32)
    img[60:] += 1000
    lab = np.zeros((100, 64), np.int32)
    lab[10:20, 10:20], lab[70:80, 30:40] = 1, 2
    _, recs = run_to_end(train_iter([img], [lab], tiny_model, regions=["all"], iterations=1, batch_size=1,
                                    tile_size=16, val_fraction=0.4, device="cpu", zoom_to_model=False))
    item = recs[-1].info["run"].data.items[0]
    p = item.pad
    lo, hi = np.percentile(img, [1.0, 99.8])
    top = item.image[0, p:p + 60, p:p + 64]
    np.testing.assert_allclose(top, (img[:60] - lo) / (hi - lo), atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rgb_fine_tune_and_segment_on_cuda(he_tile):
    img, lab = he_tile
    model = nu.fine_tune([img], [lab], "fluorescence", regions=["all"], iterations=3, batch_size=2, tile_size=64,
                         val_fraction=0, device="cuda", amp=True)
    assert model.config.in_channels == 3 and model.meta["history"][-1]["amp"] is True
    probs_gpu = nu.predict(img, model, device="cuda", amp=False)
    probs_cpu = nu.predict(img, model, device="cpu", amp=False)
    np.testing.assert_allclose(probs_gpu, probs_cpu, atol=2e-3)


def test_a_slide_crowded_with_nuclei_picks_the_stained_model():
    # 60% purple nuclei on a pink slide: the median is below mid-range, the colours are H&E's
    rng = np.random.default_rng(0)
    nuclei = rng.random((96, 96)) < 0.6
    img = np.where(nuclei[..., None], np.array([90, 60, 140]), np.array([240, 200, 220])).astype(np.uint8)
    from napari_unet.channels import pick_bundled

    assert pick_bundled(True, img) == "stained"


def test_fine_tuning_that_never_beats_the_start_returns_the_start():
    img, lab = nu.make_sample((96, 96), seed=2)
    start = nu.load_model(bundled_path("fluorescence"))
    # a learning rate that wrecks the model in one step: no validation beats the start
    model, _ = run_to_end(train_iter([img], [lab], start, iterations=3, lr=0.3, optimizer="sgd", val_every=1,
                                     batch_size=1, tile_size=32, val_fraction=0.5, device="cpu", zoom_to_model=False))
    entry = model.meta["history"][-1]
    assert entry["start_val_ap"] > 0.5
    for k, v in start.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, msg=k)


def test_stained_images_train_without_the_border_term(he_tile):
    img, lab = he_tile
    model, _ = run_to_end(train_iter([img], [lab], None, regions=["all"], iterations=1,
                                     batch_size=1, tile_size=32, val_fraction=0, device="cpu"))
    assert model.meta["history"][-1]["w0"] == 0.0
    fluo, flab = nu.make_sample((96, 96), seed=1)
    model, _ = run_to_end(train_iter([fluo], [flab], None, iterations=1,
                                     batch_size=1, tile_size=32, val_fraction=0, device="cpu"))
    assert model.meta["history"][-1]["w0"] == 10.0


def test_zoom_each_brings_every_image_to_the_models_cell_size():
    """A model recording meta["zoom_each"] (stained tissue at 20x and 40x) trains on each
    image zoomed by its own cells' size: 12-px and 48-px cells both come out 24 px."""
    from napari_unet.diameter import label_diameter
    from napari_unet.training_data import zoom_to_model as _zoom_to_model

    def discs(radius, shape=(200, 220)):
        yy, xx = np.mgrid[: shape[0], : shape[1]]
        lab = np.zeros(shape, np.int32)
        step = int(3 * radius)
        for k, (cy, cx) in enumerate((y, x) for y in range(step // 2, shape[0] - radius, step)
                                     for x in range(step // 2, shape[1] - radius, step)):
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = k + 1
        return (lab > 0).astype(np.float32)[None], lab

    (small, s_lab), (large, l_lab) = discs(6), discs(24, (300, 320))
    net = nu.UNet(in_channels=1, num_classes=3, depth=2, base_width=4)
    net.meta.update(mode="instance3", diameter=24.0, zoom_each=True)
    out = _zoom_to_model(net, False, True, [small, large], [s_lab, l_lab], None, [], [], None)
    imgs, labs = out[0], out[1]
    assert abs(labs[0].shape[0] / 200 - 2) < 0.1 and abs(labs[1].shape[0] / 300 - 0.5) < 0.05  # zoomed 2x and 0.5x
    assert [im.shape[-2:] for im in imgs] == [lab.shape for lab in labs]
    for lab in labs:
        assert abs(label_diameter([lab]) - 24) < 1.5
    assert net.meta["diameter"] == 24.0
    del net.meta["zoom_each"]  # without the flag: one zoom for all
    one = _zoom_to_model(net, False, True, [small, large], [s_lab, l_lab], None, [], [], None)[1]
    assert abs(one[0].shape[0] / 200 - one[1].shape[0] / 300) < 0.01


def test_a_zoom_each_model_segments_at_its_cell_size_by_default():
    """segment(image, model) with such a model measures the cells and zooms, as diameter="auto"."""
    from _helpers import threshold_unet

    from napari_unet.tiling import segment_iter

    yy, xx = np.mgrid[:300, :340]
    lab = np.zeros((300, 340), np.int32)
    for k, (cy, cx) in enumerate([(50, 50), (50, 150), (150, 60), (160, 200), (240, 280), (250, 120)]):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 < 15**2] = k + 1
    img = np.where(lab > 0, 1.0, 0.1).astype(np.float32) + np.random.default_rng(0).normal(0, 0.02, lab.shape).astype(np.float32)
    m = threshold_unet()
    m.meta["diameter"] = 12.0
    _, plain = run_to_end(segment_iter(img, m, device="cpu", min_size=0))
    assert "zoom" not in plain[-1].info
    m.meta["zoom_each"] = True
    out, records = run_to_end(segment_iter(img, m, device="cpu", min_size=0))
    assert abs(records[-1].info["zoom"] - 0.4) < 0.05  # 30-px cells to the model's 12 px
    assert nu.average_precision(lab, out, thresholds=(0.9,))[0.9] == 1.0
    # "as is" (the Segment widget's choice) segments the image unchanged, whatever the model
    _, as_is = run_to_end(segment_iter(img, m, device="cpu", min_size=0, diameter="as is"))
    assert "zoom" not in as_is[-1].info


def test_the_models_post_processing_defaults_apply_and_give_way_to_the_callers():
    """meta["postprocess"] (the stained model's tuned thresholds) are segment's defaults;
    an option the caller passes wins."""
    from _helpers import threshold_unet

    yy, xx = np.mgrid[:96, :96]
    img = np.where((yy - 48) ** 2 + (xx - 48) ** 2 < 12**2, 1.0, 0.1).astype(np.float32)
    m = threshold_unet()
    assert nu.segment(img, m, device="cpu", min_object_z=None).max() == 1
    m.meta["postprocess"] = {"foreground_threshold": 1.0}  # nothing can pass it
    assert nu.segment(img, m, device="cpu", min_object_z=None).max() == 0
    assert nu.segment(img, m, device="cpu", min_object_z=None, foreground_threshold=0.5).max() == 1


def test_validation_scores_with_the_models_post_processing():
    """Training picks its checkpoint by what segment will do: the model's meta["postprocess"]."""
    from types import SimpleNamespace

    from napari_unet.training import _val_score

    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 < 10**2
    probs = np.stack([np.where(disc, 0.2, 0.9), np.where(disc, 0.8, 0.1), np.zeros((64, 64))]).astype(np.float32)
    v = SimpleNamespace(gt=disc.astype(np.int32), mask=np.ones((64, 64), bool))
    assert _val_score(probs, v, "instance3", False, {}) == 1.0
    assert _val_score(probs, v, "instance3", False, {"foreground_threshold": 0.9}) == 0.0


def test_the_stained_model_records_its_tuned_post_processing():
    """Pinned: chosen on the shared H&E tiles (models/stained.md); the fluorescence model has none."""
    from napari_unet.model import load_model

    meta = load_model(bundled_path("stained")).meta
    assert meta["postprocess"] == {"foreground_threshold": 0.3, "seed_threshold": 0.3, "h": 2.0}
    assert meta["zoom_each"] is True
    assert "postprocess" not in nu.load_model().meta and "zoom_each" not in nu.load_model().meta


def test_cell_size_is_measured_with_the_packages_post_processing():
    """A model's meta["postprocess"] (tuned for its final labels) does not change what
    diameter="auto" measures: the ladder of zooms was calibrated with the defaults."""
    from _helpers import threshold_unet

    from napari_unet.diameter import measure_diameter

    yy, xx = np.mgrid[:300, :340]
    img = np.full((300, 340), 0.1, np.float32)
    for cy, cx in [(50, 50), (50, 150), (150, 60), (160, 200), (240, 280), (250, 120), (60, 280)]:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 15**2] = 1.0
    img += np.random.default_rng(0).normal(0, 0.02, img.shape).astype(np.float32)
    m = threshold_unet()
    m.meta["diameter"] = 12.0
    plain = measure_diameter(img, m, device="cpu")
    m.meta["postprocess"] = {"foreground_threshold": 1.0}  # would find no cells at all
    assert measure_diameter(img, m, device="cpu") == plain
    assert abs(plain - 30) < 3
