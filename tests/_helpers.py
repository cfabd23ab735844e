"""Helpers shared by several test files (fixtures live in ``conftest.py``).

Importable as ``from _helpers import ...``: pytest puts this folder on ``sys.path``
(the tests are not a package).
"""

from __future__ import annotations


def run_to_end(gen):
    """Run a progress generator to the end: ``(its result, the records it yielded)``."""
    records = []
    while True:
        try:
            records.append(next(gen))
        except StopIteration as stop:
            return stop.value, records


def threshold_unet(in_channels: int = 1):
    """A depth-2 width-4 U-Net computing 'interior where normalised intensity > 0.5'.

    Weights set by hand: identity 3x3 convolutions carry channel 0 through the encoder and
    the top skip connection, and a 1x1 head says "interior" above one half. Deterministic
    and free to "train", yet it runs through the real model file, tiling and
    post-processing code.
    """
    import torch

    from napari_unet import UNet

    model = UNet(in_channels=in_channels, num_classes=3, depth=2, base_width=4, dropout=0.0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                m.weight.zero_()
                m.bias.zero_()
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
        # every 3x3 conv copies channel 0 (the first one averages the input channels);
        # up-convolutions stay zero, so the decoder carries the top skip connection
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3):
                m.weight[0, 0, 1, 1] = 1.0
        model.down[0][0].weight[0, :, 1, 1] = 1.0 / in_channels
        model.head.weight[1, 0] = 40.0
        model.head.bias[1] = -20.0
        model.head.bias[2] = -20.0
    model.meta["mode"] = "instance3"
    return model.eval()
