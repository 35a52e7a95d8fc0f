"""``assess`` and ``plan-exposure`` with 3D models: each (D, Y, X) volume is split, denoised and scored whole.

Real data: the embedded crop of the nuclei z-stack (:func:`photongap.sample_data.load_sample_volume`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from scipy.ndimage import uniform_filter

import photongap
from photongap.assessment import assess_counts, assess_planes
from photongap.config import ModelConfig
from photongap.errors import PhotongapError
from photongap.model import GapModel
from photongap.network import GapUNet
from photongap.physics import held_out_squared_error, split_counts
from photongap.sample_data import load_sample_volume

TINY_3D = ModelConfig(depth=2, start_filters=4, encoding_levels=3, dims=3, depth_pools=1)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "200"}


def cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "photongap.cli", *map(str, args)], capture_output=True, text=True, env=ENV, timeout=300)


def nuclei(photons_per_pixel: float, seed: int = 0, shape=(8, 32, 32)) -> tuple[np.ndarray, np.ndarray]:
    """A corner of the crop as clean ground truth at a level, and its Poisson counts."""
    clean = load_sample_volume()[tuple(slice(0, side) for side in shape)].astype(np.float64)
    clean *= photons_per_pixel / clean.mean()
    return clean, np.random.default_rng(seed).poisson(clean).astype(np.float32)


def tiny_3d_model(seed: int = 0) -> GapModel:
    torch.manual_seed(seed)
    return GapModel(GapUNet(TINY_3D).eval(), TINY_3D, {"training": {"patch_depth": 8}, "data": {"plane_hashes": [], "validation_hashes": []}})


def box_3d(counts: np.ndarray) -> np.ndarray:
    """A linear denoiser that mixes neighbouring planes: the 3x3x3 mean of each ``(D, Y, X)`` volume of ``(N, D, Y, X)``."""
    return uniform_filter(np.asarray(counts, dtype=np.float64), size=(1, 3, 3, 3), mode="reflect").astype(np.float32)


def test_a_volume_assessment_is_unbiased_for_a_denoiser_that_mixes_planes():
    # Linear: MSE(p) = A + B/p exactly, so the estimate of the 3x3x3 mean's error must scatter
    # around the truth by its reported uncertainty (sums over every voxel of the volume).
    clean = load_sample_volume()[:, :48, :48].astype(np.float64)
    clean *= 2.0 / clean.mean()
    errors = []
    for draw in range(4):
        counts = np.random.default_rng(draw).poisson(clean).astype(np.float32)
        result = assess_counts(box_3d, counts, repeats=4, seed=draw)
        true_mse = float(np.mean((clean - box_3d(counts[None])[0]) ** 2))
        errors.append((result.mse - true_mse) / result.mse_std)
        assert result.photons_per_pixel == pytest.approx(counts.mean()) and np.isfinite(result.psnr)
    assert np.all(np.abs(errors) < 3.5), errors


def test_assess_of_a_3d_model_is_the_assessment_of_its_volume_done_by_hand():
    model, (_, counts) = tiny_3d_model(), nuclei(1.0)
    fractions, repeats, seed = (0.5, 0.9), 3, 4
    report = assess_planes(model, [counts], ["volume"], fractions=fractions, repeats=repeats, seed=seed, device="cpu")
    image = report["images"][0]
    assert all(np.isfinite(image[key]) for key in ("mse", "mse_std", "psnr", "nll_per_photon"))
    # By hand: the same splits of the whole volume, each denoised as one volume (one softmax), scored over all its voxels.
    generator = torch.Generator().manual_seed(seed)
    whole = torch.from_numpy(counts)[None, None].expand(repeats, 1, *counts.shape).contiguous()
    split = split_counts(whole, torch.full((repeats,), 0.5), generator)
    estimate = torch.from_numpy(model.denoise(split.input_counts[:, 0].numpy(), device="cpu"))[:, None]
    np.testing.assert_allclose(estimate.sum(dim=(1, 2, 3, 4)).numpy(), split.input_counts.sum(dim=(1, 2, 3, 4)).numpy(), rtol=1e-4)
    held_out = held_out_squared_error(estimate, split.target_counts, torch.full((repeats,), 0.5)).numpy()
    direct = assess_counts(lambda c: model.denoise(c, device="cpu"), counts, fractions=fractions, repeats=repeats, seed=seed)
    np.testing.assert_allclose(direct.sums.held_out[0], held_out, rtol=1e-6)
    probability = estimate.double() / estimate.double().sum(dim=(2, 3, 4), keepdim=True)  # over the volume, not per plane
    target = split.target_counts.double()
    nll = float(-(target * probability.log()).sum() / target.sum())
    assert image["nll_per_photon"] == pytest.approx(nll, rel=1e-9) and direct.nll_per_photon == pytest.approx(nll, rel=1e-9)
    assert image["mse"] == pytest.approx(direct.mse, rel=1e-12) and image["psnr"] == pytest.approx(direct.psnr, rel=1e-12)
    with pytest.raises(PhotongapError, match=r"\(D, Y, X\) volumes"):
        assess_planes(model, [counts[0]], ["plane"], repeats=3)


def test_assess_cli_grades_each_volume_of_a_stack_with_a_3d_model(tmp_path):
    model = tiny_3d_model()
    model.save(tmp_path / "model.pt")
    volumes = np.stack([nuclei(1.0, seed=seed)[1] for seed in (1, 2)])
    tifffile.imwrite(tmp_path / "stack.tif", volumes[0].astype(np.uint16), metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "movie.tif", volumes.astype(np.uint16), imagej=True, metadata={"axes": "TZYX"})
    tifffile.imwrite(tmp_path / "thin.tif", volumes[0, :4].astype(np.uint16), metadata={"axes": "ZYX"})
    jobs = [("assess", tmp_path / "model.pt", tmp_path / "stack.tif", tmp_path / "movie.tif", "-o", tmp_path / "report.json",
             "--plot", tmp_path / "report.png", "--repeats", 3, "--device", "cpu"),
            ("assess", tmp_path / "model.pt", tmp_path / "thin.tif", "-o", tmp_path / "thin.json", "--device", "cpu")]
    with ThreadPoolExecutor(2) as pool:  # each command spends most of its time importing torch
        result, thin = pool.map(lambda args: cli(*args), jobs)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert [Path(image["path"].split(" ")[0]).name for image in report["images"]] == ["stack.tif", "movie.tif", "movie.tif"]
    assert "volume (1,)" in report["images"][2]["path"]
    for image in report["images"]:
        assert all(np.isfinite(image[key]) for key in ("mse", "mse_std", "psnr", "nll_per_photon"))
    assert (tmp_path / "report.png").stat().st_size > 0
    # The same figures as the library's assessment of each volume (the CLI's seed: 0, plus the image's number).
    again = assess_planes(model, [volumes[0], volumes[0], volumes[1]], ["a", "b", "c"], repeats=3, device="cpu")
    for image, expected in zip(report["images"], again["images"]):
        assert image["mse"] == pytest.approx(expected["mse"], rel=1e-9) and image["photons_per_pixel"] == pytest.approx(expected["photons_per_pixel"])
    assert thin.returncode == 2 and "thinner than this 3D model's patch depth" in thin.stderr and "Traceback" not in thin.stderr
    assert not (tmp_path / "thin.json").exists()


@pytest.mark.slow
def test_plan_exposure_trains_and_grades_3d_models(tmp_path):
    _, counts = nuclei(2.0, shape=(10, 48, 48))
    tifffile.imwrite(tmp_path / "stack.tif", counts.astype(np.uint16), metadata={"axes": "ZYX"})
    tiny = {"model": {"depth": 2, "start_filters": 4, "encoding_levels": 3, "dims": 3}, "training": {"batch_size": 2, "val_fraction": 0.3}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    # dims from the config; the single volume's bottom rows are held out, as 'train' holds them.
    jobs = [("plan-exposure", tmp_path / "stack.tif", "-o", tmp_path / "plan", "--fractions", "1,0.5", "--config", tmp_path / "tiny.yaml",
             "--patch-size", "8x16x16", "--steps", 3, "--device", "cpu"),
            ("plan-exposure", tmp_path / "stack.tif", "-o", tmp_path / "flat", "--patch-size", "8x16x16", "--dims", "2")]
    with ThreadPoolExecutor(2) as pool:
        result, flat = pool.map(lambda args: cli(*args), jobs)
    assert result.returncode == 0, result.stderr[-2000:]
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert [point["fraction"] for point in plan["fractions"]] == [1.0, 0.5]
    assert all(np.isfinite(point[key]) for point in plan["fractions"] for key in ("mse", "mse_std", "psnr", "noisy_psnr"))
    assert Path(plan["fractions"][1]["fine_tuned_from"]) == tmp_path / "plan" / "fraction_1" / "model.pt"
    configs = []
    for fraction in ("1", "0.5"):
        run = tmp_path / "plan" / f"fraction_{fraction}"
        model = photongap.load(run / "model.pt")
        configs.append((model.config, model.min_depth))
        graded = json.loads((run / "assessment.json").read_text())["images"]
        assert len(graded) == 1 and model.info["assessment"]["images"] == 1 and model.info["posterior_gain"] > 0
    assert configs[0] == configs[1] and configs[0][0].dims == 3 and configs[0][1] == 8  # the same 3D network at every dose
    assert (tmp_path / "plan" / "plan.png").stat().st_size > 0
    assert flat.returncode == 2 and "--dims 3" in flat.stderr and not (tmp_path / "flat").exists()
