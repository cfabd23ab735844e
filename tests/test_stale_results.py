"""Stale results are never returned as new ones.

Every resumable artefact is keyed by its run: checkpoints by a run id and a hash of the
data and settings, a distributed store by the model, image and settings. Before the fix a
best.pt left in the folder was returned as the resumed run's result, a store resumed
with another model silently kept the old blocks, and recreated arrays kept their
done-markers.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from napari_unet.model import load_model
from napari_unet.synthetic import make_sample
from napari_unet.training import fine_tune


def _data():
    img, lab = make_sample((96, 96), seed=5)
    return [img], [lab]


def _train(model, ckpt, **kw):
    images, labels = _data()
    # keep_start=0: the result is the run's own weights, not mixed with the start's
    return fine_tune(images, labels, model, tile_size=16, batch_size=2, device="cpu", amp=False,
                     checkpoint_dir=ckpt, keep_start=0.0, **kw)


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_best_pt_of_another_run_is_not_the_resumed_result(tmp_path, tiny_model):
    # run A validates, so it leaves a best.pt
    _train(tiny_model, tmp_path / "a", iterations=4, val_fraction=0.5, val_every=2)
    assert (tmp_path / "a" / "best.pt").is_file()
    # run B does not validate; an earlier run's best.pt replaces its own
    _train(tiny_model, tmp_path / "b", iterations=2, val_fraction=0)
    shutil.copy(tmp_path / "a" / "best.pt", tmp_path / "b" / "best.pt")
    resumed = fine_tune(*_data(), None, tile_size=16, batch_size=2, device="cpu", amp=False, val_fraction=0,
                        iterations=3, resume=tmp_path / "b", keep_start=0.0)
    assert not _same_weights(resumed, load_model(tmp_path / "a" / "best.pt"))
    assert _same_weights(resumed, load_model(tmp_path / "b" / "last.pt"))


def test_a_fresh_run_refuses_a_folder_with_checkpoints(tmp_path, tiny_model):
    _train(tiny_model, tmp_path / "ck", iterations=2, val_fraction=0)
    with pytest.raises(ValueError, match=r"holds checkpoints of an earlier run \(last.pt, best.pt, state.pt\)"):
        _train(tiny_model, tmp_path / "ck", iterations=2, val_fraction=0)


def test_resume_with_other_images_or_settings_is_refused_naming_them(tmp_path, tiny_model):
    _train(tiny_model, tmp_path / "ck", iterations=2, val_fraction=0)
    other, lab = make_sample((96, 96), seed=6)
    with pytest.raises(ValueError, match="other images"):
        fine_tune([other], [lab], None, tile_size=16, batch_size=2, device="cpu", amp=False, val_fraction=0,
                  iterations=3, resume=tmp_path / "ck")
    with pytest.raises(ValueError, match="other batch size, tile size"):
        fine_tune(*_data(), None, tile_size=24, batch_size=1, device="cpu", amp=False, val_fraction=0,
                  iterations=3, resume=tmp_path / "ck")


@pytest.fixture(scope="module")
def client():
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0")
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


def test_a_distributed_store_is_keyed_by_the_model(tmp_path, client, model_path):
    zarr = pytest.importorskip("zarr")
    from napari_unet.distributed import segment_distributed

    image, _ = make_sample((128, 128), seed=2)
    first = load_model(model_path)
    second = load_model(model_path)
    with torch.no_grad():
        second.head.bias[1] -= 100.0  # finds nothing
    out = tmp_path / "out.zarr"
    kw = dict(out=out, client=client, block_size=64, tile_size=64, amp=False)
    segment_distributed(image, first, **kw)
    assert zarr.open_group(str(out), mode="r")["labels"][:].max() > 0
    with pytest.raises(ValueError, match="started with another model"):
        segment_distributed(image, second, **kw)
    res = segment_distributed(image, second, overwrite=True, **kw)
    assert res.skipped["probabilities"] == 0  # the old blocks' markers went with the old arrays
    assert zarr.open_group(str(out), mode="r")["labels"][:].max() == 0
