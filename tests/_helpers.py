"""Helpers shared by several test files (fixtures live in ``conftest.py``).

Importable as ``from _helpers import ...``: pytest puts this folder on ``sys.path``
(the tests are not a package).
"""

from __future__ import annotations

#: the centres of :func:`blobs_at`'s discs
BLOB_CENTRES = ((20, 20), (20, 60), (60, 30), (70, 90), (30, 100))


def blobs(shape=(96, 110), n=8, seed=0, radius=6):
    """Bright discs at random places on a dim noisy background (float32)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = rng.normal(0.1, 0.02, shape)
    for _ in range(n):
        cy, cx = rng.uniform(radius + 2, shape[0] - radius - 2), rng.uniform(radius + 2, shape[1] - radius - 2)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = 1.0
    return img.astype(np.float32)


def blobs_at(shape=(96, 120), centers=BLOB_CENTRES, radius=7):
    """Bright discs at ``centers`` on a dim noisy background (float32)."""
    import numpy as np

    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.random.default_rng(0).normal(0.1, 0.02, shape)
    for cy, cx in centers:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = 1.0
    return img.astype(np.float32)


def docked_annotate(viewer, model_path=None):
    """An Annotate widget docked in ``viewer``, predicting on the CPU (with the model file
    ``model_path`` when given)."""
    from napari_unet._widgets.annotate import AnnotateWidget

    w = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(w, name="Annotate")
    if model_path is not None:
        w.model.source.value = w.model.FILE
        w.model.file.value = model_path
    w.device.value = "cpu"
    return w


def run_to_end(gen):
    """Run a progress generator to the end: ``(its result, the records it yielded)``."""
    records = []
    while True:
        try:
            records.append(next(gen))
        except StopIteration as stop:
            return stop.value, records


def threshold_unet(in_channels: int = 1, num_classes: int = 3):
    """A depth-2 width-4 U-Net computing 'interior where normalised intensity > 0.5'.

    Weights set by hand: identity 3x3 convolutions carry channel 0 through the encoder and
    the top skip connection, and a 1x1 head says "interior" above one half. Deterministic
    and free to "train", yet it runs through the real model file, tiling and
    post-processing code.
    """
    import torch

    from napari_unet import UNet

    model = UNet(in_channels=in_channels, num_classes=num_classes, depth=2, base_width=4, dropout=0.0)
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
        if num_classes == 3:
            model.head.bias[2] = -20.0
    # 2 classes: background (dark: membrane in EM) / cell, the paper's instance2 form
    model.meta["mode"] = "instance3" if num_classes == 3 else "instance2"
    return model.eval()


class GuiStalls:
    """The longest the GUI thread went without running its event loop, measured with a
    20 ms ``QTimer`` (a frozen GUI delays its ticks). Use as a context manager around the
    work, processing events inside (``qtbot.waitUntil``)."""

    def __init__(self, interval_ms: int = 20) -> None:
        from qtpy.QtCore import QTimer

        self.stamps: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        import time

        self.stamps.append(time.perf_counter())

    def __enter__(self) -> GuiStalls:
        self._tick()
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.timer.isActive():  # stopping twice measures nothing more
            self.timer.stop()
            self._tick()

    @property
    def longest(self) -> float:
        """Seconds of the longest gap between ticks."""
        import numpy as np

        return float(np.diff(self.stamps).max()) if len(self.stamps) > 1 else 0.0


def membrane_image(shape=(96, 96), n=14, seed=0):
    """EM-like data: Voronoi cells (bright, noisy) split by dark 2-3 px membranes.

    Returns ``(image, cells, membrane)``: float32 image, cell ids (0 = membrane), bool mask.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, shape[0], (n, 2))
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    d = np.sqrt((yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2)
    nearest = np.argmin(d, -1)
    d.sort(-1)
    membrane = d[..., 1] - d[..., 0] < 2.5
    cells = np.where(membrane, 0, nearest + 1).astype(np.int32)
    img = np.where(membrane, 0.2, 0.7) + rng.normal(0, 0.07, shape)
    return img.astype(np.float32), cells, membrane


def few_large_cells_labelled():
    """An image of many small cells (about 12 px across) and three large ones (30 px) in one
    corner, with only the large ones labelled and the annotated region around them (as a
    confidence ranking picks the large, merged cells first): (image, labels, region)."""
    import numpy as np

    yy, xx = np.mgrid[:300, :340]
    lab = np.zeros((300, 340), np.int32)
    small = [(y, x) for y in range(30, 300, 45) for x in range(30, 340, 45) if not (y > 160 and x > 150)]
    for k, (cy, cx) in enumerate(small):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 < 6**2] = k + 1
    for k, (cy, cx) in enumerate([(200, 190), (200, 280), (265, 235)]):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 < 15**2] = 100 + k
    noise = np.random.default_rng(0).normal(0, 0.02, lab.shape).astype(np.float32)
    img = np.where(lab > 0, 1.0, 0.1).astype(np.float32) + noise
    region = np.zeros(lab.shape, bool)
    region[170:, 160:] = True  # the corner holding the three large cells and nothing else
    return img, np.where(lab >= 100, lab, 0), region
