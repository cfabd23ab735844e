"""Live learning: a fine-tuning run that keeps going while the person annotates.

:class:`LiveRun` holds the run. The person (or a script) adds or replaces annotations --
an image with its labels and the annotated region, or complete labels -- at any time;
the run learns from the set as it stands from its next step on, asks for proposals
(the model's cells in an image, with a confidence per cell) and stops, keeping the best
model. It drives the same :class:`~napari_unet.training.Trainer` as a training run (the
same steps, validation, best-model choice and checkpoints, :meth:`Trainer.fit`), with no
end: :meth:`Trainer.set_data` swaps the data between two steps, each change starts a short
cycle of steps (:data:`CYCLE`) after which the run waits for the next change, and the best
weights so far are scored again on the new validation strips (so "best" always means best
on what the person has annotated now).

Three ways to drive it, with the same code underneath:

* :meth:`LiveRun.start` trains in a background thread (``threads`` torch threads, 1 by
  default: on a 2-core machine the other core stays with the viewer) and serves proposal
  requests (:meth:`LiveRun.request_proposal`) between two steps, so only one computation
  runs at a time and the caller's thread never runs torch;
* :class:`LiveProcess` runs that same background run in a process of its own (``spawn``,
  at a lower CPU priority), so its Python work (data preparation, post-processing of
  proposals) never holds the caller's interpreter lock: the viewer uses this one. As with
  any ``spawn``-ed process, a script that starts one guards its top level with
  ``if __name__ == "__main__":``;
* :meth:`LiveRun.train` runs a number of steps in the caller's thread and
  :meth:`LiveRun.propose` predicts there (scripts, the benchmark
  ``benchmarks/bench_live_loop.py``).

Where to look next: :func:`cell_confidence` scores each proposed cell by the model's own
class-probability margin (most likely minus second most likely class) over the cell and a
thin ring around it -- where a wrong cell shows itself: a missing boundary between two
merged nuclei, a faint or half-seen nucleus, a cut-off outline. :func:`uncertain_order`
ranks the cells, least confident first.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

#: torch threads of the background run: one leaves the other core of a 2-core machine to
#: the viewer (measured: ``tests/test_widget_live.py``, event latency while training)
DEFAULT_THREADS = 1
#: steps between validations (and checkpoints) of a live run
VAL_EVERY = 25
#: the ring (pixels) around a cell whose probability margin counts in its confidence
RING = 2
#: peak learning rate of a live run (each change of the annotations starts a cycle of
#: :data:`CYCLE` steps that decays from it, see ``training.SCHEDULES``). Fine-tuning the
#: stained model on one 128-px window of H&E tile 01 (its 25 cells, whole) for 60 steps,
#: AP@0.5 on tiles 08 + 10 (0.755 before): 3e-4 (the training default) 0.50, 1e-4 0.64;
#: a few cells pull a model away fast
LR_LIVE = 1e-4
#: steps of the warm-up and cosine cycle that each change of the annotations starts; after
#: it the run waits for the next change (it has learnt what there was to learn, and a
#: person who pauses does not keep the CPU busy or the model drifting). Measured with
#: ``benchmarks/bench_live_loop.py`` (30 steps a round; ranked cells, H&E tiles 01, 03, 05,
#: scored on 08 + 10, start 0.770): constant 1e-4 ended at 0.649 after 14 rounds (it drifts
#: as steps pile up on the same few cells), cycles of 30 steps: see the benchmark's docstring
CYCLE = 30
#: steps a run makes on one version of the annotations before it takes the next (preparing
#: the data and scoring the best weights again take a few steps' time)
STEPS_PER_CHANGE = 5
#: a live run never ends by itself: its step count is this (the Trainer's "no end")
ENDLESS = 10**9
#: how much lower the CPU priority of a live run's own process (:class:`LiveProcess`) is than
#: the viewer's (Unix ``nice``): when both want the CPU, the viewer is served first
NICE = 5
#: seconds :meth:`LiveProcess.stop` waits for the run to end (finishing the kept model takes
#: a validation pass or two) before it ends the process
STOP_TIMEOUT = 30.0
#: the LiveRun methods a parent asks its :class:`LiveProcess` to call
_CALLS = ("set_annotation", "remove_annotation", "request_proposal")


@dataclass
class Proposal:
    """The model's cells in an image, as a live run predicted them.

    Attributes:
        labels: (H, W) cell ids.
        probabilities: (K, H, W) class probabilities.
        confidence: cell id -> confidence in [0, 1] (:func:`cell_confidence`).
        iteration: the training step whose weights predicted it.
        key: what the request named (a view, an image...), returned as given.
    """

    labels: np.ndarray
    probabilities: np.ndarray
    confidence: dict[int, float]
    iteration: int
    key: Any = None

    def uncertain(self) -> list[int]:
        """Cell ids, least confident first."""
        return uncertain_order(self.confidence)


def cell_confidence(probabilities: np.ndarray, labels: np.ndarray, ring: int = RING) -> dict[int, float]:
    """Per cell, the mean margin between the two most likely classes over the cell and a
    ``ring``-pixel band around it (1: the model is sure of every pixel, 0: it hesitates
    between two classes everywhere).

    Args:
        probabilities: (K, H, W) class probabilities.
        labels: (H, W) cell ids (0 = background).
        ring: width of the band around each cell.

    Returns:
        ``{cell id: confidence}``.
    """
    p = np.asarray(probabilities, np.float32)
    lab = np.asarray(labels)
    if p.ndim != 3 or p.shape[1:] != lab.shape:
        raise ValueError(f"probabilities {p.shape} do not match labels {lab.shape}: expected (K, H, W) and (H, W)")
    top2 = np.partition(p, p.shape[0] - 2, axis=0)[-2:] if p.shape[0] > 1 else np.stack([np.zeros_like(p[0]), p[0]])
    margin = top2[1] - top2[0]
    out: dict[int, float] = {}
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None:
            continue
        grown = tuple(slice(max(s.start - ring, 0), s.stop + ring) for s in sl)
        cell = lab[grown] == i
        band = ndi.binary_dilation(cell, iterations=ring) if ring > 0 else cell
        # the ring takes no pixel of another cell: their margins are theirs
        band &= (lab[grown] == 0) | cell
        out[i] = float(margin[grown][band].mean())
    return out


def uncertain_order(confidence: dict[int, float]) -> list[int]:
    """Cell ids, least confident first (ties: the lower id first)."""
    return sorted(confidence, key=lambda i: (confidence[i], i))


def uncertainty_image(labels: np.ndarray, confidence: dict[int, float]) -> np.ndarray:
    """(H, W) float32: each cell's pixels hold 1 - its confidence, the rest 0 (the overlay)."""
    lab = np.asarray(labels)
    lut = np.zeros(int(lab.max()) + 1 if lab.size else 1, np.float32)
    for i, c in confidence.items():
        if i < len(lut):
            lut[i] = 1.0 - c
    return lut[lab]


@dataclass
class _Annotation:
    image: np.ndarray
    labels: np.ndarray
    region: Any  # a bool mask or "all"

    @classmethod
    def checked(cls, key: Hashable, image: Any, labels: Any, region: Any) -> _Annotation:
        """The annotation, its shapes checked, with copies of the labels and region (the
        person keeps painting on theirs)."""
        img, lab = np.asarray(image), np.asarray(labels)
        if lab.ndim != 2 or img.shape[:2] != lab.shape and img.shape[-2:] != lab.shape:
            raise ValueError(f"annotation {key!r}: labels {lab.shape} must be 2D and match the image {img.shape}")
        if isinstance(region, np.ndarray) and region.shape != lab.shape:
            raise ValueError(f"annotation {key!r}: region {region.shape} does not match labels {lab.shape}")
        return cls(img, lab.copy(), region.copy() if isinstance(region, np.ndarray) else region)


def _check_options(options: dict[str, Any]) -> None:
    for k in ("iterations", "max_time", "schedule", "schedule_iterations", "val_images", "resume", "regions"):
        if k in options:
            raise TypeError(f"a live run sets {k!r} itself")


class LiveRun:
    """A fine-tuning run that keeps learning from annotations as they change.

    Args:
        model: the starting model: a :class:`~napari_unet.model.UNet`, a model file, a
            bundled model's name, or None (the bundled model the first image picks).
        device: ``None``/``"auto"``, ``"cuda"``, ``"mps"`` or ``"cpu"``.
        threads: torch threads of the background run (:meth:`start`).
        checkpoint_dir: where ``last.pt``, ``best.pt`` and ``state.pt`` go (at every
            validation, and ``best.pt`` the kept model when the run stops); None: none.
        val_every: steps between validations.
        **options: further :func:`napari_unet.training.train_iter` keywords (``lr``,
            ``batch_size``, ``tile_size``, ``seed``, ``augment``...).
    """

    def __init__(self, model: Any = None, *, device: Any = None, threads: int = DEFAULT_THREADS,
                 checkpoint_dir: Any = None, val_every: int = VAL_EVERY, **options: Any) -> None:
        _check_options(options)
        self.model_spec, self.device, self.threads = model, device, int(threads)
        options.setdefault("lr", LR_LIVE)
        self.options = dict(options, device=device, checkpoint_dir=checkpoint_dir, val_every=int(val_every),
                            iterations=ENDLESS, schedule="cycles", schedule_iterations=CYCLE)
        self._annotations: dict[Hashable, _Annotation] = {}
        self._changed = False
        self._lock = threading.Lock()  # annotations, requests, results
        self._net_lock = threading.Lock()  # the weights: a step, or a copy of them
        self._trainer: Any = None
        self._data_step = 0  # the step from which the run learns from the data it has
        self._gen: Any = None
        self._start_model: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._request: tuple[np.ndarray, str | None, Any, Any] | None = None
        self._proposal: Proposal | None = None
        self.result: Any = None  # the kept model, once stopped
        self.kept_path: Any = None  # ... and its file, with a checkpoint folder
        self.error: BaseException | None = None
        self.last: dict[str, Any] = {}  # the last progress record's info

    # -- annotations ------------------------------------------------------------------------

    def set_annotation(self, key: Hashable, image: Any, labels: Any, region: Any = None) -> None:
        """Add (or replace, for a known ``key``) an annotated image; the run learns from it from
        its next step on. ``region``: a bool mask of the annotated area, ``"all"`` (complete
        labels) or None (the labelled cells and a margin). Labels with no cell and no region
        are left out until they have one (nothing to learn)."""
        annotation = _Annotation.checked(key, image, labels, region)
        with self._lock:
            self._annotations[key] = annotation
            self._changed = True
        self._wake.set()

    def remove_annotation(self, key: Hashable) -> None:
        """Forget an annotated image (no error when unknown)."""
        with self._lock:
            self._changed = self._annotations.pop(key, None) is not None or self._changed
        self._wake.set()

    @property
    def annotations(self) -> list[Hashable]:
        with self._lock:
            return list(self._annotations)

    def _usable(self) -> list[_Annotation]:
        return [a for a in self._annotations.values()
                if (isinstance(a.region, str) and a.region == "all") or (isinstance(a.region, np.ndarray) and a.region.any())
                or a.labels.any()]

    def _apply_changes(self) -> bool:
        """Hand the annotations to the trainer when they changed (the first: make it); False
        while there is nothing to learn from."""
        with self._lock:
            if self._trainer is not None and self.iteration - self._data_step < STEPS_PER_CHANGE:
                return True  # a person who keeps painting must not keep the run preparing data
            changed, self._changed = self._changed, False
            usable = self._usable()
        if not (changed and usable):
            return self._trainer is not None
        images = [a.image for a in usable]
        labels = [a.labels for a in usable]
        regions = [a.region for a in usable]
        if self._trainer is None:
            from .training import Trainer

            self._trainer = Trainer(images, labels, self.start_model(images[0]), regions=regions, **self.options)
            self._gen = self._trainer.fit()
            self._data_step = 0
            return True
        t = self._trainer
        with self._net_lock:
            t.set_data(images, labels, regions)
            self._rescore_best()
        self._data_step = self.iteration
        return True

    def _rescore_best(self) -> None:
        """The best weights so far, scored on the new validation strips (the old score was
        on other data); without validation data the last weights are kept."""
        from .model import clone_model

        t = self._trainer
        run = t.run
        if run.best_state is None or not t.val:
            return
        probe = clone_model(t.net)
        probe.load_state_dict(run.best_state)
        val = t.validate(probe.to(t.dev))
        run.best_score, run.best_loss, t.stale = val["val_ap"], val["val_loss"], 0

    def start_model(self, image: Any = None) -> Any:
        """The starting model (resolved once: the bundled model is picked by ``image``)."""
        if self._start_model is None:
            from .channels import resolve_model

            img = None if image is None else np.asarray(image)
            rgb = img is not None and img.ndim == 3 and img.shape[-1] in (3, 4)
            self._start_model = resolve_model(self.model_spec, rgb, img)[0]
        return self._start_model

    # -- training -----------------------------------------------------------------------------

    def _advance(self) -> bool:
        """One record of the trainer's loop (a step or a validation) on the current
        annotations; False when there is nothing to learn from yet."""
        if not self._apply_changes():
            return False
        with self._net_lock:
            rec = next(self._gen)
        self.last = dict(rec.info)
        self.last.pop("run", None)
        return True

    def train(self, steps: int) -> int:
        """Run ``steps`` training steps in the caller's thread (validations come on top);
        returns the step count of the run."""
        if self.running:
            raise RuntimeError("the live run trains in its thread: stop it before calling train()")
        t0 = self.iteration
        while self.iteration < t0 + steps:
            if not self._advance():
                raise ValueError("nothing to learn from yet: add an annotation with at least one cell")
        return self.iteration

    @property
    def iteration(self) -> int:
        return 0 if self._trainer is None else int(self._trainer.iteration)

    @property
    def best_score(self) -> float | None:
        """The best validation score so far (None before the first validation)."""
        if self._trainer is None or not math.isfinite(self._trainer.run.best_score):
            return None
        return float(self._trainer.run.best_score)

    @property
    def settled(self) -> bool:
        """True when the run has made the cycle of steps the last change started and waits
        for the next change (:data:`CYCLE`)."""
        t = self._trainer
        return t is not None and not self._changed and t.iteration - t.cycle_start >= CYCLE

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> LiveRun:
        """Train in a background thread until :meth:`stop`."""
        if self.running:
            return self
        if self.result is not None:
            raise RuntimeError("this live run was stopped; start a new one (from its kept model)")
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="napari-unet live run", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        import torch

        torch.set_num_threads(max(1, self.threads))
        try:
            while not self._stop.is_set():
                self._serve_request()
                if self.settled or not self._advance():
                    self._wake.wait(0.1)
                    self._wake.clear()
        except BaseException as exc:  # noqa: BLE001 -- shown by the caller (the widget's status line)
            self.error = exc

    def stop(self) -> Any:
        """End the run and return the kept model: the best by validation on the current
        annotations (the last weights when never validated), finished as a training run
        finishes (written as ``best.pt`` in the checkpoint folder: :attr:`kept_path`); None
        when it never trained. Safe to call twice."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.result is None and self._trainer is not None:
            if self._gen is not None:
                self._gen.close()
            with self._net_lock:
                self.result = self._trainer.end("stopped")
            ckpt = self._trainer.ckpt
            if ckpt is not None:
                self.kept_path = ckpt / "best.pt"
        return self.result

    # -- proposals ----------------------------------------------------------------------------

    def current_model(self) -> Any:
        """A CPU copy of the weights as they are now (the starting model before any step)."""
        from .model import clone_model

        if self._trainer is None:
            return self._start_model
        with self._net_lock:
            model = clone_model(self._trainer.net)
        return model.eval()

    def propose(self, image: Any, axes: str | None = None, key: Any = None, reference: Any = None) -> Proposal:
        """Cells of ``image`` (cut from ``reference``, see :func:`propose`) as the model sees
        them now, with their confidence (in the caller's thread)."""
        img = np.asarray(image)
        if self._trainer is None:
            return propose(self.start_model(img), img, device=self.device, axes=axes, key=key, reference=reference)
        return propose(self.current_model(), img, device=self.device, axes=axes, key=key, iteration=self.iteration,
                       diameter=self._diameter_of(img if reference is None else np.asarray(reference)), reference=reference)

    def _diameter_of(self, image: np.ndarray) -> float | None:
        """The cell size an image is segmented at: the one it trains at. A ``zoom_each`` model
        zooms each image by the size the starting model measures on the whole image
        (:meth:`Trainer.measured_diameter`, measured once per image); another model, all
        images by the annotated cells' size."""
        from .training_data import normalised_whole

        t = self._trainer
        if t.net.meta.get("zoom_each"):
            measured = t.measured_diameter(normalised_whole(image, t.in_ch, 0, t.norm_rule))
            if measured is not None:
                return measured
        return float(t.data_diameter) if math.isfinite(t.data_diameter) else None

    def request_proposal(self, image: Any, axes: str | None = None, key: Any = None, reference: Any = None) -> None:
        """Ask the background run for a proposal of ``image`` (it replaces an unserved
        request); :meth:`take_proposal` returns it once made."""
        with self._lock:
            self._request = (np.asarray(image), axes, key, reference)
        self._wake.set()

    def take_proposal(self) -> Proposal | None:
        """The proposal made since the last call, or None."""
        with self._lock:
            p, self._proposal = self._proposal, None
        return p

    def _serve_request(self) -> None:
        with self._lock:
            req, self._request = self._request, None
        if req is None:
            return
        p = self.propose(*req)
        with self._lock:
            self._proposal = p


class LiveProcess:
    """A :class:`LiveRun` training in a process of its own, driven from this one.

    The same run (:meth:`LiveRun.start`'s loop, in a ``spawn``-ed child process with
    ``threads`` torch threads and a CPU priority ``nice`` steps below this process's), with
    the surface a viewer needs: :meth:`start`, :meth:`stop`, :meth:`set_annotation`,
    :meth:`remove_annotation`, :attr:`annotations`, :meth:`request_proposal`,
    :meth:`take_proposal`, :attr:`iteration`, :attr:`best_score`, :attr:`settled`, :attr:`last`,
    :attr:`error`, :attr:`running`, :attr:`result` and :attr:`kept_path`. Training and
    proposals (which hold Python's interpreter lock for much of their time) then never hold
    up this process's event loop. Annotations and proposal requests go to the child through
    a pipe, sent by a thread of their own (the caller never waits on the child); progress,
    proposals and, at the end, the kept model come back. A child that dies is reported in
    :attr:`error`; :meth:`stop` ends a child that does not stop in time. Arguments as for
    :class:`LiveRun`.
    """

    def __init__(self, model: Any = None, *, device: Any = None, threads: int = DEFAULT_THREADS,
                 checkpoint_dir: Any = None, val_every: int = VAL_EVERY, nice: int = NICE, **options: Any) -> None:
        _check_options(options)
        self.model_spec, self.device, self.threads, self.nice = model, device, int(threads), int(nice)
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self._options = dict(options, device=device, threads=int(threads), checkpoint_dir=checkpoint_dir,
                             val_every=int(val_every))
        self._keys: dict[Hashable, None] = {}
        self._outbox: queue.Queue = queue.Queue()  # messages to the child, sent by self._sender
        self.process: Any = None  # the child (a multiprocessing Process)
        self._conn: Any = None
        self._sender: threading.Thread | None = None
        self._folder: Path | None = None
        self._stopping = False
        self._stopped: dict[str, Any] | None = None  # the child's last message
        self._status: dict[str, Any] = {"iteration": 0, "best_score": None, "settled": False, "last": {}}
        self._proposal: Proposal | None = None
        self._error: BaseException | None = None
        self.result: Any = None
        self.kept_path: Path | None = None

    # -- the child --------------------------------------------------------------------------

    def start(self) -> LiveProcess:
        """Start the child process (it trains until :meth:`stop`)."""
        import multiprocessing
        import tempfile

        if self.process is not None:
            if self.running:
                return self
            raise RuntimeError("this live run was stopped; start a new one (from its kept model)")
        self._folder = Path(tempfile.mkdtemp(prefix="napari-unet-live-"))
        model = self.model_spec
        if model is not None and not isinstance(model, (str, os.PathLike)):  # a UNet: handed over as a file
            from .model import save_model

            model = str(save_model(model, self._folder / "start.pt"))
        ctx = multiprocessing.get_context("spawn")
        self._conn, there = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(there, model, self._options, self.nice, str(self._folder)),
                                   name="napari-unet live run", daemon=True)
        self.process.start()
        there.close()  # the child's end: a child that dies closes the pipe
        self._sender = threading.Thread(target=self._send_loop, name="napari-unet live run: sender", daemon=True)
        self._sender.start()
        return self

    def _send_loop(self) -> None:
        while (msg := self._outbox.get()) is not None:
            try:
                self._conn.send(msg)
            except (OSError, ValueError):  # the child is gone: _drain reports it
                return

    def _drain(self, wait: float = 0.0) -> None:
        """Take in what the child sent; note a child that died without being asked to stop."""
        if self.process is None or self._stopped is not None or self._conn.closed:
            return
        try:
            while self._conn.poll(wait):
                wait = 0.0
                kind, body = self._conn.recv()
                if kind == "status":
                    self._status.update(body)
                    if body["error"] is not None and self._error is None:
                        self._error = _rebuilt_error(body["error"])
                elif kind == "proposal":
                    self._proposal = body
                else:  # "stopped"
                    self._stopped = body
                    return
        except Exception:  # noqa: BLE001, S110 -- a pipe cut mid-message: the child died, said below
            pass
        if not self._stopping and self._error is None and not self.process.is_alive():
            self._error = RuntimeError(_died(self.process.exitcode))

    def stop(self, timeout: float = STOP_TIMEOUT) -> Any:
        """End the run and return the kept model, as :meth:`LiveRun.stop` (read back from the
        child); a child that does not end within ``timeout`` seconds, or died, is ended and
        :attr:`error` says so; the best model of its last validation (``best.pt`` in the
        checkpoint folder) is kept then, if there is one. Safe to call twice."""
        proc = self.process
        if proc is None or self._stopping:
            return self.result
        self._stopping = True
        self._outbox.put(("stop",))
        deadline = time.monotonic() + timeout
        while self._stopped is None and proc.is_alive() and time.monotonic() < deadline:
            self._drain(wait=0.1)
        self._drain()  # what a child that just ended left in the pipe
        if self._stopped is None and self._error is None:
            self._error = RuntimeError(_died(proc.exitcode) if not proc.is_alive() else
                                       f"the training process did not stop within {timeout:g} s and was ended")
        proc.join(5.0)
        if proc.is_alive():
            proc.terminate()
            proc.join(5.0)
        if proc.is_alive():
            proc.kill()
            proc.join()
        self._outbox.put(None)
        if self._sender is not None:
            self._sender.join(5.0)
        self._conn.close()
        self._keep()
        return self.result

    def _keep(self) -> None:
        """The kept model: the one the child finished, else the last checkpoint's best."""
        import shutil

        end = self._stopped
        if end is not None:
            self._status.update(end["status"])
            if end["error"] is not None and self._error is None:
                self._error = _rebuilt_error(end["error"])
            self.kept_path = None if end["kept_path"] is None else Path(end["kept_path"])
            if end["model"] is not None:
                from .model import load_model

                self.result = load_model(end["model"])
        elif self.checkpoint_dir is not None and (self.checkpoint_dir / "best.pt").is_file():
            from .model import ModelFileError, load_model

            self.kept_path = self.checkpoint_dir / "best.pt"
            try:
                self.result = load_model(self.kept_path)
            except ModelFileError:
                self.kept_path = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)

    # -- the LiveRun surface ----------------------------------------------------------------------

    def set_annotation(self, key: Hashable, image: Any, labels: Any, region: Any = None) -> None:
        """As :meth:`LiveRun.set_annotation` (checked, and the labels copied, here)."""
        a = _Annotation.checked(key, image, labels, region)
        self._keys[key] = None
        self._outbox.put(("set_annotation", key, a.image, a.labels, a.region))

    def remove_annotation(self, key: Hashable) -> None:
        self._keys.pop(key, None)
        self._outbox.put(("remove_annotation", key))

    @property
    def annotations(self) -> list[Hashable]:
        return list(self._keys)

    def request_proposal(self, image: Any, axes: str | None = None, key: Any = None, reference: Any = None) -> None:
        """As :meth:`LiveRun.request_proposal`: :meth:`take_proposal` returns it once made."""
        ref = None if reference is None else np.asarray(reference)
        self._outbox.put(("request_proposal", np.asarray(image), axes, key, ref))

    def take_proposal(self) -> Proposal | None:
        """The proposal made since the last call, or None (never waits)."""
        self._drain()
        p, self._proposal = self._proposal, None
        return p

    @property
    def iteration(self) -> int:
        self._drain()
        return int(self._status["iteration"])

    @property
    def best_score(self) -> float | None:
        self._drain()
        return self._status["best_score"]

    @property
    def settled(self) -> bool:
        """As :attr:`LiveRun.settled`: the run waits for the next change."""
        self._drain()
        return bool(self._status["settled"])

    @property
    def last(self) -> dict[str, Any]:
        """The last progress record's info (its plain values)."""
        self._drain()
        return self._status["last"]

    @property
    def error(self) -> BaseException | None:
        """What ended the run: an error of the training, or the child's death (one line)."""
        self._drain()
        return self._error

    @property
    def running(self) -> bool:
        return self.process is not None and not self._stopping and self.process.is_alive()

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid


def _died(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        import signal

        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        how = f"killed by {name}{', perhaps for lack of memory' if name == 'SIGKILL' else ''}"
    else:
        how = f"exit code {exitcode}"
    return f"the training process ended unexpectedly ({how})"


def _error_of(exc: BaseException | None) -> tuple[str, str] | None:
    return None if exc is None else (type(exc).__name__, str(exc).strip() or type(exc).__name__)


def _rebuilt_error(err: tuple[str, str]) -> BaseException:
    """The child's error as an exception here: of the same built-in type (a ValueError says
    the input was wrong), else a RuntimeError naming its type."""
    import builtins

    name, text = err
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls(text)
    return RuntimeError(f"{name}: {text}")


def _plain_status(run: LiveRun) -> dict[str, Any]:
    last = {k: v for k, v in run.last.items() if v is None or isinstance(v, (str, bool, int, float))}
    return {"iteration": run.iteration, "best_score": run.best_score, "settled": run.settled, "last": last,
            "error": _error_of(run.error)}


def _serve(conn: Any, model: Any, options: dict[str, Any], nice: int, folder: str) -> None:
    """The child of a :class:`LiveProcess`: a :class:`LiveRun` training in its thread, driven
    by the parent's messages; at the end (asked to stop, or the parent gone) it stops the
    run, which keeps the best model as always, and sends it back."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C in the viewer's terminal is the viewer's
    if nice > 0 and hasattr(os, "nice"):
        os.nice(nice)  # before any thread starts: they inherit it
    run = LiveRun(model, **options).start()
    sent: dict[str, Any] | None = None
    try:
        while True:
            try:
                msg = conn.recv() if conn.poll(0.1) else None
            except (EOFError, OSError):
                return  # the parent is gone (finally: the best model is kept)
            if msg is not None:
                if msg[0] not in _CALLS:
                    return  # "stop"
                getattr(run, msg[0])(*msg[1:])
            status = _plain_status(run)
            if status != sent:
                conn.send(("status", status))
                sent = status
            p = run.take_proposal()
            if p is not None:
                conn.send(("proposal", p))
    finally:
        end: dict[str, Any] = {"model": None, "kept_path": None, "error": None}
        try:
            kept = run.stop()
            if kept is not None:
                from .model import save_model

                end["model"] = str(save_model(kept, Path(folder) / "kept.pt"))
            end["kept_path"] = None if run.kept_path is None else str(run.kept_path)
        except Exception as exc:  # noqa: BLE001 -- said to the parent
            end["error"] = _error_of(exc)
        end["status"] = _plain_status(run)
        try:
            conn.send(("stopped", end))
        except OSError:
            pass


def propose(model: Any, image: Any, *, device: Any = None, axes: str | None = None, diameter: float | None = None,
            reference: Any = None, iteration: int = 0, key: Any = None) -> Proposal:
    """A model's cells in ``image`` with their confidence: ``segment`` as predict-to-annotate
    runs it (``diameter``: the cells' size in pixels; None: as the model segments by
    default), keeping the class probabilities. ``reference``: the whole image that
    ``image`` is cut from, whose statistics normalise it (as training normalises the
    whole annotated image), so a view of a few bright cells is not stretched otherwise."""
    import copy

    from ._progress import drain
    from .segmentation import AS_IS, segment_iter

    img = np.asarray(image)
    if reference is not None:
        from .inputs import describe_input

        lo, hi = describe_input(np.asarray(reference), model, axes=axes, check=False).normalization
        model = copy.copy(model)
        model.meta = {**model.meta, "normalization": {"kind": "fixed", "lo": lo.tolist(), "hi": hi.tolist()}}
    if diameter is None and not model.meta.get("zoom_each"):
        diameter = AS_IS  # type: ignore[assignment]
    yx = img.shape[:2] if (img.ndim == 3 and img.shape[-1] in (3, 4)) else img.shape[-2:]
    probs = np.zeros((model.config.num_classes, *yx), np.float32)
    labels = np.asarray(drain(segment_iter(img, model, device=device, axes=axes, diameter=diameter,
                                           probabilities_out=probs)))
    return Proposal(labels, probs, cell_confidence(probs, labels), iteration, key)


def window_cost(truth: np.ndarray, proposal: np.ndarray, area: np.ndarray, iou: float = 0.5) -> int:
    """Cells a person draws or fixes to make ``area`` right, starting from ``proposal``:
    the true cells with pixels in the area that no proposed cell matches at ``iou`` (both
    cut to the area), plus the proposed cells there that match no true cell (deleted). Cells the
    proposal already has right are accepted and cost nothing."""
    from .metrics import matching

    t = np.where(area, truth, 0)
    p = np.where(area, proposal, 0)
    r = matching(t, p, iou)
    return int(r["fn"] + r["fp"])


def region_for_cells(truth: np.ndarray, proposal: np.ndarray, cells: Sequence[int], margin: int = 3) -> np.ndarray:
    """The area a person makes right when they fix the proposed ``cells``: those cells and
    every true cell they touch, grown by ``margin`` pixels, without the pixels of other
    true cells that the grown area only clips."""
    chosen = np.isin(proposal, list(cells))
    touched = np.unique(truth[chosen])
    touched = touched[touched > 0]
    area = chosen | np.isin(truth, touched)
    grown = ndi.binary_dilation(area, iterations=margin) if margin > 0 else area
    clipped = (truth > 0) & ~np.isin(truth, touched) & grown
    return grown & ~clipped


__all__ = [
    "DEFAULT_THREADS",
    "LiveProcess",
    "LiveRun",
    "Proposal",
    "cell_confidence",
    "propose",
    "region_for_cells",
    "uncertain_order",
    "uncertainty_image",
    "window_cost",
]
