"""The segmentation modes: what a network's output classes mean (``model.meta["mode"]``).

* ``"instance3"``: background, cell interior, cell boundary (seeded watershed at inference);
* ``"instance2"``: background and cell, touching cells parted by a background gap (the paper's form);
* ``"semantic"``: label values are classes.

:mod:`napari_unet.targets` encodes labels this way, :mod:`napari_unet.postprocess` decodes
the probabilities; a module of its own (importing nothing) so that every room can read it.
"""

MODES = ("instance3", "instance2", "semantic")

__all__ = ["MODES"]
