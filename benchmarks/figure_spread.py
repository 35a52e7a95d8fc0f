"""Where the samples spread, against where the error is: the gain map read from 3 px and from 6 px lattices.

One held-out image of the demo data (or the Hubble deep field) at ``--level`` photons/px, the
default-preset model trained 600 steps (``common.default_model``): the noisy counts, the truth,
the MMSE's error (root of its square averaged over 5 x 5 px), and the standard deviation of 16
posterior samples with the gain map read from lattices 3 px apart at every pixel and averaged
over 3 x 3 px (the earlier default) and from lattices 6 px apart on a 2 px grid averaged over
5 x 5 px (the default, ``photongap.robbins``). The error and the two spreads share one
logarithmic colour scale; each spread is titled with its samples' coverage of the truth (central
80%).

    .venv/bin/python benchmarks/figure_spread.py --data demo --level 0.1 --image 2 -o docs/spread.png
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

import photongap.sampling.gain as gain_module
from bench_sampling import HUBBLE, rank_coverage_80, test_images
from common import default_model
from photongap.posterior import local_mean
from photongap.robbins import ROBBINS_WINDOW, robbins_gain_map, robbins_lattice
from photongap.sample_data import clean_at_level

LATTICES = {"3 px lattices, every pixel, 3 px box\n(earlier default)": (((3, 3), (1, 1)), 3), "6 px lattices, 2 px grid, 5 px box\n(default)": (robbins_lattice(2), ROBBINS_WINDOW)}
"""The gain map's probe lattice and read grid, and the box its readings are averaged over."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["demo", "hubble"], default="demo")
    parser.add_argument("--level", type=float, default=0.1)
    parser.add_argument("--image", type=int, default=2, help="index of the held-out image")
    parser.add_argument("-o", "--output", default="docs/spread.png")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = default_model(args.data, args.level)
    clean = clean_at_level(test_images(args.data, Path(HUBBLE), 8 if args.data == "demo" else 4)[args.image], args.level)
    counts = np.random.default_rng(7).poisson(clean).astype(np.float32)
    mmse = model.denoise(counts, device="cpu")
    error = np.sqrt(local_mean(torch.from_numpy((mmse - clean).astype(np.float64) ** 2)[None, None], 5)[0, 0].numpy())
    spreads = {}
    for title, (lattice, window) in LATTICES.items():
        gain_module.robbins_lattice = lambda dims, lattice=lattice: lattice
        gain_module.robbins_gain_map = functools.partial(robbins_gain_map, window=window)
        samples = model.sample(counts, 16, seed=7, device="cpu").samples
        spreads[title] = (samples.std(axis=0, ddof=1), rank_coverage_80(samples, clean, np.random.default_rng(0)))
    values = np.concatenate([error.ravel(), *(std.ravel() for std, _ in spreads.values())])
    low, top = (float(v) for v in np.percentile(values[values > 0], [1, 99.5]))
    panels = [(f"noisy ({args.level:g} photons/px)", counts, None), ("truth", clean, None), ("MMSE's error\n(rms over 5 x 5 px)", error, top)]
    panels += [(f"samples' sd, {title}\ntruth inside their 80%: {coverage:.1%}", std, top) for title, (std, coverage) in spreads.items()]
    figure = Figure(figsize=(3.0 * len(panels) + 1, 3.8), layout="constrained")
    for index, (title, image, high) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        if high is None:
            axes.imshow(image, cmap="magma", vmin=0, vmax=float(np.percentile(clean, 99.5)), interpolation="nearest")
        else:
            shown = axes.imshow(np.clip(image, low, high), cmap="viridis", norm=LogNorm(low, high), interpolation="nearest")
        axes.set_title(title, fontsize=8)
        axes.set_xticks([])
        axes.set_yticks([])
    figure.colorbar(shown, ax=figure.axes[2:], shrink=0.8, label="photons (log scale)")
    figure.suptitle(f"{args.data} held-out image {args.image}: the error and the samples' spread on one colour scale", fontsize=9)
    FigureCanvasAgg(figure)
    figure.savefig(args.output, dpi=100)
    print(args.output, {title.split(chr(10))[0]: round(coverage, 3) for title, (_, coverage) in spreads.items()})


if __name__ == "__main__":
    main()
