"""Posterior sampling: speed and quality of the published loop against photongap's, in one run.

Settings (all stop at the same rule, 20 dB pseudo-PSNR, from the noisy 256 x 256 test images):
- ``published``: one sample at a time, fp32, contiguous layout, beta = 0.1 (the published loop);
- ``batched``: the n samples in one loop, 16 images per network call, beta 0.1;
- ``loop``: the n samples in one loop, photongap's defaults for the device (on a CPU: one
  image per call in channels_last, which was faster per image than batches), beta 0.1;
- ``ramp05`` / ``ramp1`` / ``ramp2`` / ``ramp4``: as ``loop``, with beta growing up to
  0.5 / 1 / 2 / 4 once the image is bright;
- ``double``: as ``loop`` with beta 1; ``fast`` / ``fast03``: beta 0.5 / 0.3 from the start,
  growing up to 4 (``photongap sample --beta 0.5 --beta-max 4``).

Quality per setting, on the same images: PSNR of single samples and of the mean of the
samples against ground truth, PSNR of the mean against the MMSE prediction, and the
calibration of the uncertainty (fraction of ground-truth pixels inside the central 80%
interval of the samples; ideally 0.8). Speed: samples per second and network calls per sample.

    .venv/bin/python benchmarks/bench_sampling.py [--model MODEL] [--images 2] [-n 16]

The model must know images as bright as the stopping level: without ``--model`` one is
trained on the demo training images at 100 photons/px (see ``train_bright_model``); the
samples start from the held-out images at ``--level`` (1 photon/px).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time

import numpy as np
import torch

from common import OUTPUT, ContiguousModel, demo_split, report
from photongap.errors import PhotongapError
from photongap.model import GapModel
from photongap.sample_data import psnr
from photongap.sampling import PhotonSchedule

# "samples": per call of GapModel.sample; "batch": images per network call (None: the default).
SETTINGS = {
    "published": {"samples": 1, "batch": 1, "precision": "fp32", "layout": "contiguous", "schedule": PhotonSchedule(beta=0.1)},
    "batched": {"samples": None, "batch": 16, "precision": "auto", "schedule": PhotonSchedule(beta=0.1)},
    "loop": {"samples": None, "batch": None, "precision": "auto", "schedule": PhotonSchedule(beta=0.1)},
    "ramp05": {"samples": None, "batch": None, "precision": "auto", "schedule": PhotonSchedule(beta=0.1, beta_max=0.5)},
    "ramp1": {"samples": None, "batch": None, "precision": "auto", "schedule": PhotonSchedule(beta=0.1, beta_max=1.0)},
    "ramp2": {"samples": None, "batch": None, "precision": "auto", "schedule": PhotonSchedule(beta=0.1, beta_max=2.0)},
    "ramp4": {"samples": None, "batch": None, "precision": "auto", "schedule": PhotonSchedule(beta=0.1, beta_max=4.0)},
    "double": {"samples": None, "batch": None, "precision": "auto", "schedule": PhotonSchedule(beta=1.0)},
    "fast": {"samples": None, "batch": None, "precision": "auto", "schedule": PhotonSchedule(beta=0.5, beta_max=4.0)},
    "fast03": {"samples": None, "batch": None, "precision": "auto", "schedule": PhotonSchedule(beta=0.3, beta_max=4.0)},
}


def coverage_80(samples: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of pixels whose true value lies in the samples' 10th..90th percentile interval."""
    low, high = np.percentile(samples, [10, 90], axis=0)
    return float(np.mean((truth >= low) & (truth <= high)))


def run_setting(model: GapModel, setting: dict, noisy: list[np.ndarray], clean: list[np.ndarray], mmse: list[np.ndarray], n: int, seed: int, target_psnr: float) -> dict:
    single, mean_gt, mean_mmse, coverage, seconds, calls = [], [], [], [], 0.0, []
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
        coverage.append(coverage_80(samples, truth))
    total = n * len(noisy)
    return {
        "samples_per_s": round(total / seconds, 3),
        "seconds_per_sample": round(seconds / total, 3),
        "network_calls_per_sample": round(statistics.fmean(calls), 1),
        "psnr_single_sample": round(statistics.fmean(single), 2),
        f"psnr_mean_of_{n}": round(statistics.fmean(mean_gt), 2),
        f"psnr_mean_of_{n}_vs_mmse": round(statistics.fmean(mean_mmse), 2),
        "coverage_80": round(statistics.fmean(coverage), 3),
    }


def train_bright_model(photons_per_pixel: float = 100.0, steps: int = 600) -> str:
    """A model for sampling up to 20 dB: trained on the demo training images at 100 photons/px.

    Splitting only makes inputs dimmer than the training data, so a model that must predict
    from images of up to 100 photons/px is trained on data that bright, with the full
    absolute range of levels (``preset("generative")``: -40..+20 dB).
    """
    from photongap.config import override, preset
    from photongap.training import train

    path = OUTPUT / "models" / f"sampling_{photons_per_pixel:g}ppx_{steps}" / "model.pt"
    model_config, train_config = preset("generative")
    try:
        if GapModel.load(path).config == model_config:
            return str(path)  # trained by an earlier run with today's configuration
    except PhotongapError:
        pass  # none yet, or from an older version
    train_config = override(train_config, steps=steps, val_fraction=0.0)
    images, _, _ = demo_split(photons_per_pixel)
    shutil.rmtree(path.parent, ignore_errors=True)
    train(images, path.parent, model_config=model_config, train_config=train_config, progress=False)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model trained on bright demo data (default: train one, see train_bright_model)")
    parser.add_argument("--level", type=float, default=1.0, help="photons per pixel of the noisy test images")
    parser.add_argument("--images", type=int, default=2, help="test images used (of 8)")
    parser.add_argument("-n", type=int, default=16, help="samples per image")
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS))
    parser.add_argument("--target-psnr", type=float, default=20.0, help="stopping level in dB (the published loop's: 20)")
    args = parser.parse_args()
    model = GapModel.load(args.model or train_bright_model())
    _, test, clean = demo_split(args.level)
    picks = np.linspace(0, len(test) - 1, args.images).round().astype(int)
    noisy, truth = [test[i] for i in picks], [clean[i] for i in picks]
    mmse = [model.denoise(counts, precision="fp32", device="cpu") for counts in noisy]
    results: dict = {
        "model": args.model,
        "images": [int(i) for i in picks],
        "n": args.n,
        "target_psnr": args.target_psnr,
        "threads": torch.get_num_threads(),
        "psnr_noisy": round(statistics.fmean(psnr(t, c) for t, c in zip(truth, noisy)), 2),
        "psnr_mmse": round(statistics.fmean(psnr(t, m) for t, m in zip(truth, mmse)), 2),
        "settings": {},
    }
    for name in args.settings:
        results["settings"][name] = run_setting(model, SETTINGS[name], noisy, truth, mmse, args.n, seed=0, target_psnr=args.target_psnr)
        print(name, results["settings"][name], flush=True)
    published = results["settings"].get("published")
    if published:
        for entry in results["settings"].values():
            entry["speedup_vs_published"] = round(entry["samples_per_s"] / published["samples_per_s"], 1)
    report("sampling", results)


if __name__ == "__main__":
    main()
