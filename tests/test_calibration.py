"""Camera calibration on simulated cameras with known gain, offset and read noise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import tifffile

from photongap.calibration import (
    Calibration,
    calibrate,
    fit_photon_transfer,
    photon_transfer_from_image,
    photon_transfer_from_stack,
    saturation_level,
    simulate_camera,
)
from photongap.errors import PhotongapError
from photongap.plotting import plot_photon_transfer
from photongap.sample_data import clean_at_level, load_sample_data

GAINS = (0.5, 2.0, 5.0)
OFFSETS = (100.0, 1000.0)
READ_NOISE_ELECTRONS = 1.6
"""Read noise of a modern sCMOS; in ADU it is ``1.6 * gain`` (0.8 to 8 ADU)."""


def smooth_field(shape: tuple[int, int], scale: float, generator: np.random.Generator) -> np.ndarray:
    """Gaussian random field with correlation length ``scale`` pixels, zero mean, unit sd."""
    ky, kx = np.fft.fftfreq(shape[0])[:, None], np.fft.fftfreq(shape[1])[None, :]
    spectrum = np.exp(-0.5 * (ky**2 + kx**2) * (2 * np.pi * scale) ** 2)
    field = np.fft.ifft2(np.fft.fft2(generator.normal(size=shape)) * spectrum).real
    return (field - field.mean()) / field.std()


def cell_scene(shape: tuple[int, int], background: float, peak: float, generator: np.random.Generator) -> np.ndarray:
    """Photons per pixel: a dim uneven background and sharp-edged, textured nuclei."""
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    scene = background * np.exp(0.3 * smooth_field(shape, 12, generator))
    for _ in range(12):
        cy, cx = generator.uniform(0, shape[0]), generator.uniform(0, shape[1])
        radius = generator.uniform(0.04, 0.1) * min(shape)
        texture = 1.0 + 0.1 * smooth_field(shape, 6, generator)
        scene = np.where((y - cy) ** 2 + (x - cx) ** 2 < radius**2, generator.uniform(0.1, 1.0) * peak * texture, scene)
    return scene


def blob_scene(shape: tuple[int, int], background: float, peak: float, generator: np.random.Generator) -> np.ndarray:
    """Photons per pixel: a dim uneven background and soft Gaussian cells (smooth, no edges)."""
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    scene = background * np.exp(0.3 * smooth_field(shape, 20, generator))
    for _ in range(30):
        cy, cx = generator.uniform(0, shape[0], 2)
        width = generator.uniform(0.02, 0.05) * min(shape)
        scene = scene + generator.uniform(0.05, 1.0) * peak * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * width**2))
    return scene


def disc_scene(shape: tuple[int, int], background: float, peak: float, generator: np.random.Generator) -> np.ndarray:
    """Photons per pixel: flat, sharp-edged discs on a smooth background, under a tilted illumination."""
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    scene = background * np.exp(0.3 * smooth_field(shape, 20, generator))
    for _ in range(12):
        cy, cx = generator.uniform(0, shape[0]), generator.uniform(0, shape[1])
        radius = generator.uniform(0.04, 0.1) * min(shape)
        scene = np.where((y - cy) ** 2 + (x - cx) ** 2 < radius**2, generator.uniform(0.05, 1.0) * peak, scene)
    return scene * (1.0 + 0.2 * (x / shape[1] - 0.5))


# Bright: background 2 photons, cells up to 200 (scene means 15-60). Dim: background 0.3, cells up to 10 (mean ~1).
SCENES = {"bright": (2.0, 200.0), "dim": (0.3, 10.0)}


def expected_read_noise(gain: float) -> float:
    """Read noise as the camera model sees it: Gaussian read noise plus rounding (1/12 ADU^2)."""
    return float(np.sqrt((READ_NOISE_ELECTRONS * gain) ** 2 + 1.0 / 12.0))


def quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def test_simulate_camera_matches_the_camera_model():
    generator = np.random.default_rng(0)
    frames = simulate_camera(np.full((64, 64), 30.0), gain=2.0, offset=100.0, read_noise=3.0, n_frames=50, generator=generator)
    assert frames.shape == (50, 64, 64) and frames.dtype == np.uint16
    assert frames.mean() == pytest.approx(2.0 * 30 + 100, abs=0.1)
    assert frames.var() == pytest.approx(4.0 * 30 + 9.0 + 1 / 12, rel=0.02)
    again = simulate_camera(
        np.full((64, 64), 30.0), gain=2.0, offset=100.0, read_noise=3.0, n_frames=50, generator=np.random.default_rng(0)
    )
    np.testing.assert_array_equal(frames, again)
    clipped = simulate_camera(
        np.full((8, 8), 1e4), gain=1.0, offset=100.0, read_noise=0.0, n_frames=None, generator=generator, bit_depth=12
    )
    assert clipped.shape == (8, 8) and clipped.max() == 4095


@pytest.mark.parametrize("scene_name", SCENES)
@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("gain", GAINS)
def test_stack_recovers_gain_offset_read_noise(gain, offset, scene_name):
    generator = np.random.default_rng([int(gain * 10), int(offset), len(scene_name)])
    scene = cell_scene((128, 128), *SCENES[scene_name], generator)
    frames = simulate_camera(scene, gain=gain, offset=offset, read_noise=READ_NOISE_ELECTRONS * gain, n_frames=30, generator=generator)
    calibration = calibrate(frames)
    assert calibration.method == "stack"
    assert calibration.gain == pytest.approx(gain, rel=0.05)
    assert calibration.offset == pytest.approx(offset, abs=1.0)
    assert calibration.read_noise == pytest.approx(expected_read_noise(gain), rel=0.10)


@pytest.mark.parametrize("scene_name", SCENES)
@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("gain", GAINS)
def test_single_image_recovers_gain_and_offset_on_smooth_scenes(gain, offset, scene_name):
    generator = np.random.default_rng([int(gain * 10), int(offset), len(scene_name), 1])
    scene = blob_scene((512, 512), *SCENES[scene_name], generator)
    image = simulate_camera(scene, gain=gain, offset=offset, read_noise=READ_NOISE_ELECTRONS * gain, n_frames=None, generator=generator)
    calibration = calibrate(image)
    assert calibration.method == "single"
    assert calibration.gain == pytest.approx(gain, rel=0.05)
    # One image holds 30x fewer samples than the stacks above: at 5 ADU/photon and 8 ADU read
    # noise the offset scatters by ~0.6 ADU, so the bound there is 2 ADU (0.4 photons).
    assert calibration.offset == pytest.approx(offset, abs=1.0 if gain <= 2 else 2.0)


def test_single_image_with_sharp_edges_is_biased_but_bounded():
    # Known limit: edges weaker than the noise cannot be told from noise and raise the
    # variance. Dim scenes full of sharp edges measured +3% (gain 2) in repeated trials.
    generator = np.random.default_rng(7)
    scene = disc_scene((512, 512), 0.3, 10.0, generator)
    image = simulate_camera(scene, gain=2.0, offset=100.0, read_noise=3.2, n_frames=None, generator=generator)
    calibration = quiet(calibrate, image)
    assert calibration.gain == pytest.approx(2.0, rel=0.10)
    assert calibration.offset == pytest.approx(100.0, abs=1.0)


def test_bright_sharp_edges_are_rejected_in_single_images():
    generator = np.random.default_rng(8)
    scene = disc_scene((512, 512), 2.0, 200.0, generator)
    image = simulate_camera(scene, gain=2.0, offset=100.0, read_noise=3.2, n_frames=None, generator=generator)
    ptc = photon_transfer_from_image(image)
    assert ptc.details["units_structured"] > 0.05 * ptc.details["units_total"]
    calibration = quiet(calibrate, image)
    assert calibration.gain == pytest.approx(2.0, rel=0.05)
    assert calibration.offset == pytest.approx(100.0, abs=1.0)


def test_stack_estimate_ignores_bleaching_drift():
    generator = np.random.default_rng(3)
    scene = cell_scene((128, 128), 2.0, 200.0, generator)
    bleaching = np.exp(-np.linspace(0.0, 0.7, 30))[:, None, None]  # half the signal is gone by the end
    frames = simulate_camera(scene[None] * bleaching, gain=2.0, offset=100.0, read_noise=3.2, n_frames=None, generator=generator)
    calibration = calibrate(frames)
    assert calibration.gain == pytest.approx(2.0, rel=0.05)
    assert calibration.offset == pytest.approx(100.0, abs=1.0)
    # The plain temporal variance about each pixel's mean would count the decay as noise.
    plain = frames.astype(float).var(axis=0, ddof=1)
    assert np.median(plain[scene > 100]) > 1.5 * 2.0 * np.median(frames.mean(axis=0)[scene > 100] - 100.0)


@pytest.mark.parametrize("gain", GAINS)
def test_dark_stack_gives_read_noise_and_offset(gain):
    generator = np.random.default_rng([int(gain * 10), 5])
    read_noise = READ_NOISE_ELECTRONS * gain
    scene = cell_scene((96, 96), 2.0, 200.0, generator)
    frames = simulate_camera(scene, gain=gain, offset=500.0, read_noise=read_noise, n_frames=20, generator=generator)
    dark = simulate_camera(np.zeros((64, 64)), gain=gain, offset=500.0, read_noise=read_noise, n_frames=20, generator=generator)
    calibration = calibrate(frames, dark=dark)
    assert calibration.method == "dark+stack"
    assert calibration.read_noise == pytest.approx(expected_read_noise(gain), rel=0.10)
    assert calibration.offset == pytest.approx(500.0, abs=0.2)
    assert calibration.gain == pytest.approx(gain, rel=0.05)
    assert calibration.details["dark_read_noise_kind"] == "temporal"


def test_single_image_with_one_dark_frame():
    generator = np.random.default_rng(11)
    image = simulate_camera(
        blob_scene((256, 256), 2.0, 200.0, generator), gain=2.0, offset=100.0, read_noise=3.2, n_frames=None, generator=generator
    )
    dark = simulate_camera(np.zeros((128, 128)), gain=2.0, offset=100.0, read_noise=3.2, n_frames=None, generator=generator)
    calibration = calibrate(image, dark=dark)
    assert calibration.method == "dark+single"
    assert calibration.read_noise == pytest.approx(expected_read_noise(2.0), rel=0.10)
    assert calibration.gain == pytest.approx(2.0, rel=0.05)


def test_uniform_field_needs_dark_frames():
    generator = np.random.default_rng(12)
    flat = simulate_camera(np.full((64, 64), 50.0), gain=2.0, offset=100.0, read_noise=3.0, n_frames=10, generator=generator)
    with pytest.raises(PhotongapError, match="range of brightness or dark frames"):
        calibrate(flat)
    dark = simulate_camera(np.zeros((64, 64)), gain=2.0, offset=100.0, read_noise=3.0, n_frames=10, generator=generator)
    assert calibrate(flat, dark=dark).gain == pytest.approx(2.0, rel=0.05)


def test_short_stack_asks_for_frames_or_single_image_method():
    generator = np.random.default_rng(13)
    frames = simulate_camera(
        blob_scene((256, 256), 2.0, 200.0, generator), gain=2.0, offset=100.0, read_noise=3.2, n_frames=2, generator=generator
    )
    with pytest.raises(PhotongapError, match="at least 3 repeated frames.*method='single'"):
        calibrate(frames)
    with pytest.raises(PhotongapError, match="at least 3"):
        photon_transfer_from_stack(frames)
    with pytest.raises(PhotongapError, match="single"):
        calibrate(frames[0], method="stack")
    calibration = calibrate(frames, method="single")
    assert calibration.method == "single"
    assert calibration.gain == pytest.approx(2.0, rel=0.05)


def test_inverted_data_reports_negative_gain():
    generator = np.random.default_rng(14)
    frames = simulate_camera(
        cell_scene((64, 64), 2.0, 200.0, generator), gain=2.0, offset=100.0, read_noise=3.0, n_frames=10, generator=generator
    )
    inverted = 1000.0 - frames.astype(np.float32)
    with pytest.raises(PhotongapError, match="negative gain: is this photon-count data already, or is the background subtracted"):
        calibrate(inverted)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_refused(bad):
    frames = np.full((5, 16, 16), 100.0)
    frames[2, 3, 4] = bad
    with pytest.raises(PhotongapError, match="1 NaN or Inf"):
        calibrate(frames)
    with pytest.raises(PhotongapError, match="dark holds 1 NaN or Inf"):
        calibrate(np.random.default_rng(0).poisson(50.0, (5, 16, 16)).astype(float), dark=frames)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.zeros(10), r"\(Y, X\) or \(T, Y, X\)"),
        (np.zeros((2, 3, 4, 5)), r"\(Y, X\) or \(T, Y, X\)"),
        (np.array([["a", "b"]]), "numeric"),
        (np.zeros((3, 0, 4)), "empty"),
    ],
)
def test_malformed_input_is_refused(data, message):
    with pytest.raises(PhotongapError, match=message):
        calibrate(data)


def test_unknown_method_and_block_are_refused():
    image = np.random.default_rng(0).poisson(50.0, (32, 32))
    with pytest.raises(PhotongapError, match="method"):
        calibrate(image, method="magic")
    with pytest.raises(PhotongapError, match="block"):
        photon_transfer_from_image(image, block=2)
    with pytest.raises(PhotongapError, match="smaller than one"):
        photon_transfer_from_image(image[:4, :4], block=8)


def test_saturation_warns_and_is_excluded():
    generator = np.random.default_rng(15)
    scene = cell_scene((128, 128), 2.0, 2400.0, generator)  # the brightest cells exceed 12 bits at gain 2
    frames = simulate_camera(scene, gain=2.0, offset=100.0, read_noise=3.2, n_frames=20, generator=generator, bit_depth=12)
    assert saturation_level(frames) == 4095
    with pytest.warns(UserWarning, match=r"pixels reach the saturation level 4095 ADU and were excluded"):
        calibration = calibrate(frames)
    assert calibration.details["units_saturated"] > 0
    assert calibration.gain == pytest.approx(2.0, rel=0.05)
    with pytest.warns(UserWarning, match="saturation level 65535"):
        calibrate(np.where(frames == 4095, 65535, frames).astype(np.uint16))


def test_no_false_saturation_on_a_comb_histogram():
    # At 2 ADU/photon the histogram's tail is a comb: its top value can out-count the next.
    generator = np.random.default_rng(16)
    image = simulate_camera(np.full((512, 512), 2.0), gain=2.0, offset=100.0, read_noise=1.5, n_frames=None, generator=generator)
    assert saturation_level(image) is None
    assert saturation_level(np.minimum(image, 108)) == 108


def test_reported_uncertainty_is_honest():
    errors = []
    for seed in range(6):
        generator = np.random.default_rng([seed, 17])
        frames = simulate_camera(
            cell_scene((64, 64), 2.0, 200.0, generator), gain=2.0, offset=100.0, read_noise=3.2, n_frames=20, generator=generator
        )
        calibration = quiet(calibrate, frames)
        errors.append(
            ((calibration.gain - 2.0) / calibration.gain_uncertainty, (calibration.offset - 100.0) / calibration.offset_uncertainty)
        )
    z = np.array(errors)
    assert np.all(np.abs(z) < 4.0)
    assert 0.3 < np.sqrt(np.mean(z**2)) < 2.0


def test_calibration_is_reproducible():
    generator = np.random.default_rng(18)
    frames = simulate_camera(
        cell_scene((64, 64), 2.0, 200.0, generator), gain=2.0, offset=100.0, read_noise=3.2, n_frames=10, generator=generator
    )
    assert quiet(calibrate, frames) == quiet(calibrate, frames)


def test_json_round_trip_and_atomic_save(tmp_path):
    calibration = Calibration(
        2.5, 101.25, 1.75, "dark+stack", 0.01, 0.02, 0.03, {"bins": 50, "saturation_level": None, "level": np.float64(3.0)}
    )
    payload = json.loads(calibration.to_json())
    assert payload["gain"] == 2.5 and payload["offset"] == 101.25 and payload["read_noise"] == 1.75
    assert payload["gain_uncertainty"] == 0.01 and payload["method"] == "dark+stack" and payload["details"]["level"] == 3.0
    assert Calibration.from_json(calibration.to_json()) == calibration
    path = tmp_path / "camera.json"
    calibration.save(path)
    assert Calibration.load(path) == calibration
    assert [p.name for p in tmp_path.iterdir()] == ["camera.json"]
    measured = quiet(
        calibrate,
        simulate_camera(
            cell_scene((64, 64), 2.0, 200.0, np.random.default_rng(0)),
            gain=2.0,
            offset=100.0,
            read_noise=3.2,
            n_frames=10,
            generator=np.random.default_rng(1),
        ),
    )
    assert Calibration.from_json(measured.to_json()) == measured


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"gain": 2.0, "offset": 100}', "lacks read_noise"),
        ('{"gain": -2.0, "offset": 100, "read_noise": 1}', "gain must be positive"),
        ('{"gain": 0, "offset": 100, "read_noise": 1}', "gain must be positive"),
        ('{"gain": "2", "offset": 100, "read_noise": 1}', "gain must be a finite number"),
        ('{"gain": NaN, "offset": 100, "read_noise": 1}', "gain must be a finite number"),
        ('{"gain": 2, "offset": Infinity, "read_noise": 1}', "offset must be a finite number"),
        ('{"gain": 2, "offset": 100, "read_noise": -1}', "read_noise must not be negative"),
        ('{"gain": 2, "offset": 100, "read_noise": 1, "method": "guess"}', "method must be one of"),
        ("[1, 2]", "JSON object"),
        ("{gain: 2}", "not valid JSON"),
    ],
)
def test_from_json_rejects_bad_calibrations(text, message):
    with pytest.raises(PhotongapError, match=f"camera.json.*{message}"):
        Calibration.from_json(text, name="camera.json")


def test_load_reports_a_missing_file(tmp_path):
    with pytest.raises(PhotongapError, match="does not exist"):
        Calibration.load(tmp_path / "absent.json")
    with pytest.raises(PhotongapError, match="does not exist"):
        Calibration(1.0, 0.0, 0.0).save(tmp_path / "no" / "such" / "folder.json")


def test_fit_with_known_offset_or_read_noise():
    generator = np.random.default_rng(19)
    frames = simulate_camera(
        cell_scene((96, 96), 2.0, 200.0, generator), gain=2.0, offset=100.0, read_noise=3.2, n_frames=20, generator=generator
    )
    ptc = photon_transfer_from_stack(frames)
    given_offset = fit_photon_transfer(ptc, offset=100.0)
    assert given_offset.offset == 100.0 and given_offset.offset_uncertainty == 0.0
    assert given_offset.read_noise == pytest.approx(expected_read_noise(2.0), rel=0.10)
    given_noise = fit_photon_transfer(ptc, read_noise=expected_read_noise(2.0))
    assert given_noise.offset == pytest.approx(100.0, abs=1.0)
    assert given_noise.gain == pytest.approx(2.0, rel=0.05)
    assert given_noise.photon_transfer.used.sum() >= 0.8 * len(ptc.used)


def test_plot_writes_a_png(tmp_path):
    generator = np.random.default_rng(20)
    frames = simulate_camera(
        cell_scene((64, 64), 2.0, 200.0, generator), gain=2.0, offset=100.0, read_noise=3.2, n_frames=10, generator=generator
    )
    fit = quiet(fit_photon_transfer, photon_transfer_from_stack(frames))
    path = tmp_path / "ptc.png"
    plot_photon_transfer(fit.photon_transfer, quiet(calibrate, frames), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["ptc.png"]


# A photon-number-resolving camera (qCMOS-like): 7.9 ADU per photon, 2.5 ADU (0.32 photon) read noise.
HIGH_GAIN = {"gain": 7.9, "offset": 2000.0}


def real_scene(name: str, photons_per_pixel: float) -> np.ndarray:
    """A real fluorescence image of the sample data as photons per pixel: cells or nuclei."""
    data = load_sample_data()
    return clean_at_level({"cells": data.train[0], "nuclei": data.train[-1]}[name], photons_per_pixel)


@pytest.mark.parametrize(("scene_name", "seed"), [("cells", 0), ("nuclei", 1)])
def test_high_gain_read_noise_below_one_photon_is_measured(scene_name, seed):
    frames = simulate_camera(real_scene(scene_name, 60.0), **HIGH_GAIN, read_noise=2.5, n_frames=40, generator=np.random.default_rng(seed))
    calibration = calibrate(frames)
    truth = float(np.sqrt(2.5**2 + 1.0 / 12.0))
    assert calibration.gain == pytest.approx(7.9, rel=0.01)
    assert calibration.read_noise > 0.0
    assert abs(calibration.read_noise - truth) <= 3.0 * calibration.read_noise_uncertainty
    assert calibration.read_noise_uncertainty < 0.1 * truth  # resolved, not merely bounded
    assert calibration.read_noise_upper is None
    assert abs(calibration.offset - 2000.0) <= max(0.5, 3.0 * calibration.offset_uncertainty)
    assert calibration.offset_uncertainty < 7.9 / 5  # a fifth of a photon
    if scene_name == "cells":
        assert calibration.offset == pytest.approx(2000.0, abs=0.5)


@pytest.mark.parametrize("read_noise", [0.8, 1.5, 2.5])
def test_photon_comb_gives_read_noise_at_high_gain(read_noise):
    generator = np.random.default_rng([int(read_noise * 10), 21])
    scene = cell_scene((96, 96), 2.0, 200.0, generator)
    frames = simulate_camera(scene, **HIGH_GAIN, read_noise=read_noise, n_frames=20, generator=generator)
    calibration = calibrate(frames)
    truth = float(np.sqrt(read_noise**2 + 1.0 / 12.0))
    assert abs(calibration.read_noise - truth) <= max(3.0 * calibration.read_noise_uncertainty, 0.02 * truth)
    assert calibration.read_noise_uncertainty < 0.1 * truth
    assert calibration.details["read_noise_source"] == "photon comb"
    assert calibration.offset == pytest.approx(2000.0, abs=max(1.0, 3.0 * calibration.offset_uncertainty))


def test_unresolved_read_noise_is_reported_with_an_upper_bound():
    # 5 ADU of read noise is 25 ADU^2 under 7.9 * 7.9 * 60 ADU^2 of photon noise; few dim
    # pixels place the offset to ~5 ADU, i.e. the read variance to ~40 ADU^2: only a bound.
    frames = simulate_camera(real_scene("nuclei", 60.0), **HIGH_GAIN, read_noise=5.0, n_frames=40, generator=np.random.default_rng(1))
    with pytest.warns(UserWarning, match="below what the data can resolve"):
        calibration = calibrate(frames)
    assert calibration.read_noise_upper is not None
    assert calibration.read_noise <= calibration.read_noise_upper
    assert calibration.read_noise_upper >= np.sqrt(5.0**2 + 1.0 / 12.0)
    assert calibration.details["read_noise_resolved"] is False
    assert Calibration.from_json(calibration.to_json()) == calibration


def test_calibrate_command_end_to_end(tmp_path):
    generator = np.random.default_rng(22)
    frames = simulate_camera(
        cell_scene((96, 96), 2.0, 200.0, generator), gain=2.0, offset=100.0, read_noise=3.2, n_frames=20, generator=generator
    )
    tifffile.imwrite(tmp_path / "stack.tif", frames)
    command = [sys.executable, "-m", "photongap.cli", "calibrate", "stack.tif", "-o", "cal.json", "--plot", "ptc.png"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    first = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=environment, timeout=240)
    assert first.returncode == 0, first.stderr
    assert "read noise" in first.stdout + first.stderr
    payload = json.loads((tmp_path / "cal.json").read_text())
    assert payload["gain"] == pytest.approx(2.0, rel=0.05) and payload["offset"] == pytest.approx(100.0, abs=1.0)
    assert payload["method"] == "stack"
    assert (tmp_path / "ptc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=environment, timeout=240)
    assert again.returncode == 2
    lines = [line for line in (again.stdout + again.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "already exists" in lines[0] and "--overwrite" in lines[0]
    assert "Traceback" not in again.stderr
