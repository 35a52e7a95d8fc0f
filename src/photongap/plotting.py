"""Figures for people: loss curves and side-by-side comparisons (matplotlib, no display)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from photongap.io import atomic_output

if TYPE_CHECKING:
    from photongap.calibration import Calibration, PhotonTransfer
    from photongap.posterior_check import CalibrationCheck


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


def plot_photon_transfer(ptc: PhotonTransfer, calibration: Calibration, path: str | Path) -> None:
    """PNG of the photon transfer curve: binned variance against mean, the fitted line, the values.

    Bins in ``ptc.used`` are drawn as dots, rejected ones as red crosses; pass
    ``fit_photon_transfer(ptc).photon_transfer`` to show what the fit kept.
    """
    figure = Figure(figsize=(7.0, 5.0), dpi=120, layout="constrained")
    axes = figure.add_subplot()
    for mask, style, label in ((ptc.used, {"fmt": "o", "color": "C0"}, "used"), (~ptc.used, {"fmt": "x", "color": "C3"}, "rejected")):
        if mask.any():
            axes.errorbar(
                ptc.mean[mask], ptc.variance[mask], yerr=ptc.variance_error[mask], ms=4, capsize=2, label=f"{label} ({mask.sum()} bins)", **style
            )
    line = np.linspace(min(calibration.offset, ptc.mean.min()), ptc.mean.max(), 200)
    model = calibration.gain * (line - calibration.offset) + calibration.read_noise**2
    axes.plot(line, model, "k-", label="gain·(mean − offset) + read noise²")
    axes.axvline(calibration.offset, color="0.6", linestyle=":", label="offset")
    if calibration.read_noise_upper is None:
        read_noise = f"= {calibration.read_noise:.3g} ± {calibration.read_noise_uncertainty:.2g} ADU"
    else:
        read_noise = f"< {calibration.read_noise_upper:.3g} ADU (unresolved, best guess {calibration.read_noise:.3g})"
    text = (
        f"gain       = {calibration.gain:.4g} ± {calibration.gain_uncertainty:.2g} ADU/photon\n"
        f"offset     = {calibration.offset:.2f} ± {calibration.offset_uncertainty:.2g} ADU\n"
        f"read noise {read_noise}\n"
        f"method: {calibration.method}, read noise from {calibration.details.get('read_noise_source', 'dark frames')}"
    )
    box = {"boxstyle": "round", "facecolor": "white", "alpha": 0.9}
    axes.text(0.02, 0.98, text, transform=axes.transAxes, va="top", ha="left", family="monospace", fontsize=9, bbox=box)
    axes.set_xlabel("mean signal (ADU)")
    axes.set_ylabel("noise variance (ADU²)")
    axes.set_title("Photon transfer curve")
    axes.legend(loc="lower right", fontsize=8)
    _save(figure, Path(path))


def plot_assessment(report: dict, path: str | Path) -> None:
    """Held-out MSE against split fraction per image, with the extrapolated full-exposure estimate (``photongap assess``)."""
    figure = Figure(figsize=(6.4, 4.0))
    axes = figure.add_subplot()
    for number, image in enumerate(report["images"]):
        colour = f"C{number % 10}"
        axes.plot(image["fractions"], image["mse_at_fraction"], "o", color=colour, markersize=4)
        axes.errorbar([1.0], [image["mse"]], yerr=[image["mse_std"]], fmt="*", color=colour, markersize=9, capsize=3,
                      label=f"{Path(image['path']).name}: {image['psnr']:.1f} dB" + (" (trained on)" if image.get("trained_on") else ""))
    axes.set_xlabel("split fraction p (input share of the photons)")
    axes.set_ylabel("held-out MSE (photons² / px, full exposure)")
    axes.set_title("Estimated error of the denoised images (★: full exposure, extrapolated)", fontsize=10)
    axes.grid(alpha=0.3)
    if len(report["images"]) <= 12:
        axes.legend(fontsize=7)
    _save(figure, Path(path))


def plot_exposure_plan(plan: dict, path: str | Path) -> None:
    """Estimated PSNR of denoised and noisy images against light dose, with the recommendation (``photongap plan-exposure``)."""
    points = sorted(plan["fractions"], key=lambda point: point["fraction"])
    fraction = np.array([point["fraction"] for point in points])
    figure = Figure(figsize=(6.4, 4.2))
    axes = figure.add_subplot()
    psnr = np.array([point["psnr"] for point in points])
    # PSNR error bars from the MSE's: d(PSNR) = 10 / ln(10) * d(MSE) / MSE.
    error = np.array([10 / np.log(10) * point["mse_std"] / point["mse"] if point["mse"] > 0 else np.nan for point in points])
    axes.errorbar(fraction, psnr, yerr=error, fmt="o-", capsize=3, label="denoised (estimated from held-out photons)")
    axes.plot(fraction, [point["noisy_psnr"] for point in points], "s--", color="0.5", label="noisy input")
    axes.set_xscale("log")
    axes.set_xticks(fraction, [f"{value:g}" for value in fraction])
    axes.set_xlabel("light dose (fraction of the acquired photons)")
    axes.set_ylabel("PSNR (dB, at the full exposure)")
    axes.set_title(plan.get("recommendation", ""), fontsize=8, wrap=True)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    _save(figure, Path(path))


def plot_calibration_check(checks: Sequence[tuple[str, CalibrationCheck]], path: str | Path, pooled: tuple[str, CalibrationCheck] | None = None) -> None:
    """Reliability diagram of ``photongap sample --check``: the implied coverage of each bin of predicted variance.

    A thin line per named check (plane, volume, image) and a thick one with each bin's standard
    error for the named ``pooled`` check (:func:`photongap.posterior_check.pooled_check`), or for
    the only check. Bins of calibrated samples lie in the band
    around the nominal coverage; too wide, above it; too narrow, below it. A bin's reading is its
    error-to-spread ratio put as a Gaussian's coverage: it says whether the samples' variance is
    right there, not their shape (docs/known-limits.md).
    """
    from photongap.posterior_check import CHECK_RESOLUTION

    named = [pooled] if pooled is not None else list(checks[:1]) if len(checks) == 1 else []
    figure = Figure(figsize=(8.6, 4.4))
    axes = figure.add_subplot()
    nominal, band = 100 * checks[0][1].nominal, 100 * CHECK_RESOLUTION
    axes.axhspan(nominal - band, nominal + band, color="0.9", zorder=0, label=f"calibrated: {nominal:.0f}% ± {band:.0f} points")
    axes.axhline(nominal, color="0.5", linewidth=1, zorder=1)
    bins = np.arange(1, len(checks[0][1].per_bin) + 1)

    def label(name: str, check: CalibrationCheck) -> str:
        return f"{name}: {check.implied_coverage:.0%} ± {check.standard_error:.0%}" + ("" if check.conclusive else ", inconclusive")

    if len(checks) > 1:
        few = len(checks) <= 8
        for number, (name, check) in enumerate(checks):
            axes.plot(bins, 100 * np.asarray(check.per_bin), "-", color=f"C{number}" if few else "0.65", linewidth=1, alpha=0.8, label=label(name, check) if few else None)
    for name, check in named:
        error = 100 * np.asarray(check.per_bin_standard_error) if check.per_bin_standard_error else None
        axes.errorbar(bins, 100 * np.asarray(check.per_bin), yerr=error, fmt="o-", color="k", linewidth=2, markersize=4, capsize=3, label=label(name, check))
    low = min([min(check.per_bin) for _, check in checks] + [min(np.subtract(check.per_bin, check.per_bin_standard_error or 0.0)) for _, check in named])
    axes.set_xticks(bins)
    axes.set_ylim(min(50.0, 10 * np.floor(10 * low)) - 3, 103)
    axes.set_xlabel("bin of the samples' predicted variance (tenths of the pixels, lowest first)")
    axes.set_ylabel(f"coverage of the central {nominal:.0f}% implied\nby the held-out error / the spread (%)")
    axes.set_title("Held-out photons' check of the samples' spread: above the band too wide, below too narrow", fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(figure, Path(path))
