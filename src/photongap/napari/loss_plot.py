"""The Train widget's live loss curve: a small matplotlib canvas (Qt backend), redrawn a few times a second,
and :class:`TrainingReport`, what training reports to it (no Lightning here: the widget opens without it)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure

SMOOTHING = 0.9
"""Weight of the past in the exponential moving average drawn over the noisy per-step losses."""


@dataclass(frozen=True)
class TrainingReport:
    """Progress since the previous report: new ``(step, loss)`` points of the training and validation losses."""

    step: int
    steps: int
    elapsed_s: float
    time_limit_s: float | None
    train_losses: tuple[tuple[int, float], ...]
    val_losses: tuple[tuple[int, float], ...]
    phase: str = "training"

    @property
    def fraction(self) -> float:
        """How far the run is towards whichever ends it first: its steps or its time limit."""
        by_time = self.elapsed_s / self.time_limit_s if self.time_limit_s else 0.0
        return min(1.0, max(self.step / max(self.steps, 1), by_time))

    def describe(self) -> str:
        limit = f" of {self.time_limit_s / 60:.3g} min" if self.time_limit_s else ""
        last = f", loss {self.train_losses[-1][1]:.4f}" if self.train_losses else ""
        return f"{self.phase}: step {self.step} / {self.steps}, {self.elapsed_s / 60:.1f} min{limit}{last}"


class LossPlot(FigureCanvasQTAgg):
    """Training loss per step (faint), its moving average, and the validation loss (dots)."""

    def __init__(self, background: str = "#262930", foreground: str = "#f0f1f2", redraw_s: float = 0.3) -> None:
        figure = Figure(figsize=(3.6, 2.2), dpi=100, facecolor=background, layout="constrained")
        super().__init__(figure)
        self.setMinimumHeight(170)
        self.axes = figure.add_subplot(facecolor=background)
        for spine in self.axes.spines.values():
            spine.set_color(foreground)
        self.axes.tick_params(colors=foreground, labelsize=7)
        self.axes.set_xlabel("step", color=foreground, fontsize=8)
        self.axes.set_ylabel("photon loss", color=foreground, fontsize=8)
        (self.raw,) = self.axes.plot([], [], color="#7fa7d9", alpha=0.35, linewidth=0.8, label="train")
        (self.smooth,) = self.axes.plot([], [], color="#7fa7d9", linewidth=1.6, label="train (average)")
        (self.validation,) = self.axes.plot([], [], "o", color="#f2a65a", markersize=3.5, label="validation")
        self.axes.legend(fontsize=7, facecolor=background, labelcolor=foreground, edgecolor=foreground, loc="upper right")
        self.redraw_s, self.drawn = redraw_s, 0.0
        self.clear()

    def clear(self) -> None:
        self.steps, self.losses, self.averages = [], [], []
        self.val_steps, self.val_losses = [], []
        self._draw(force=True)

    def add(self, report: TrainingReport) -> None:
        for step, loss in report.train_losses:
            average = loss if not self.averages else SMOOTHING * self.averages[-1] + (1 - SMOOTHING) * loss
            self.steps.append(step)
            self.losses.append(loss)
            self.averages.append(average)
        for step, loss in report.val_losses:
            self.val_steps.append(step)
            self.val_losses.append(loss)
        self._draw(force=report.phase != "training")

    def _draw(self, force: bool = False) -> None:
        if not force and time.monotonic() - self.drawn < self.redraw_s:
            return
        self.raw.set_data(self.steps, self.losses)
        self.smooth.set_data(self.steps, self.averages)
        self.validation.set_data(self.val_steps, self.val_losses)
        if self.steps:
            # The first steps' loss is far above the rest: scale to the later ones so that progress stays visible.
            recent = self.losses[len(self.losses) // 10:] + self.val_losses
            low, high = min(recent), max(recent)
            pad = 0.05 * (high - low or abs(high) or 1.0)
            self.axes.set_xlim(0, max(self.steps[-1], 1))
            self.axes.set_ylim(low - pad, high + pad)
        self.drawn = time.monotonic()
        self.draw_idle()
