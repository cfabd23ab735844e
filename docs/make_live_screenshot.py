"""Render docs/images/live_1280x800.png (and live_1920x1080.png): live learning running in
the Annotate widget, with the proposal and the uncertainty overlay.

Usage (needs a display; on a headless machine run it under ``xvfb-run -a``)::

    python docs/make_live_screenshot.py [--steps 25]

A synthetic nuclei image; the person has painted the cells of the top-left corner (from the
image's ground truth); Live is on with the bundled model, and after ``--steps`` training
steps the view is proposed, the uncertainty overlay shown and *Next uncertain cell*
pressed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from make_annotate_screenshots import wait  # the same wait for the GUI (this folder is on sys.path)

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=25, help="steps before the shot (a change of the annotations "
                    "starts a cycle of live.CYCLE steps, after which the run waits)")
    args = ap.parse_args(argv)
    import imageio.v3 as iio
    import napari
    import torch

    from napari_unet._widgets.annotate import AnnotateWidget
    from napari_unet.synthetic import make_sample

    torch.set_num_threads(1)
    img, truth = make_sample((384, 384), 3)
    viewer = napari.Viewer(show=True)
    viewer.add_image(img, name="nuclei")
    w = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(w, name="Annotate")
    w.device.value = "cpu"
    w.live.folder = Path(tempfile.mkdtemp(prefix="live-shot-"))
    labels = w.new_labels_layer()
    keep = np.isin(truth, np.unique(truth[:150, :150])[1:])
    labels.data = np.where(keep, truth, 0).astype(labels.data.dtype)
    w.live.switch.value = True
    wait(lambda: w.live.run.iteration >= args.steps)
    asked = w.live.run.iteration
    w.live.refresh()
    wait(lambda: w.live.proposal is not None and w.live.proposal.iteration >= asked)
    w.live.next_uncertain()
    before = w.live.proposal
    w.live.refresh()  # the view moved: its proposal
    wait(lambda: w.live.proposal is not before)
    for width, height in ((1280, 800), (1920, 1080)):
        viewer.window.resize(width, height)
        wait(lambda: True)
        out = HERE / "images" / f"live_{width}x{height}.png"
        iio.imwrite(out, viewer.screenshot(canvas_only=False, flash=False))
        print(f"wrote {out}")
    w.live.switch.value = False
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
