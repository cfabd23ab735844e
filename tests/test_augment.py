import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_unet.augment import AugmentConfig, augment_batch, sampling_grid

GEOMETRIC = dict(flip=True, rot90=True, rotate=True, shift=True, scale=True, elastic=True)
GRAY = dict(gamma=True, contrast=True, brightness=True, noise=True)
ALL_FLAGS = {**GEOMETRIC, **GRAY}
NONE = AugmentConfig(**{k: False for k in ALL_FLAGS})


def smooth_image(size=96, seed=0):
    """A smooth random field in [0, 1]: labels are a known function of it (quantised)."""
    rng = np.random.default_rng(seed)
    f = ndi.gaussian_filter(rng.standard_normal((size, size)), 6.0)
    f = (f - f.min()) / (f.max() - f.min())
    return torch.from_numpy(f.astype(np.float32))


def quantise(x):
    return torch.clamp((x * 5).floor(), 0, 4).long()


def batch(size=96, n=3):
    img = torch.stack([smooth_image(size, s) for s in range(n)])  # (B, H, W)
    return img[:, None], quantise(img), img.clone(), torch.ones(img.shape, dtype=torch.bool)


def test_geometry_keeps_image_labels_weights_aligned():
    image, labels, weights, mask = batch()
    cfg = AugmentConfig(**{k: False for k in GRAY})  # all geometry on, gray values off
    g = torch.Generator().manual_seed(3)
    out = augment_batch(image, labels, weights, mask, out_size=48, config=cfg, generator=g)
    # weights were a copy of the image and use the same interpolation on the same grid
    assert torch.allclose(out.weights, out.image[:, 0], atol=1e-5)
    valid = out.mask
    assert valid.float().mean() > 0.5
    # labels (nearest) must equal the function of the interpolated image, except at
    # level boundaries where interpolation and nearest legitimately disagree
    agree = (quantise(out.image[:, 0]) == out.targets)[valid].float().mean().item()
    assert agree > 0.95
    # the check can fail: labels of an unaligned draw disagree much more
    other = augment_batch(image, labels, weights, mask, out_size=48, config=cfg, generator=torch.Generator().manual_seed(4))
    mismatch = (quantise(out.image[:, 0]) == other.targets)[valid & other.mask].float().mean().item()
    assert mismatch < agree - 0.2


def test_labels_stay_in_their_id_set():
    rng = np.random.default_rng(1)
    ids = np.array([0, 3, 7, 250, 4097])
    lab = torch.from_numpy(ids[rng.integers(0, len(ids), (2, 64, 64))])
    img = torch.rand(2, 1, 64, 64)
    out = augment_batch(img, lab, None, None, out_size=40, config=AugmentConfig(), generator=torch.Generator().manual_seed(0))
    assert out.targets.dtype == lab.dtype
    assert set(out.targets.unique().tolist()) <= set(ids.tolist())
    assert out.weights is None and out.mask is None


def test_everything_off_is_the_identity_crop():
    image, labels, weights, mask = batch(64, 2)
    for cfg in (AugmentConfig.off(), NONE):
        out = augment_batch(image, labels, weights, mask, out_size=40, config=cfg)
        assert torch.equal(out.image, image[..., 12:52, 12:52])
        assert torch.equal(out.targets, labels[..., 12:52, 12:52])
        assert torch.equal(out.weights, weights[..., 12:52, 12:52])
        assert torch.equal(out.mask, mask[..., 12:52, 12:52])


@pytest.mark.parametrize("flag", sorted(ALL_FLAGS))
def test_each_augmentation_switches_off(flag):
    image, labels, weights, mask = batch(64, 2)
    ref = image[..., 12:52, 12:52]
    only = NONE.replace(**{flag: True})
    g = torch.Generator().manual_seed(11)
    out = augment_batch(image, labels, weights, mask, out_size=40, config=only, generator=g)
    assert not torch.allclose(out.image, ref, atol=1e-3), f"{flag} on changed nothing"
    # switched off (strength zero where it has one) -> identity
    zero = {"rotate": {"max_rotation": 0.0}, "shift": {"max_shift": 0.0}, "elastic": {"elastic_sigma": 0.0},
            "scale": {"scale_range": (1.0, 1.0)}, "gamma": {"gamma_range": (1.0, 1.0)},
            "contrast": {"contrast_range": (1.0, 1.0)}, "brightness": {"max_brightness": 0.0},
            "noise": {"max_noise": 0.0}}
    if flag in zero:
        out0 = augment_batch(image, labels, weights, mask, out_size=40, config=only.replace(**zero[flag]), generator=g)
        assert torch.allclose(out0.image, ref, atol=1e-5)
        assert torch.equal(out0.targets, labels[..., 12:52, 12:52])


def test_quarter_turns_and_flips_are_exact_permutations():
    image, labels, weights, mask = batch(48, 4)
    cfg = NONE.replace(rot90=True, flip=True)
    out = augment_batch(image, labels, weights, mask, out_size=48, config=cfg, generator=torch.Generator().manual_seed(2))
    for i in range(4):
        cands = []
        for k in range(4):
            r = torch.rot90(labels[i], k, (0, 1))
            cands += [r, r.flip(0), r.flip(1)]
        assert any(torch.equal(out.targets[i], c) for c in cands)
    assert out.mask.all()  # nothing leaves the source


def test_out_of_source_pixels_are_ignored():
    image, labels, weights, mask = batch(40, 1)
    cfg = NONE.replace(rotate=True, max_rotation=45.0)
    # a 40-pixel tile rotated inside a 40-pixel source must leave the corners uncovered
    angles = []
    for s in range(20):
        out = augment_batch(image, labels, weights, mask, out_size=40, config=cfg, generator=torch.Generator().manual_seed(s))
        angles.append(out.mask.float().mean().item())
    assert min(angles) < 0.95
    assert all(a > 0.5 for a in angles)


def test_source_size_leaves_room_for_the_transform():
    cfg = AugmentConfig()
    src = cfg.source_size(100)
    img = torch.rand(8, 1, src, src)
    out = augment_batch(img, None, None, torch.ones(8, src, src, dtype=torch.bool), out_size=100, config=cfg,
                        generator=torch.Generator().manual_seed(0))
    assert out.mask.float().mean() > 0.99


def test_grid_is_reproducible_and_elastic_is_smooth():
    cfg = NONE.replace(elastic=True)
    g1 = sampling_grid(2, (80, 80), (50, 50), cfg, torch.device("cpu"), torch.Generator().manual_seed(5))
    g2 = sampling_grid(2, (80, 80), (50, 50), cfg, torch.device("cpu"), torch.Generator().manual_seed(5))
    assert torch.equal(g1, g2)
    # displacement in pixels relative to the identity grid: sigma 10 px, smooth
    ident = sampling_grid(2, (80, 80), (50, 50), NONE, torch.device("cpu"))
    disp = (g1 - ident) * (79 / 2)
    assert 2 < disp.abs().max() < 60
    assert (disp[:, 1:] - disp[:, :-1]).abs().max() < 3  # no tearing between neighbours


def test_bad_config_and_inputs():
    with pytest.raises(ValueError, match="image_interpolation"):
        AugmentConfig(image_interpolation="cubic")
    with pytest.raises(ValueError, match="scale_range"):
        AugmentConfig(scale_range=(1.2, 0.8))
    with pytest.raises(ValueError, match="unknown augmentation"):
        AugmentConfig().replace(rotation=True)
    with pytest.raises(ValueError, match="larger than the source"):
        augment_batch(torch.rand(1, 1, 20, 20), out_size=30)
    with pytest.raises(ValueError, match="does not match"):
        augment_batch(torch.rand(1, 1, 20, 20), torch.zeros(1, 10, 10, dtype=torch.long), out_size=10)


def test_bicubic_image_option():
    image, labels, weights, mask = batch(64, 2)
    cfg = AugmentConfig(image_interpolation="bicubic", **{k: False for k in GRAY})
    out = augment_batch(image, labels, weights, mask, out_size=40, config=cfg, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out.weights, out.image[:, 0], atol=0.02)  # bicubic vs bilinear of a smooth field
