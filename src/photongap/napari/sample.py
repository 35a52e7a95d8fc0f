"""The Sample posterior widget: n posterior samples of a layer, their mean and their std.

Three layers: ``NAME [samples]`` (a stack, samples first), ``NAME [mean]`` and ``NAME [std]``.
The std layer, the uncertainty map, is coloured with ``inferno``: near black where the samples
agree (trust the image there), through red to bright yellow where they disagree most. Its
contrast runs from 0 to the 99.5th percentile, so that a few extreme pixels do not dim the rest.
"""

from __future__ import annotations

import math
from typing import Any

import napari
import napari.viewer
import numpy as np
from qtpy.QtWidgets import QSpinBox

from photongap.config import DEFAULT_SAMPLE_TILE
from photongap.napari.forms import CameraFields, JobWidget, LayerChoice, ModelField, device_choice
from photongap.napari.layers import layer_counts, result_layer, with_axes

UNCERTAINTY_COLORMAP = "inferno"
"""Dark where the samples agree, bright where they do not."""


def level_db(photons_per_pixel: float) -> float:
    return 10 * math.log10(max(photons_per_pixel, 1e-12))


def sampling_target_db(model: Any, counts: np.ndarray) -> float:
    """Where the default sampler stops (dB), for the progress bar (see :meth:`GapModel.sample`)."""
    from photongap.sampling import StopRule
    from photongap.schedule import DEFAULT_TARGET_PSNR

    trained = model.trained_range()
    if trained is None:
        return DEFAULT_TARGET_PSNR
    return StopRule.above_trained(trained[1], level_db(float(counts.mean()))).target_psnr


class SampleWidget(JobWidget):
    """Diversity denoising of an image layer (see ``photongap sample``), plane by plane for a 2D model."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, "Sample")
        self.model, self.layer = ModelField(), LayerChoice(viewer)
        self.form.addRow("model", self.model)
        self.form.addRow("image layer", self.layer)
        self.camera = CameraFields(self.form)
        self.n = QSpinBox()
        self.n.setRange(1, 1024)
        self.n.setValue(8)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.form.addRow("samples", self.n)
        self.form.addRow("seed", self.seed)
        self.device = device_choice()
        self.form.addRow("device", self.device)

    def prepare(self):
        model_path, source, camera = self.model.required(), self.layer.layer(), self.camera.camera()
        n, seed, device = self.n.value(), self.seed.value(), self.device.currentText()

        def work(report, cancel) -> Any:
            from photongap.model import GapModel
            from photongap.pipeline import unresolved_gain_note

            report((None, "reading the model and the layer…"))
            model = GapModel.load(model_path)
            counts = layer_counts(source, camera)
            options = dict(seed=seed, device=device, tile=DEFAULT_SAMPLE_TILE)
            # A 2D model samples each (Y, X) plane; a model of volumes takes the layer whole, with its axes.
            volumes = getattr(model.config, "dims", 2) != 2
            parts = [((), counts.counts)] if volumes else counts.planes()
            samples = np.empty((n, *counts.counts.shape), dtype=np.float32)
            mean, std = np.empty_like(counts.counts), np.empty_like(counts.counts)
            unresolved = 0
            for number, (index, part) in enumerate(parts):
                start, target = level_db(float(part.mean())), sampling_target_db(model, part)
                where = f" plane {number + 1} / {len(parts)}" if len(parts) > 1 else ""

                def on_step(state: Any) -> None:
                    cancel.check()
                    level = float(state.photons_per_pixel.min())
                    within = min(max((level_db(level) - start) / max(target - start, 1e-9), 0.0), 1.0)
                    report(((number + within) / len(parts), f"sampling{where}: step {state.step}, {level:.3g} / {10 ** (target / 10):.3g} photons/px"))

                posterior = model.sample(part, n, on_step=on_step, **options, **(with_axes(model.sample, counts.axes) if volumes else {}))
                samples[(slice(None), *index)], mean[index], std[index] = posterior.samples, posterior.mean, posterior.std
                unresolved += posterior.gain_resolved is False
            samples, mean = camera.output(samples, "photons"), camera.output(mean, "photons")
            std = camera.output(std, "photons", spread=True)
            note = unresolved_gain_note(unresolved, len(parts), "volume" if volumes else "plane")
            return counts.to_layer(samples, leading=1), counts.to_layer(mean), counts.to_layer(std), f" Note: {note}." if note else ""

        def add(result: tuple[np.ndarray, np.ndarray, np.ndarray, str]) -> None:
            samples, mean, std, note = result
            colormap = source.colormap.name
            top = float(np.percentile(std, 99.5)) or 1.0
            for data, tag, options in (
                (samples, "samples", dict(colormap=colormap, leading="sample", visible=False)),
                (mean, "mean", dict(colormap=colormap)),
                (std, "std", dict(colormap=UNCERTAINTY_COLORMAP, contrast_limits=(0.0, top))),
            ):
                leading = options.pop("leading", None)
                layer, meta, _ = result_layer(source, data, tag, leading=leading, **options)
                self.viewer.add_image(layer, **meta)
            self.set_status(f"{n} samples of {source.name}: '{source.name} [std]' is the uncertainty ({UNCERTAINTY_COLORMAP}: dark = samples agree, bright = they differ).{note}")

        return work, add
