"""Distributed inference on a real dask LocalCluster equals the single-process run."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

from napari_unet.distributed import model_from_bytes, model_to_bytes, segment_distributed  # noqa: E402
from napari_unet.model import UNet  # noqa: E402
from napari_unet.synthetic import make_sample  # noqa: E402
from napari_unet.targets import labels_to_targets  # noqa: E402
from napari_unet.tiling import padded_single_pass, segment  # noqa: E402


def tiny_model() -> UNet:
    """Depth 2, width 4, random convolutions; only the 1x1 head is fitted (least squares)
    to a small synthetic image, so that it finds nucleus-sized objects in a second."""
    torch.manual_seed(0)
    m = UNet(in_channels=1, num_classes=3, depth=2, base_width=4).eval()
    m.meta["mode"] = "instance3"
    img, gt = make_sample((256, 256), seed=3, kind="nuclei")
    feats: dict[str, torch.Tensor] = {}
    hook = m.head.register_forward_hook(lambda mod, inp, out: feats.__setitem__("f", inp[0].detach()))
    padded_single_pass(img, m)
    hook.remove()
    f = feats["f"][0][:, :256, :256].reshape(4, -1).T.numpy()
    t, _ = labels_to_targets(gt, "instance3", "all", 0)
    w, *_ = np.linalg.lstsq(np.c_[f, np.ones(len(f))], np.eye(3)[t.ravel()] * 6 - 3, rcond=None)
    with torch.no_grad():
        m.head.weight[:] = torch.from_numpy(w[:4].T.astype(np.float32))[:, :, None, None]
        m.head.bias[:] = torch.from_numpy(w[4].astype(np.float32))
    return m


def same_up_to_permutation(a: np.ndarray, b: np.ndarray) -> bool:
    """True when the two label images are equal up to renaming ids (0 stays 0)."""
    if a.shape != b.shape or not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return pairs.shape[1] == len(np.unique(a)) == len(np.unique(b))


@pytest.fixture(scope="module")
def cluster_client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A 3000x3000 synthetic image, the single-process result, and a distributed run."""
    model = tiny_model()
    image, _ = make_sample((3000, 3000), seed=1, kind="nuclei")
    probs = np.zeros((3, *image.shape), np.float32)
    # a dask nanny starts its workers with one intra-op thread; the float sums of a
    # convolution depend on the thread count, so the reference uses one thread too
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = segment(image, model, tile_size=512, amp=False, device="cpu", probabilities_out=probs, min_object_z=None)
    finally:
        torch.set_num_threads(threads)
    out = tmp_path_factory.mktemp("dist") / "out.zarr"
    return model, image, ref, probs, out


@pytest.mark.slow
def test_large_image_equals_single_process_and_resumes(big, cluster_client):
    model, image, ref, ref_probs, out = big
    res = segment_distributed(image, model, out=out, client=cluster_client, block_size=1024, tile_size=512, amp=False)
    # 3000 px with 512 px tiles -> six 500 px tiles per axis, blocks of two tiles
    assert res.tile == (500, 500) and res.block == (1000, 1000)
    assert res.computed == {"probabilities": 9, "objects": 9, "labels": 9}
    assert res.cut_objects == 0
    g = zarr.open_group(str(out), mode="r")
    probs = g["probabilities"][:]
    labels = g["labels"][:]
    # identical probabilities (same tile grid as the single-process run), bit for bit
    assert np.array_equal(probs, ref_probs)
    # the same objects: equal up to a renaming of the ids, ids consecutive 1..N
    assert ref.max() > 500
    assert same_up_to_permutation(ref, labels)
    assert set(np.unique(labels)) == set(range(int(labels.max()) + 1))
    assert res.objects[""] == int(labels.max()) == int(ref.max())
    # cells crossing the block faces (x or y = 1000, 2000) exist and are whole: every
    # single-process object maps to exactly one distributed id
    crossing = set()
    for b in (1000, 2000):
        crossing |= set(np.unique(ref[:, b - 1][(ref[:, b - 1] > 0) & (ref[:, b - 1] == ref[:, b])]))
        crossing |= set(np.unique(ref[b - 1][(ref[b - 1] > 0) & (ref[b - 1] == ref[b])]))
    assert len(crossing) >= 10
    for i in crossing:
        assert len(np.unique(labels[ref == i])) == 1

    # a rerun skips everything
    again = segment_distributed(image, model, out=out, client=cluster_client, block_size=1024, tile_size=512, amp=False)
    assert again.computed == {"probabilities": 0, "objects": 0, "labels": 0}
    assert again.skipped == {"probabilities": 9, "objects": 9, "labels": 9}

    # lose one block's outputs (its data and its markers): only that block is recomputed
    gw = zarr.open_group(str(out), mode="r+")
    gw["probabilities"][:, 1000:2000, 1000:2000] = 0
    gw["labels"][1000:2000, 1000:2000] = 0
    gw["_object_keys"][1000:2000, 1000:2000] = 0
    for phase in ("probabilities", "objects", "labels"):
        (Path(out) / "_done" / "_root" / phase / "1000_1000").unlink()
    third = segment_distributed(image, model, out=out, client=cluster_client, block_size=1024, tile_size=512, amp=False)
    assert third.computed == {"probabilities": 1, "objects": 1, "labels": 1}
    assert third.skipped == {"probabilities": 8, "objects": 8, "labels": 8}
    assert np.array_equal(g["probabilities"][:], ref_probs)
    assert np.array_equal(g["labels"][:], labels)


@pytest.mark.slow
def test_directory_of_images_and_setting_changes(tmp_path, cluster_client):
    import tifffile

    model = tiny_model()
    folder = tmp_path / "images"
    folder.mkdir()
    refs = {}
    for k, shape in enumerate([(300, 260), (200, 330)]):
        img, _ = make_sample(shape, seed=10 + k, kind="nuclei")
        tifffile.imwrite(folder / f"img{k}.tif", img)
        refs[f"img{k}"] = segment(img, model, tile_size=64, amp=False, device="cpu", min_object_z=None)
    out = tmp_path / "out.zarr"
    res = segment_distributed(folder, model, out=out, client=cluster_client, block_size=128, tile_size=64,
                              overlap=96, amp=False)
    assert sorted(res.images) == ["img0", "img1"]
    g = zarr.open_group(str(out), mode="r")
    for name, ref in refs.items():
        lab = g[name]["labels"][:]
        assert lab.shape == ref.shape
        assert same_up_to_permutation(ref, lab)
    with pytest.raises(ValueError, match="started with another block"):
        segment_distributed(folder, model, out=out, client=cluster_client, block_size=256, tile_size=64, amp=False)


def test_model_bytes_round_trip_and_bad_bytes():
    from napari_unet.model import ModelFileError

    m = UNet(in_channels=1, num_classes=3, depth=2, base_width=4)
    m.meta["description"] = "round trip"
    back = model_from_bytes(model_to_bytes(m))
    assert back.config == m.config and back.meta["description"] == "round trip"
    for k, v in m.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])
    data = model_to_bytes(m)
    with pytest.raises(ModelFileError):
        model_from_bytes(data[: len(data) // 2])


def test_bad_arguments(tmp_path):
    m = UNet(in_channels=1, num_classes=3, depth=2, base_width=4)
    with pytest.raises(ValueError, match="block_size"):
        segment_distributed(np.zeros((64, 64)), m, out=tmp_path / "o.zarr", block_size=0)
    (tmp_path / "notzarr").mkdir()
    (tmp_path / "notzarr" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="not a zarr store"):
        segment_distributed(np.zeros((64, 64)), m, out=tmp_path / "notzarr")
    shutil.rmtree(tmp_path / "notzarr")


@pytest.mark.slow
def test_cli_segment_with_local_workers(tmp_path):
    import tifffile

    from napari_unet.cli import main
    from napari_unet.model import save_model

    model = tiny_model()
    save_model(model, tmp_path / "m.pt")
    img, _ = make_sample((260, 300), seed=5, kind="nuclei")
    tifffile.imwrite(tmp_path / "img.tif", img)
    base = ["segment", str(tmp_path / "img.tif"), "--model", str(tmp_path / "m.pt"), "--tile-size", "64", "--no-amp"]
    # distributed output must be a zarr store
    assert main(base + ["-o", str(tmp_path / "out.tif"), "--workers", "2"]) == 2
    assert main(base + ["-o", str(tmp_path / "out.zarr"), "--workers", "2", "--block-size", "128"]) == 0
    labels = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["labels"][:]
    assert same_up_to_permutation(segment(img, model, tile_size=64, amp=False, device="cpu", min_object_z=None), labels)
