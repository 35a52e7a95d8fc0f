"""The Denoise widget: a model file and an image layer give ``NAME [photongap]``, the MMSE estimate."""

from __future__ import annotations

from typing import Any

import numpy as np
import napari
import napari.viewer
from qtpy.QtWidgets import QSpinBox

from photongap.config import DEFAULT_TILE
from photongap.errors import PhotongapError
from photongap.io import volume_axis
from photongap.napari.forms import CameraFields, JobWidget, LayerChoice, ModelField, device_choice
from photongap.napari.layers import layer_counts, result_layer, with_axes


class DenoiseWidget(JobWidget):
    """MMSE denoising of an image layer, in the photon units of its exposure (see ``photongap denoise``).

    Stacks are denoised plane by plane by a 2D model; a model of volumes receives the layer's
    data with its axes. The result keeps the layer's scale, translate, axis labels and units.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, "Denoise")
        self.model, self.layer = ModelField(), LayerChoice(viewer)
        self.form.addRow("model", self.model)
        self.form.addRow("image layer", self.layer)
        self.camera = CameraFields(self.form)
        self.tile = QSpinBox()
        self.tile.setRange(0, 1 << 16)
        self.tile.setValue(DEFAULT_TILE)
        self.tile.setToolTip("Tile side in pixels (0: whole planes); tiles keep the network's receptive field, so results do not depend on it")
        self.form.addRow("tile (px)", self.tile)
        self.device = device_choice()
        self.form.addRow("device", self.device)

    def prepare(self):
        model_path, source, camera = self.model.required(), self.layer.layer(), self.camera.camera()
        tile, device = self.tile.value() or None, self.device.currentText()

        def work(report, cancel) -> Any:
            from photongap.model import GapModel

            report((None, "reading the model and the layer…"))
            model = GapModel.load(model_path)
            counts = layer_counts(source, camera)
            dims = model.config.dims
            if dims == 3:
                # A volume runs along Z, else T (as for files); the layer's layout has that axis third from last.
                depth = volume_axis(counts.axes)
                if depth is None or counts.axes[-3] != depth:
                    raise PhotongapError(f"a 3D model needs a layer with a Z or T axis just before Y and X, got axes {counts.axes}")
            units = int(np.prod(counts.counts.shape[:-dims], dtype=np.int64))
            total = units * model.tiles_per_plane(counts.counts.shape[-dims:], tile)
            done = 0

            def progress(finished: int) -> None:
                nonlocal done
                cancel.check()
                done += finished
                report((done / total, f"denoising {source.name}: {done} / {total} tiles"))

            denoised = model.denoise(counts.counts, tile=tile, device=device, progress=progress, **with_axes(model.denoise, counts.axes))
            return counts.to_layer(camera.output(denoised, "photons"))

        def add(data: Any) -> None:
            result, meta, _ = result_layer(source, data, "photongap", colormap=source.colormap.name)
            self.viewer.add_image(result, **meta)
            self.set_status(f"denoised {source.name} into '{meta['name']}' (photons per pixel at its exposure)")

        return work, add
