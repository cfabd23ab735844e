"""Live learning (napari_unet.live): the run that learns while the person annotates, and the
per-cell confidence that says where to look next. Real torch training on tiny networks."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import torch

from napari_unet.live import (
    STEPS_PER_CHANGE,
    LiveProcess,
    LiveRun,
    cell_confidence,
    region_for_cells,
    uncertain_order,
    uncertainty_image,
    window_cost,
)
from napari_unet.model import UNet, load_model
from napari_unet.synthetic import make_sample


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_confidence_ranks_a_wrong_cell_above_a_right_one():
    """Two touching nuclei the model hesitates to split (a boundary it half sees) proposed
    as one wrong cell; a lone nucleus it is sure of proposed right. The wrong one ranks
    first, and only its pixels light up in the overlay."""
    shape = (64, 96)
    lone = _disc(shape, 32, 20, 9)
    left, right = _disc(shape, 32, 56, 9), _disc(shape, 32, 72, 9)
    probs = np.zeros((3, *shape), np.float32)
    probs[0] = 0.96
    for cell in (lone, left | right):
        probs[:, cell] = np.array([0.02, 0.96, 0.02])[:, None]
    # the true border between the two touching nuclei: the model gives it a weak boundary
    neck = (left & right) | (np.abs(np.mgrid[: shape[0], : shape[1]][1] - 64) <= 2) & (left | right)
    probs[:, neck] = np.array([0.08, 0.62, 0.30])[:, None]
    # the proposal: the lone nucleus right (1), the pair merged into one wrong cell (2)
    labels = np.zeros(shape, np.int32)
    labels[lone], labels[left | right] = 1, 2
    wrong, right_id = 2, 1
    conf = cell_confidence(probs, labels)
    assert conf[wrong] < conf[right_id] - 0.05
    assert uncertain_order(conf)[0] == wrong
    overlay = uncertainty_image(labels, conf)
    assert overlay[32, 64] > overlay[32, 20] and overlay[0, 0] == 0


def test_confidence_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="do not match"):
        cell_confidence(np.zeros((3, 8, 8)), np.zeros((9, 8), int))


def test_window_cost_counts_only_cells_to_draw_or_fix():
    truth = np.zeros((40, 40), int)
    truth[2:10, 2:10], truth[20:30, 20:30], truth[2:10, 25:35] = 1, 2, 3
    prop = np.zeros_like(truth)
    prop[2:10, 2:10] = 7  # right: accepted, free
    prop[20:30, 20:25] = 8  # half of cell 2: fixed
    prop[32:38, 2:8] = 9  # not a cell: deleted
    area = np.ones_like(truth, bool)
    assert window_cost(truth, prop, area) == 1 + 1 + 1 + 1  # cell 2 fixed, cell 3 drawn, 8 and 9 wrong
    region = region_for_cells(truth, prop, [8], margin=2)
    assert region[25, 28] and not region[5, 5]  # the whole touched true cell, not an unrelated one


def _data(seed=0, shape=(96, 256)):
    img, lab = make_sample(shape, seed, difficulty="easy", density="medium")
    return img.astype(np.float32), lab


def _tiny(**kw):
    torch.manual_seed(0)
    m = UNet(in_channels=1, num_classes=3, depth=2, base_width=4, dropout=0.0)
    m.meta["mode"] = "instance3"
    return m


OPTS = dict(device="cpu", tile_size=32, batch_size=2, val_every=4, keep_start=0.0, lr=3e-3)


def test_live_run_learns_from_the_set_as_it_changes(tmp_path):
    img, lab = _data(0)
    run = LiveRun(_tiny(), checkpoint_dir=tmp_path, **OPTS)
    with pytest.raises(ValueError, match="nothing to learn"):
        run.train(1)
    run.set_annotation("a", img, np.zeros_like(lab))  # nothing painted yet: left out
    with pytest.raises(ValueError, match="nothing to learn"):
        run.train(1)
    half = lab.copy()
    half[:, 128:] = 0
    run.set_annotation("a", img, half)
    assert run.train(6) >= 6
    first_counted = run._trainer.data.items[0].counted
    run.set_annotation("a", img, lab, region="all")  # replaced: complete labels now
    run.set_annotation("b", *_data(1), region="all")  # and a second image
    run.train(3)
    assert len(run._trainer.data) == 2 and run._trainer.data.items[0].counted > first_counted
    # a person who keeps painting: the next version waits until the run made a few steps on this one
    data = run._trainer.data
    run.set_annotation("b", *_data(2), region="all")
    run._apply_changes()
    assert run._trainer.data is data
    run.train(STEPS_PER_CHANGE)
    assert run._trainer.data is not data
    p = run.propose(img, key="view")
    assert p.labels.shape == img.shape and p.probabilities.shape == (3, *img.shape) and p.key == "view"
    assert set(p.confidence) == set(np.unique(p.labels)) - {0}
    assert p.iteration == run.iteration


def test_stopping_keeps_the_best_model(tmp_path):
    img, lab = _data(0)
    run = LiveRun(_tiny(), checkpoint_dir=tmp_path, **OPTS)
    run.set_annotation("a", img, lab, region="all")
    run.train(12)
    trainer = run._trainer
    best = {k: v.clone() for k, v in trainer.run.best_state.items()}
    last = {k: v.detach().cpu().clone() for k, v in trainer.net.state_dict().items()}
    kept = run.stop()
    assert run.stop() is kept  # twice is harmless
    state = kept.state_dict()
    assert all(torch.equal(state[k], best[k]) for k in best)
    if trainer.run.best_iteration != trainer.iteration:  # the best is not simply the last
        assert not all(torch.equal(state[k], last[k]) for k in last)
    on_disk = load_model(tmp_path / "best.pt").state_dict()
    assert all(torch.equal(on_disk[k], best[k]) for k in best)
    assert kept.meta["history"][-1]["stopped"] == "stopped"


def test_new_annotations_rescore_the_best(tmp_path):
    """The best score is always on the annotations as they are now: replacing them scores
    the kept weights again on the new validation strip."""
    img, lab = _data(0)
    run = LiveRun(_tiny(), **OPTS)
    run.set_annotation("a", img, lab, region="all")
    run.train(8)
    before = run.best_score
    img2, lab2 = _data(5)
    run.set_annotation("a", img2, lab2, region="all")
    run._apply_changes()
    probe = _tiny()
    probe.load_state_dict(run._trainer.run.best_state)
    assert run.best_score == pytest.approx(run._trainer.validate(probe)["val_ap"])
    assert before is not None


def test_background_run_trains_and_serves_proposals():
    img, lab = _data(0)
    run = LiveRun(_tiny(), threads=1, **OPTS).start()
    try:
        assert run.running
        run.request_proposal(img, key=1)  # before any annotation: the starting model answers
        deadline = time.time() + 60
        while (p := run.take_proposal()) is None and time.time() < deadline:
            time.sleep(0.05)
        assert p is not None and p.iteration == 0 and p.key == 1
        run.set_annotation("a", img, lab, region="all")
        while run.iteration < 5 and time.time() < deadline:
            time.sleep(0.05)
        assert run.iteration >= 5 and run.error is None
        run.request_proposal(img, key=2)
        while (p := run.take_proposal()) is None and time.time() < deadline:
            time.sleep(0.05)
        assert p.key == 2 and p.iteration >= 5
        with pytest.raises(RuntimeError, match="stop it"):
            run.train(1)
    finally:
        kept = run.stop()
    assert not run.running and kept is not None


def _wait(what, seconds=90):
    deadline = time.time() + seconds
    while not (got := what()) and time.time() < deadline:
        time.sleep(0.05)
    return got


def test_a_run_in_its_own_process_trains_proposes_and_keeps_the_best(tmp_path):
    """The same run in a child process: annotations go in, progress and proposals come back,
    and stopping brings back the kept model (the best, as the run finished it)."""
    img, lab = _data(0)
    run = LiveProcess(_tiny(), threads=1, checkpoint_dir=tmp_path, **OPTS).start()
    try:
        assert run.running and run.pid != os.getpid()
        run.request_proposal(img, key=1)  # before any annotation: the starting model answers
        p = _wait(run.take_proposal)
        assert p is not None and p.iteration == 0 and p.key == 1 and p.labels.shape == img.shape
        run.set_annotation("a", img, lab, region="all")
        run.set_annotation("b", img, lab)
        run.remove_annotation("b")
        assert run.annotations == ["a"]
        assert _wait(lambda: run.iteration >= 9 and run.best_score is not None) and run.error is None
        assert run.last["iteration"] >= 8
        run.request_proposal(img, key=2)
        p = _wait(run.take_proposal)
        assert p.key == 2 and p.iteration >= 9 and set(p.confidence) == set(np.unique(p.labels)) - {0}
        assert run.take_proposal() is None  # taken once
    finally:
        kept = run.stop()
    assert run.stop() is kept and not run.running and not run.process.is_alive()
    assert run.error is None and run.kept_path == tmp_path / "best.pt"
    on_disk = load_model(run.kept_path).state_dict()
    assert all(torch.equal(v, on_disk[k]) for k, v in kept.state_dict().items())
    assert kept.config.base_width == 4 and kept.meta["history"][-1]["stopped"] == "stopped"
    assert run.iteration >= 9


def test_a_killed_training_process_is_an_error_and_stop_returns_promptly(tmp_path):
    """A child that dies (here killed, as the system does when memory runs out) is reported
    in one line, never waited for; the best model of its last validation is kept."""
    img, lab = _data(0)
    run = LiveProcess(_tiny(), threads=1, checkpoint_dir=tmp_path, **OPTS).start()
    run.set_annotation("a", img, lab, region="all")
    assert _wait(lambda: (tmp_path / "best.pt").is_file())  # a validation was checkpointed
    os.kill(run.pid, signal.SIGKILL)
    assert _wait(lambda: run.error is not None, 10)
    assert "ended unexpectedly" in str(run.error) and "SIGKILL" in str(run.error) and "\n" not in str(run.error)
    assert not run.running
    t0 = time.perf_counter()
    kept = run.stop()
    assert time.perf_counter() - t0 < 5 and not run.process.is_alive()
    assert run.kept_path == tmp_path / "best.pt" and kept is not None
    assert run.stop() is kept


def test_proposals_of_a_zoom_each_model_use_the_size_its_images_train_at():
    """A stained-tissue model (meta["zoom_each"]) trains each partially labelled image at
    the cell size it measures on the image; proposals of that image (or of a view cut from
    it) are made at the same size, not at the size of the few (large) cells labelled."""
    from _helpers import few_large_cells_labelled, threshold_unet

    from napari_unet.diameter import measure_diameter

    img, only_large, region = few_large_cells_labelled()
    m = threshold_unet()
    m.meta.update(diameter=24.0, zoom_each=True)
    run = LiveRun(m, device="cpu", val_fraction=0, lr=0.0, batch_size=1, tile_size=32)
    run.set_annotation("a", img, only_large, region)
    run.train(1)
    measured = measure_diameter(img, m, device="cpu")
    assert abs(measured - 12) < 1.5
    assert run._diameter_of(img) == pytest.approx(measured, rel=0.01)
    assert run._trainer.zoom == pytest.approx(24.0 / measured, rel=0.02)
    p = run.propose(img[:160, :160], reference=img)
    assert p.labels.max() >= 9  # the small cells of the view, found at the zoom they train at


def test_each_change_starts_a_cycle_of_steps_and_then_the_run_waits_for_the_next():
    from napari_unet.live import CYCLE, LR_LIVE

    img, lab = _data(0)
    opts = {**OPTS, "lr": LR_LIVE, "val_every": 1000}
    run = LiveRun(_tiny(), threads=1, **opts).start()
    try:
        run.set_annotation("a", img, lab, region="all")
        deadline = time.time() + 120
        while not run.settled and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert run.settled and run.iteration == CYCLE  # no step past the cycle while nothing changes
        assert run._trainer.cur_lr < 0.05 * LR_LIVE  # the cycle decayed
        run.set_annotation("a", img, lab, region="all")  # the person paints again
        while run.iteration < CYCLE + 3 and time.time() < deadline:
            time.sleep(0.05)
        assert run.iteration >= CYCLE + 3 and run.error is None
        assert run._trainer.cycle_start == CYCLE  # a new cycle, from where the last one ended
    finally:
        run.stop()
