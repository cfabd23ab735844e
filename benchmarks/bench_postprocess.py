"""Post-processing (probabilities -> cells): ours vs the same steps with scipy's EDT and scikit-image's h_maxima.

    python benchmarks/bench_postprocess.py [--size 1024] [--repeat 3]

Predicts a synthetic image with the bundled model once, then times
``probabilities_to_labels`` (instance3, distance split) as shipped, whose distance
transform and h-maxima are the compiled ones of ``napari_unet._morphology``, against the
same function with ``scipy.ndimage.distance_transform_edt`` and
``skimage.morphology.h_maxima`` put back, alternating the two; checks that the labels are
identical and prints peak memory (tracemalloc) per pixel for both.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from unittest import mock

import numpy as np

import napari_unet as nu
from napari_unet import _morphology
from napari_unet.postprocess import probabilities_to_labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from scipy import ndimage as ndi
    from skimage.morphology import h_maxima as skimage_h_maxima

    img, _ = nu.make_sample((args.size, args.size), seed=1)
    probs = nu.predict(img, nu.load_model())
    probabilities_to_labels(probs[:, :64, :64])  # compile (or load) the kernel outside the timings

    def ours():
        return probabilities_to_labels(probs)

    def reference():
        with mock.patch.object(_morphology, "h_maxima", skimage_h_maxima), \
                mock.patch.object(_morphology, "edt", ndi.distance_transform_edt):
            return probabilities_to_labels(probs)

    t_ours, t_ref = [], []
    for _ in range(args.repeat):
        for fn, times in ((ours, t_ours), (reference, t_ref)):
            t = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t)
    same = np.array_equal(ours(), reference())
    peaks = []
    for fn in (ours, reference):
        tracemalloc.start()
        fn()
        peaks.append(tracemalloc.get_traced_memory()[1] / img.size)
        tracemalloc.stop()
    print(f"{args.size}x{args.size}, {int(out.max())} cells")
    print(f"ours {min(t_ours):.3f} s, with scipy's EDT and scikit-image's h_maxima {min(t_ref):.3f} s: "
          f"{min(t_ref) / min(t_ours):.1f}x faster; identical labels: {same}")
    print(f"peak memory: ours {peaks[0]:.0f} B/px, with scipy/scikit-image {peaks[1]:.0f} B/px")


if __name__ == "__main__":
    main()
