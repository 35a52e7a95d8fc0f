"""The sample-data contribution: the embedded fluorescence sample at 1 photon per pixel, and its ground truth.

File > Open Sample > photongap gives two layers: ``cells``, photon counts simulated from a
real fluorescence image (Poisson, a mean of 1 photon/px, seed 0), and ``cells (ground truth)``,
the clean image in the same photon units. Enough to try every widget within a minute or so:
train on ``cells``, then denoise or sample it and compare with the ground truth.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from photongap.sample_data import clean_at_level, load_sample_data, simulate_counts

PHOTONS_PER_PIXEL = 1.0
IMAGE = 0
"""Which training image of the embedded sample (a 255 x 511 frame of a fluorescence time-lapse)."""


def fluorescence_cells() -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """``[(ground truth, ...), (noisy counts, ...)]`` as napari layer data, the noisy layer on top."""
    truth = load_sample_data().train[IMAGE]
    noisy = simulate_counts(truth, PHOTONS_PER_PIXEL, np.random.default_rng(0))
    clean = clean_at_level(truth, PHOTONS_PER_PIXEL)
    return [
        (clean, {"name": "cells (ground truth)", "colormap": "gray", "visible": False}, "image"),
        (noisy, {"name": "cells", "colormap": "gray"}, "image"),
    ]
