"""Figures for people: loss curves and side-by-side comparisons (matplotlib, no display)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from photongap.io import atomic_output


def _save(figure: Figure, path: Path) -> None:
    """Render whole or not at all (:func:`photongap.io.atomic_output`)."""
    FigureCanvasAgg(figure)
    with atomic_output(path) as partial:
        figure.savefig(partial, dpi=110, bbox_inches="tight")


def plot_losses(rows: Sequence[dict[str, str]], path: str | Path) -> None:
    """Training and validation photon loss against step, from ``metrics.csv`` rows."""
    figure = Figure(figsize=(6, 3.6))
    axes = figure.add_subplot()
    for key, style, label in (("train_loss", "-", "training"), ("val_loss", "o-", "validation")):
        points = [(int(row["step"]), float(row[key])) for row in rows if row.get(key)]
        if points:
            steps, values = zip(*points)
            axes.plot(steps, values, style, label=label, markersize=3)
    axes.set_xlabel("step")
    axes.set_ylabel("photon loss (nats per photon)")
    axes.grid(alpha=0.3)
    if axes.lines:
        axes.legend()
    _save(figure, Path(path))


def display_range(image: np.ndarray) -> tuple[float, float]:
    """Robust display limits: the 0.5th and 99.5th percentiles."""
    low, high = np.percentile(image, [0.5, 99.5])
    return float(low), float(max(high, low + 1e-6))


def plot_comparison(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str], path: str | Path, reference_column: int = -1) -> None:
    """A grid of images, one row per example, columns sharing the reference column's display range."""
    figure = Figure(figsize=(3 * len(titles), 3 * len(rows)))
    for r, row in enumerate(rows):
        low, high = display_range(row[reference_column])
        for c, image in enumerate(row):
            axes = figure.add_subplot(len(rows), len(titles), r * len(titles) + c + 1)
            axes.imshow(image, cmap="magma", vmin=low, vmax=high, interpolation="nearest")
            axes.set_xticks([])
            axes.set_yticks([])
            if r == 0:
                axes.set_title(titles[c])
    figure.tight_layout()
    _save(figure, Path(path))
