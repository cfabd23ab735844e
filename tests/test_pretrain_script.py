"""scripts/pretrain.py (how the bundled models are made): several pools in one run, and a resume."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pretrain.py"


def _pretrain():
    spec = importlib.util.spec_from_file_location("pretrain_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fluorescence", "stained"])
def test_a_run_of_several_pools_trains_and_resumes(tmp_path, kind):
    from napari_unet import load_model

    mod = _pretrain()
    tiny = ["--kind", kind, "--round", "2", "--pool", "2", "--size", "64", "--val", "1", "--val-size", "64",
            "--val-every", "2", "--checkpoint-every", "1", "--depth", "2", "--base-width", "4", "--tile-size", "32",
            "--batch-size", "1", "--checkpoint-dir", str(tmp_path / "run"), "--out", str(tmp_path / "model.pt")]
    # three pools: each round resumes the run on new images with a new seed
    assert mod.main(tiny + ["--iterations", "6"]) == 0
    model = load_model(tmp_path / "model.pt")
    assert model.config.in_channels == (3 if kind == "stained" else 1)
    assert model.meta["history"][-1]["iterations"] == 6
    # a run that is stopped and started again goes on from its checkpoint
    assert mod.main(tiny + ["--iterations", "8", "--resume"]) == 0
    assert load_model(tmp_path / "model.pt").meta["history"][-1]["iterations"] == 8
    # a second start without --resume refuses to mix two runs in one folder
    assert mod.main(tiny + ["--iterations", "8"]) == 2


@pytest.mark.slow
def test_a_resume_inside_a_round_still_checks_the_data(tmp_path):
    mod = _pretrain()
    tiny = ["--round", "4", "--pool", "2", "--val", "1", "--val-size", "64", "--val-every", "2",
            "--checkpoint-every", "1", "--depth", "2", "--base-width", "4", "--tile-size", "32", "--batch-size", "1",
            "--checkpoint-dir", str(tmp_path / "run"), "--out", str(tmp_path / "model.pt")]
    assert mod.main(tiny + ["--size", "64", "--iterations", "2"]) == 0  # stops inside its first round
    with pytest.raises(ValueError, match="other images"):
        mod.main(tiny + ["--size", "72", "--iterations", "4", "--resume"])  # another pool: refused


def test_zoom_each_needs_a_model_that_zooms_each_image(tmp_path):
    from napari_unet import UNet, save_model

    mod = _pretrain()
    init = tmp_path / "plain.pt"
    save_model(UNet(in_channels=3, num_classes=3, depth=2, base_width=4), init)
    args = ["--kind", "stained", "--zoom-each", "--checkpoint-dir", str(tmp_path / "run"), "--out", str(tmp_path / "m.pt")]
    assert mod.main(args) == 2
    assert mod.main(args + ["--init", str(init)]) == 2
    assert not (tmp_path / "m.pt").exists()
