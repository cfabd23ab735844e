"""Membrane models' class probabilities: test-time flips and a fitted membrane bias.

Two switches in a model's ``meta``, set by training with the ``"membranes"`` preset
(:mod:`napari_unet.training`, :func:`calibrate_membranes`) and read by every tiled
forward pass (``predict``, ``segment``; the validation during training reads neither):

* ``meta["test_time_flips"] = True``: the class probabilities are the mean over the four
  flips of the input tile (none, left-right, up-down, both; 4x the forward cost). With
  valid convolutions the output of a flipped tile, flipped back, covers exactly the same
  pixels, so tiles still stitch seamlessly.
* ``meta["class_bias"] = [b0, b1, ...]``: added to the log of the (flip-averaged)
  probabilities before they are renormalised. With two classes, ``b0`` moves the
  membrane/cell decision: ``p' = sigmoid(logit(p) + b0)``, i.e. thresholding the
  uncorrected ``p(membrane)`` at ``sigmoid(-b0)`` instead of 0.5. The weight map of eq. 2
  (w0 10) makes the network over-call membrane; :func:`fit_membrane_bias` picks ``b0``
  on the validation pixels so that ``p' > 0.5`` minimises the pixel error there.

Membrane training (``preset="membranes"``) fits the bias and leaves the flips off.
Measured on ISBI 2012 (``fine_tune(slices 0-14, model="scratch", mode="instance2")``,
validation = the centres of slices 12-14, scored on slices 15-19; one seed per model,
Rand error of ``segment``)::

    model (steps, CPU-s at 1 thread)      pixel error: raw  +bias  flips  flips+bias  best t (oracle)
    depth 3 w16, 96-px tiles x4 (2000)                 0.0851 0.0826 0.0843 0.0823     0.0812 (0.60)
    depth 3 w16, 192-px tiles x2 (2000, 600)           0.0879 0.0779 0.0862 0.0786     0.0779 (0.70)
    depth 3 w32, 192-px tiles x2 (750, 597)            0.0919 0.0913                     0.0892 (0.60)
    depth 4 w16, 192-px tiles x2 (850, 484)            0.0960 0.0884                     0.0875 (0.65)
    depth 3 w16, 192-px tiles x2, seed 1 (2000, 569)   0.0921 0.0850
                                          Rand error:  raw  +bias  flips  flips+bias
    depth 3 w16, 96-px tiles x4                        0.086  0.066  0.076  0.078
    depth 3 w16, 192-px tiles x2                       0.051  0.064  0.069  0.083
    depth 3 w32, 192-px tiles x2                       0.090  0.107
    depth 4 w16, 192-px tiles x2                       0.129  0.088
    depth 3 w16, 192-px tiles x2, seed 1               0.097  0.082

The fitted threshold was 0.69-0.70 (bias -0.80 to -0.85) for all five models (the last
one fitted by the training run itself). The bias lowers the pixel error on every model
(by 0.001-0.010, mean 0.006) and leaves the Rand error within its noise (mean of the
five 0.090 -> 0.081); the flips cost 4x the forward pass for no
pixel gain and a Rand change within noise, so they stay off. A user switches the bias
off with ``model.meta.pop("class_bias")`` and the flips on with
``model.meta["test_time_flips"] = True``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

#: the flips averaged (dims of an N, C, H, W tensor)
FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))
#: whether membrane training switches the flips on (measured: no, see the module docstring)
MEMBRANE_TEST_TIME_FLIPS = False
#: the decision thresholds on p(membrane) :func:`fit_membrane_bias` chooses from (kept
#: within 0.3-0.7: one parameter fitted on a few validation crops must not run away)
BIAS_THRESHOLDS = np.round(np.arange(0.30, 0.7001, 0.01), 2)


def class_probabilities(net: Any, x: torch.Tensor) -> torch.Tensor:
    """Softmax class probabilities of ``net`` on the input batch ``x`` (N, C, H, W),
    with the model's test-time flips and class bias (see the module docstring)."""
    meta = getattr(net, "meta", None) or {}
    flips = FLIPS if meta.get("test_time_flips") else ((),)
    probs = None
    for dims in flips:
        logits = net(torch.flip(x, dims) if dims else x).float()
        p = torch.softmax(logits, dim=1)
        p = torch.flip(p, dims) if dims else p
        probs = p if probs is None else probs + p
    assert probs is not None
    probs = probs / len(flips)
    bias = meta.get("class_bias")
    if bias is not None:
        b = torch.as_tensor(bias, dtype=probs.dtype, device=probs.device).reshape(1, -1, *([1] * (probs.ndim - 2)))
        probs = torch.softmax(torch.log(probs.clamp_min(1e-12)) + b, dim=1)
    return probs


def fit_membrane_bias(p_membrane: Sequence[np.ndarray], membrane: Sequence[np.ndarray],
                      masks: Sequence[np.ndarray | None] | None = None) -> float:
    """The bias ``b0`` for class 0 (membrane) that minimises the pixel error of
    ``sigmoid(logit(p) + b0) > 0.5`` over the given pixels.

    Args:
        p_membrane: predicted (uncorrected) membrane probabilities, one array per image.
        membrane: the true membrane masks (bool), same shapes.
        masks: optional bool masks of the pixels that count (None = all).

    Returns:
        ``-logit(t)`` for the best threshold ``t`` of :data:`BIAS_THRESHOLDS` (ties: the
        one nearest 0.5), 0.0 when no pixel counts.
    """
    masks = [None] * len(p_membrane) if masks is None else masks
    if not (len(p_membrane) == len(membrane) == len(masks)):
        raise ValueError("fit_membrane_bias needs as many probability maps, membrane masks and masks")
    errors = np.zeros(len(BIAS_THRESHOLDS))
    count = 0
    for p, mem, m in zip(p_membrane, membrane, masks):
        p, mem = np.asarray(p, np.float32), np.asarray(mem, bool)
        if p.shape != mem.shape:
            raise ValueError(f"probabilities {p.shape} and membrane mask {mem.shape} differ in shape")
        if m is not None:
            m = np.asarray(m, bool)
            p, mem = p[m], mem[m]
        errors += [np.count_nonzero((p > t) != mem) for t in BIAS_THRESHOLDS]
        count += p.size
    if count == 0:
        return 0.0
    best = np.flatnonzero(errors == errors.min())
    t = float(BIAS_THRESHOLDS[best[np.argmin(np.abs(BIAS_THRESHOLDS[best] - 0.5))]])
    return 0.0 if t == 0.5 else -math.log(t / (1.0 - t))


def calibrate_membranes(net: Any, images: Sequence[np.ndarray], membrane: Sequence[np.ndarray],
                        masks: Sequence[np.ndarray | None] | None = None,
                        flips: bool = MEMBRANE_TEST_TIME_FLIPS) -> float:
    """Switch on ``net``'s test-time flips (``flips``) and fit its membrane bias on
    validation images; sets ``net.meta`` and returns the bias.

    Args:
        net: a 2-class membrane model (:class:`~napari_unet.model.UNet`), on any device.
        images: normalised validation images (C, H, W) float32, as the network reads them.
        membrane: their true membrane masks (bool, H x W).
        masks: optional bool masks of the pixels that count.
        flips: average the four flips (``meta["test_time_flips"]``).
    """
    net.meta["test_time_flips"] = bool(flips)
    net.meta.pop("class_bias", None)
    cfg = net.config
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    p_membrane = []
    with torch.no_grad():
        for img in images:
            _, h, w = img.shape
            pad = ((0, 0), (cfg.halo, cfg.input_size_for_output(h) - h - cfg.halo),
                   (cfg.halo, cfg.input_size_for_output(w) - w - cfg.halo))
            x = torch.from_numpy(np.pad(np.asarray(img, np.float32), pad, mode="reflect"))[None].to(device)  # as predict pads
            p_membrane.append(class_probabilities(net, x)[0, 0, :h, :w].cpu().numpy())
    net.train(was_training)
    bias = fit_membrane_bias(p_membrane, membrane, masks)
    net.meta["class_bias"] = [bias] + [0.0] * (cfg.num_classes - 1)
    return bias
