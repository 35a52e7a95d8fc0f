"""The Train widget: a GAP model from image layers (or a folder of images), with a live loss curve.

It calls :func:`photongap.training.train` like ``photongap train`` does, in a worker thread.
Cancel stops after the current step and still writes ``model.pt`` (see :mod:`.live_training`);
the new model is offered to the other photongap widgets.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import napari
import napari.viewer
from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QSpinBox

from photongap.config import PRESETS
from photongap.errors import PhotongapError
from photongap.napari.forms import CameraFields, JobWidget, LayerList, PathField, device_choice, trained_models
from photongap.napari.layers import layer_counts
from photongap.napari.loss_plot import LossPlot, TrainingReport

RUNS = Path("~/photongap-runs")
"""Where a run folder goes when none is given: ``RUNS/NAME-YYYYmmdd-HHMMSS``."""


def new_run_dir(name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "run"
    return RUNS.expanduser() / f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}"


def _theme_colours(viewer: napari.Viewer) -> tuple[str, str]:
    try:
        from napari.utils.theme import get_theme

        theme = get_theme(viewer.theme)
        return theme.background.as_hex(), theme.text.as_hex()
    except Exception:  # a theme without these colours: the dark default
        return "#262930", "#f0f1f2"


class TrainWidget(JobWidget):
    """Self-supervised training on the noisy images alone (see ``photongap train``)."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, "Train")
        self.layers = LayerList(viewer)
        self.folder = PathField("folder", placeholder="used instead of the layers if given")
        self.form.addRow("image layers", self.layers)
        self.form.addRow("or a folder", self.folder)
        self.camera = CameraFields(self.form)
        self.preset = QComboBox()
        self.preset.addItems(list(PRESETS))
        self.preset.setToolTip("default: denoising; generative: sampling and generation (every photon level); paper: the published method")
        self.minutes = QDoubleSpinBox()
        self.minutes.setRange(0.0, 24 * 60.0)
        self.minutes.setValue(5.0)
        self.minutes.setSuffix(" min")
        self.minutes.setToolTip("Stop after this time and save the model as if done (0: no limit)")
        self.steps = QSpinBox()
        self.steps.setRange(1, 10_000_000)
        self.steps.setValue(PRESETS["default"][1].steps)
        self.config = PathField("file", "YAML (*.yaml *.yml);;all files (*)", "optional: model and training sections")
        self.out = PathField("folder", placeholder=f"a new folder in {RUNS}")
        for label, field in (("preset", self.preset), ("time budget", self.minutes), ("steps", self.steps), ("config file", self.config), ("run folder", self.out)):
            self.form.addRow(label, field)
        self.device = device_choice()
        self.form.addRow("device", self.device)
        self.plot = LossPlot(*_theme_colours(viewer))
        self.body.addWidget(self.plot)
        self.model_path: Path | None = None

    def prepare(self):
        camera, folder, layers = self.camera.camera(), self.folder.path, self.layers.layers()
        if folder is None and not layers:
            raise PhotongapError("tick at least one image layer, or choose a folder of images, to train on")
        out = self.out.path or new_run_dir(folder.name if folder is not None else layers[0].name)
        preset, config, device = self.preset.currentText(), self.config.path, self.device.currentText()
        overrides = dict(steps=self.steps.value(), time_limit_minutes=self.minutes.value() or None)
        self.plot.clear()

        def work(report, cancel) -> Any:
            from photongap.napari.live_training import LiveTraining
            from photongap.training import run_config, train

            report((None, "reading the images…"))
            run = run_config(out, resume=False, preset_name=preset, config_file=config, model_config=None, train_config=None, overrides=overrides)
            if folder is not None:
                from photongap.io import find_images
                from photongap.pipeline import training_planes

                images, names = training_planes(find_images([folder]), None, camera)
            else:
                images, names = [], []
                for layer in layers:
                    counts = layer_counts(layer, camera)
                    if getattr(run.model, "dims", 2) != 2:  # a model of volumes trains on whole layers
                        images.append(counts.counts)
                        names.append(layer.name)
                        continue
                    for index, plane in counts.planes():
                        images.append(plane)
                        names.append(layer.name + (f" (plane {index})" if index else ""))
            live = LiveTraining(report, cancel, run.training.steps, run.training.time_limit_minutes)
            report((None, f"training on {len(images)} image(s) from {names[0]}{' …' if len(names) > 1 else ''}"))
            result = train(images, out, preset=preset, config_file=config, overrides=overrides, names=names, device=device, progress=False, callbacks=[live])
            return result, cancel.cancelled

        def done(outcome: tuple[Any, bool]) -> None:
            result, cancelled = outcome
            how = "stopped by Cancel" if cancelled else "stopped at the time limit" if result.stopped_early else "done"
            self.model_path = result.model_path
            self.set_status(f"{how}: {result.steps} steps in {result.elapsed_s / 60:.1f} min; model written to {result.model_path}")
            trained_models().trained.emit(str(result.model_path))

        return work, done

    def on_report(self, report: Any) -> None:
        if isinstance(report, TrainingReport):
            self.plot.add(report)
            self.set_progress(report.fraction)
            self.set_status(report.describe())
        else:
            super().on_report(report)

    def cancel(self) -> None:
        super().cancel()
        if self.job is not None:
            self.set_status("cancelling: finishing the current step, then writing model.pt…")
