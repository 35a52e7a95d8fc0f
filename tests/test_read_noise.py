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
from photongap.errors import PhotongapError
from photongap.io import read_image, write_image
from photongap.model import GapModel
from photongap.network import GapUNet
from photongap.physics import adu_to_counts, adu_to_counts_with_read_noise
from photongap.pipeline import Camera, CountsView, denoise_file, sample_file

OFFSET = 100.0
ROUNDING_VARIANCE = 0.25
"""Rounding to integer counts moves each value by at most half a photon: at most 1/4 photon² of variance."""


def camera_frame(photons: np.ndarray, gain: float, read_noise: float, seed: int = 0) -> np.ndarray:
    return simulate_camera(photons, gain=gain, offset=OFFSET, read_noise=read_noise, n_frames=None, generator=np.random.default_rng(seed))


@pytest.mark.parametrize(("level", "gain", "read_noise"), [(10.0, 2.0, 4.0), (3.0, 1.0, 2.0)])
def test_shifted_conversion_has_poisson_mean_and_variance(level, gain, read_noise):
    shift = (read_noise / gain) ** 2  # 4 photons² in both cases
    adu = torch.from_numpy(camera_frame(np.full((500, 500), level), gain, read_noise).astype(np.float32))
    n = adu.numel()

    shifted = adu_to_counts_with_read_noise(adu, gain, OFFSET, read_noise).double()
    mean, variance = float(shifted.mean()), float(shifted.var())
    # Standard errors of a sample mean and (near-Gaussian) sample variance of n pixels.
    mean_error, variance_error = math.sqrt(variance / n), variance * math.sqrt(2.0 / n)
    assert shifted.min() >= 0 and torch.equal(shifted, shifted.round())
    assert abs(mean - (level + shift)) < 5 * mean_error
    assert -5 * variance_error < variance - (level + shift) < 5 * variance_error + ROUNDING_VARIANCE
    assert abs(variance - mean) < 5 * variance_error + ROUNDING_VARIANCE

    # The plain conversion is over-dispersed by the read noise: variance ≈ mean + s² (less
    # at low light, where clipping at 0 raises the mean and trims the spread).
    plain = adu_to_counts(adu, gain, OFFSET).double()
    assert float(plain.var()) - float(plain.mean()) > 0.5 * shift

    # Without read noise the two conversions agree.
    assert torch.equal(adu_to_counts_with_read_noise(adu, gain, OFFSET, 0.0), adu_to_counts(adu, gain, OFFSET))


def test_camera_shift():
    assert Camera().shift == 0.0
    assert Camera(gain=2.0, offset=OFFSET).shift == 0.0
    assert Camera(gain=2.0, offset=OFFSET, read_noise=0.0).shift == 0.0
    assert Camera(gain=2.0, offset=OFFSET, read_noise=3.0).shift == pytest.approx(2.25)
    with pytest.raises(PhotongapError, match="gain"):
        Camera(read_noise=1.0)  # read noise in ADU means nothing without the gain
    with pytest.raises(PhotongapError, match="non-negative"):
        Camera(gain=2.0, read_noise=-1.0)


def test_counts_view_mirrors_the_physics_block_by_block():
    gain, read_noise = 2.0, 3.0
    adu = camera_frame(np.full((40, 30), 4.0), gain, read_noise, seed=3)
    view = CountsView(adu, Camera(gain=gain, offset=OFFSET, read_noise=read_noise), "frame")
    expected = adu_to_counts_with_read_noise(torch.from_numpy(adu.astype(np.float32)), gain, OFFSET, read_noise).numpy()
    np.testing.assert_array_equal(view[:, :], expected)
    np.testing.assert_array_equal(view[5:17, 3:29], expected[5:17, 3:29])
    plain = CountsView(adu, Camera(gain=gain, offset=OFFSET), "frame")[:, :]
    np.testing.assert_array_equal(plain, adu_to_counts(torch.from_numpy(adu.astype(np.float32)), gain, OFFSET).numpy())


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
    samples_path, mean_path, std_path = sample_file(
        tiny_untrained_model, image, tmp_path, n=2, camera=camera, target_psnr=12.0, device="cpu", precision="fp32"
    )[0]
    samples = np.asarray(read_image(samples_path).data, dtype=np.float64)
    mean = np.asarray(read_image(mean_path).data, dtype=np.float64)
    std = np.asarray(read_image(std_path).data, dtype=np.float64)
    for sample in samples:  # each sample holds the input's photons, less the shift
        assert sample.mean() == pytest.approx(counts.mean(dtype=np.float64) - camera.shift, abs=1e-3)
    np.testing.assert_allclose(mean, samples.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(std, samples.std(axis=0, ddof=1), rtol=1e-4, atol=1e-4)
