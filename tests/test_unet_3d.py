"""The 3D U-Net: its size arithmetic, seamless overlap-tile prediction, model files and fine-tuning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_unet.metrics import average_precision
from napari_unet.model import UNet, load_model, save_model
from napari_unet.synthetic_3d import make_stack
from napari_unet.tiling_3d import predict_volume
from napari_unet.training_3d import INPUT, fine_tune_3d, loss_of, make_example, random_batch


def _tiny(seed: int = 0) -> UNet:
    """A small 3D network whose BatchNorm has statistics of its own (not 0 and 1)."""
    torch.manual_seed(seed)
    net = UNet(1, 3, depth=2, base_width=4, dropout=0.0, spatial_dims=3)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(1, 1, 44, 44, 44) * 2 + 1)
    return net.eval()


def test_3d_network_sizes_and_shape():
    net = UNet(1, 3, depth=2, base_width=4, spatial_dims=3)
    assert net.halo == 20
    out = net(torch.zeros(1, 1, 44, 60, 52))
    assert tuple(out.shape) == (1, 3, 4, 20, 12)
    with pytest.raises(ValueError, match=r"\(batch, channel, z, y, x\)"):
        net(torch.zeros(1, 1, 44, 44))
    with pytest.raises(ValueError, match="does not fit"):
        net(torch.zeros(1, 1, 45, 44, 44))
    with pytest.raises(ValueError, match="spatial_dims"):
        UNet(spatial_dims=4)


def test_3d_prediction_is_seamless_across_tile_sizes():
    """float32 on the CPU: cubes of 60, 76 and 92 voxels (outputs 20, 36, 52) give the same
    probabilities as one pass over the whole mirrored volume, to float rounding."""
    net = _tiny()
    vol = np.random.default_rng(0).random((23, 37, 41)).astype(np.float32)
    ref = predict_volume(vol, net, tile_size=108)  # one cube covers the volume
    for tile in (60, 76, 92):
        p = predict_volume(vol, net, tile_size=tile)
        assert p.shape == (3, 23, 37, 41)
        np.testing.assert_allclose(p, ref, atol=2e-5)
    assert np.allclose(ref.sum(0), 1.0, atol=1e-5)
    assert ref.std() > 1e-3  # the network does not give the same answer everywhere


def test_3d_model_file_round_trip(tmp_path):
    net = _tiny(1)
    path = save_model(net, tmp_path / "net3d.pt")
    back = load_model(path)
    assert back.config.spatial_dims == 3
    x = torch.randn(1, 1, 44, 44, 44)
    with torch.no_grad():
        torch.testing.assert_close(back(x), net(x))
    # a 2D network's file does not name spatial_dims, so versions that know only 2D still read it
    flat = save_model(UNet(1, 3, depth=2, base_width=4), tmp_path / "net2d.pt")
    assert "spatial_dims" not in torch.load(flat, weights_only=True)["config"]
    assert load_model(flat).config.spatial_dims == 2


def test_fine_tune_3d_learns_a_stack():
    """Thirty steps on one small labelled stack lower the loss on it, the start's BatchNorm
    statistics are kept, and the start network is not changed."""
    image, labels = make_stack((14, 48, 48), seed=3, anisotropy=2.0, radius=6.0)
    net = _tiny(2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    example = make_example(image, labels, 2.0)
    assert example[0].shape == (28, 48, 48) and example[1].max() == 2 and example[2].any()
    out = net.output_size(INPUT)
    batches = [random_batch([example], 2, INPUT, out, np.random.default_rng(k), False) for k in range(3)]

    def mean_loss(model: UNet) -> float:
        with torch.no_grad():
            return float(np.mean([loss_of(model.eval(), *b).item() for b in batches]))

    tuned = fine_tune_3d([image], [labels], net, voxel_size=(2, 1, 1), iterations=30, lr=3e-3, batch_size=1)
    assert mean_loss(tuned) < 0.8 * mean_loss(net)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k])
    torch.testing.assert_close(tuned.state_dict()["down.0.2.running_mean"], before["down.0.2.running_mean"])
    assert tuned.meta["history"][-1]["kind"] == "fine-tune 3D"


def test_fine_tune_3d_needs_the_z_step_and_matching_labels():
    image, labels = make_stack((8, 32, 32), seed=1, anisotropy=2.0, radius=5.0)
    with pytest.raises(ValueError, match="voxel size"):
        fine_tune_3d([image], [labels], _tiny(), voxel_size=None, iterations=1)
    with pytest.raises(ValueError, match="one shape"):
        fine_tune_3d([image], [labels[:4]], _tiny(), voxel_size=2.0, iterations=1)
    with pytest.raises(ValueError, match="3D network"):
        fine_tune_3d([image], [labels], UNet(1, 3, depth=2, base_width=4), voxel_size=2.0, iterations=1)


def test_a_3d_model_file_segments_stacks_and_says_so(tmp_path):
    """A 3D network given as the model segments a Z stack with it (the record says so); given
    for a 2D image, or to the 2D fine-tuning, it is refused in one line naming the problem."""
    import napari_unet as nu
    from napari_unet._progress import drain, relay
    from napari_unet.segmentation import segment_iter

    path = save_model(_tiny(3), tmp_path / "nuclei3d.pt")
    image, _ = make_stack((10, 40, 40), seed=2, anisotropy=2.0, radius=6.0)
    info: dict = {}
    labels = drain(relay(segment_iter(image, str(path), axes="ZYX", voxel_size=(2, 1, 1), min_object_z=None),
                         lambda rec: info.update(rec.info) or rec))
    assert labels.shape == image.shape
    assert info["views"] == "3D network" and info["method"] == "3D watershed"
    info.clear()
    drain(relay(segment_iter(image, str(path), axes="ZYX", voxel_size=(2, 1, 1), views="xyz", min_object_z=None),
                lambda rec: info.update(rec.info) or rec))
    assert info["views"] == "XY, XZ, YZ"  # the 2D network's views, when asked for
    with pytest.raises(ValueError, match="3D network: it segments Z stacks"):
        nu.segment(image[0], str(path))
    with pytest.raises(ValueError, match="fine_tune_3d"):
        nu.fine_tune([image[0]], [np.ones((40, 40), int)], str(path), iterations=1)


@pytest.fixture(scope="module", params=[1, 3])
def dim_packed_default(request):
    """A stack like many users' (dim, blurred, packed nuclei 13 px across, Z step 2), segmented
    with the defaults: the bundled models, the Z step estimated."""
    from napari_unet._progress import drain, relay
    from napari_unet.segmentation import segment_iter
    from napari_unet.synthetic_3d import HELD_OUT

    img, truth = make_stack((16, 48, 48), seed=request.param, **HELD_OUT[0][2])
    info: dict = {}
    labels = drain(relay(segment_iter(img, axes="ZYX"), lambda rec: info.update(rec.info) or rec))
    return truth, labels, info


def test_a_3d_network_is_not_exported_as_a_2d_one(tmp_path):
    import napari_unet as nu

    with pytest.raises(ValueError, match="only 2D networks"):
        nu.export_bioimageio(_tiny(), tmp_path / "net3d.zip")
    assert not (tmp_path / "net3d.zip").exists()


def test_dim_packed_nuclei_by_default_get_one_id_each(dim_packed_default):
    # the default for a stack left to the bundled models: the 3D U-Net. 19-26 nuclei, some
    # cut by the stack's faces to slivers a few planes thick. Seeds 1-6 measured: counts off
    # by 0, 0, 0, 1, 1 and 2 nuclei (seed 3: 17 for 19, one pair merged and one small nucleus
    # missed), AP@0.5 0.80-1.0, AP@0.7 0.61-1.0. The must-show for users' stacks is 10%; in
    # whole nuclei, rounded up: 2 of 19-20
    truth, labels, info = dim_packed_default
    assert info["views"] == "3D network"
    n_true, n = len(np.unique(truth)) - 1, len(np.unique(labels)) - 1
    assert abs(n - n_true) <= math.ceil(0.1 * n_true), (n, n_true)
    assert average_precision(truth, labels, 0.5)[0.5] >= 0.8
    assert average_precision(truth, labels, 0.7)[0.7] >= 0.45


def test_dim_packed_z_step_is_estimated_within_15_percent_by_default(dim_packed_default):
    # estimated again from the 3D U-Net's cells: 1.88-2.10 on seeds 1-6 (the 2D network's
    # linked planes alone: 12% off at the median of the benchmark's stacks, 28% at worst)
    _, _, info = dim_packed_default
    assert info["anisotropy_source"] == "estimated" and not info["anisotropy_uncertain"]
    assert info["anisotropy"] == pytest.approx(2.0, rel=0.15)


def test_only_the_annotated_part_of_a_stack_is_learned():
    """A stack with a few cells labelled: by default the cells and a margin are learned, the
    far background is not (class -1); "all" learns it as background; a (Y, X) mask holds for
    every plane."""
    image, labels = make_stack((10, 64, 64), seed=4, anisotropy=2.0, radius=6.0)
    few = np.where(np.isin(labels, [1, 2]), labels, 0)
    _, partial, _ = make_example(image, few, 2.0, region=None)
    _, complete, _ = make_example(image, few, 2.0, region="all")
    assert (partial == -1).any() and not (complete == -1).any()
    assert np.array_equal(partial[partial >= 0], complete[partial >= 0])
    mask = np.zeros((64, 64), bool)
    mask[:32] = True
    _, half, _ = make_example(image, labels, 2.0, region=mask)
    assert (half[:, 32:] == -1).all() and (half[:, :32] >= 0).all()


@pytest.mark.slow
def test_3d_unet_blocks_give_one_id_per_cell_across_block_edges():
    """The 3D U-Net in small blocks agrees with one block (the 2D views' blocks: test_volume)."""
    import napari_unet as nu
    from napari_unet._progress import drain, relay
    from napari_unet.segmentation import segment_iter

    img, truth = make_stack((6, 160, 160), seed=7, anisotropy=3.0, radius=8)
    seen: dict = {}
    whole = nu.segment(img, axes="ZYX", voxel_size=(3, 1, 1), views="3d")
    blocks = drain(relay(segment_iter(img, axes="ZYX", voxel_size=(3, 1, 1), views="3d", block_voxels=6 * 208**2),
                         lambda r: seen.update(r.info) or r))
    assert seen["blocks"] == 4 and seen["views"] == "3D network"
    assert set(np.unique(blocks)) == set(range(int(blocks.max()) + 1))  # ids 1..N
    assert average_precision(whole, blocks, 0.9)[0.9] > 0.98
    assert abs(average_precision(truth, blocks, 0.5)[0.5] - average_precision(truth, whole, 0.5)[0.5]) < 0.03


def test_the_bundled_3d_model_is_small_and_matches_its_card():
    import re

    from napari_unet.model import bundled_3d_model_path

    path = bundled_3d_model_path()
    assert path.is_file() and path.stat().st_size < 10 * 2**20
    model = load_model(path)
    assert model.config.spatial_dims == 3 and model.meta["mode"] == "instance3"
    found = re.search(r"`(UNetConfig\([^`]*\))`", path.with_suffix(".md").read_text())
    assert found and found.group(1) == repr(model.config)
