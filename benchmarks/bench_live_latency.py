"""How quickly the viewer answers while live learning trains: event latency on the GUI thread.

A napari viewer (run under ``xvfb-run -a`` on a headless machine) with the Annotate widget
on a synthetic nuclei image (``--size`` px) and the bundled model. A simulated person
paints a small cell every 50 ms (``Labels.data_setitem``, with napari's paint event, as a
brush stroke) for ``--seconds``, first with Live off, then with Live on: the run training
in a thread of the viewer's process (``LiveRun``), then in a process of its own
(``LiveProcess``, what the widget uses; ``--form`` picks one), with ``--threads`` torch
threads, proposals of the view every 3 s. A 10-ms ``QTimer`` stamps the GUI thread's event
loop: the gap between two stamps beyond 10 ms is how long an event (a key, a mouse move)
would have waited. Printed: the gaps' median, p99 and maximum, the paint handler's time,
the training steps made and the proposals shown (with their latency from request to
display).

    OMP_NUM_THREADS=1 xvfb-run -a python benchmarks/bench_live_latency.py --threads 1

The goal is p99 under 100 ms on a 2-core CPU; on a machine shared with other jobs the
"Live off" row is the floor the machine itself sets.

Measured on the shared 2-core machine, loaded by other jobs (load average 1.4 to 4.7; Xvfb
with Mesa's software renderer, so every stroke is drawn on the CPU), thirteen runs within
40 minutes, alternating: "before", the widget as it was when Live trained only in a thread
of the viewer; "after", this script, both forms in the same run (runs 6 and 7 after the
proposals stopped redrawing the uncertainty overlay twice, run 7 with runs in cycles of
steps). p99 of the gaps, in ms (training steps made in the 20 s in brackets)::

    run        load  Live off   thread (steps)   process (steps)
    before 1   2.0     181        411  (2)
    after 1    1.4      69        166  (8)        187  (8)
    before 2   2.6     186        245  (6)
    after 2    3.2     193        426  (2)        301  (2)
    before 3   4.7     116        247  (6)
    after 3    4.2     160        344  (3)        220  (1)
    before 4   1.4      74        226  (6)
    after 4    2.6      72        241  (5)        110  (3)
    before 5   3.0      74        123 (10)
    after 5    2.4      54        121 (11)        117 (34)
    after 6    1.7     113        226  (5)        162  (5)
    before 7   2.3      71        222  (7)
    after 7    2.6     110        245  (5)        145  (2)

Run 5 in full::

                           gap p50    p99    max  paint p99  steps proposals shown after
    Live off                48.1ms   54ms  130ms      7.1ms      0         0       nan s
    Live on, thread (1)     65.2ms  121ms  146ms     13.3ms     11         6       2.5 s
    Live on, process (1)    67.5ms  117ms  126ms     10.1ms     34         7       1.6 s

With its own process the run no longer shares Python's interpreter lock with the viewer:
in six of the seven "after" runs its p99 is below the thread's (median 162 ms against 241),
and on a quiet machine it makes three times the steps (34 against 11). The goal (p99
under 100 ms) is still not met on this machine: what is left on the GUI thread is the
viewer's own work for each proposal (writing the proposal and uncertainty layers of the
plane and drawing them, 50-100 ms here, in software) and the competition for the two cores,
which the process's lower priority (``LiveProcess(nice=5)``) only tempers. Its priority,
process form only, two runs each in a quieter quarter of an hour: nice 0 (the viewer's)
p99 166 / 178 ms, 28 / 35 steps; nice 5 (the default) 127 / 166 ms, 36 / 3 steps; nice 19
91 / 102 ms, but 1 step in 20 s: the viewer, drawing every stroke in software, then leaves
the run nothing. The widget test (``tests/test_widget_live.py``, a tiny network, the
process form) measured p99 41-96 ms, longest 47-97 ms, in five runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def measure(viewer, widget, labels, seconds: float, live: bool, process: bool = True) -> dict:
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    stamps: list[float] = []
    handler: list[float] = []
    tick = QTimer()
    tick.setInterval(10)
    tick.timeout.connect(lambda: stamps.append(time.perf_counter()))
    rng = np.random.default_rng(0)
    H, W = labels.data.shape
    yy, xx = np.mgrid[-3:4, -3:4]
    disc = yy**2 + xx**2 <= 9
    value = [int(labels.data.max()) + 1]

    def stroke() -> None:
        cy, cx = int(rng.integers(5, H - 5)), int(rng.integers(5, W - 5))
        idx = (yy[disc] + cy, xx[disc] + cx)
        t0 = time.perf_counter()
        with labels.block_history():
            labels.data_setitem(idx, np.full(len(idx[0]), value[0], labels.data.dtype))
        handler.append(time.perf_counter() - t0)
        value[0] += 1

    painter = QTimer()
    painter.setInterval(50)
    painter.timeout.connect(stroke)
    if live:
        widget.live.process = process
        widget.live.switch.value = True
    run = widget.live.run
    t_start = time.perf_counter()
    while live and run.iteration < 2 and time.perf_counter() - t_start < 300:  # training under way
        QApplication.processEvents()
        time.sleep(0.01)
    steps0, shown0 = (run.iteration if live else 0), len(widget.live.latency)
    tick.start()
    painter.start()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        QApplication.processEvents()
        time.sleep(0.002)
    tick.stop()
    painter.stop()
    out = {"steps": (run.iteration - steps0) if live else 0,
           "proposals": len(widget.live.latency) - shown0,
           "proposal_latency": float(np.median(widget.live.latency[shown0:])) if len(widget.live.latency) > shown0 else float("nan")}
    if live:
        widget.live.switch.value = False
    gaps = np.maximum(np.diff(stamps) - 0.010, 0.0) * 1000
    out.update(p50=float(np.median(gaps)), p99=float(np.percentile(gaps, 99)), max=float(gaps.max()),
               handler_p99=float(np.percentile(handler, 99) * 1000), strokes=len(handler))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--form", choices=("both", "process", "thread"), default="both",
                    help="where Live on trains: its own process (the widget's way), a thread of the viewer's, or both")
    args = ap.parse_args(argv)
    import napari
    import torch

    from napari_unet._widgets.annotate import AnnotateWidget
    from napari_unet.synthetic import make_sample

    torch.set_num_threads(1)
    img, truth = make_sample((args.size, args.size), 3)
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1280, 800)
    viewer.add_image(img, name="nuclei")
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Annotate")
    widget.device.value = "cpu"
    widget.live.folder = Path(tempfile.mkdtemp(prefix="bench-live-"))
    labels = widget.new_labels_layer()
    # a first few cells, from the truth, so the run has something to learn from
    keep = np.isin(truth, np.unique(truth[: args.size // 3, : args.size // 3])[1:])
    labels.data = np.where(keep, truth, 0).astype(labels.data.dtype)
    widget.live.threads = args.threads
    rows = {"Live off": measure(viewer, widget, labels, args.seconds, False)}
    for form in ("thread", "process"):
        if args.form in (form, "both"):
            rows[f"Live on, {form} ({args.threads})"] = measure(viewer, widget, labels, args.seconds, True,
                                                               form == "process")
    print(f"{args.size}x{args.size} synthetic nuclei, the bundled model, a stroke every 50 ms for {args.seconds:g} s")
    print(f"{'':22} {'gap p50':>8} {'p99':>6} {'max':>6} {'paint p99':>10} {'steps':>6} {'proposals':>9} {'shown after':>11}")
    for name, r in rows.items():
        print(f"{name:22} {r['p50']:6.1f}ms {r['p99']:4.0f}ms {r['max']:4.0f}ms {r['handler_p99']:8.1f}ms "
              f"{r['steps']:6d} {r['proposals']:9d} {r['proposal_latency']:9.1f} s")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
