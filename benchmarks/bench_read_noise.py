"""The PSNR cost of camera read noise, and what shifting by its variance recovers.

Simulated sCMOS frames of the demo data at 2 photons/px on average, gain 2 ADU/photon,
offset 100 ADU: ``adu = round(2 * Poisson(lambda) + 100 + Normal(0, sigma_ADU**2))``
(:func:`photongap.calibration.simulate_camera`). Read noise is given *ADU-equivalent*, by
which this script means in photon units: ``s = sigma_ADU / gain`` (so ``--read-noise 2``
simulates ``sigma_ADU = 4`` ADU at gain 2).

For each read noise, training and test frames are converted to counts

- plainly: ``round((adu - offset) / gain)`` (``Camera(gain, offset)``), which leaves the
  Gaussian noise in data that GAP models as Poisson;
- shifted: ``round((adu - offset) / gain + s**2)`` (``Camera(gain, offset, read_noise)``),
  approximately ``Poisson(lambda + s**2)``; the MMSE output then has ``s**2`` subtracted,
  as :func:`photongap.pipeline.denoise_file` does;

a small model is trained on each converted training set, and the 8 held-out test images are
denoised. PSNR is against the clean ``lambda`` in photon units. Without read noise both
conversions are the same, so one model serves both (7 models for the default settings).

    .venv/bin/python benchmarks/bench_read_noise.py
    .venv/bin/python benchmarks/bench_read_noise.py --steps 150 --read-noise 0 2
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time

import numpy as np
import torch

from common import OUTPUT, report
from photongap.calibration import simulate_camera
from photongap.config import ModelConfig, TrainConfig
from photongap.model import GapModel
from photongap.camera import Camera, CountsView
from photongap.sample_data import clean_at_level, load_sample_data, psnr
from photongap.training import train

GAIN = 2.0
OFFSET = 100.0
PHOTONS_PER_PIXEL = 2.0


def camera_frames(clean: list[np.ndarray], read_noise_photons: float, seed: int) -> list[np.ndarray]:
    """One uint16 camera frame per clean image, read noise given in photon units."""
    rng = np.random.default_rng(seed)
    sigma_adu = read_noise_photons * GAIN
    return [simulate_camera(image, gain=GAIN, offset=OFFSET, read_noise=sigma_adu, n_frames=None, generator=rng) for image in clean]


def to_counts(frames: list[np.ndarray], camera: Camera) -> list[np.ndarray]:
    """Counts as the pipeline reads them (shifted when the camera has read noise)."""
    return [CountsView(frame, camera, f"frame {i}")[:, :] for i, frame in enumerate(frames)]


def denoised_psnr(model: GapModel, counts: list[np.ndarray], clean: list[np.ndarray], camera: Camera, precision: str) -> float:
    """Mean PSNR of the MMSE estimates, the camera's shift subtracted as denoise_file does."""
    return statistics.fmean(psnr(c, model.denoise(x, precision=precision) - camera.shift) for x, c in zip(counts, clean))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps per model")
    parser.add_argument("--read-noise", type=float, nargs="+", default=[0.0, 0.5, 2.0, 5.0], help="read noise in photon units (sigma_ADU / gain)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # Small tensors on a small shared machine: more threads only add contention.
    torch.set_num_threads(1)

    model_config = ModelConfig(depth=4, start_filters=16)
    train_config = TrainConfig(steps=args.steps, batch_size=16, patch_size=64, val_fraction=0.0, seed=args.seed)
    data = load_sample_data()
    clean_train = [clean_at_level(image, PHOTONS_PER_PIXEL) for image in data.train]
    clean_test = [clean_at_level(image, PHOTONS_PER_PIXEL) for image in data.test]
    started = time.monotonic()
    rows = []
    for read_noise in args.read_noise:
        train_frames = camera_frames(clean_train, read_noise, args.seed)
        test_frames = camera_frames(clean_test, read_noise, args.seed + 1)
        plain_camera = Camera(GAIN, OFFSET)
        row = {
            "read_noise_photons": read_noise,
            "read_noise_adu": read_noise * GAIN,
            "shift_photons": read_noise**2,
            "psnr_noisy": statistics.fmean(psnr(c, x) for x, c in zip(to_counts(test_frames, plain_camera), clean_test)),
        }
        cameras = {"plain": plain_camera, "shifted": Camera(GAIN, OFFSET, read_noise * GAIN)}
        for method, camera in cameras.items():
            if method == "shifted" and not camera.shift:
                row["psnr_shifted"] = row["psnr_plain"]  # no read noise: the same conversion and model
                continue
            run_dir = OUTPUT / "models" / f"read_noise_{read_noise:g}_{method}_{args.steps}"
            shutil.rmtree(run_dir, ignore_errors=True)
            result = train(to_counts(train_frames, camera), run_dir, model_config=model_config, train_config=train_config, progress=False)
            model = GapModel.load(result.model_path)
            row[f"psnr_{method}"] = denoised_psnr(model, to_counts(test_frames, camera), clean_test, camera, train_config.precision)
            print(f"  read noise {read_noise:g} photons, {method}: {row[f'psnr_{method}']:.2f} dB ({(time.monotonic() - started) / 60:.1f} min so far)", flush=True)
        rows.append({key: round(value, 3) for key, value in row.items()})

    print(f"\n{'read noise (photons)':>20} {'(ADU)':>6} {'noisy':>7} {'plain':>7} {'shifted':>8} {'diff':>6}")
    for row in rows:
        print(
            f"{row['read_noise_photons']:20g} {row['read_noise_adu']:6g} {row['psnr_noisy']:7.2f} {row['psnr_plain']:7.2f} "
            f"{row['psnr_shifted']:8.2f} {row['psnr_shifted'] - row['psnr_plain']:+6.2f}"
        )
    report(
        "read_noise",
        {
            "photons_per_pixel": PHOTONS_PER_PIXEL,
            "gain_adu_per_photon": GAIN,
            "offset_adu": OFFSET,
            "model": {"depth": model_config.depth, "start_filters": model_config.start_filters},
            "steps": args.steps,
            "minutes": round((time.monotonic() - started) / 60, 1),
            "results": rows,
        },
    )


if __name__ == "__main__":
    main()
