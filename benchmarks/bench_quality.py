"""Denoising quality against training time: PSNR on the 8 held-out demo images during training.

Trains a preset on the demo data simulated at a photon level, evaluates the MMSE PSNR on the
held-out images every ``--eval-every`` steps; the evaluation time is excluded from the
training clock. Prints the curve (step, minutes, PSNR) and the final figures, among them how
bright the final model makes the brightest structures (:func:`brightest_ratio`).

    .venv/bin/python benchmarks/bench_quality.py --preset paper --level 1 --steps 600
    .venv/bin/python benchmarks/bench_quality.py --preset default --level 1 --steps 600
    .venv/bin/python benchmarks/bench_quality.py --level 0.1 --steps 3000 --eval-every 1000
"""

from __future__ import annotations

import argparse
import shutil
import time

import lightning as L
import numpy as np

from common import OUTPUT, demo_split, mean_psnr, noisy_psnr, report
from photongap.config import override, preset
from photongap.model import GapModel
from photongap.training import train


class QualityCurve(L.Callback):
    """PSNR on held-out images every few steps or at given training minutes.

    The evaluations' own time is taken off the training clock.
    """

    def __init__(self, test, clean, precision: str, every: int | None = None, minutes: list[float] | None = None) -> None:
        self.test, self.clean, self.every, self.precision = test, clean, every, precision
        self.pending = sorted(minutes or [])
        self.started = time.monotonic()
        self.excluded = 0.0
        self.points: list[dict] = []

    def on_train_start(self, trainer, module) -> None:
        self.started = time.monotonic()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index) -> None:
        began = time.monotonic()
        minutes = (began - self.started - self.excluded) / 60
        due_by_step = self.every is not None and trainer.global_step % self.every == 0
        due_by_time = bool(self.pending) and minutes >= self.pending[0]
        while self.pending and minutes >= self.pending[0]:
            self.pending.pop(0)
        if self.every is None and not self.pending:
            trainer.should_stop = True  # the last evaluation time has passed
        if not (due_by_step or due_by_time):
            return
        model = GapModel(module.inference_network, module.model_config)
        psnr = mean_psnr(model, self.test, self.clean, precision=self.precision, device=module.device)
        module.network.train()
        self.excluded += time.monotonic() - began
        self.points.append({"step": trainer.global_step, "minutes": round(minutes, 3), "psnr": round(psnr, 2)})
        print(f"  step {trainer.global_step:5d}  {minutes:6.2f} min  {psnr:6.2f} dB", flush=True)


BRIGHTEST = 0.025
"""Share of each image's pixels, the brightest of its denoised version, that :func:`brightest_ratio` reads."""


def brightest_ratio(model: GapModel, test, clean, precision: str) -> float:
    """Mean over the images of ``mean(denoised) / mean(clean)`` over the brightest :data:`BRIGHTEST` of the denoised pixels.

    1 for an exact MMSE estimate whatever its noise: the pixels are chosen by a function of
    the data, and the posterior mean is the truth's mean given the data. Above 1: the model
    makes its brightest structures too bright.
    """
    ratios = []
    for counts, truth in zip(test, clean):
        denoised = model.denoise(counts, precision=precision)
        top = denoised >= np.quantile(denoised, 1 - BRIGHTEST)
        ratios.append(float(denoised[top].mean() / truth[top].mean()))
    return float(np.mean(ratios))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--level", type=float, default=1.0, help="photons per pixel")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--minutes", type=float, default=None, help="time limit (the schedule anneals by it)")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model_config, train_config = preset(args.preset)
    train_config = override(train_config, steps=args.steps, time_limit_minutes=args.minutes, seed=args.seed, val_fraction=0.0)
    train_images, test, clean = demo_split(args.level)
    name = f"quality_{args.preset}_{args.level:g}ppx_{args.steps}"
    run_dir = OUTPUT / "models" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    curve = QualityCurve(test, clean, train_config.precision, every=args.eval_every)
    started = time.monotonic()
    result = train(train_images, run_dir, model_config=model_config, train_config=train_config, progress=False, callbacks=[curve])
    wall = time.monotonic() - started - curve.excluded
    model = GapModel.load(result.model_path)
    final = mean_psnr(model, test, clean, precision=train_config.precision)
    report(
        name,
        {
            "preset": args.preset,
            "photons_per_pixel": args.level,
            "steps": result.steps,
            "train_minutes": round(wall / 60, 2),
            "seconds_per_step": round(wall / max(result.steps, 1), 3),
            "psnr_noisy": round(noisy_psnr(test, clean), 2),
            "psnr": round(final, 2),
            "brightest_ratio": round(brightest_ratio(model, test, clean, train_config.precision), 3),
            "curve": curve.points,
        },
    )


if __name__ == "__main__":
    main()
