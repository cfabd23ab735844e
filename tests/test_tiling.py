"""Overlap-tile inference: seamlessness, axes, lazy inputs/outputs, cancel, out-of-memory."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from _helpers import run_to_end

import napari_unet as nu
from napari_unet._progress import Progress, drain
from napari_unet.tiling import (
    padded_single_pass,
    parse_axes,
    predict,
    predict_iter,
    reflect_indices,
    round_tile_size,
)

ATOL = 2e-5  # float32 rounding of a tiny network; real seams are ~1e-1


def _fixed_norm(model):
    """Normalisation that does not depend on the image, to compare planes one by one."""
    model.meta["normalization"] = {"kind": "fixed", "lo": [0.0], "hi": [1.0]}
    return model


def _infos(gen):
    result, records = run_to_end(gen)
    assert all(isinstance(rec, Progress) for rec in records)
    return result, [rec.info for rec in records]


def test_seamless_for_any_tile_size_and_equal_to_one_padded_pass(tiny_model, rng):
    image = rng.normal(100, 20, (97, 131)).astype(np.float32)
    ref = padded_single_pass(image, tiny_model)
    seen = set()
    for tile in (8, 36, 60):
        probs, infos = _infos(predict_iter(image, tiny_model, tile_size=tile, amp=False))
        seen.add(infos[-1]["tile_size"])
        assert probs.shape == (3, 97, 131) and probs.dtype == np.float32
        np.testing.assert_allclose(probs, ref, atol=ATOL)
    assert len(seen) == 3  # three really different tilings
    np.testing.assert_allclose(ref.sum(0), 1.0, atol=1e-5)


def test_misaligned_tiles_would_show_seams(tiny_model, rng):
    # control: the comparison above is sensitive to tile origins off the pooling grid
    image = rng.normal(100, 20, (64, 64)).astype(np.float32)
    ref = padded_single_pass(image, tiny_model)
    shifted = padded_single_pass(np.pad(image, ((2, 0), (0, 0)), mode="reflect"), tiny_model)[:, 2:]
    assert np.abs(shifted - ref).max() > 1e-3


def test_round_tile_size(tiny_model):
    cfg = tiny_model.config  # grid 4
    assert round_tile_size(37, cfg) == 36
    assert round_tile_size(1, cfg) % cfg.grid == 0
    paper = nu.UNetConfig()
    assert round_tile_size(388, paper) == 384  # 388 is a valid output size but off the grid


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_reflect_indices_match_numpy_reflect_even_far_out(n):
    a = np.arange(n)
    pad = 25
    expected = np.pad(a, pad, mode="reflect") if n > 1 else np.zeros(n + 2 * pad, int)
    got = a[reflect_indices(np.arange(-pad, n + pad), n)]
    np.testing.assert_array_equal(got, expected)


def test_image_smaller_than_field_of_view(tiny_model, rng):
    image = rng.random((5, 7)).astype(np.float32)
    probs = predict(image, tiny_model, amp=False)
    assert probs.shape == (3, 5, 7)
    np.testing.assert_allclose(probs, padded_single_pass(image, tiny_model), atol=ATOL)


def test_stack_is_processed_plane_by_plane(tiny_model, rng):
    model = _fixed_norm(tiny_model)
    stack = rng.random((3, 40, 45)).astype(np.float32)
    probs = predict(stack, model, tile_size=16, amp=False)
    assert probs.shape == (3, 3, 40, 45)
    for z in range(3):
        np.testing.assert_allclose(probs[:, z], predict(stack[z], model, amp=False), atol=ATOL)


def test_normalisation_is_computed_once_per_image_not_per_plane(tiny_model, rng):
    plane = rng.random((32, 32)).astype(np.float32) * 100
    stack = np.stack([plane, plane * 3])
    probs = predict(stack, tiny_model, amp=False)
    # per-plane percentiles would make both planes identical after normalisation
    assert np.abs(probs[:, 0] - probs[:, 1]).max() > 1e-3


def test_time_and_z_axes(tiny_model, rng):
    model = _fixed_norm(tiny_model)
    img = rng.random((2, 3, 24, 30)).astype(np.float32)
    probs = predict(img, model, axes="TZYX", amp=False)
    assert probs.shape == (3, 2, 3, 24, 30)
    np.testing.assert_allclose(probs[:, 1, 2], predict(img[1, 2], model, amp=False), atol=ATOL)
    # axis order of the output follows the image (here X before Y)
    probs_t = predict(img[0, 0].T, model, axes="XY", amp=False)
    np.testing.assert_allclose(probs_t, probs[:, 0, 0].transpose(0, 2, 1), atol=ATOL)


def test_channel_axis_for_multichannel_model(rng):
    torch.manual_seed(1)
    model = nu.UNet(in_channels=2, num_classes=3, depth=2, base_width=4).eval()
    img = rng.random((3, 2, 30, 26)).astype(np.float32)  # ZCYX
    probs = predict(img, model, axes="ZCYX", amp=False)
    assert probs.shape == (3, 3, 30, 26)
    # the same with the channel axis last
    probs2 = predict(np.moveaxis(img, 1, -1), model, axes="ZYXC", amp=False)
    np.testing.assert_allclose(probs, probs2, atol=ATOL)
    with pytest.raises(ValueError, match="2 input channel"):
        predict(img[:, 0], model, axes="ZYX")


def test_rgb_into_gray_model_averages_channels(tiny_model, rng):
    rgb = (rng.random((33, 41, 3)) * 255).astype(np.uint8)
    probs = predict(rgb, tiny_model, amp=False)  # guessed YXS
    gray = rgb.astype(np.float32).mean(-1)
    np.testing.assert_allclose(probs, predict(gray, tiny_model, amp=False), atol=ATOL)
    rgba = np.concatenate([rgb, np.full((33, 41, 1), 255, np.uint8)], -1)
    np.testing.assert_allclose(predict(rgba, tiny_model, amp=False), probs, atol=ATOL)


def test_multichannel_into_gray_model_is_a_clear_error(tiny_model, rng):
    with pytest.raises(ValueError, match="pick one channel"):
        predict(rng.random((2, 30, 30)), tiny_model, axes="CYX")


@pytest.mark.parametrize("dtype", [bool, np.uint8, np.uint16, np.int32, np.float64])
def test_any_dtype(tiny_model, rng, dtype):
    img = (rng.random((30, 34)) * (1 if dtype is bool else 200)).round().astype(dtype)
    probs = predict(img, tiny_model, amp=False)
    assert probs.shape == (3, 30, 34) and np.isfinite(probs).all()


def test_bad_images_raise_clear_errors(tiny_model):
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        predict(np.zeros(10), tiny_model)
    with pytest.raises(ValueError, match="one letter per axis"):
        predict(np.zeros((4, 10, 10)), tiny_model, axes="YX")
    with pytest.raises(ValueError, match="dtype"):
        predict(np.zeros((10, 10), complex), tiny_model)


def test_dask_and_zarr_inputs_and_zarr_output(tiny_model, rng, tmp_path):
    da = pytest.importorskip("dask.array")
    zarr = pytest.importorskip("zarr")
    image = rng.normal(50, 10, (70, 90)).astype(np.float32)
    ref = predict(image, tiny_model, tile_size=24, amp=False)
    lazy = da.from_array(image, chunks=(32, 32))
    np.testing.assert_allclose(predict(lazy, tiny_model, tile_size=24, amp=False), ref, atol=ATOL)
    zin = zarr.open_array(tmp_path / "in.zarr", mode="w", shape=image.shape, chunks=(32, 32), dtype="f4")
    zin[:] = image
    zout = zarr.open_array(tmp_path / "out.zarr", mode="w", shape=(3, 70, 90), chunks=(3, 32, 32), dtype="f4")
    res = predict(zin, tiny_model, tile_size=24, out=zout, amp=False)
    assert res is zout
    np.testing.assert_allclose(zout[:], ref, atol=ATOL)
    with pytest.raises(ValueError, match="out has shape"):
        predict(image, tiny_model, out=np.zeros((3, 70, 91), np.float32))


def test_memmap_input(tiny_model, rng, tmp_path):
    image = rng.normal(50, 10, (40, 50)).astype(np.float32)
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=image.shape)
    mm[:] = image
    mm.flush()
    ro = np.load(tmp_path / "x.npy", mmap_mode="r")
    np.testing.assert_allclose(predict(ro, tiny_model, amp=False), predict(image, tiny_model, amp=False), atol=ATOL)


def test_caller_model_is_not_modified(tiny_model, rng):
    tiny_model.train()
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    predict(rng.random((20, 20)), tiny_model, amp=False)
    assert tiny_model.training
    assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())
    assert tiny_model.down[0][0].weight.is_contiguous()  # not switched to channels_last


class _Wrapper(torch.nn.Module):
    """Fault injection around a real network: slow forward passes or out-of-memory."""

    calls = 0  # class-level: the predictor works on a deep copy of the model
    sizes: list = []

    def __init__(self, inner, delay=0.0, max_pixels=None):
        super().__init__()
        self.inner = inner
        self.delay = delay
        self.max_pixels = max_pixels

    @property
    def config(self):
        return self.inner.config

    @property
    def meta(self):
        return self.inner.meta

    def forward(self, x):
        type(self).calls += 1
        type(self).sizes.append(tuple(x.shape))
        if self.max_pixels is not None and x.shape[0] * x.shape[2] * x.shape[3] > self.max_pixels:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB (injected)")
        time.sleep(self.delay)
        return self.inner(x)


def test_cancel_stops_promptly(tiny_model, rng):
    _Wrapper.calls = 0
    slow = _Wrapper(tiny_model, delay=0.6)
    gen = predict_iter(rng.random((200, 200)), slow, tile_size=16, batch_size=1, amp=False)
    next(gen)
    next(gen)
    t0 = time.perf_counter()
    gen.close()
    assert time.perf_counter() - t0 < 1.0
    calls = _Wrapper.calls
    time.sleep(1.5)  # the batch already running may finish; nothing new starts
    assert _Wrapper.calls <= calls + 1
    assert calls < 10  # 169 tiles: it really stopped early


def test_heartbeat_while_a_batch_runs(tiny_model, rng):
    slow = _Wrapper(tiny_model, delay=0.7)
    recs = []
    gen = predict_iter(rng.random((20, 20)), slow, amp=False)
    t0 = time.perf_counter()
    drain((recs.append(r) or r for r in gen))
    assert time.perf_counter() - t0 >= 0.7
    assert len(recs) >= 3  # start, heartbeat(s), done


def test_out_of_memory_shrinks_tile_and_batch_and_retries(tiny_model, rng):
    image = rng.normal(0, 1, (90, 90)).astype(np.float32)
    ref = predict(image, tiny_model, amp=False)
    _Wrapper.sizes = []
    oom = _Wrapper(tiny_model, max_pixels=60 * 60)
    probs, infos = _infos(predict_iter(image, oom, tile_size=88, batch_size=4, amp=False))
    np.testing.assert_allclose(probs, ref, atol=ATOL)
    assert infos[-1]["tile_size"][0] < 88
    assert any(s[0] < 4 for s in _Wrapper.sizes)  # batches were split first
    with pytest.raises(MemoryError, match="smallest tile"):
        predict(image, _Wrapper(tiny_model, max_pixels=10), amp=False)


def test_progress_reports_device_and_tile(tiny_model, rng):
    _, infos = _infos(predict_iter(rng.random((50, 50)), tiny_model, tile_size=20))
    assert infos[-1]["device"].startswith("cpu")
    assert infos[-1]["tile_size"] == (20, 20)
    assert infos[-1]["precision"] in ("float32", "bfloat16")


def test_bfloat16_path_is_close_to_float32(tiny_model, rng):
    image = rng.normal(0, 1, (60, 60)).astype(np.float32)
    p32 = predict(image, tiny_model, amp=False)
    pbf = predict(image, tiny_model, amp=True)
    assert np.abs(p32 - pbf).max() < 0.1


def test_parse_axes_guesses():
    assert parse_axes((10, 20)).axes == "YX"
    lay = parse_axes((10, 20, 3))
    assert lay.rgb and lay.out_shape == (10, 20)
    assert parse_axes((5, 10, 20)).planes == (0,)
    assert parse_axes((2, 5, 10, 20)).plane_shape == (2, 5)
    with pytest.raises(ValueError, match="exactly one Y"):
        parse_axes((5, 10, 20), "ZXX")
