"""The walk of one Segment click through the package's rooms, recorded with ``sys.setprofile``.

The Segment widget's job (``_widgets.segment.run_segment``) is run on a small image with
the bundled model and Cell size "auto" (the widget's defaults). Every call into a function
of a ``napari_unet`` module (a room) is recorded, except the shared helpers every room calls
(``_progress``, ``device``, ``normalize``, ``resize``...) and the methods of value objects
(frozen dataclasses: a layout, a network's configuration, the image's description): calling
them reads a fact, it is no stage. The walk is the sequence of modules called
(consecutive calls into the same module are one step). A *return* is a step into a module
the walk has already left: the walk climbs back to a room it was in. Each distinct
(from, to) return is counted once, so a loop over tiles or planes is one return, not
thousands. The fewer there are, the more each room finishes its part before handing on.

Run it to see the figure and the returns::

    OMP_NUM_THREADS=1 python tests/test_walk.py
"""

from __future__ import annotations

import inspect
import sys

import numpy as np
import pytest

PACKAGE = "napari_unet"
#: the shared helpers (docs/ARCHITECTURE.md): every room calls them, they are no stage of the walk
HELPERS = {f"{PACKAGE}.{m}" for m in ("_progress", "_files", "_version", "device", "normalize", "resize",
                                        "_morphology", "_two_nearest", "modes")}
#: code that runs as part of its caller: a module's body on import, comprehensions (inlined
#: since Python 3.12)
NO_CALL = {"<module>", "<genexpr>", "<listcomp>", "<setcomp>", "<dictcomp>"}
#: at most this many distinct returns to a room already left
MAX_RETURNS = 10


def _image() -> np.ndarray:
    """A 192x192 field of bright discs on a noisy background (float32)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:192, :192]
    img = rng.normal(0.1, 0.02, (192, 192))
    for cy, cx in rng.uniform(16, 176, (14, 2)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = 1.0
    return img.astype(np.float32)


def record_walk(image: np.ndarray | None = None) -> list[str]:
    """The modules the Segment widget's job calls into, in order (repeats collapsed)."""
    from napari_unet._progress import drain
    from napari_unet._widgets.segment import SegmentJob, run_segment

    job = SegmentJob(data=_image() if image is None else image, image_name="cells", model_path=None, device="cpu",
                     tile_size=None, axes="YX", min_size=16, want_probabilities=False, scale=(1.0, 1.0),
                     translate=(0.0, 0.0), diameter="auto")
    walk: list[str] = []
    started: dict[int, object] = {}  # generator frames already started (held, so their ids stay theirs)

    def profile(frame, event, arg):
        # a call, not a module run by an import, a comprehension, nor a generator resumed at a yield
        if event != "call" or frame.f_code.co_name in NO_CALL or _reads_a_fact(frame):
            return
        if frame.f_code.co_flags & inspect.CO_GENERATOR:
            if id(frame) in started:
                return
            started[id(frame)] = frame
        mod = frame.f_globals.get("__name__", "")
        if mod.startswith(PACKAGE) and mod not in HELPERS and (not walk or walk[-1] != mod):
            walk.append(mod)

    drain(run_segment(job))  # once unrecorded: imports and caches are not part of the walk
    sys.setprofile(profile)  # this thread only: the forward passes' worker thread is tiling's own
    try:
        drain(run_segment(job))
    finally:
        sys.setprofile(None)
    return walk


def _reads_a_fact(frame) -> bool:
    """True for a call that only makes or reads a value object (a frozen dataclass: the
    image's description, the options, a layout, a network's configuration): no stage."""
    if not frame.f_code.co_filename.endswith(".py"):  # dataclass-made __init__, __eq__...
        return True
    names = frame.f_code.co_varnames[: frame.f_code.co_argcount]
    owner = frame.f_locals.get(names[0]) if names and names[0] == "self" else None
    params = getattr(type(owner), "__dataclass_params__", None)
    return bool(params is not None and params.frozen)


def returns(walk: list[str]) -> list[tuple[str, str]]:
    """The distinct steps ``(from, to)`` into a module the walk had already left."""
    seen: set[str] = set()
    found: list[tuple[str, str]] = []
    for prev, mod in zip([None, *walk], walk):
        if mod in seen and (prev, mod) not in found:
            found.append((prev, mod))
        seen.add(mod)
    return found


def _bundled() -> bool:
    from napari_unet.channels import bundled_path

    return bundled_path("fluorescence").is_file()


@pytest.mark.slow
def test_a_segment_click_climbs_back_to_few_rooms():
    pytest.importorskip("qtpy")  # the widget module is imported for its job function
    if not _bundled():
        pytest.skip("the bundled model is not installed")
    back = returns(record_walk())
    assert len(back) <= MAX_RETURNS, "\n".join(f"{a} -> {b}" for a, b in back)


if __name__ == "__main__":
    walk = record_walk()
    print("the walk:", " > ".join(m.removeprefix(PACKAGE + ".") for m in walk))
    back = returns(walk)
    print("returns to a room already left:")
    for a, b in back:
        print(f"  {a} -> {b}")
    print(f"{len(back)} returns to a room already left (at most {MAX_RETURNS} allowed)")
