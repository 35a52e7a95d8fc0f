"""The Generate widget: new images from an empty canvas, photon by photon (see ``photongap generate``)."""

from __future__ import annotations

import math
from typing import Any

import napari
import napari.viewer
from qtpy.QtWidgets import QDoubleSpinBox, QSpinBox

from photongap.napari.forms import JobWidget, ModelField, device_choice
from photongap.napari.sample import level_db


class GenerateWidget(JobWidget):
    """``n`` images of a size accumulated from zero photons to a target pseudo-PSNR: layer ``generated [photongap]``.

    Needs a model trained with the ``generative`` preset: it has seen nearly empty inputs.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        from photongap.schedule import DEFAULT_TARGET_PSNR

        super().__init__(viewer, "Generate")
        self.model = ModelField()
        self.form.addRow("model", self.model)
        self.n, self.height, self.width, self.seed = QSpinBox(), QSpinBox(), QSpinBox(), QSpinBox()
        for box, low, high, value in ((self.n, 1, 256, 4), (self.height, 8, 8192, 256), (self.width, 8, 8192, 256), (self.seed, 0, 2**31 - 1, 0)):
            box.setRange(low, high)
            box.setValue(value)
        self.target = QDoubleSpinBox()
        self.target.setRange(-40.0, 40.0)
        self.target.setValue(DEFAULT_TARGET_PSNR)
        self.target.setSuffix(" dB")
        self.target.setToolTip("Stop at this pseudo-PSNR of the accumulated photons (20 dB: 100 photons/px)")
        for label, box in (("images", self.n), ("height (px)", self.height), ("width (px)", self.width), ("target", self.target), ("seed", self.seed)):
            self.form.addRow(label, box)
        self.device = device_choice()
        self.form.addRow("device", self.device)

    def prepare(self):
        model_path = self.model.required()
        n, shape, target, seed = self.n.value(), (self.height.value(), self.width.value()), self.target.value(), self.seed.value()
        device = self.device.currentText()
        start = level_db(1.0 / math.prod(shape))

        def work(report, cancel) -> Any:
            from photongap.model import GapModel

            report((None, "reading the model…"))
            model = GapModel.load(model_path)

            def on_step(state: Any) -> None:
                cancel.check()
                level = float(state.photons_per_pixel.min())
                report(((level_db(level) - start) / (target - start), f"generating: step {state.step}, {level:.3g} / {10 ** (target / 10):.3g} photons/px"))

            return model.generate(n, shape, target_psnr=target, seed=seed, device=device, on_step=on_step).samples

        def add(samples: Any) -> None:
            self.viewer.add_image(samples, name="generated [photongap]", axis_labels=("sample", "y", "x"))
            self.set_status(f"generated {n} images of {shape[0]} x {shape[1]} px at {target:g} dB")

        return work, add
