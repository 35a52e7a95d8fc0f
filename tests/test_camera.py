"""Camera units to photon counts and back: one :class:`Camera`, checked against the formula.

A camera records ``adu = gain * Poisson(lambda) + offset + Normal(0, read_noise**2)``. In
photons, ``(adu - offset) / gain`` has mean ``lambda`` but variance ``lambda + s**2`` with
``s = read_noise / gain``; adding ``s**2`` gives mean and variance ``lambda + s**2``, as a
Poisson image has.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from photongap import camera
from photongap.calibration import simulate_camera
from photongap.camera import Camera, CountsView, check_counts
from photongap.errors import PhotongapError

OFFSET = 100.0
ROUNDING_VARIANCE = 0.25
"""Rounding to integer counts moves each value by at most half a photon: at most 1/4 photon² of variance."""


def camera_frame(photons: np.ndarray, gain: float, read_noise: float, seed: int = 0) -> np.ndarray:
    return simulate_camera(photons, gain=gain, offset=OFFSET, read_noise=read_noise, n_frames=None, generator=np.random.default_rng(seed))


def reference_counts(adu: np.ndarray, gain: float, offset: float, read_noise: float = 0.0) -> np.ndarray:
    """The conversion written out in float64: ``max(round((adu - offset) / gain + (read_noise / gain)**2), 0)``."""
    return np.maximum(np.rint((adu.astype(np.float64) - offset) / gain + (read_noise / gain) ** 2), 0.0)


@pytest.mark.parametrize(
    ("value", "message"),
    [(np.nan, "contains NaN values"), (np.inf, "contains infinite values"),
     (-2.0, r"contains negative values \(min -2\).*--gain/--offset"),
     (1.5, r"contains non-integer values \(e.g. 1.5\).*--gain/--offset: counts = \(adu - offset\) / gain")],
)
def test_check_counts_rejects_non_counts(value: float, message: str) -> None:
    data = np.ones((30, 40), "float32")
    data[29, 39] = value
    with pytest.raises(PhotongapError, match=f"^cells.tif: {message}"):
        check_counts(data, "cells.tif")


def test_check_counts_accepts_counts_and_rejects_empty_or_odd_types() -> None:
    check_counts(np.arange(12, dtype="float64").reshape(3, 4), "ok")
    check_counts(np.arange(12, dtype="int16").reshape(3, 4), "ok")
    with pytest.raises(PhotongapError, match=r"e.npy: contains negative values"):
        check_counts(np.array([[0, -1]], "int8"), "e.npy")
    with pytest.raises(PhotongapError, match=r"e.npy: the image is empty \(shape \(0, 5\)\)"):
        check_counts(np.zeros((0, 5)), "e.npy")
    with pytest.raises(PhotongapError, match="e.npy: data type complex64 cannot hold photon counts"):
        check_counts(np.zeros((2, 2), "complex64"), "e.npy")


class RecordingArray:
    """An array-like that records how many elements each read asks for."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype, self.reads = data, data.shape, data.dtype, []

    def __getitem__(self, key: tuple) -> np.ndarray:
        block = self.data[key]
        self.reads.append(block.size)
        return block


def test_check_counts_reads_in_blocks_and_covers_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(camera, "_BLOCK_ELEMENTS", 1000)
    data = np.ones((3, 70, 90), "float32")
    data[2, 69, 89] = 0.5  # the very last element: found only if every block is read
    recording = RecordingArray(data)
    with pytest.raises(PhotongapError, match="non-integer"):
        check_counts(recording, "x")
    assert max(recording.reads) <= 1000 and sum(recording.reads) == data.size
    wide = RecordingArray(np.ones((2, 2500), "float32"))  # rows wider than a block are cut too
    check_counts(wide, "x")
    assert wide.reads == [1000, 1000, 500] * 2


def test_check_counts_is_fast_on_a_4096_square_float_image() -> None:
    data = (np.arange(4096 * 4096, dtype="float32") % 7).reshape(4096, 4096)
    start = time.perf_counter()
    check_counts(data, "big")
    assert time.perf_counter() - start < 2.0  # about 0.05 s; generous for a shared machine


@pytest.mark.parametrize(("level", "gain", "read_noise"), [(10.0, 2.0, 4.0), (3.0, 1.0, 2.0)])
def test_shifted_conversion_has_poisson_mean_and_variance(level, gain, read_noise):
    shift = (read_noise / gain) ** 2  # 4 photons² in both cases
    adu = camera_frame(np.full((500, 500), level), gain, read_noise)
    n = adu.size

    shifted = Camera(gain, OFFSET, read_noise).to_counts(adu).astype(np.float64)
    mean, variance = float(shifted.mean()), float(shifted.var(ddof=1))
    # Standard errors of a sample mean and (near-Gaussian) sample variance of n pixels.
    mean_error, variance_error = math.sqrt(variance / n), variance * math.sqrt(2.0 / n)
    assert shifted.min() >= 0 and np.array_equal(shifted, np.rint(shifted))
    assert abs(mean - (level + shift)) < 5 * mean_error
    assert -5 * variance_error < variance - (level + shift) < 5 * variance_error + ROUNDING_VARIANCE
    assert abs(variance - mean) < 5 * variance_error + ROUNDING_VARIANCE

    # The plain conversion is over-dispersed by the read noise: variance ≈ mean + s² (less
    # at low light, where clipping at 0 raises the mean and trims the spread).
    plain = Camera(gain, OFFSET).to_counts(adu).astype(np.float64)
    assert float(plain.var(ddof=1)) - float(plain.mean()) > 0.5 * shift

    # Without read noise the two conversions agree.
    np.testing.assert_array_equal(Camera(gain, OFFSET, 0.0).to_counts(adu), Camera(gain, OFFSET).to_counts(adu))


def test_camera_shift():
    assert Camera().shift == 0.0
    assert Camera(gain=2.0, offset=OFFSET).shift == 0.0
    assert Camera(gain=2.0, offset=OFFSET, read_noise=0.0).shift == 0.0
    assert Camera(gain=2.0, offset=OFFSET, read_noise=3.0).shift == pytest.approx(2.25)
    with pytest.raises(PhotongapError, match="gain"):
        Camera(read_noise=1.0)  # read noise in ADU means nothing without the gain
    with pytest.raises(PhotongapError, match="non-negative"):
        Camera(gain=2.0, read_noise=-1.0)


@pytest.mark.parametrize(("gain", "offset", "read_noise"), [(2.5, 100.0, 0.0), (0.45, 1000.5, 0.0), (7.9, 2000.0, 2.5), (2.0, 100.0, 4.0)])
def test_to_counts_is_the_written_out_conversion(gain, offset, read_noise):
    rng = np.random.default_rng(2)
    # Camera values away from the rounding boundaries, so float32 and float64 agree exactly.
    photons = rng.integers(0, 60, (32, 32)) + rng.uniform(-0.3, 0.3, (32, 32))
    adu = (photons - (read_noise / gain) ** 2) * gain + offset
    adu[0, :4] = offset - 5 * gain  # below the offset: clipped at zero photons
    result = Camera(gain, offset, read_noise or None).to_counts(adu.astype(np.float32), "cam.tif")
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, reference_counts(adu.astype(np.float32), gain, offset, read_noise))
    assert result[0, :4].tolist() == [0.0] * 4


def test_integer_counts_survive_the_round_trip_through_adu():
    counts = np.random.default_rng(9).poisson(30.0, (20, 20)).astype(np.float32)
    for gain, offset in ((1.0, 0.0), (2.37, 100.0), (0.45, 1000.5), (7.9, 2000.0)):
        cam = Camera(gain, offset)
        np.testing.assert_array_equal(cam.to_counts(cam.to_adu(counts)), counts)


def test_counts_pass_unchanged_and_non_counts_are_refused():
    assert Camera().to_counts(np.array([[3, 4]], "uint16")).dtype == np.float32
    adu = np.array([[100.5, 101.0]], "float32")
    with pytest.raises(PhotongapError, match="cam.tif: contains non-integer values"):
        Camera().to_counts(adu, name="cam.tif")
    with pytest.raises(PhotongapError, match="cam.tif: contains NaN"):
        Camera(gain=1.0, offset=0.0).to_counts(np.array([[np.nan, 1.0]]), name="cam.tif")
    with pytest.raises(PhotongapError, match="^image: contains negative"):
        Camera().to_counts(np.array([[-1, 2]], "int16"))
    for bad in (0.0, -1.0, math.inf):
        with pytest.raises(PhotongapError, match="--gain must be positive"):
            Camera(gain=bad)


def test_camera_output_subtracts_the_shift_and_converts_units():
    cam = Camera(gain=2.0, offset=OFFSET, read_noise=3.0)  # shift 2.25 photons
    estimate = np.array([2.25, 12.25])
    np.testing.assert_allclose(cam.output(estimate), [0.0, 10.0])
    np.testing.assert_allclose(cam.output(estimate, "adu"), [OFFSET, OFFSET + 20.0])
    np.testing.assert_allclose(cam.output(np.array([1.5]), "adu", spread=True), [3.0])
    with pytest.raises(PhotongapError, match="--output-units adu needs"):
        Camera().output(estimate, "adu")
    with pytest.raises(PhotongapError, match="must be photons or adu"):
        cam.check_units("electrons")


def test_counts_view_reads_blocks_as_the_whole_plane_converts():
    gain, read_noise = 2.0, 3.0
    adu = camera_frame(np.full((40, 30), 4.0), gain, read_noise, seed=3)
    view = CountsView(adu, Camera(gain=gain, offset=OFFSET, read_noise=read_noise), "frame")
    expected = reference_counts(adu.astype(np.float32), gain, OFFSET, read_noise)
    np.testing.assert_array_equal(view[:, :], expected)
    np.testing.assert_array_equal(view[5:17, 3:29], expected[5:17, 3:29])
