"""Held-out assessment: unbiased on a denoiser whose error is known, the report's contract, training-image detection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

import photongap
import torch

from photongap.assessment import (DEFAULT_FRACTIONS, assess_counts, assess_planes, extrapolation_weights, full_exposure_mse, model_denoiser, plane_hash,
                                  trained_on)
from photongap.config import ModelConfig
from photongap.errors import PhotongapError
from photongap.exposure import thin

SHAPE = (32, 32)


def scene(level: float = 4.0) -> np.ndarray:
    y, x = np.meshgrid(np.linspace(0, 3, SHAPE[0]), np.linspace(0, 4, SHAPE[1]), indexing="ij")
    clean = 1.0 + 0.9 * np.sin(2 * y) * np.cos(x) ** 2
    clean[10:14, 20:24] += 6.0  # a bright spot: blurring it costs squared bias
    return clean * level / clean.mean()


def blur(counts: np.ndarray) -> np.ndarray:
    """A fixed linear denoiser: 3x3 mean per plane (reflecting edges), in the input's photon units."""
    padded = np.pad(np.asarray(counts, dtype=np.float64), ((0, 0), (1, 1), (1, 1)), mode="reflect")
    y, x = counts.shape[-2:]
    return (sum(padded[:, dy : dy + y, dx : dx + x] for dy in range(3) for dx in range(3)) / 9).astype(np.float32)


def blur_mse(clean: np.ndarray) -> float:
    """Exact ``E mean((lambda - K x)**2)`` for ``x ~ Poisson(lambda)``: squared bias + sum_j lambda_j sum_i K_ij**2."""
    impulses = np.eye(clean.size).reshape(clean.size, *SHAPE)
    kernel = blur(impulses).reshape(clean.size, clean.size).astype(np.float64)  # row j: response to pixel j
    bias = clean.ravel() - kernel.T @ clean.ravel()
    variance = (kernel**2).sum(axis=1) @ clean.ravel()
    return float((bias @ bias + variance) / clean.size)


def estimates(denoise, clean: np.ndarray, draws: int, **options) -> list:
    rng = np.random.default_rng(0)
    options = {"repeats": 2, **options}
    return [assess_counts(denoise, rng.poisson(clean).astype(np.float32), seed=draw, **options) for draw in range(draws)]


def test_extrapolation_weights_reproduce_a_plus_b_over_p():
    weights = extrapolation_weights(DEFAULT_FRACTIONS)
    p = np.array(DEFAULT_FRACTIONS)
    assert weights.sum() == pytest.approx(1.0)
    assert (weights / p).sum() == pytest.approx(1.0)
    assert full_exposure_mse(3.0 + 2.0 / p, p) == pytest.approx(5.0)


@pytest.mark.parametrize("method", ["held_out", "controlled"])
@pytest.mark.parametrize("denoiser", ["blur", "identity"])
def test_full_exposure_estimate_is_unbiased(denoiser, method):
    clean = scene()
    if denoiser == "blur":
        denoise, exact = blur, blur_mse(clean)
    else:
        denoise, exact = (lambda counts: np.asarray(counts, dtype=np.float32)), float(clean.mean())  # Var(x) = lambda
    results = estimates(denoise, clean, draws=300, method=method, repeats=4)
    values = np.array([result.mse for result in results])
    standard_error = values.std(ddof=1) / np.sqrt(len(values))
    assert abs(values.mean() - exact) < 4 * standard_error
    # The test can tell a biased estimator: the held-out MSE at p = 0.5 (not extrapolated) is far off.
    at_half = np.array([result.mse_at_fraction[0] for result in results])
    assert abs(at_half.mean() - exact) > 4 * at_half.std(ddof=1) / np.sqrt(len(at_half))


def test_control_variates_take_out_split_noise():
    # Same images, same splits: the controlled estimate scatters less around the exact MSE than the plain held-out one.
    clean = scene()
    plain = np.array([r.mse for r in estimates(blur, clean, draws=120, repeats=4, method="held_out")])
    controlled = np.array([r.mse for r in estimates(blur, clean, draws=120, repeats=4, method="controlled")])
    exact = blur_mse(clean)
    assert np.sqrt(np.mean((controlled - exact) ** 2)) < 0.85 * np.sqrt(np.mean((plain - exact) ** 2))


def test_reported_uncertainty_matches_the_actual_error_against_the_clean_image():
    clean = scene()
    rng = np.random.default_rng(1)
    errors, reported = [], []
    for draw in range(150):
        counts = rng.poisson(clean).astype(np.float32)
        result = assess_counts(blur, counts, seed=draw, repeats=4)
        errors.append(result.mse - float(np.mean((clean - blur(counts[None])[0]) ** 2)))
        reported.append(result.mse_std)
    spread, typical = np.std(errors, ddof=1), np.sqrt(np.mean(np.square(reported)))
    assert 0.6 * spread < typical < 1.6 * spread


def test_same_seed_same_assessment_and_a_psnr_from_the_denoised_range():
    counts = np.random.default_rng(2).poisson(scene()).astype(np.float32)
    first, again = assess_counts(blur, counts, seed=3), assess_counts(blur, counts, seed=3)
    assert first == again
    assert first.data_range == pytest.approx(float(np.ptp(blur(counts[None])[0])))
    assert first.psnr == pytest.approx(10 * np.log10(first.data_range**2 / first.mse))
    assert first.nll_per_photon > 0
    assert json.loads(json.dumps(first.to_dict()))["mse"] == first.mse


def test_a_level_input_model_is_told_each_splits_share_of_the_graded_image():
    class Recording:
        """Stands in for a model: denoises by copying, and records the shares it is told."""

        config = ModelConfig(level_input=True)
        shares: list[np.ndarray] = []

        def denoise(self, counts, device, fraction):
            self.shares.append(np.atleast_1d(fraction))
            return counts

    image = np.random.default_rng(0).poisson(2.0, (32, 32)).astype(np.float32)
    model = Recording()
    assess_counts(model_denoiser(model, image, "cpu"), image, fractions=(0.5, 0.8), repeats=3, seed=1)
    assert model.shares[0].tolist() == [1.0]  # the image itself, whole
    assert [share.shape for share in model.shares[1:]] == [(3,), (3,)]
    for share, fraction in zip(model.shares[1:], (0.5, 0.8)):
        assert np.abs(share - fraction).max() < 0.05 and len(set(share.tolist())) > 1  # each split's own share


def test_training_planes_are_recognised_by_their_hash():
    plane = np.random.default_rng(3).poisson(scene()).astype(np.float32)
    other = plane.copy()
    other[0, 0] += 1
    info = {"data": {"plane_hashes": [plane_hash(plane)], "validation_hashes": []}}
    assert trained_on(info, plane) is True
    assert trained_on(info, plane.astype(np.uint16)) is True  # same counts, another dtype
    assert trained_on(info, other) is False
    assert trained_on({"data": {"plane_hashes": [plane_hash(plane)], "validation_hashes": [plane_hash(plane)]}}, plane) is False
    assert trained_on({"data": {}}, plane) is None


# --- through the command line: a tiny network, a few steps -------------------------------------

TINY = {"model": {"depth": 2, "start_filters": 4, "encoding_levels": 3},
        "training": {"batch_size": 4, "patch_size": 16, "val_every": 5, "steps": 6, "val_fraction": 0.3}}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "200"}


def cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "photongap.cli", *map(str, args)], capture_output=True, text=True, env=ENV, timeout=300)


def counts_image(seed: int, shape=(48, 64), level: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(0, 3, shape[0]), np.linspace(0, 4, shape[1]), indexing="ij")
    clean = 1.0 + 0.8 * np.sin(y + seed) * np.cos(x) ** 2
    return rng.poisson(clean * level / clean.mean()).astype(np.uint16)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("assess")
    (root / "data").mkdir()
    for seed in range(3):
        tifffile.imwrite(root / "data" / f"cells{seed}.tif", counts_image(seed))
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    result = cli("train", root / "data", "-o", root / "run", "--config", root / "tiny.yaml")
    assert result.returncode == 0, result.stderr
    return root, root / "run", result


def test_train_writes_the_validation_assessment_and_info_shows_it(trained_run):
    root, run, _ = trained_run
    report = json.loads((run / "assessment.json").read_text())
    assert [image["path"] for image in report["images"]] == ["validation 0"]  # the last of 3 images is held out
    assert report["images"][0]["trained_on"] is False
    model = photongap.load(run / "model.pt")
    assert model.info["assessment"]["mse"] == pytest.approx(report["summary"]["mse"])
    assert len(model.info["data"]["plane_hashes"]) == 3 and len(model.info["data"]["validation_hashes"]) == 1
    # The posterior gain is measured once, on the validation image (shown by info); sampling
    # measures each image's own, since it varies from image to image.
    held_out = tifffile.imread(root / "data" / "cells2.tif").astype(np.float32)
    assert model.info["posterior_gain"] == pytest.approx(model.estimate_gain(held_out, repeats=4, device="cpu"), rel=1e-3)
    posterior = model.sample(counts_image(5).astype(np.float32), n=2, device="cpu")
    assert posterior.gain != pytest.approx(model.info["posterior_gain"]) and posterior.gain_calls == 31
    shown = cli("info", run / "model.pt")
    assert shown.returncode == 0 and "assessed  1 validation image(s)" in shown.stderr + shown.stdout
    assert f"posterior gain {model.info['posterior_gain']:.3g}" in shown.stderr + shown.stdout


def test_assess_report_contract_and_training_image_warning(trained_run):
    root, run, _ = trained_run
    tifffile.imwrite(root / "new.tif", counts_image(7))
    result = cli("assess", run / "model.pt", root / "new.tif", root / "data" / "cells0.tif", root / "data" / "cells2.tif",
                 "-o", root / "report.json", "--plot", root / "report.png", "--repeats", 3)
    assert result.returncode == 0, result.stderr
    report = json.loads((root / "report.json").read_text())
    assert [Path(image["path"]).name for image in report["images"]] == ["new.tif", "cells0.tif", "cells2.tif"]
    for image in report["images"]:
        assert {"path", "mse", "mse_std", "psnr", "nll_per_photon", "trained_on"} <= set(image)
        assert all(isinstance(image[key], float) for key in ("mse", "mse_std", "psnr", "nll_per_photon"))
        assert image["psnr"] == pytest.approx(10 * np.log10(image["data_range"] ** 2 / image["mse"]))
    assert [image["trained_on"] for image in report["images"]] == [False, True, False]  # cells2 was held out
    assert len(report["warnings"]) == 1 and "cells0.tif" in report["warnings"][0]
    assert "warning" in result.stderr and (root / "report.png").stat().st_size > 0


@pytest.mark.parametrize("options, mention", [(("--split-fraction", 1.5), "fraction"), (("--repeats", 1), "--repeats"), (("-o", "report.txt"), ".json")])
def test_assess_bad_input_is_one_line_and_writes_nothing(trained_run, options, mention, tmp_path):
    root, run, _ = trained_run
    out = tmp_path / "report.json"
    arguments = ["assess", run / "model.pt", root / "data" / "cells0.tif", "-o", out, *options]
    if options[0] == "-o":
        arguments = ["assess", run / "model.pt", root / "data" / "cells0.tif", *options[:1], tmp_path / options[1]]
    result = cli(*arguments)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] and mention in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_plan_exposure_through_the_cli(trained_run):
    root, _, _ = trained_run
    result = cli("plan-exposure", root / "data", "-o", root / "plan", "--fractions", "1,0.25", "--config", root / "tiny.yaml", "--steps", 4)
    assert result.returncode == 0, result.stderr
    plan = json.loads((root / "plan" / "plan.json").read_text())
    assert [point["fraction"] for point in plan["fractions"]] == [1.0, 0.25]
    for point in plan["fractions"]:
        assert {"fraction", "mse", "psnr", "mse_std", "noisy_mse", "noisy_psnr"} <= set(point)
    assert plan["fractions"][1]["noisy_mse"] > 2 * plan["fractions"][0]["noisy_mse"]  # less light, noisier (original units)
    assert plan["recommendation"] and (root / "plan" / "plan.png").stat().st_size > 0
    assert plan["fractions"][0]["fine_tuned_from"] is None  # the brightest from scratch, the next from its weights
    assert Path(plan["fractions"][1]["fine_tuned_from"]) == root / "plan" / "fraction_1" / "model.pt"
    again = cli("plan-exposure", root / "data", "-o", root / "plan", "--fractions", 0, "--config", root / "tiny.yaml")
    assert again.returncode == 2 and "fraction" in again.stderr


def weights(path: Path) -> torch.Tensor:
    return torch.cat([tensor.flatten().float() for tensor in photongap.load(path).network.state_dict().values()])


def test_fine_tuning_starts_from_the_given_weights(trained_run, tmp_path):
    from photongap.training import train

    root, run, _ = trained_run
    images = [counts_image(seed).astype(np.float32) for seed in range(3)]
    options = dict(config_file=root / "tiny.yaml", overrides={"steps": 1, "seed": 1}, progress=False, assess=False, device="cpu")
    tuned = train(images, tmp_path / "tuned", init_from=run / "model.pt", **options).model_path
    scratch = train(images, tmp_path / "scratch", **options).model_path
    start = weights(run / "model.pt")
    # One warm-up step barely moves the weights: the tuned run stays at its start, a fresh one (another seed) is elsewhere.
    assert (weights(tuned) - start).norm() < 1e-2 * (weights(scratch) - start).norm()
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**TINY, "model": {**TINY["model"], "start_filters": 8}}))
    with pytest.raises(PhotongapError, match="not the one this run trains"):
        train(images, tmp_path / "mismatch", init_from=run / "model.pt", **{**options, "config_file": other})


def test_thinning_is_a_dimmer_poisson_acquisition():
    clean = scene(level=5.0)
    rng = np.random.default_rng(4)
    thinned = np.stack(thin([rng.poisson(clean).astype(np.float32) for _ in range(400)], 0.3, seed=1))
    assert thinned.mean() == pytest.approx(0.3 * clean.mean(), rel=0.01)
    assert thinned.var(axis=0).mean() == pytest.approx(0.3 * clean.mean(), rel=0.05)  # Poisson: variance = mean


class FixedModel:
    """A stand-in for GapModel: a blur as its denoiser, and whatever training record it is given."""

    def __init__(self, info):
        self.info, self.config = info, ModelConfig()  # a 2D model: assessed plane by plane

    def denoise(self, counts, device="auto"):
        return blur(counts)


def test_assess_planes_flags_training_planes_and_models_without_a_record():
    planes = [np.random.default_rng(seed).poisson(scene()).astype(np.float32) for seed in range(2)]
    known = FixedModel({"data": {"plane_hashes": [plane_hash(planes[0])], "validation_hashes": []}})
    with pytest.warns(UserWarning, match="a.tif was used to train"):
        report = assess_planes(known, planes, ["a.tif", "b.tif"], repeats=2)
    assert [image["trained_on"] for image in report["images"]] == [True, False] and len(report["warnings"]) == 1
    assert report["summary"]["mse"] == pytest.approx(np.mean([image["mse"] for image in report["images"]]))
    with pytest.warns(UserWarning, match="does not record its training images"):
        report = assess_planes(FixedModel({}), planes, ["a.tif", "b.tif"], repeats=2)
    assert [image["trained_on"] for image in report["images"]] == [None, None]
