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
model, and the calibration of the uncertainty (fraction of ground-truth pixels inside the
central 80% interval of the samples; ideally 0.8). Speed: samples per second, network calls
per sample, and the speed-up over ``published``.

    .venv/bin/python benchmarks/bench_sampling.py [--images 2] [-n 16] [--settings ...]

The models must know images as bright as the stopping level, so both are trained on the demo
training images at 100 photons/px, for about the same time on a 2-core CPU (``TRAINING_STEPS``:
photongap's network takes about a quarter of the published one's time per step); the samples
start from the held-out images at ``--level`` (1 photon/px). Trained models are kept in
bench-output/models/ for later runs.
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
from photongap.schedule import PhotonSchedule

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="photongap's model, trained on bright demo data (default: train one, see train_bright_model)")
    parser.add_argument("--paper-model", help="the published configuration's model, likewise (default: train one)")
    parser.add_argument("--level", type=float, default=1.0, help="photons per pixel of the noisy test images")
    parser.add_argument("--images", type=int, default=2, help="test images used (of 8)")
    parser.add_argument("-n", type=int, default=16, help="samples per image")
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS))
    parser.add_argument("--target-psnr", type=float, default=20.0, help="stopping level in dB (the published loop's: 20)")
    args = parser.parse_args()
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
