"""Read noise: shifting camera data by the read-noise variance makes it Poisson-like for GAP.

A camera records ``adu = gain * Poisson(lambda) + offset + Normal(0, read_noise**2)``. In
photons, ``(adu - offset) / gain`` has mean ``lambda`` but variance ``lambda + s**2`` with
``s = read_noise / gain``; adding ``s**2`` gives mean and variance ``lambda + s**2``, as a
Poisson image has. Denoising then estimates ``lambda + s**2`` and the pipeline subtracts ``s**2``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from photongap.calibration import simulate_camera
from photongap.config import ModelConfig
from photongap.io import read_image, write_image
from photongap.model import GapModel
from photongap.network import GapUNet
from photongap.camera import Camera, CountsView
from photongap.pipeline import denoise_file, sample_file

OFFSET = 100.0
ROUNDING_VARIANCE = 0.25
"""Rounding to integer counts moves each value by at most half a photon: at most 1/4 photon² of variance."""


def camera_frame(photons: np.ndarray, gain: float, read_noise: float, seed: int = 0) -> np.ndarray:
    return simulate_camera(photons, gain=gain, offset=OFFSET, read_noise=read_noise, n_frames=None, generator=np.random.default_rng(seed))


@pytest.fixture()
def read_noise_frame(tmp_path):
    """A 64x64 camera frame of a smooth scene (mean 3 photons), gain 2, read noise 4 ADU (s² = 4 photons)."""
    y, x = np.meshgrid(np.linspace(0, 3, 64), np.linspace(0, 4, 64), indexing="ij")
    clean = 1.0 + np.sin(y) * np.cos(x) ** 2
    clean *= 3.0 / clean.mean()
    path = write_image(tmp_path / "frame.tif", camera_frame(clean, 2.0, 4.0, seed=1), "YX")
    return read_image(path), clean, Camera(gain=2.0, offset=OFFSET, read_noise=4.0)


@pytest.fixture()
def tiny_untrained_model() -> GapModel:
    config = ModelConfig(depth=2, start_filters=4, encoding_levels=3)
    torch.manual_seed(0)
    return GapModel(GapUNet(config).eval(), config)


def test_denoise_file_subtracts_the_shift(tmp_path, read_noise_frame, tiny_untrained_model):
    image, clean, camera = read_noise_frame
    counts = CountsView(image.data, camera, "frame")[:, :]
    # MMSE keeps the photons of the (shifted) input whatever the weights: output total = input total - shift.
    out = denoise_file(tiny_untrained_model, image, tmp_path / "out.tif", camera=camera, device="cpu", precision="fp32")
    photons = np.asarray(read_image(out).data, dtype=np.float64)
    assert photons.mean() == pytest.approx(counts.mean(dtype=np.float64) - camera.shift, abs=1e-3)
    # ... which estimates the mean of lambda, not lambda + s², within a few standard errors.
    standard_error = math.sqrt((clean.mean() + camera.shift) / clean.size)
    assert abs(photons.mean() - clean.mean()) < 5 * standard_error
    assert abs(photons.mean() - (clean.mean() + camera.shift)) > 20 * standard_error

    out_adu = denoise_file(tiny_untrained_model, image, tmp_path / "adu.tif", camera=camera, output_units="adu", device="cpu", precision="fp32")
    np.testing.assert_allclose(np.asarray(read_image(out_adu).data), camera.to_adu(photons), rtol=1e-5, atol=1e-3)


def test_sample_file_subtracts_the_shift_from_samples_and_mean(tmp_path, read_noise_frame, tiny_untrained_model):
    image, clean, camera = read_noise_frame
    counts = CountsView(image.data, camera, "frame")[:, :]
    targets = [tmp_path / f"frame_{kind}.tif" for kind in ("samples", "mean", "std")]
    samples_path, mean_path, std_path = sample_file(
        tiny_untrained_model, image, targets, n=2, camera=camera, target_psnr=12.0, device="cpu", precision="fp32"
    )[0]
    samples = np.asarray(read_image(samples_path).data, dtype=np.float64)
    mean = np.asarray(read_image(mean_path).data, dtype=np.float64)
    std = np.asarray(read_image(std_path).data, dtype=np.float64)
    # The library's samples of the shifted counts, with the shift taken off again.
    expected = tiny_untrained_model.sample(counts, n=2, target_psnr=12.0, device="cpu", precision="fp32").samples - camera.shift
    np.testing.assert_allclose(samples, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mean, samples.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(std, samples.std(axis=0, ddof=1), rtol=1e-4, atol=1e-4)
