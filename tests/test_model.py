import numpy as np
import pytest
import torch

import napari_unet as nu
from napari_unet.model import ModelFileError, UNetConfig


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("width", [2, 5])
def test_output_shapes_over_depths_widths_and_sizes(depth, width):
    cfg = UNetConfig(depth=depth, base_width=width)
    model = nu.UNet(in_channels=2, num_classes=3, depth=depth, base_width=width).eval()
    sizes = [cfg.min_input_size, cfg.min_input_size + cfg.grid, cfg.min_input_size + 3 * cfg.grid]
    h, w = sizes[0], sizes[2]
    with torch.no_grad():
        out = model(torch.zeros(1, 2, h, w))
    assert out.shape == (1, 3, cfg.output_size(h), cfg.output_size(w))
    assert h - out.shape[2] == 2 * cfg.halo


def test_paper_sizes():
    cfg = UNetConfig()
    assert cfg.output_size(572) == 388
    assert cfg.halo == 92
    assert cfg.is_valid_input_size(572) and not cfg.is_valid_input_size(573)


def test_valid_size_arithmetic_matches_network():
    model = nu.UNet(depth=2, base_width=2).eval()
    cfg = model.config
    for size in range(20, 120):
        if cfg.is_valid_input_size(size):
            with torch.no_grad():
                out = model(torch.zeros(1, 1, size, size))
            assert out.shape[-1] == cfg.output_size(size)
        else:
            with pytest.raises(ValueError, match="Nearest valid sizes"):
                model(torch.zeros(1, 1, size, size))


def test_invalid_size_message_names_neighbours():
    cfg = UNetConfig()
    with pytest.raises(ValueError) as info:
        cfg.check_input_size(500)
    assert "492 or 508" in str(info.value)
    below, above = cfg.nearest_valid_input_sizes(10)
    assert below is None and above == cfg.min_input_size


def test_input_size_for_output():
    cfg = UNetConfig(depth=3)
    for out in range(1, 200, 7):
        size = cfg.input_size_for_output(out)
        assert cfg.is_valid_input_size(size)
        assert cfg.output_size(size) >= out
        assert size - cfg.grid < cfg.min_input_size or cfg.output_size(size - cfg.grid) < out


def test_backward_runs_and_reaches_every_parameter():
    model = nu.UNet(depth=2, base_width=4).train()
    size = model.config.input_size_for_output(8)
    out = model(torch.randn(2, 1, size, size))
    out.logsumexp(1).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_he_initialisation():
    torch.manual_seed(0)
    model = nu.UNet(depth=2, base_width=32)
    conv = model.down[1][0]  # 3x3 conv, 32 -> 64 channels
    expected = np.sqrt(2.0 / (9 * 32))
    assert abs(conv.weight.std().item() - expected) / expected < 0.05


def test_bad_config_raises():
    with pytest.raises(ValueError, match="depth"):
        nu.UNet(depth=0)
    with pytest.raises(ValueError, match="num_classes"):
        nu.UNet(num_classes=1)


def test_save_load_round_trip(tmp_path, tiny_model):
    tiny_model.meta["normalization"] = {"kind": "percentile", "low": 2.0, "high": 99.0}
    tiny_model.meta["class_names"] = ["bg", "inside", "rim"]
    tiny_model.meta["history"] = [{"iteration": 1, "loss": 0.5}]
    path = nu.save_model(tiny_model, tmp_path / "m.pt")
    loaded = nu.load_model(path)
    assert loaded.config == tiny_model.config
    assert loaded.meta["normalization"]["low"] == 2.0
    assert loaded.meta["class_names"] == ["bg", "inside", "rim"]
    assert loaded.meta["history"] == [{"iteration": 1, "loss": 0.5}]
    x = torch.randn(1, 1, 44, 44)
    with torch.no_grad():
        assert torch.equal(loaded(x), tiny_model(x))
    # the file loads with weights_only semantics (no code execution)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "napari-unet-model"
    assert not list(tmp_path.glob("*.tmp"))


def test_corrupt_and_foreign_files_raise(tmp_path, tiny_model):
    path = nu.save_model(tiny_model, tmp_path / "m.pt")
    data = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="trunc.pt"):
        nu.load_model(tmp_path / "trunc.pt")
    torch.save({"hello": 1}, tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="not a napari-unet model"):
        nu.load_model(tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="not found"):
        nu.load_model(tmp_path / "missing.pt")


def test_meta_must_be_plain(tmp_path, tiny_model):
    tiny_model.meta["bad"] = object()
    with pytest.raises(TypeError, match="plain values"):
        nu.save_model(tiny_model, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()
