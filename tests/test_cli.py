"""End-to-end tests of the ``photongap`` command, run as a user runs it: a subprocess on small TIFFs.

One tiny model is trained once per session and reused. Commands that do not depend on
each other run a few at a time (each one spends most of its time importing torch).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch
import yaml

import photongap
from photongap.calibration import Calibration
from photongap.camera import Camera
from photongap.config import ModelConfig, to_dict
from photongap.schedule import FAST_SCHEDULE, PUBLISHED_SCHEDULE, PhotonSchedule
from photongap.io import read_image

SHAPE = (48, 64)
PATCH = 16
TINY_CONFIG = {
    "model": {"depth": 2, "start_filters": 4, "encoding_levels": 3},
    "training": {"batch_size": 4, "patch_size": PATCH, "val_every": 5, "steps": 50},
}
TRAIN_STEPS = 10  # the flag; the config file says 50
METRICS_FIELDS = ["step", "elapsed_s", "train_loss", "val_loss", "learning_rate"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "200"}
PARALLEL = 3


def command(*args: object) -> list[str]:
    return [sys.executable, "-m", "photongap.cli", *map(str, args)]


def photongap_cli(*args: object, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``photongap ARGS...`` and capture its output (text)."""
    started = time.monotonic()
    result = subprocess.run(command(*args), capture_output=True, text=True, env=ENV, timeout=timeout)
    result.elapsed_s = time.monotonic() - started  # type: ignore[attr-defined]
    return result


def run_all(jobs: dict[str, Sequence[object]]) -> dict[str, subprocess.CompletedProcess]:
    """Run independent commands a few at a time; results by key."""
    with ThreadPoolExecutor(PARALLEL) as pool:
        futures = {key: pool.submit(photongap_cli, *args) for key, args in jobs.items()}
        return {key: future.result() for key, future in futures.items()}


def describe(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode} after {getattr(result, 'elapsed_s', 0):.1f} s\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, describe(result)


def assert_user_error(result: subprocess.CompletedProcess, *mentions: str) -> str:
    """Exit code 2, no traceback, and the last thing on stderr is one ``error:`` line naming ``mentions``."""
    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, describe(result)
    assert lines[-1] == errors[0], f"the message continues past its line:\n{describe(result)}"
    for mention in mentions:
        assert mention in errors[0], describe(result)
    return errors[0]


def poisson_counts(shape: tuple[int, ...], level: float = 2.0, seed: int = 0) -> np.ndarray:
    """uint16 photon counts of a smooth scene at about ``level`` photons per pixel."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(0, 3, shape[-2]), np.linspace(0, 4, shape[-1]), indexing="ij")
    clean = 1.0 + 0.8 * np.sin(y + seed) * np.cos(x) ** 2
    return rng.poisson(np.broadcast_to(clean * level / clean.mean(), shape)).astype(np.uint16)


def read_metrics(path: Path) -> tuple[list[str], list[int]]:
    with open(path, newline="") as file:
        rows = list(csv.reader(file))
    return rows[0], [int(row[0]) for row in rows[1:]]


def folder_entries(folder: Path) -> list[str]:
    """Everything in ``folder``, hidden files included (empty if it does not exist)."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


# --- one trained model for the session -------------------------------------------------------


@dataclass
class Trained:
    data: Path
    config: Path
    run: Path
    result: subprocess.CompletedProcess

    @property
    def model(self) -> Path:
        return self.run / "model.pt"


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    """``photongap train`` on two noisy 48x64 images, tiny network, ``--config`` file plus ``--steps``."""
    root = tmp_path_factory.mktemp("trained")
    data = root / "data"
    data.mkdir()
    for seed in range(2):
        tifffile.imwrite(data / f"cells{seed}.tif", poisson_counts(SHAPE, seed=seed))
    config = write_config(root / "tiny.yaml", TINY_CONFIG)
    result = photongap_cli("train", data, "--out", root / "run", "--config", config, "--steps", TRAIN_STEPS, "--seed", 1)
    assert_ok(result)
    return Trained(data, config, root / "run", result)


# --- train -----------------------------------------------------------------------------------


def test_train_writes_the_run_folder(trained):
    assert sorted(p.name for p in trained.run.iterdir()) == ["assessment.json", "config.yaml", "last.ckpt", "loss.png", "metrics.csv", "model.pt"]
    header, steps = read_metrics(trained.run / "metrics.csv")
    assert header == METRICS_FIELDS
    assert len(steps) >= 2 and steps == sorted(steps) and steps[0] < steps[-1] == TRAIN_STEPS
    png = (trained.run / "loss.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    picture = iio.imread(png, extension=".png")
    assert picture.ndim == 3 and min(picture.shape[:2]) > 50
    checkpoint = torch.load(trained.run / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == TRAIN_STEPS


def test_train_prints_a_summary(trained):
    assert f"{TRAIN_STEPS} steps" in trained.result.stderr
    assert "model.pt" in trained.result.stderr


def test_train_flags_override_the_config_file(trained):
    used = yaml.safe_load((trained.run / "config.yaml").read_text())
    assert used["training"]["steps"] == TRAIN_STEPS  # the file said 50
    assert used["training"]["seed"] == 1
    assert used["training"]["patch_size"] == PATCH and used["training"]["val_every"] == 5
    assert used["model"] == {**to_dict(ModelConfig()), **TINY_CONFIG["model"]}  # the file, over the defaults
    model = photongap.load(trained.model)
    assert (model.config.depth, model.config.start_filters, model.config.encoding_levels) == (2, 4, 3)
    assert model.info["steps_done"] == TRAIN_STEPS


@pytest.fixture(scope="module")
def long_runs(trained, tmp_path_factory, request) -> tuple[Path, dict[str, subprocess.CompletedProcess]]:
    """The runs that take longest, side by side: a time-limited run and (unless deselected) DDP on two CPU processes."""
    root = tmp_path_factory.mktemp("long")
    jobs = {"time_limit": ("train", trained.data, "--out", root / "time_limit", "--config", trained.config, "--steps", 100_000, "--time-limit", 0.05)}
    ddp_selected = any(item.name.startswith("test_ddp_") for item in request.session.items)
    for precision in ("fp32", "bf16") if ddp_selected else ():
        config = write_config(root / f"{precision}.yaml", {**TINY_CONFIG, "training": {**TINY_CONFIG["training"], "precision": precision}})
        jobs[f"ddp_{precision}"] = ("train", trained.data, "--out", root / f"ddp_{precision}", "--config", config,
                                    "--devices", 2, "--strategy", "ddp", "--device", "cpu", "--steps", 4)
    return root, run_all(jobs)


def test_train_stops_at_the_time_limit(long_runs):
    root, results = long_runs
    result = results["time_limit"]
    assert_ok(result)
    assert result.elapsed_s < 90  # 3 s of training, the rest is start-up
    assert "stopped at the time limit" in result.stderr
    model = photongap.load(root / "time_limit" / "model.pt")
    assert 0 < model.info["steps_done"] < 100_000


# --- denoise ---------------------------------------------------------------------------------


@dataclass
class Denoised:
    inputs: Path
    outputs: Path
    counts: dict[str, np.ndarray]
    results: dict[str, subprocess.CompletedProcess]
    files: dict[str, Path]


@pytest.fixture(scope="module")
def denoised(trained, tmp_path_factory) -> Denoised:
    """A folder (2D image, 3-plane ZYX stack, OME-TIFF with pixel sizes) and single files, denoised."""
    root = tmp_path_factory.mktemp("denoise")
    inputs = root / "inputs"
    inputs.mkdir()
    counts = {
        "plain": poisson_counts(SHAPE, seed=3),
        "stack": poisson_counts((3, *SHAPE), level=1.5, seed=4),
        "ome": poisson_counts(SHAPE, level=3.0, seed=5),
    }
    tifffile.imwrite(inputs / "plain.tif", counts["plain"])
    tifffile.imwrite(inputs / "stack.tif", counts["stack"], photometric="minisblack", metadata={"axes": "ZYX"})
    tifffile.imwrite(inputs / "ome.ome.tif", counts["ome"], ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 0.25, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.25, "PhysicalSizeYUnit": "µm"})
    adu = root / "adu.tif"
    tifffile.imwrite(adu, (counts["plain"].astype(np.int64) * 2 + 100).astype(np.uint16))
    Calibration(gain=2.0, offset=100.0, read_noise=0.0).save(root / "camera.json")
    Calibration(gain=2.0, offset=100.0, read_noise=3.0).save(root / "noisy_camera.json")
    replaced = root / "replaced.tif"
    tifffile.imwrite(replaced, np.zeros((4, 4), np.uint8))
    out = root / "out"
    model = trained.model
    jobs = {
        "folder": ("denoise", model, inputs, "-o", out / "folder", "--tile", 32, "--overlap", 16),
        "parallel": ("denoise", model, inputs, "-o", out / "parallel", "--tile", 32, "--overlap", 16, "--devices", 2),
        "untiled": ("denoise", model, inputs / "plain.tif", "-o", out / "untiled.tif", "--tile", 0),
        "from_adu": ("denoise", model, adu, "-o", out / "from_adu.tif", "--tile", 0, "--gain", 2, "--offset", 100),
        "adu_out": ("denoise", model, adu, "-o", out / "adu_out.tif", "--tile", 0, "--gain", 2, "--offset", 100, "--output-units", "adu"),
        "overwrite": ("denoise", model, inputs / "plain.tif", "-o", replaced, "--tile", 0, "--overwrite"),
        "calibration": ("denoise", model, adu, "-o", out / "calibration.tif", "--tile", 0, "--calibration", root / "camera.json"),
        "read_noise": ("denoise", model, adu, "-o", out / "read_noise.tif", "--tile", 0, "--calibration", root / "noisy_camera.json"),
    }
    files = {
        "untiled": out / "untiled.tif", "from_adu": out / "from_adu.tif", "adu_out": out / "adu_out.tif", "overwrite": replaced,
        "calibration": out / "calibration.tif", "read_noise": out / "read_noise.tif", "adu": adu, "noisy_camera": root / "noisy_camera.json",
    }
    return Denoised(inputs, out, counts, run_all(jobs), files)


def test_denoise_a_folder_into_a_folder(denoised):
    assert_ok(denoised.results["folder"])
    assert folder_entries(denoised.outputs / "folder") == ["ome.ome.tif", "plain.tif", "stack.tif"]
    for name, stored in [("plain", "plain.tif"), ("stack", "stack.tif"), ("ome", "ome.ome.tif")]:
        result = tifffile.imread(denoised.outputs / "folder" / stored)
        assert result.dtype == np.float32
        assert result.shape == denoised.counts[name].shape
        assert np.isfinite(result).all() and result.min() >= 0


def test_denoise_files_in_two_processes_gives_the_same_results(denoised):
    assert_ok(denoised.results["parallel"])
    assert "on 2 Dask workers" in denoised.results["parallel"].stderr  # --devices 2 is --cluster local:2
    for stored in folder_entries(denoised.outputs / "folder"):
        one = tifffile.imread(denoised.outputs / "folder" / stored)
        two = tifffile.imread(denoised.outputs / "parallel" / stored)
        np.testing.assert_allclose(two, one, rtol=1e-4, atol=1e-6 * one.max())


def test_denoise_one_file_into_a_file(denoised):
    assert_ok(denoised.results["untiled"])
    result = tifffile.imread(denoised.files["untiled"])
    assert result.dtype == np.float32 and result.shape == SHAPE
    assert "denoised 1 image" in denoised.results["untiled"].stderr


def test_denoise_is_the_library_mmse_of_each_plane(denoised, trained):
    """The command gives what ``GapModel.denoise`` gives for each plane, in the input's photon units."""
    model = photongap.load(trained.model)
    for name, stored in [("plain", "plain.tif"), ("stack", "stack.tif"), ("ome", "ome.ome.tif")]:
        counts = denoised.counts[name].reshape(-1, *SHAPE).astype(np.float32)
        result = tifffile.imread(denoised.outputs / "folder" / stored).reshape(-1, *SHAPE)
        for plane_counts, plane_result in zip(counts, result):
            expected = model.denoise(plane_counts, tile=None, device="cpu")
            np.testing.assert_allclose(plane_result, expected, rtol=1e-3, atol=1e-3 * float(expected.max()))


def test_denoise_stack_is_denoised_plane_by_plane(denoised):
    """Each plane has its own softmax: planes of different brightness stay different, none is blank."""
    result = tifffile.imread(denoised.outputs / "folder" / "stack.tif")
    assert result.shape == (3, *SHAPE)
    assert all(plane.std() > 0 for plane in result)
    assert not np.allclose(result[0], result[1])


def test_denoise_ome_tiff_keeps_pixel_sizes(denoised):
    path = denoised.outputs / "folder" / "ome.ome.tif"
    image = read_image(path)
    assert image.pixel_sizes["X"] == pytest.approx(0.25)
    assert image.pixel_sizes["Y"] == pytest.approx(0.25)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome and 'PhysicalSizeX="0.25"' in tif.ome_metadata


def test_denoise_tiled_agrees_with_untiled(denoised):
    tiled = tifffile.imread(denoised.outputs / "folder" / "plain.tif")
    untiled = tifffile.imread(denoised.files["untiled"])
    # Tiles keep the network's receptive field as context: the same logits, to the rounding.
    assert np.abs(tiled - untiled).max() <= 1e-3 * untiled.max()


def test_denoise_camera_units_give_the_same_result_as_counts(denoised):
    assert_ok(denoised.results["from_adu"])
    from_adu = tifffile.imread(denoised.files["from_adu"])
    from_counts = tifffile.imread(denoised.files["untiled"])
    np.testing.assert_allclose(from_adu, from_counts, rtol=1e-5, atol=1e-6 * from_counts.max())


def test_denoise_with_a_calibration_file(denoised, trained):
    """``--calibration`` converts like ``--gain/--offset``; its read noise shifts the counts and the result back."""
    for name in ("calibration", "read_noise"):
        assert_ok(denoised.results[name])
    np.testing.assert_array_equal(tifffile.imread(denoised.files["calibration"]), tifffile.imread(denoised.files["from_adu"]))
    camera = Camera.from_calibration(denoised.files["noisy_camera"])
    assert camera.shift == pytest.approx(2.25)
    counts = camera.to_counts(tifffile.imread(denoised.files["adu"]))
    expected = camera.output(photongap.load(trained.model).denoise(counts, tile=None, device="cpu"))
    np.testing.assert_allclose(tifffile.imread(denoised.files["read_noise"]), expected, rtol=1e-3, atol=1e-3 * float(expected.max()))


def test_denoise_output_units_adu(denoised):
    assert_ok(denoised.results["adu_out"])
    stored = tifffile.imread(denoised.files["adu_out"])
    assert stored.dtype == np.float32 and stored.shape == SHAPE
    in_adu = stored.astype(np.float64)
    np.testing.assert_allclose(in_adu, 2 * tifffile.imread(denoised.files["untiled"]) + 100, rtol=1e-4)


def test_denoise_overwrite_replaces_the_output(denoised):
    assert_ok(denoised.results["overwrite"])
    replaced = tifffile.imread(denoised.files["overwrite"])
    assert replaced.dtype == np.float32 and replaced.shape == SHAPE
    np.testing.assert_array_equal(replaced, tifffile.imread(denoised.files["untiled"]))


# --- sample and generate ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def sampled(trained, tmp_path_factory) -> tuple[Path, np.ndarray, dict[str, subprocess.CompletedProcess]]:
    """Two sampling runs with the same seed (one also records a movie) and a generation run."""
    root = tmp_path_factory.mktemp("sample")
    counts = poisson_counts(SHAPE, level=2.0, seed=6)  # pseudo-PSNR about 3 dB
    tifffile.imwrite(root / "cell.tif", counts)
    common = ("-n", 3, "--target-psnr", 6, "--seed", 7)
    jobs = {
        "first": ("sample", trained.model, root / "cell.tif", "-o", root / "first", *common),
        # A movie of a run that takes several steps: from 3 dB to 12 dB (a step adds 3 dB at 2 photons/px, more once brighter).
        "movie": ("sample", trained.model, root / "cell.tif", "-o", root / "movie", "-n", 2, "--target-psnr", 12, "--movie", root / "x.gif"),
        "again": ("sample", trained.model, root / "cell.tif", "-o", root / "again", *common),
        "dispersed": ("sample", trained.model, root / "cell.tif", "-o", root / "dispersed", *common, "--beta", 1, "--dispersion", 1),
        "generate": ("generate", trained.model, "-o", root / "generated", "-n", 2, "--size", 40, 40, "--target-psnr", -10),
        "published": ("sample", trained.model, root / "cell.tif", "-o", root / "published", *common, "--beta", 0.1, "--beta-max", "none", "--dispersion", 0),
        "dotted": ("sample", trained.model, root / "dotted", "-o", root / "dotted_out", "-n", 2, "--target-psnr", 6),
        "info": ("info", trained.model),
        "info_json": ("info", trained.model, "--json"),
    }
    (root / "dotted").mkdir()
    for name, level in (("cell.1.tif", 2.0), ("cell.2.tif", 2.5)):
        tifffile.imwrite(root / "dotted" / name, poisson_counts(SHAPE, level=level, seed=8))
    return root, counts, run_all(jobs)


def test_sample_writes_samples_mean_and_std(sampled, trained):
    root, counts, results = sampled
    assert_ok(results["first"])
    assert folder_entries(root / "first") == ["cell_mean.tif", "cell_samples.tif", "cell_std.tif"]
    samples = tifffile.imread(root / "first" / "cell_samples.tif")
    mean = tifffile.imread(root / "first" / "cell_mean.tif")
    std = tifffile.imread(root / "first" / "cell_std.tif")
    assert samples.shape == (3, *SHAPE) and mean.shape == SHAPE and std.shape == SHAPE
    assert samples.dtype == mean.dtype == std.dtype == np.float32
    # The command gives the library's samples for the same seed (clean images in the input's
    # photon units); they differ from one another.
    expected = photongap.load(trained.model).sample(counts.astype(np.float32), n=3, target_psnr=6.0, seed=7, device="cpu")
    np.testing.assert_allclose(samples, expected.samples, rtol=1e-4, atol=1e-4 * float(expected.samples.max()))
    assert not np.allclose(samples[0], samples[1])
    np.testing.assert_allclose(mean, samples.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, samples.std(axis=0, ddof=1), rtol=1e-4, atol=1e-6)


def test_sample_same_seed_same_samples(sampled):
    root, _, results = sampled
    assert_ok(results["again"])
    first = tifffile.imread(root / "first" / "cell_samples.tif")
    again = tifffile.imread(root / "again" / "cell_samples.tif")
    np.testing.assert_array_equal(first, again)


def test_sample_with_large_dispersed_steps(sampled, trained):
    root, counts, results = sampled
    assert_ok(results["dispersed"])
    samples = tifffile.imread(root / "dispersed" / "cell_samples.tif")
    schedule = PhotonSchedule(beta=1.0, beta_max=FAST_SCHEDULE.beta_max, dispersion=1.0)
    expected = photongap.load(trained.model).sample(counts.astype(np.float32), n=3, target_psnr=6.0, seed=7, schedule=schedule, device="cpu")
    np.testing.assert_allclose(samples, expected.samples, rtol=1e-4, atol=1e-4 * float(expected.samples.max()))
    assert not np.allclose(samples, tifffile.imread(root / "first" / "cell_samples.tif"))


def test_sample_beta_max_none_is_the_published_schedule(sampled, trained):
    root, counts, results = sampled
    assert_ok(results["published"])
    samples = tifffile.imread(root / "published" / "cell_samples.tif")
    expected = photongap.load(trained.model).sample(counts.astype(np.float32), n=3, target_psnr=6.0, seed=7, schedule=PUBLISHED_SCHEDULE, device="cpu")
    np.testing.assert_allclose(samples, expected.samples, rtol=1e-4, atol=1e-4 * float(expected.samples.max()))


def test_sample_gives_distinct_inputs_distinct_outputs(sampled):
    """``cell.1.tif`` and ``cell.2.tif`` once both wrote ``cell_*.tif``: the second replaced the first."""
    root, _, results = sampled
    assert_ok(results["dotted"])
    assert folder_entries(root / "dotted_out") == [f"cell.{i}_{kind}.tif" for i in (1, 2) for kind in ("mean", "samples", "std")]
    means = [tifffile.imread(root / "dotted_out" / f"cell.{i}_mean.tif") for i in (1, 2)]
    assert not np.allclose(means[0], means[1])


def test_info_shows_the_trained_range_preset_and_size(sampled, trained):
    _, _, results = sampled
    assert_ok(results["info"])
    described = json.loads(results["info_json"].stdout)
    model = photongap.load(trained.model)
    assert described["weights"] == sum(p.numel() for p in model.network.parameters())
    assert described["trained_range_db"] == pytest.approx(list(model.info["trained_range"]))
    assert described["preset"] == model.info["preset"] and described["photongap_version"] == photongap.__version__
    text = results["info"].stderr
    low, high = described["trained_range_db"]
    assert f"inputs from {low:.1f} to {high:.1f} dB" in text and f"{described['weights']:,} weights" in text


def test_sample_movie_is_a_gif(sampled):
    root, _, results = sampled
    assert_ok(results["movie"])
    movie = (root / "x.gif").read_bytes()
    assert movie[:6] in (b"GIF87a", b"GIF89a")
    frames = iio.imread(movie, extension=".gif", index=None)
    assert frames.shape[0] > 1


def test_generate_writes_images_of_the_asked_size(sampled):
    root, _, results = sampled
    assert_ok(results["generate"])
    assert folder_entries(root / "generated") == ["generated.tif"]
    images = tifffile.imread(root / "generated" / "generated.tif")
    assert images.shape == (2, 40, 40)
    # The model was trained on the data's own levels (the default preset): generating from an
    # empty canvas starts far below them, and the command says so in one line.
    stderr = results["generate"].stderr
    assert "warning: generation starts at" in stderr and "below the dimmest inputs" in stderr and "UserWarning" not in stderr
    assert np.isfinite(images).all() and images.min() >= 0 and images.sum() > 0


# --- bad input ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadCase:
    args: tuple
    mentions: tuple[str, ...]
    out: Path
    """The folder that must hold nothing new afterwards."""
    keep: dict[str, bytes] = field(default_factory=dict)
    """Files already in ``out`` that must stay as they were."""


PARTIAL_RUN_FOLDER = (
    "bug: train creates the run folder and writes config.yaml before the data module checks the images "
    "against the patch size, so a failed run leaves RUN/config.yaml behind"
)
PARTIAL_SAMPLES = (
    "bug: sample writes NAME_samples.tif before finding that NAME_mean.tif already exists, so the failed "
    "command leaves a partial set of outputs (and the check comes only after all the sampling work)"
)
NO_OUTPUT_XFAIL = {"train_image_smaller_than_patch": PARTIAL_RUN_FOLDER, "sample_output_exists": PARTIAL_SAMPLES}


def _bad_cases(root: Path, model: Path, config: Path) -> dict[str, BadCase]:
    bad, out = root / "bad", root / "out"
    bad.mkdir()
    counts = poisson_counts(SHAPE, seed=8)
    good = bad / "good.tif"
    tifffile.imwrite(good, counts)
    fractional = counts.astype(np.float32) + 0.5
    tifffile.imwrite(bad / "fractional.tif", fractional)
    negative = counts.astype(np.int16)
    negative[3, 4] = -3
    tifffile.imwrite(bad / "negative.tif", negative)
    with_nan = counts.astype(np.float32)
    with_nan[5, 6] = np.nan
    tifffile.imwrite(bad / "with_nan.tif", with_nan)
    with_inf = counts.astype(np.float32)
    with_inf[7, 8] = np.inf
    tifffile.imwrite(bad / "with_inf.tif", with_inf)
    np.save(bad / "empty.npy", np.zeros((0, 5), np.float32))
    small = bad / "small"
    small.mkdir()
    tifffile.imwrite(small / "tiny_image.tif", poisson_counts((12, 12), seed=9))
    tifffile.imwrite(bad / "truncated.tif", counts)
    whole = (bad / "truncated.tif").read_bytes()
    (bad / "truncated.tif").write_bytes(whole[: len(whole) // 2])
    (bad / "notes.tif").write_text("these are my notes, not an image\n")
    (bad / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save({"a": 1}, bad / "foreign.pt")
    payload = torch.load(model, map_location="cpu", weights_only=True)
    torch.save({**payload, "format_version": 999}, bad / "future.pt")
    write_config(bad / "typo.yaml", {"model": {"depth": 2, "colour": "red"}, "training": TINY_CONFIG["training"]})
    (out / "exists").mkdir(parents=True)
    (out / "exists" / "good.tif").write_bytes(b"keep me")
    (out / "sample_exists").mkdir(parents=True)
    (out / "sample_exists" / "good_mean.tif").write_bytes(b"keep me too")

    def denoise(name: str, image: Path, *mentions: str, model: Path = model, extra: tuple = ()) -> tuple[str, BadCase]:
        return name, BadCase(("denoise", model, image, "-o", out / name / "denoised.tif", *extra), mentions, out / name)

    def train(name: str, data: Path, *mentions: str, extra: tuple = ()) -> tuple[str, BadCase]:
        return name, BadCase(("train", data, "--out", out / name / "run", "--steps", 2, *extra), mentions, out / name)

    return dict([
        denoise("non_integer", bad / "fractional.tif", "fractional.tif", "--gain"),
        denoise("negative", bad / "negative.tif", "negative.tif", "negative"),
        denoise("nan", bad / "with_nan.tif", "with_nan.tif", "NaN"),
        denoise("inf", bad / "with_inf.tif", "with_inf.tif", "infinite"),
        denoise("empty", bad / "empty.npy", "empty.npy", "empty"),
        denoise("truncated", bad / "truncated.tif", "truncated.tif"),
        denoise("text_file", bad / "notes.tif", "notes.tif"),
        denoise("missing_input", bad / "missing.tif", "missing.tif", "no such file"),
        denoise("model_random_bytes", good, "random.pt", "not a photongap model", model=bad / "random.pt"),
        denoise("model_foreign_dict", good, "foreign.pt", "not a photongap model", model=bad / "foreign.pt"),
        denoise("model_future_format", good, "future.pt", "999", model=bad / "future.pt"),
        denoise("device_cuda", good, "cuda", extra=("--device", "cuda")),
        train("train_image_smaller_than_patch", small, "tiny_image.tif", "patch size", extra=("--config", config)),
        train("unknown_preset", small, "bogus", extra=("--preset", "bogus")),
        train("config_unknown_key", small, "typo.yaml", "colour", extra=("--config", bad / "typo.yaml")),
        train("train_dims_4", small, "--dims", "4", extra=("--dims", 4)),
        train("train_depth_without_dims_3", small, "--patch-size D Y X", "--dims 3", extra=("--patch-size", "8x32x32")),
        ("output_exists", BadCase(("denoise", model, good, "-o", out / "exists" / "good.tif"), ("good.tif", "--overwrite"),
                                  out / "exists", {"good.tif": b"keep me"})),
        ("sample_output_exists", BadCase(("sample", model, good, "-o", out / "sample_exists", "-n", 2, "--target-psnr", 5),
                                         ("good_mean.tif", "--overwrite"), out / "sample_exists", {"good_mean.tif": b"keep me too"})),
        ("sample_negative_dispersion", BadCase(("sample", model, good, "-o", out / "sample_dispersion", "-n", 2, "--target-psnr", 5, "--dispersion", -1),
                                               ("dispersion", "-1"), out / "sample_dispersion")),
        ("sample_check_plot_not_png", BadCase(("sample", model, good, "-o", out / "sample_check_plot", "-n", 2, "--target-psnr", 5,
                                                "--check-plot", out / "sample_check_plot" / "check.jpg"), ("--check-plot", "check.jpg"), out / "sample_check_plot")),
    ])


BAD_CASE_NAMES = [
    "non_integer", "negative", "nan", "inf", "empty", "truncated", "text_file", "missing_input",
    "model_random_bytes", "model_foreign_dict", "model_future_format", "device_cuda",
    "train_image_smaller_than_patch", "unknown_preset", "config_unknown_key", "output_exists", "sample_output_exists",
    "sample_negative_dispersion", "train_dims_4", "train_depth_without_dims_3", "sample_check_plot_not_png",
]


@pytest.fixture(scope="module")
def bad_runs(trained, tmp_path_factory) -> tuple[dict[str, BadCase], dict[str, subprocess.CompletedProcess]]:
    root = tmp_path_factory.mktemp("bad")
    cases = _bad_cases(root, trained.model, trained.config)
    assert sorted(cases) == sorted(BAD_CASE_NAMES)
    jobs = {name: case.args for name, case in cases.items()}
    jobs["debug"] = ("--debug", *cases["missing_input"].args[:-1], root / "out" / "debug" / "denoised.tif")
    return cases, run_all(jobs)


NEEDS_NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="--device cuda works where there is a GPU")


def _marked(name: str, xfail: dict[str, str]) -> object:
    marks = ([NEEDS_NO_GPU] if name == "device_cuda" else []) + (
        [pytest.mark.xfail(reason=xfail[name], strict=True)] if name in xfail else [])
    return pytest.param(name, marks=marks)


@pytest.mark.parametrize("name", [_marked(name, {}) for name in BAD_CASE_NAMES])
def test_bad_input_is_a_one_line_error(bad_runs, name):
    cases, results = bad_runs
    assert_user_error(results[name], *cases[name].mentions)


@pytest.mark.parametrize("name", [_marked(name, {}) for name in BAD_CASE_NAMES])
def test_bad_input_leaves_no_output(bad_runs, name):
    cases, results = bad_runs
    case = cases[name]
    assert results[name].returncode != 0
    assert folder_entries(case.out) == sorted(case.keep), "outputs (or hidden .partial files) were left"
    for file, content in case.keep.items():
        assert (case.out / file).read_bytes() == content


def test_debug_shows_the_traceback(bad_runs):
    _, results = bad_runs
    result = results["debug"]
    assert result.returncode not in (0, 2), describe(result)
    assert "Traceback" in result.stderr and "PhotongapError" in result.stderr
    assert "missing.tif" in result.stderr


# --- interruption and resumption -------------------------------------------------------------


@dataclass
class Interrupted:
    data: Path
    run: Path
    returncode: int
    stderr: str
    step: int


@pytest.fixture(scope="module")
def interrupted(trained, tmp_path_factory) -> Interrupted:
    """A long run stopped with SIGINT (Ctrl-C) once metrics.csv has a few rows."""
    run = tmp_path_factory.mktemp("interrupted") / "run"
    process = subprocess.Popen(
        command("train", trained.data, "--out", run, "--config", trained.config, "--steps", 100_000),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV,
        # a terminal's Ctrl-C: SIGINT handled by default even when pytest runs with it ignored (nohup, CI)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline, metrics, ready = time.monotonic() + 60, run / "metrics.csv", False
        while not ready and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
            ready = metrics.exists() and len(metrics.read_text().splitlines()) >= 3  # header and two rows
        assert process.poll() is None, "training ended before it was interrupted"
        assert ready, "metrics.csv got no rows within 60 s"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    checkpoint = torch.load(run / "last.ckpt", map_location="cpu", weights_only=False) if (run / "last.ckpt").exists() else {}
    return Interrupted(trained.data, run, process.returncode, stderr, checkpoint.get("global_step", -1))


@pytest.mark.slow
def test_ctrl_c_keeps_a_checkpoint_and_resume_finishes(interrupted, trained):
    assert (interrupted.run / "last.ckpt").exists()
    assert interrupted.step >= 10
    assert not list(interrupted.run.glob("*.partial*"))
    assert "Traceback" not in interrupted.stderr
    target = interrupted.step + 7
    result = photongap_cli("train", interrupted.data, "--out", interrupted.run, "--resume", "--steps", target)
    assert_ok(result)
    model = photongap.load(interrupted.run / "model.pt")
    assert model.info["steps_done"] == target
    _, steps = read_metrics(interrupted.run / "metrics.csv")
    assert steps == sorted(steps)
    assert min(steps) < interrupted.step < max(steps) <= target  # rows are written every few steps


@pytest.mark.slow
def test_ctrl_c_exits_with_130(interrupted):
    assert interrupted.returncode == 130
    assert "interrupted" in interrupted.stderr


# --- DDP ---------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("precision", [
    "fp32",
    "bf16",
])
def test_ddp_on_two_cpu_processes(long_runs, precision):
    """``--devices 2 --strategy ddp --device cpu``: Lightning's gloo backend, two processes."""
    root, results = long_runs
    assert_ok(results[f"ddp_{precision}"])
    assert results[f"ddp_{precision}"].stderr.count("model written to") == 1  # one summary, not one per process
    model = photongap.load(root / f"ddp_{precision}" / "model.pt")
    assert model.info["steps_done"] == 4
    counts = poisson_counts(SHAPE, seed=10)
    denoised = model.denoise(counts, device="cpu")
    assert denoised.shape == SHAPE and np.isfinite(denoised).all() and denoised.std() > 0


# --- help --------------------------------------------------------------------------------------


@pytest.mark.parametrize("subcommand", ["", "train", "denoise", "sample", "generate", "info", "calibrate", "demo"])
def test_help(subcommand):
    result = photongap_cli(*([subcommand] if subcommand else []), "--help")
    assert_ok(result)
    assert "Usage" in result.stdout
    assert (subcommand or "denoise") in result.stdout


def test_denoise_help_mentions_photon_units():
    result = photongap_cli("denoise", "--help")
    assert_ok(result)
    assert "photon units of the input" in " ".join(result.stdout.split()).lower()
