"""The image's facts decided once at the door (``napari_unet.inputs``): axes parsed once
and the normalisation computed once per image per call, whatever the path (2D, zoomed,
cell size measured, 3D, the Segment widget's job); the result's ``info`` says what was done."""

from __future__ import annotations

import dataclasses
import functools
import sys
import warnings

import _helpers
import numpy as np
import pytest
from _helpers import run_to_end, threshold_unet

import napari_unet as nu
from napari_unet import inputs, normalize

blobs = functools.partial(_helpers.blobs, n=10)


@pytest.fixture
def model():
    net = threshold_unet()
    net.meta["diameter"] = 12.0  # the blobs' size: "auto" measures it, a given 24 zooms by 0.5
    return net


def count_calls(fn, *args, **kwargs):
    """Run ``fn`` and count the calls of the axes parser and of the percentile computation."""
    watched = {inputs.parse_axes.__code__: "parse_axes", normalize.percentile_range.__code__: "percentiles"}
    counts = dict.fromkeys(watched.values(), 0)

    def profile(frame, event, arg):
        if event == "call" and frame.f_code in watched:
            counts[watched[frame.f_code]] += 1

    sys.setprofile(profile)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = fn(*args, **kwargs)
    finally:
        sys.setprofile(None)
    return counts, result


@pytest.mark.parametrize("diameter", [None, 24.0, "auto"])
def test_axes_parsed_once_and_normalisation_computed_once_in_2d(model, diameter):
    counts, labels = count_calls(nu.segment, blobs(), model, device="cpu", diameter=diameter)
    assert labels.max() > 0
    assert counts == {"parse_axes": 1, "percentiles": 1}


def test_axes_parsed_once_and_normalisation_computed_once_in_3d(model):
    stack = np.stack([blobs(seed=1)] * 6)
    counts, labels = count_calls(nu.segment, stack, model, device="cpu", axes="ZYX", voxel_size=(2.0, 1.0, 1.0))
    assert labels.max() > 0
    assert counts == {"parse_axes": 1, "percentiles": 1}


def test_a_stack_of_planes_is_normalised_once_as_a_whole(model):
    stack = np.stack([blobs(seed=s) for s in range(3)])
    counts, labels = count_calls(nu.segment, stack, model, device="cpu", axes="TYX", diameter="auto")
    assert labels.shape == stack.shape and counts == {"parse_axes": 1, "percentiles": 1}


def test_the_segment_widgets_job_parses_and_normalises_once(model, tmp_path):
    pytest.importorskip("qtpy")
    from napari_unet._progress import drain
    from napari_unet._widgets.segment import SegmentJob, run_segment

    path = nu.save_model(model, tmp_path / "blobs.pt")
    job = SegmentJob(data=blobs(), image_name="cells", model_path=path, device="cpu", tile_size=None, axes="YX",
                     min_size=16, want_probabilities=False, scale=(1.0, 1.0), translate=(0.0, 0.0), diameter="auto")
    counts, result = count_calls(lambda: drain(run_segment(job)))
    assert result.num_objects > 0
    assert counts == {"parse_axes": 1, "percentiles": 1}


def test_the_description_is_immutable_and_says_what_was_picked(model):
    facts = inputs.describe_input(blobs(), model, axes="YX", voxel_size=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        facts.axes = "ZYX"
    assert facts.why == "given" and facts.model_line is None and facts.channel_map == "keep"
    lo, hi = facts.normalization
    assert lo[0] < 0.2 < 0.9 < hi[0]
    options = inputs.options_from(model, tile_size=64, membranes=True)
    assert options.tile_size == 64 and dict(options.postprocess) == {"membranes": True}
    with pytest.raises(TypeError):
        options.postprocess["membranes"] = False  # read-only


def test_the_result_info_comes_from_the_description(model):
    from napari_unet.segmentation import segment_iter

    _, records = run_to_end(segment_iter(blobs(), model, device="cpu", axes="YX"))
    info = records[-1].info
    assert info["axes"] == "YX" and info["model_why"] == "given"


def test_a_short_first_axis_guessed_as_planes_is_said(model):
    two = np.stack([blobs(seed=2), blobs(seed=3)])
    with pytest.warns(UserWarning, match="first axis has only 2 values"):
        labels = nu.segment(two, model, device="cpu")
    assert labels.shape == two.shape  # each plane on its own, never linked in 3D
    assert not set(np.unique(labels[0])[1:]) & set(np.unique(labels[1])[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # named axes, or a longer stack: nothing to say
        nu.segment(two, model, device="cpu", axes="TYX")
        nu.segment(np.stack([blobs(seed=s) for s in range(5)]), model, device="cpu")


def test_channel_mismatch_carries_its_facts(model):
    two = np.stack([blobs(seed=2), blobs(seed=3)])
    with pytest.raises(inputs.ChannelMismatch, match="pick one channel") as caught:
        nu.segment(two, model, device="cpu", axes="CYX")
    assert caught.value.model_channels == 1 and caught.value.layout.channels == 2
    assert inputs.each_channel_alone("CYX", two.shape, 1)[0] == "QYX"
    assert inputs.each_channel_alone("CYX", two.shape, 2) == ("CYX", "")


def test_cli_a_two_channel_tiff_is_segmented_channel_by_channel(model, tmp_path, capsys):
    """A (2, Y, X) TIFF whose metadata says CYX, for a 1-channel model: each channel on its
    own (said on the way), never a 2-plane Z stack; named axes it cannot read: one line in
    the command line's words."""
    import tifffile

    from napari_unet.cli import main

    path, out = tmp_path / "two.tif", tmp_path / "two_labels.tif"
    tifffile.imwrite(path, np.stack([blobs(seed=4), blobs(seed=5)]), metadata={"axes": "CYX"})
    model_file = nu.save_model(model, tmp_path / "m.pt")
    assert main(["segment", str(path), "-o", str(out), "--model", str(model_file), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "axes CYX from the file" in err and "each of the 2 is segmented on its own" in err
    labels = tifffile.imread(out)
    assert labels.shape == (2, 96, 110) and labels[0].max() > 0 and labels[1].max() > 0
    assert not set(np.unique(labels[0])[1:]) & set(np.unique(labels[1])[1:])
    assert main(["segment", str(path), "-o", str(tmp_path / "x.tif"), "--model", str(model_file),
                 "--axes", "CYX"]) == 2
    err = capsys.readouterr().err
    assert "--axes" in err and "image[" not in err
