"""DistributedDataParallel training under torchrun (2 CPU processes, gloo)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from napari_unet.ddp import ddp_train, parameter_checksum
from napari_unet.model import UNet, load_model, save_model
from napari_unet.synthetic import make_sample


@pytest.mark.slow
def test_torchrun_two_cpu_processes_stay_in_sync(tmp_path):
    import tifffile

    files = []
    for k in range(2):
        img, lab = make_sample((96, 96), seed=k)
        tifffile.imwrite(tmp_path / f"img{k}.tif", img)
        tifffile.imwrite(tmp_path / f"lab{k}.tif", lab)
        files.append((str(tmp_path / f"img{k}.tif"), str(tmp_path / f"lab{k}.tif")))
    start = UNet(in_channels=1, num_classes=3, depth=2, base_width=4)
    start.meta["mode"] = "instance3"
    save_model(start, tmp_path / "start.pt")
    ck = tmp_path / "ck"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "napari_unet.ddp",
        "--images", *[f[0] for f in files], "--labels", *[f[1] for f in files],
        "--model", str(tmp_path / "start.pt"), "-o", str(tmp_path / "out.pt"),
        "--iterations", "4", "--batch-size", "2", "--tile-size", "32", "--val-fraction", "0",
        "--checkpoint-dir", str(ck), "--device", "cpu", "--no-augment",
        "--keep-start", "0",  # the trained weights as they are (not mixed with the start's)
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = dict(re.findall(r"rank (\d)/2: 4 iterations, parameter checksum ([-+.\deE]+)", proc.stdout))
    assert set(found) == {"0", "1"}, proc.stdout
    # both ranks hold the same weights after 4 all-reduced steps on different crops
    assert found["0"] == found["1"]
    trained = load_model(tmp_path / "out.pt")
    assert repr(parameter_checksum(trained)) == found["0"]
    assert parameter_checksum(trained) != parameter_checksum(start)  # it did train
    # one checkpoint (rank 0 only, with the returned model as best.pt), no leftovers of concurrent writers
    assert sorted(p.name for p in ck.iterdir()) == ["best.pt", "last.pt", "state.pt"]
    assert proc.stdout.count("wrote ") == 1
    assert load_model(ck / "last.pt").meta["history"][-1]["iterations"] == 4


def test_ddp_train_refuses_what_would_desynchronise(monkeypatch):
    img, lab = make_sample((64, 64), seed=0)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError, match="torchrun"):
        ddp_train([img], [lab], "scratch", iterations=2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for bad in ({"max_time": 5.0}, {"early_stopping": 3}, {"resume": "somewhere"}):
        with pytest.raises(ValueError, match="not supported with DDP"):
            ddp_train([img], [lab], "scratch", iterations=2, **bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="SyncBatchNorm needs GPUs"):
            ddp_train([img], [lab], "scratch", iterations=2, device="cpu", sync_batchnorm=True)
