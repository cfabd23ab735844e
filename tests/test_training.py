import math
import time

import numpy as np
import pytest
import torch
from _helpers import run_to_end

import napari_unet as nu
from napari_unet import training
from napari_unet._progress import Progress
from napari_unet.augment import AugmentConfig
from napari_unet.metrics import average_precision
from napari_unet.training import fine_tune, lr_factor, train_iter, weighted_cross_entropy


def discs(shape=(96, 96), seed=0, n=14):
    """Touching bright discs on a noisy background, with their instance labels."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    lab = np.zeros(shape, np.int32)
    k = 0
    for _ in range(n * 20):
        if k == n:
            break
        r = rng.uniform(5, 9)
        cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if (lab[disc] > 0).mean() > 0.1:
            continue
        k += 1
        lab[disc & (lab == 0)] = k
    img = np.where(lab > 0, rng.uniform(0.5, 1.0), 0.1).astype(np.float32)
    img = img + rng.normal(0, 0.08, shape).astype(np.float32)
    return img, lab


def tiny(num_classes=3):
    torch.manual_seed(0)
    m = nu.UNet(1, num_classes, depth=2, base_width=8, dropout=0.0)
    m.meta["mode"] = {3: "instance3", 2: "instance2"}.get(num_classes, "semantic")
    return m


FAST = dict(batch_size=2, tile_size=32, device="cpu", amp=False, val_fraction=0.0)


# -- loss ----------------------------------------------------------------------------------


def test_weighted_loss_matches_hand_computation():
    logits = torch.tensor([[[[2.0, 0.0, -1.0]], [[0.0, 1.0, 3.0]]]])  # (1, 2, 1, 3)
    targets = torch.tensor([[[0, 1, 0]]])
    weights = torch.tensor([[[1.0, 3.0, 10.0]]])
    mask = torch.tensor([[[True, True, False]]])
    # hand: ce = -log softmax at the target class
    ce0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(0)))
    ce1 = -math.log(math.exp(1) / (math.exp(0) + math.exp(1)))
    expected = (1 * ce0 + 3 * ce1) / (1 + 3)  # the masked pixel has weight 0
    got = weighted_cross_entropy(logits, targets, weights, mask)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # no weights/mask: the plain mean
    ce2 = -math.log(math.exp(-1) / (math.exp(-1) + math.exp(3)))
    assert weighted_cross_entropy(logits, targets).item() == pytest.approx((ce0 + ce1 + ce2) / 3, rel=1e-6)


def test_loss_crops_targets_to_the_valid_output():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    big_t = torch.randint(0, 3, (2, 8, 8))
    big_w = torch.rand(2, 8, 8)
    got = weighted_cross_entropy(logits, big_t, big_w)
    want = weighted_cross_entropy(logits, big_t[:, 2:6, 2:6], big_w[:, 2:6, 2:6])
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_ignored_pixels_contribute_no_gradient():
    torch.manual_seed(1)
    logits = torch.randn(1, 3, 6, 6, requires_grad=True)
    targets = torch.randint(0, 3, (1, 6, 6))
    mask = torch.ones(1, 6, 6, dtype=torch.bool)
    mask[0, :3] = False
    weighted_cross_entropy(logits, targets, torch.rand(1, 6, 6) + 0.5, mask).backward()
    assert torch.all(logits.grad[:, :, :3] == 0)
    assert torch.any(logits.grad[:, :, 3:] != 0)
    # and ignored pixels may hold any value, even a class the model does not have
    bad = targets.clone()
    bad[0, :3] = 99
    a = weighted_cross_entropy(logits, targets, None, mask)
    b = weighted_cross_entropy(logits, bad, None, mask)
    assert a.item() == b.item()


def test_schedule_warms_up_and_decays():
    assert lr_factor(0.0) < 0.05
    assert lr_factor(0.05) == pytest.approx(1.0)
    assert lr_factor(0.5) < 1.0
    assert lr_factor(1.0) == pytest.approx(0.01)


# -- training ------------------------------------------------------------------------------


def _segment(model, image):
    from napari_unet.postprocess import probabilities_to_labels
    from napari_unet.tiling import padded_logits

    model = model.eval()
    lo, hi = np.percentile(image, [1.0, 99.8])
    x = ((image - lo) / (hi - lo)).astype(np.float32)[None]
    probs = torch.softmax(padded_logits(model, x, torch.device("cpu"), False)[0], 0).numpy()
    return probabilities_to_labels(probs, model.meta["mode"])


def test_validation_scores_an_image_as_inference_pads_it():
    """Validation's loss on an image smaller than the halo is the loss of ``predict``'s
    probabilities: it pads as inference does (reflect; it used to pad "symmetric")."""
    from napari_unet.targets import labels_to_targets
    from napari_unet.tiling import predict

    torch.set_num_threads(1)
    img, lab = discs((16, 16), seed=3, n=1)
    start = tiny()
    assert start.halo >= 16  # the padding is wider than the image
    train = [discs(seed=s) for s in range(2)]
    _, records = run_to_end(train_iter([i for i, _ in train], [lab_ for _, lab_ in train], start, iterations=1, lr=0.0,
                                       batch_size=1, tile_size=32, device="cpu", amp=False, val_images=[img],
                                       val_labels=[lab], val_regions=["all"], w0=0.0, zoom_to_model=False))
    last = records[-1]
    net = last.info["run"].model.eval()
    probs = predict(img, net, device="cpu", amp=False)
    targets, _ = labels_to_targets(lab, "instance3", "all")
    expected = float(np.mean(-np.log(np.take_along_axis(probs, targets[None].astype(np.int64), 0))))
    assert last.info["val_loss"] == pytest.approx(expected, rel=1e-5)


def test_short_training_run_improves_held_out_ap():
    torch.set_num_threads(1)
    train = [discs(seed=s) for s in range(6)]
    held = [discs(seed=100 + s) for s in range(3)]
    start = tiny()

    def ap(model):
        return float(np.mean([average_precision(lab, _segment(model, img), 0.5)[0.5] for img, lab in held]))

    ap0 = ap(start)
    t0 = time.perf_counter()
    trained = fine_tune(
        [i for i, _ in train], [lab for _, lab in train], start, iterations=150, lr=3e-3, batch_size=4,
        tile_size=48, device="cpu", amp=False, regions=["all"] * 6, val_fraction=0.0,
    )
    took = time.perf_counter() - t0
    ap1 = ap(trained)
    assert ap1 > ap0 + 0.3, (ap0, ap1)
    assert ap1 > 0.45
    assert took < 90
    # the caller's model is untouched; the history records the run
    assert trained.meta["history"][-1]["iterations"] == 150
    assert not start.meta["history"]


def test_progress_every_step_and_validation_picks_best(tmp_path):
    data = [discs(seed=s) for s in range(4)]
    gen = train_iter([d[0] for d in data], [d[1] for d in data], tiny(), iterations=12, val_every=4,
                     batch_size=2, tile_size=32, device="cpu", amp=False, val_fraction=0.25)
    model, recs = run_to_end(gen)
    steps = [r.info["iteration"] for r in recs if r.info.get("phase") == "train"]
    assert steps == list(range(1, 13))
    assert all(isinstance(r, Progress) for r in recs)
    vals = [r.info for r in recs if "val_ap" in r.info and r.info.get("phase") == "train"]
    assert len(vals) == 3 and all(0 <= v["val_ap"] <= 1 and v["val_loss"] > 0 for v in vals)
    assert all(r.info["eta"] >= 0 and r.info["lr"] > 0 and "cpu" in r.info["device"] for r in recs if r.info.get("phase") == "train")
    run = recs[-1].info["run"]
    best_it = run.best_iteration
    assert best_it in (0, 4, 8, 12)  # 0: the starting model, validated before step 1, was not beaten
    # the returned model is the best one
    best = run.best_model()
    for a, b in zip(model.state_dict().values(), best.state_dict().values()):
        assert torch.equal(a, b)
    assert model.meta["history"][-1]["best_iteration"] == best_it


def test_cancel_stops_within_a_second_and_keeps_best():
    data = [discs(seed=s) for s in range(2)]
    gen = train_iter([d[0] for d in data], [d[1] for d in data], tiny(), iterations=10_000, **FAST)
    for _ in range(4):
        rec = next(gen)
    t0 = time.perf_counter()
    gen.close()
    assert time.perf_counter() - t0 < 1.0
    assert rec.info["run"].iteration == 3
    assert isinstance(rec.info["run"].best_model(), nu.UNet)


def test_max_time_is_honoured():
    data = [discs(seed=s) for s in range(2)]
    t0 = time.perf_counter()
    model = fine_tune([d[0] for d in data], [d[1] for d in data], tiny(), max_time=1.5, **FAST)
    took = time.perf_counter() - t0
    assert 1.5 <= took < 4.0
    assert model.meta["history"][-1]["stopped"] == "time"


def test_resume_continues_from_the_saved_iteration(tmp_path):
    data = [discs(seed=s) for s in range(2)]
    imgs, labs = [d[0] for d in data], [d[1] for d in data]
    gen = train_iter(imgs, labs, tiny(), iterations=20, checkpoint_dir=tmp_path, checkpoint_every=5, **FAST)
    for rec in gen:
        if rec.info.get("iteration") == 7 and rec.info.get("phase") == "train":
            break
    gen.close()  # killed at iteration 7; the last checkpoint is at 5
    assert torch.load(tmp_path / "state.pt", weights_only=True)["iteration"] == 5
    assert nu.load_model(tmp_path / "last.pt").meta["history"][-1]["iterations"] == 5
    gen = train_iter(imgs, labs, None, iterations=20, resume=tmp_path, **FAST)
    first = next(gen)
    assert first.done == 5
    model, recs = run_to_end(gen)
    steps = [r.info["iteration"] for r in recs if r.info.get("phase") == "train"]
    assert steps == list(range(6, 21))
    assert model.meta["history"][-1]["iterations"] == 20
    assert len(model.meta["history"]) == 1
    with pytest.raises(ValueError, match="cannot resume"):
        next(train_iter(imgs, labs, iterations=3, resume=tmp_path / "nothing", **FAST))


def test_scratch_runs_with_one_seed_start_from_the_same_weights():
    """A fresh network's initial weights follow ``seed`` (they used torch's global state)."""
    img, lab = discs()
    a = fine_tune([img], [lab], "scratch", iterations=1, seed=3, **FAST)
    torch.manual_seed(12345)  # whatever ran before must not matter
    b = fine_tune([img], [lab], "scratch", iterations=1, seed=3, **FAST)
    c = fine_tune([img], [lab], "scratch", iterations=1, seed=4, **FAST)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


def test_a_starting_model_that_stays_best_is_written_to_best_pt(tmp_path):
    """With lr 0 no step beats the starting model: best.pt must still hold it, so that a
    resumed run keeps it."""
    (img, lab), (vimg, vlab) = discs(seed=0), discs(seed=1)
    start = tiny()
    gen = train_iter([img], [lab], start, iterations=6, lr=0.0, val_every=3, val_images=[vimg], val_labels=[vlab],
                     checkpoint_dir=tmp_path, checkpoint_every=3, **FAST)
    model, recs = run_to_end(gen)
    run = recs[-1].info["run"]
    assert run.best_state is not None and run.best_iteration == 0
    best = nu.load_model(tmp_path / "best.pt")
    assert all(torch.equal(x, y) for x, y in zip(best.state_dict().values(), start.state_dict().values()))
    # the run says so plainly, and its starting score reaches a plot (it was never yielded)
    starts = [r.info for r in recs if r.info.get("phase") == "start_score"]
    assert len(starts) == 1 and starts[0]["iteration"] == 0 and starts[0]["val_ap"] == run.start_score
    assert run.improved is False
    rec = model.meta["history"][-1]
    assert rec["improved"] is False and rec["start_val_ap"] == round(run.start_score, 5)
    assert training.describe_outcome(rec) == (
        f"training did not improve on the starting model (validation AP@0.5 {run.start_score:.2f} before and "
        "after); the starting model is kept")


def test_a_time_budget_validates_at_its_last_step():
    """On a time budget validation ran only every 50 steps, so a short run's last steps
    were never weighed against the starting model."""
    (img, lab), (vimg, vlab) = discs(seed=0), discs(seed=1)
    gen = train_iter([img], [lab], tiny(), max_time=0.4, val_images=[vimg], val_labels=[vlab],
                     **dict(FAST, val_fraction=0.2))
    model, recs = run_to_end(gen)
    last = max(r.info["iteration"] for r in recs if r.info.get("phase") == "train")
    assert last % 50 != 0, "the run happened to end at a multiple of 50 steps: lengthen it"
    validated = [r.info["iteration"] for r in recs if r.info.get("phase") == "train" and "val_ap" in r.info]
    assert validated and validated[-1] == last, (validated, last)
    assert model.meta["history"][-1]["stopped"] == "time"


def test_resumed_time_limited_run_keeps_its_budget_and_schedule(tmp_path):
    """max_time is the whole run's: a resumed run trains only what is left of it, with the
    learning rate where the schedule had got to (not a new warm-up)."""
    img, lab = discs()
    gen = train_iter([img], [lab], tiny(), max_time=5.0, checkpoint_dir=tmp_path, checkpoint_every=1, **FAST)
    for rec in gen:
        if rec.info.get("phase") == "train" and rec.info["eta"] < 2.5:  # past half of the budget
            break
    gen.close()
    elapsed = torch.load(tmp_path / "state.pt", weights_only=True)["elapsed"]
    assert 2.0 < elapsed < 5.0
    t0 = time.perf_counter()
    model, recs = run_to_end(train_iter([img], [lab], None, max_time=5.0, resume=tmp_path, **FAST))
    took = time.perf_counter() - t0
    lrs = [r.info["lr"] for r in recs if r.info.get("phase") == "train"]
    assert took < 5.0 - elapsed + 2.0  # the rest of the budget (and set-up), not a new one
    peak = training.LR_PARTIAL  # labelled cells without a region: partly annotated
    assert lrs and lrs[0] < peak * training.lr_factor(0.3)  # past the middle of the cosine
    assert lrs[0] > peak * training.FINAL_LR_FRACTION  # and not at its end either
    assert model.meta["history"][-1]["stopped"] == "time"


def test_nan_image_and_diverging_loss_give_clear_errors():
    img, lab = discs()
    bad = img.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fine_tune([bad], [lab], tiny(), iterations=2, **FAST)
    broken = tiny()
    with torch.no_grad():
        broken.head.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="learning rate too high"):
        fine_tune([img], [lab], broken, iterations=2, **FAST)


def test_input_errors():
    img, lab = discs()
    with pytest.raises(ValueError, match="2 label images"):
        fine_tune([img], [lab, lab], tiny(), **FAST)
    with pytest.raises(ValueError, match="shape"):
        fine_tune([img], [lab[:50]], tiny(), iterations=2, **FAST)
    with pytest.raises(ValueError, match="empty"):
        fine_tune([img], [np.zeros_like(lab)], tiny(), iterations=2, **FAST)
    with pytest.raises(ValueError, match="mode"):
        fine_tune([img], [lab], tiny(), mode="instance2", iterations=2, **FAST)
    with pytest.raises(ValueError, match="keep_start"):
        fine_tune([img], [lab], tiny(), keep_start=1.5, iterations=2, **FAST)


def test_sparse_region_only_trains_on_annotated_pixels():
    from napari_unet.training import TrainingData

    img, lab = discs()
    region = np.zeros(lab.shape, bool)
    region[:40, :40] = True
    data = TrainingData([img], [lab], [region], mode="instance3", normalization={"kind": "percentile"},
                        in_channels=1, source_size=40)
    assert data.items[0].counted == region.sum()
    rng = np.random.default_rng(0)
    for _ in range(10):
        _, _, _, m = data.sample(2, rng)
        # crops are centred on annotated pixels
        assert m[:, 20, 20].all()
    assert not data.items[0].mask[data.items[0].pad + 60, data.items[0].pad + 60]


def test_scratch_semantic_model_and_instance2():
    img, lab = discs()
    sem = (lab > 0).astype(np.int32) + (lab > 7).astype(np.int32)  # classes 0, 1, 2
    model = fine_tune([img], [sem], "scratch", mode="semantic", regions=["all"], iterations=3, **FAST)
    assert model.meta["mode"] == "semantic" and model.config.num_classes == 3
    m2 = fine_tune([img], [lab], tiny(2), iterations=3, **FAST)
    assert m2.meta["mode"] == "instance2"


def test_augmentation_config_is_used():
    img, lab = discs()
    model = fine_tune([img], [lab], tiny(), iterations=2, augment=AugmentConfig.off(), **FAST)
    assert model.meta["history"][-1]["augment"]["enabled"] is False


def test_cli_train_writes_a_model(tmp_path, capsys):
    import tifffile

    from napari_unet.cli import main

    img, lab = discs()
    tifffile.imwrite(tmp_path / "a.tif", img)
    tifffile.imwrite(tmp_path / "a_lab.tif", lab)
    start = tmp_path / "start.pt"
    nu.save_model(tiny(), start)
    out = tmp_path / "out.pt"
    rc = main(["train", "--images", str(tmp_path / "a.tif"), "--labels", str(tmp_path / "a_lab.tif"), "-o", str(out),
               "--model", str(start), "--iterations", "4", "--device", "cpu", "--tile-size", "32", "--batch-size", "2",
               "--checkpoint-dir", str(tmp_path / "ck")])
    assert rc == 0
    assert nu.load_model(out).meta["history"][-1]["iterations"] == 4
    assert (tmp_path / "ck" / "last.pt").is_file()
    assert "wrote" in capsys.readouterr().out
    # bad input: one line, exit status 2
    rc = main(["train", "--images", str(tmp_path / "a.tif"), "-o", str(out), "--model", str(start), "--overwrite"])
    assert rc == 2
    assert "same number of files" in capsys.readouterr().err


def test_cli_train_says_when_training_did_not_improve_on_the_start(tmp_path, capsys):
    """The summary read "best validation AP@0.5 ... at iteration 0" for a file holding the
    starting model unchanged."""
    import tifffile

    from napari_unet.cli import main

    img, lab = discs()
    tifffile.imwrite(tmp_path / "a.tif", img)
    tifffile.imwrite(tmp_path / "a_lab.tif", lab)
    nu.save_model(tiny(), tmp_path / "start.pt")
    out = tmp_path / "out.pt"
    assert main(["train", "--images", str(tmp_path / "a.tif"), "--labels", str(tmp_path / "a_lab.tif"), "-o",
                 str(out), "--model", str(tmp_path / "start.pt"), "--iterations", "3", "--lr", "0", "--device", "cpu",
                 "--tile-size", "32", "--batch-size", "2", "--val-fraction", "0.5"]) == 0
    text = capsys.readouterr().out
    assert "training did not improve on the starting model (validation AP@0.5" in text, text
    assert "the starting model is kept (the file holds its weights)" in text and "iteration 0" not in text


def test_early_stopping_stops_after_patience():
    data = [discs(seed=s) for s in range(4)]
    model = fine_tune([d[0] for d in data], [d[1] for d in data], tiny(), iterations=400, val_every=2,
                      early_stopping=2, lr=1e-9, batch_size=2, tile_size=32, device="cpu", amp=False,
                      val_fraction=0.25)
    last = model.meta["history"][-1]
    # with a negligible learning rate only BatchNorm statistics move: it soon stalls
    assert last["stopped"] == "early stopping"
    assert last["iterations"] < 100


def test_instance2_weights_put_the_border_term_on_carved_contacts():
    """The paper's 2-class form: pixels carved between touching cells get eq. 2's peak."""
    from napari_unet.targets import labels_to_targets
    from napari_unet.training_data import weights_for

    lab = np.zeros((40, 60), np.int32)
    lab[10:30, 10:30] = 1
    lab[10:30, 30:50] = 2  # touches cell 1 along x = 29/30
    targets, _ = labels_to_targets(lab, "instance2", "all")
    w = weights_for(lab, targets, "instance2", 10.0, 5.0, None)
    carved = (lab > 0) & (targets == 0)
    assert carved.any()
    # between two cells 0-1 px away the border term is close to w0
    assert w[carved].min() > 1.0 + 0.8 * 10.0
    # and far inside a cell there is no border term
    assert w[20, 20] == 1.0


# -- post-processing chosen on the validation images ----------------------------------------


def _faint_cells(n_images, seed=0, p_cell=0.42):
    """Instance labels of separate discs and instance2 probabilities whose cells are faint
    (p(cell) below 0.5): the default threshold finds nothing, a lower one everything."""
    rng = np.random.default_rng(seed)
    probs, gts = [], []
    for _ in range(n_images):
        lab = np.zeros((96, 96), np.int32)
        yy, xx = np.mgrid[:96, :96]
        k = 0
        for cy in range(12, 96, 24):
            for cx in range(12, 96, 24):
                k += 1
                lab[(yy - cy - rng.integers(-3, 4)) ** 2 + (xx - cx - rng.integers(-3, 4)) ** 2 <= 49] = k
        p = np.where(lab > 0, p_cell, 0.05).astype(np.float32)
        probs.append(np.stack([1 - p, p]))
        gts.append(lab)
    return probs, gts, [np.ones((96, 96), bool)] * n_images


def test_choose_postprocess_finds_the_threshold_the_defaults_miss():
    from napari_unet.training import TUNE_MIN_CELLS, choose_postprocess

    probs, gts, masks = _faint_cells(3)  # 48 cells
    assert sum(len(np.unique(g)) - 1 for g in gts) >= TUNE_MIN_CELLS
    options, score, base = choose_postprocess(probs, gts, masks, "instance2", {"min_size": 16})
    assert base == 0.0 and score == 1.0
    assert options["foreground_threshold"] < 0.42 and options["min_size"] == 16  # the caller's other options stay
    # too few cells to choose from: nothing is chosen
    assert choose_postprocess(probs[:1], gts[:1], masks[:1], "instance2", {}) is None
    # defaults that already segment every cell are kept
    probs, gts, masks = _faint_cells(3, p_cell=0.9)
    assert choose_postprocess(probs, gts, masks, "instance2", {"foreground_threshold": 0.5}) == (
        {"foreground_threshold": 0.5}, 1.0, 1.0)
    # cells found outside the annotated region (the left half) are not counted as false
    probs, gts, masks = _faint_cells(6, p_cell=0.9)
    masks = [np.zeros((96, 96), bool) for _ in range(6)]
    for m in masks:
        m[:, :48] = True
    gts = [g * m for g, m in zip(gts, masks)]  # 8 annotated cells per image, 8 more predicted beside them
    assert choose_postprocess(probs, gts, masks, "instance2", {}) == ({}, 1.0, 1.0)
    assert choose_postprocess(probs[:4], gts[:4], masks[:4], "instance2", {}) is None  # 32 annotated cells


def test_fine_tuning_corrects_a_post_processing_default_its_validation_refutes():
    """The bundled model with post-processing defaults that merge and miss cells: a run with
    ``tune_postprocess`` (lr 0, so the weights stay) stores the options its validation
    images prefer, and segment uses them."""
    torch.set_num_threads(1)
    from napari_unet.model import bundled_model_path

    start = nu.load_model(bundled_model_path())
    bad = {"foreground_threshold": 0.999, "seed_threshold": 0.999, "h": 20.0}
    start.meta["postprocess"] = dict(bad)
    train = [discs(seed=s) for s in range(2)]
    val = [discs(seed=50 + s) for s in range(4)]
    m = fine_tune([i for i, _ in train], [lab for _, lab in train], start, iterations=1, lr=0.0, batch_size=1,
                  tile_size=32, device="cpu", amp=False, val_images=[i for i, _ in val], val_labels=[lab for _, lab in val],
                  tune_postprocess=True)
    tuned = m.meta["history"][-1]["postprocess_tuned"]
    assert tuned["val_ap"] > tuned["defaults_val_ap"] + 0.2 and tuned["val_ap"] > 0.9, tuned
    assert m.meta["postprocess"] == tuned["options"] and m.meta["postprocess"]["foreground_threshold"] <= 0.5
    img, lab = discs(seed=99)
    assert average_precision(lab, nu.segment(img, model=m), 0.5)[0.5] > 0.9
    assert average_precision(lab, nu.segment(img, model=start), 0.5)[0.5] < 0.5
    # by default (off), the starting model's defaults stay
    m = fine_tune([i for i, _ in train], [lab for _, lab in train], start, iterations=1, lr=0.0, batch_size=1,
                  tile_size=32, device="cpu", amp=False, val_images=[i for i, _ in val], val_labels=[lab for _, lab in val])
    assert m.meta["postprocess"] == bad and "postprocess_tuned" not in m.meta["history"][-1]


def test_few_images_validate_on_a_strip_of_each_many_on_whole_images():
    from napari_unet.training_data import WHOLE_IMAGE_VALIDATION, split_for_validation

    imgs = [np.full((300, 60), k, np.float32) for k in range(5)]
    labs = [np.ones((300, 60), np.int32) for _ in range(5)]
    tr_i, tr_l, _, va_i, va_l, _ = split_for_validation(imgs, labs, None, 0.2)
    assert [int(i[0, 0]) for i in tr_i] == [0, 1, 2, 3, 4] and [i.shape for i in tr_i] == [(240, 60)] * 5
    assert [i.shape for i in va_i] == [(60, 60)] * 5
    n = WHOLE_IMAGE_VALIDATION
    imgs = [np.full((300, 60), k, np.float32) for k in range(n)]
    tr_i, _, _, va_i, _, _ = split_for_validation(imgs, [np.ones((300, 60), np.int32)] * n, None, 0.2)
    assert [int(i[0, 0]) for i in va_i] == list(range(n - round(n * 0.2), n)) and va_i[0].shape == (300, 60)


def test_fine_tuning_keeps_a_share_of_the_starting_weights():
    from napari_unet.model import bundled_model_path
    from napari_unet.training import KEEP_START

    torch.set_num_threads(1)
    start = nu.load_model(bundled_model_path())
    train = [discs(seed=s) for s in range(2)]
    val = [discs(seed=50 + s) for s in range(2)]
    kw = dict(iterations=20, lr=1e-3, batch_size=2, tile_size=32, device="cpu", amp=False,
              val_images=[i for i, _ in val], val_labels=[lab for _, lab in val], val_every=100)
    tuned = fine_tune([i for i, _ in train], [lab for _, lab in train], start, keep_start=0.0, **kw)
    mixed = fine_tune([i for i, _ in train], [lab for _, lab in train], start, **kw)
    rec = mixed.meta["history"][-1]["keep_start"]
    assert rec["share"] == KEEP_START and rec["mixed"] and "keep_start" not in tuned.meta["history"][-1]
    s0, s1, s2 = start.state_dict(), tuned.state_dict(), mixed.state_dict()
    changed = 0
    for k, v in s2.items():
        if v.is_floating_point():
            assert torch.allclose(v, (1 - KEEP_START) * s1[k] + KEEP_START * s0[k], atol=1e-6), k
            changed += not torch.equal(s1[k], s0[k])
        else:
            assert torch.equal(v, s1[k])
    assert changed > 10  # the run did change the weights it mixed


def test_a_start_that_knows_nothing_is_not_mixed_in():
    torch.set_num_threads(1)
    train = [discs(seed=s) for s in range(6)]
    val = [discs(seed=60 + s) for s in range(3)]
    m = fine_tune([i for i, _ in train], [lab for _, lab in train], tiny(), iterations=100, lr=3e-3, batch_size=4,
                  tile_size=48, device="cpu", amp=False, val_images=[i for i, _ in val],
                  val_labels=[lab for _, lab in val], val_every=100, keep_start=0.9)
    rec = m.meta["history"][-1]["keep_start"]
    assert not rec["mixed"] and rec["val_ap"] < rec["fine_tuned_val_ap"] - 0.02, rec
    img, lab = val[0]
    assert average_precision(lab, _segment(m, img), 0.5)[0.5] > 0.3


def test_resuming_a_finished_run_mixes_the_start_in_once(tmp_path):
    from napari_unet.model import bundled_model_path

    torch.set_num_threads(1)
    start = nu.load_model(bundled_model_path())
    train = [discs(seed=s) for s in range(2)]
    val = [discs(seed=50 + s) for s in range(2)]
    kw = dict(batch_size=2, tile_size=32, device="cpu", amp=False, val_images=[i for i, _ in val],
              val_labels=[lab for _, lab in val], val_every=100, checkpoint_dir=tmp_path)
    first = fine_tune([i for i, _ in train], [lab for _, lab in train], start, iterations=20, lr=1e-3, **kw)
    assert first.meta["history"][-1]["keep_start"]["mixed"]
    # resuming the finished run (no step left) hands out the same model: mixed once, not twice
    again = fine_tune([i for i, _ in train], [lab for _, lab in train], start, iterations=20, lr=1e-3,
                      resume=tmp_path, **kw)
    for k, v in again.state_dict().items():
        assert torch.equal(v, first.state_dict()[k]), k


def test_a_zoom_each_model_trains_partial_labels_at_the_zoom_segment_uses():
    """A zoom_each model (stained tissue) zooms each training image to its cell size. When
    only a few cells are labelled -- here the three largest, as a confidence ranking picks
    them -- their size is not the image's: training must zoom the image by the size the
    model measures on it, as segment does, not by the labelled cells (which would train
    at 0.8x an image that segment zooms 2x)."""
    from _helpers import few_large_cells_labelled, threshold_unet

    from napari_unet.tiling import segment_iter

    img, only_large, region = few_large_cells_labelled()
    m = threshold_unet()
    m.meta.update(diameter=24.0, zoom_each=True)
    _, records = run_to_end(segment_iter(img, m, device="cpu", min_size=0))
    seg_zoom = records[-1].info["zoom"]
    assert abs(seg_zoom - 2.0) < 0.15  # the many 12-px cells to the model's 24 px
    kw = dict(iterations=1, device="cpu", tile_size=32, val_fraction=0, lr=0.0)
    for regions in ([region], None):  # an annotated region, or the labelled cells alone
        tuned = fine_tune([img], [only_large], m, regions=regions, **kw)
        assert tuned.meta["history"][-1]["zoom"] == pytest.approx(seg_zoom, rel=0.02)


def test_a_labelled_stack_trains_at_its_own_scale():
    """3D segmentation predicts a stack at its own scale, so fine-tuning on a labelled stack
    must not zoom its planes to the model's cell size (a model tuned on planes zoomed 2x then
    met cells half the size it learned, and lost most of its 3D AP)."""
    from _helpers import threshold_unet

    from napari_unet.synthetic_3d import make_stack

    stack, labels = make_stack((8, 48, 48), seed=0, radius=5.0, anisotropy=2.0)
    m = threshold_unet()
    m.meta.update(diameter=24.0)  # the cells are about 10 px across: 2.4x smaller
    tuned = fine_tune([stack], [labels], m, iterations=1, device="cpu", tile_size=32, val_fraction=0, lr=0.0,
                      voxel_size=(2.0, 1.0, 1.0))
    assert tuned.meta["history"][-1]["zoom"] == 1.0


def test_a_fresh_network_saved_to_a_file_trains_as_from_scratch(tmp_path):
    """A network fresh_model made trains as from "scratch" however it reaches training (a
    network or its file), and the trained model does not carry the mark of being untrained."""
    from napari_unet.synthetic import make_sample

    img, lab = make_sample((64, 64), 0)
    net = training.fresh_model(1, "instance3", [lab], depth=2, base_width=4)
    nu.save_model(net, tmp_path / "fresh.pt")
    kw = dict(iterations=1, device="cpu", tile_size=32, val_fraction=0)
    for start in (net, tmp_path / "fresh.pt"):
        tuned = fine_tune([img], [lab], start, **kw)
        assert "untrained" not in tuned.meta


def test_fine_tuning_keeps_the_trained_batchnorm_statistics_and_scratch_learns_them():
    from napari_unet.model import bundled_model_path

    torch.set_num_threads(1)
    start = nu.load_model(bundled_model_path())
    train = [discs(seed=s) for s in range(2)]
    kw = dict(iterations=4, lr=1e-3, batch_size=2, tile_size=32, device="cpu", amp=False, val_fraction=0,
              keep_start=0.0)
    tuned = fine_tune([i for i, _ in train], [lab for _, lab in train], start, **kw)
    fresh = fine_tune([i for i, _ in train], [lab for _, lab in train], "scratch", **kw)

    def stats(m):
        return {k: v for k, v in m.state_dict().items() if "running_" in k}

    s0, s1 = stats(start), stats(tuned)
    assert s0 and all(torch.equal(s0[k], s1[k]) for k in s0)
    assert tuned.meta["history"][-1]["batch_norm"] == "trained statistics kept"
    # the weights did learn, and a fresh network learns its statistics
    assert any(not torch.equal(v, start.state_dict()[k]) for k, v in tuned.state_dict().items() if v.is_floating_point())
    assert "batch_norm" not in fresh.meta["history"][-1]
    assert any(float(v.abs().sum()) > 0 for k, v in stats(fresh).items() if "running_mean" in k)


def test_partial_labels_keep_learning_the_starting_models_confident_classes_outside_them():
    from napari_unet.model import bundled_model_path
    from napari_unet.targets import labels_to_targets
    from napari_unet.training import REMEMBER_WEIGHT, Trainer

    torch.set_num_threads(1)
    start = nu.load_model(bundled_model_path())
    img, lab = discs()
    region = np.zeros(lab.shape, bool)
    region[:40, :40] = True
    kw = dict(iterations=1, device="cpu", amp=False, val_fraction=0, zoom_to_model=False)
    t = Trainer([img], [np.where(region, lab, 0)], start, regions=[region], **kw)
    item = t.data.items[0]
    assert t.lr == training.LR_PARTIAL  # a few cells take smaller steps than whole images
    p = item.pad
    inside, outside = item.mask[p:-p, p:-p] & region, item.mask[p:-p, p:-p] & ~region
    # outside the annotated area most pixels count, at the lower weight, with the start's classes
    assert outside.sum() > 0.5 * (~region).sum()
    assert np.allclose(item.weights[p:-p, p:-p][outside], REMEMBER_WEIGHT) and inside.sum() == region.sum()
    truth = labels_to_targets(lab, "instance3")[0]
    assert (item.targets[p:-p, p:-p][outside] == truth[outside]).mean() > 0.8
    assert item.counted == region.sum()  # crops stay centred on annotated pixels
    # off, complete labels, or a fresh network: only the annotated area counts
    for extra, regions in ((dict(remember=0.0), [region]), ({}, ["all"])):
        t = Trainer([img], [np.where(region, lab, 0) if regions[0] is region else lab], start, regions=regions,
                    **kw, **extra)
        item = t.data.items[0]
        assert t.lr == (training.LR_PARTIAL if regions[0] is region else training.LR_FINE_TUNE)
        assert item.mask[p:-p, p:-p].sum() == (region.sum() if regions[0] is region else region.size)
    fresh = Trainer([img], [np.where(region, lab, 0)], "scratch", regions=[region], **kw).data.items[0]
    assert fresh.mask[p:-p, p:-p].sum() == region.sum()


def test_without_validation_the_mix_with_the_start_is_handed_out_unchecked():
    from napari_unet.model import bundled_model_path
    from napari_unet.training import KEEP_START

    torch.set_num_threads(1)
    start = nu.load_model(bundled_model_path())
    train = [discs(seed=s) for s in range(2)]
    kw = dict(iterations=6, lr=1e-3, batch_size=2, tile_size=32, device="cpu", amp=False, val_fraction=0,
              regions=["all"] * 2)
    tuned = fine_tune([i for i, _ in train], [lab for _, lab in train], start, keep_start=0.0, **kw)
    mixed = fine_tune([i for i, _ in train], [lab for _, lab in train], start, **kw)
    assert mixed.meta["history"][-1]["keep_start"] == {"share": KEEP_START, "mixed": True, "val_ap": None,
                                                       "fine_tuned_val_ap": None}
    s0, s1, s2 = start.state_dict(), tuned.state_dict(), mixed.state_dict()
    for k, v in s2.items():
        if v.is_floating_point():
            assert torch.allclose(v, (1 - KEEP_START) * s1[k] + KEEP_START * s0[k], atol=1e-6), k
