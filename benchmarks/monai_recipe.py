"""What the benchmarks' plain MONAI recipes share: the image normalisation a user would
write, and one training step on augmented crops. MONAI is a benchmark-only extra."""

from __future__ import annotations

from typing import Any

import numpy as np


def normalize(img: np.ndarray) -> np.ndarray:
    """``img`` scaled by its 1 and 99.8 percentiles, float32."""
    lo, hi = np.percentile(img, (1, 99.8))
    return ((np.asarray(img, np.float32) - lo) / max(hi - lo, 1e-6)).astype(np.float32)


def train_step(net: Any, opt: Any, aug: Any, crops: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """One cross-entropy step on ``crops`` (image, labels), each with a leading channel axis,
    passed through the MONAI dictionary transform ``aug``; returns the loss."""
    import torch

    bx, by = [], []
    for image, label in crops:
        d = aug({"image": image, "label": label})
        bx.append(torch.as_tensor(np.asarray(d["image"])))
        by.append(torch.as_tensor(np.asarray(d["label"]))[0])
    loss = torch.nn.functional.cross_entropy(net(torch.stack(bx).float()), torch.stack(by).long())
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.item())
