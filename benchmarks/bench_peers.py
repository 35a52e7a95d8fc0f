"""PSNR against training wall time: published GAP, photongap's default, and CAREamics' Noise2Void.

For each photon level, on the demo data (15 noisy training images, 8 held-out test images
with ground truth), all three are trained one after the other on this machine:

- ``paper``: photongap's ``--preset paper`` (the published configuration) for 600 steps;
- ``default``: photongap's default for ``--budget`` minutes (its schedule anneals to that);
- ``n2v``: CAREamics' default Noise2Void configuration (batch 16, 64 px patches) for the same
  budget, in the peers' virtual environment (``make bench-peers`` builds it).

Each is evaluated on the test images at the same training wall times (evaluation excluded
from the clock); the intermediate points of a run come from that one run, so they are not
annealed to their own budget, which is conservative for photongap's default. PSNR is computed
by the same function for all three. Writes ``bench-output/peers_LEVELppx.json`` and a plot.

    .venv/bin/python benchmarks/bench_peers.py --level 1 --budget 20
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from bench_quality import QualityCurve
from common import OUTPUT, demo_split, mean_psnr, noisy_psnr, report
from photongap.config import override, preset
from photongap.model import GapModel
from photongap.sample_data import psnr
from photongap.training import train

ROOT = Path(__file__).resolve().parents[1]
PEERS_PYTHON = ROOT / ".peers-venv" / "bin" / "python"
Split = tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], float]  # noisy train, noisy test, clean test, photons/px
EVAL_MINUTES = [0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60]


def gap_curve(name: str, data: Split, minutes: list[float], steps: int | None, budget: float | None) -> dict:
    """Train a photongap preset and evaluate it at the given wall times and at the end."""
    model_config, train_config = preset(name)
    train_config = override(train_config, steps=steps or 1_000_000, time_limit_minutes=budget, val_fraction=0.0)
    train_images, test, clean, level = data
    run_dir = OUTPUT / "models" / f"peers_{name}_{level:g}ppx"
    shutil.rmtree(run_dir, ignore_errors=True)
    curve = QualityCurve(test, clean, train_config.precision, every=100 if steps else None, minutes=minutes)
    began = time.monotonic()
    result = train(train_images, run_dir, model_config=model_config, train_config=train_config, progress=False, callbacks=[curve])
    wall = (time.monotonic() - began - curve.excluded) / 60
    model = GapModel.load(result.model_path)
    final = mean_psnr(model, test, clean, precision=train_config.precision)
    points = sorted(curve.points + [{"step": result.steps, "minutes": round(wall, 3), "psnr": round(final, 2)}], key=lambda p: p["minutes"])
    return {"steps": result.steps, "minutes": round(wall, 2), "psnr": round(final, 2), "curve": points}


def n2v_curve(data: Split, minutes: list[float]) -> dict:
    """Train CAREamics' Noise2Void in its own environment; score its predictions here."""
    if not PEERS_PYTHON.exists():
        raise SystemExit("the peers' environment is missing: run `make bench-peers` (it builds .peers-venv)")
    train_images, test, clean, level = data
    work = OUTPUT / "peers"
    work.mkdir(parents=True, exist_ok=True)
    arrays = work / f"data_{level:g}ppx.npz"
    predictions = work / f"n2v_{level:g}ppx.npz"
    np.savez(arrays, **{f"train_{i:02d}": a for i, a in enumerate(train_images)}, **{f"test_{i:02d}": a for i, a in enumerate(test)})
    command = [str(PEERS_PYTHON), str(ROOT / "benchmarks" / "peers" / "n2v_curve.py"), str(arrays), str(predictions), "--minutes", *map(str, minutes)]
    subprocess.run(command, check=True)
    saved = np.load(predictions)
    points = []
    for index, point in enumerate(json.loads(str(saved["points"]))):
        value = float(np.mean([psnr(c, saved[f"pred_{index}_{i}"]) for i, c in enumerate(clean)]))
        points.append({**point, "psnr": round(value, 2)})
    return {"steps": points[-1]["step"], "minutes": points[-1]["minutes"], "psnr": points[-1]["psnr"], "curve": points}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    labels = {"paper": "GAP, published configuration", "default": "photongap default", "n2v": "Noise2Void (CAREamics)"}
    for key, label in labels.items():
        if key in results:
            curve = results[key]["curve"]
            axes.plot([p["minutes"] for p in curve], [p["psnr"] for p in curve], "o-", label=label, markersize=3)
    axes.axhline(results["psnr_noisy"], color="grey", linestyle=":", label="noisy input")
    axes.set_xlabel("training wall time (min, this CPU)")
    axes.set_ylabel("PSNR on held-out images (dB)")
    axes.set_title(f"{results['photons_per_pixel']:g} photons/px")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--level", type=float, default=1.0, help="photons per pixel")
    parser.add_argument("--budget", type=float, default=20.0, help="minutes for the default and for Noise2Void")
    parser.add_argument("--only", nargs="+", choices=["paper", "default", "n2v"], default=["paper", "default", "n2v"])
    args = parser.parse_args()

    minutes = [m for m in EVAL_MINUTES if m < args.budget] + [args.budget]
    train_images, test, clean = demo_split(args.level)
    data = (train_images, test, clean, args.level)
    results: dict = {"photons_per_pixel": args.level, "budget_minutes": args.budget, "psnr_noisy": round(noisy_psnr(test, clean), 2)}
    name = f"peers_{args.level:g}ppx"
    previous = OUTPUT / f"{name}.json"
    OUTPUT.mkdir(exist_ok=True)
    if previous.exists() and set(args.only) != {"paper", "default", "n2v"}:
        results = {**json.loads(previous.read_text()), **results}  # fill in the other methods from an earlier run
    for method in args.only:
        print(f"--- {method} at {args.level:g} photons/px", flush=True)
        if method == "paper":
            results["paper"] = gap_curve("paper", data, [m for m in minutes if m <= 10], steps=600, budget=None)
        elif method == "default":
            results["default"] = gap_curve("default", data, minutes, steps=None, budget=args.budget)
        else:
            results["n2v"] = n2v_curve(data, minutes)
        previous.write_text(json.dumps(results, indent=2))  # keep what is done if a later method fails
    plot(results, OUTPUT / f"{name}.png")
    report(name, results)


if __name__ == "__main__":
    main()
