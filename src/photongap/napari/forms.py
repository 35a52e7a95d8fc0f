"""The parts the widgets share: file fields, layer choices, the camera, and the run panel.

:class:`JobWidget` is the frame of every photongap dock widget: a form above a Run / Cancel
row, a progress bar and a one-line status, and at most one :class:`~.jobs.Job` at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import napari
import napari.layers
from napari.utils.notifications import show_error
from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import (
    QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QListWidget, QListWidgetItem, QProgressBar,
    QPushButton, QVBoxLayout, QWidget,
)

from photongap.camera import Camera
from photongap.errors import PhotongapError
from photongap.napari.jobs import CancelToken, Job


class _Models(QObject):
    trained = Signal(str)


_models: list[_Models] = []


def trained_models() -> _Models:
    """Where the Train widget announces a new model file, so that the other widgets offer it."""
    if not _models:
        _models.append(_Models())
    return _models[0]


class PathField(QWidget):
    """A path typed or browsed for: ``mode`` is ``"file"``, ``"folder"`` or ``"save-folder"``."""

    def __init__(self, mode: str = "file", filter: str = "", placeholder: str = "") -> None:
        super().__init__()
        self.mode, self.filter = mode, filter
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        browse = QPushButton("…")
        browse.setFixedWidth(28)
        browse.clicked.connect(self._browse)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit)
        row.addWidget(browse)

    def _browse(self) -> None:
        if self.mode == "file":
            path, _ = QFileDialog.getOpenFileName(self, "Choose a file", self.edit.text(), self.filter)
        else:
            path = QFileDialog.getExistingDirectory(self, "Choose a folder", self.edit.text())
        if path:
            self.edit.setText(path)

    @property
    def path(self) -> Path | None:
        text = self.edit.text().strip()
        return Path(text).expanduser() if text else None

    @path.setter
    def path(self, value: str | Path | None) -> None:
        self.edit.setText("" if value is None else str(value))


class ModelField(PathField):
    """A ``model.pt`` to use; filled with each newly trained model while it is empty."""

    def __init__(self) -> None:
        super().__init__("file", "photongap models (*.pt);;all files (*)", "model.pt from Train or photongap train")
        trained_models().trained.connect(self._offer)

    def _offer(self, path: str) -> None:
        if not self.edit.text().strip():
            self.edit.setText(path)

    def required(self) -> Path:
        if self.path is None:
            raise PhotongapError("choose a model file (model.pt, from Train or 'photongap train')")
        return self.path


def image_layers(viewer: napari.Viewer) -> list[napari.layers.Image]:
    return [layer for layer in viewer.layers if isinstance(layer, napari.layers.Image)]


class LayerChoice(QComboBox):
    """One image layer of the viewer, by name; the list follows the viewer's layers."""

    def __init__(self, viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.moved):
            event.connect(self.refresh)
        # Qt may delete this widget before the viewer: stop listening then.
        self.destroyed.connect(lambda *_: [event.disconnect(self.refresh) for event in (events.inserted, events.removed, events.moved)])
        self.refresh()

    def refresh(self, *_: Any) -> None:
        current = self.currentText()
        self.blockSignals(True)
        self.clear()
        self.addItems([layer.name for layer in image_layers(self.viewer)])
        self.blockSignals(False)
        if current in [self.itemText(i) for i in range(self.count())]:
            self.setCurrentText(current)
        elif self.viewer.layers.selection.active is not None and self.findText(self.viewer.layers.selection.active.name) >= 0:
            self.setCurrentText(self.viewer.layers.selection.active.name)

    def showPopup(self) -> None:
        self.refresh()  # a layer renamed since: napari's list does not announce it
        super().showPopup()

    def layer(self) -> napari.layers.Image:
        name = self.currentText()
        if not name or name not in self.viewer.layers:
            raise PhotongapError("choose an image layer (open an image, or File > Open Sample > photongap)")
        return self.viewer.layers[name]


class LayerList(QListWidget):
    """Image layers ticked for training; the list follows the viewer's layers."""

    def __init__(self, viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.setMaximumHeight(90)
        events = viewer.layers.events
        for event in (events.inserted, events.removed):
            event.connect(self.refresh)
        self.destroyed.connect(lambda *_: [event.disconnect(self.refresh) for event in (events.inserted, events.removed)])
        self.refresh()

    def refresh(self, *_: Any) -> None:
        ticked = set(self.names()) if self.count() else None
        self.clear()
        for layer in image_layers(self.viewer):
            item = QListWidgetItem(layer.name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            on = layer.name in ticked if ticked is not None else True
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
            self.addItem(item)

    def names(self) -> list[str]:
        return [self.item(i).text() for i in range(self.count()) if self.item(i).checkState() == Qt.CheckState.Checked]

    def tick(self, names: list[str]) -> None:
        for i in range(self.count()):
            self.item(i).setCheckState(Qt.CheckState.Checked if self.item(i).text() in names else Qt.CheckState.Unchecked)

    def layers(self) -> list[napari.layers.Image]:
        return [self.viewer.layers[name] for name in self.names() if name in self.viewer.layers]


def _number(edit: QLineEdit, what: str) -> float | None:
    text = edit.text().strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise PhotongapError(f"{what} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise PhotongapError(f"{what} must be a finite number, got {text!r}")
    return value


class CameraFields:
    """Gain and offset, or a ``calibration.json``: how the layer's values become photon counts."""

    def __init__(self, form: QFormLayout) -> None:
        self.gain, self.offset = QLineEdit(), QLineEdit()
        self.gain.setPlaceholderText("none: the values are photon counts")
        self.offset.setPlaceholderText("0")
        self.calibration = PathField("file", "calibration (*.json);;all files (*)", "calibration.json from photongap calibrate")
        form.addRow("camera gain (ADU/photon)", self.gain)
        form.addRow("camera offset (ADU)", self.offset)
        form.addRow("or calibration", self.calibration)

    def camera(self) -> Camera:
        gain, offset = _number(self.gain, "the camera gain"), _number(self.offset, "the camera offset")
        if self.calibration.path is None:
            return Camera(gain=gain, offset=offset)
        if gain is not None or offset is not None:
            raise PhotongapError("give either a calibration file or the camera gain/offset, not both")
        return Camera.from_calibration(self.calibration.path)


def device_choice() -> QComboBox:
    choice = QComboBox()
    choice.addItems(["auto", "cpu", "cuda"])
    choice.setToolTip("auto: CUDA if available, else the CPU")
    return choice


class JobWidget(QWidget):
    """A dock widget's frame: ``self.form`` for its fields, then Run / Cancel, progress and status."""

    def __init__(self, viewer: napari.Viewer, run_label: str) -> None:
        super().__init__()
        self.viewer = viewer
        self.job: Job | None = None
        layout = QVBoxLayout(self)
        self.form = QFormLayout()
        layout.addLayout(self.form)
        buttons = QHBoxLayout()
        self.run_button, self.cancel_button = QPushButton(run_label), QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setFormat("%p%")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        self.body = layout  # widgets may add more below (the loss curve)

    def run(self) -> None:
        """Read the form and start the job (subclasses: :meth:`prepare`)."""
        if self.job is not None and self.job.running:
            return
        try:
            work, on_done = self.prepare()
        except PhotongapError as error:
            show_error(str(error))
            self.set_status(f"error: {error}", error=True)
            return
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.set_progress(0.0)
        self.set_status("starting…")
        self.job = Job(work, on_report=self.on_report, on_done=on_done, on_end=self._ended)

    def prepare(self) -> tuple[Callable[[Callable[[Any], None], CancelToken], Any], Callable[[Any], None]]:
        """The work to run in the worker thread and what to do with its result in the GUI thread."""
        raise NotImplementedError

    def on_report(self, report: Any) -> None:
        """A progress report from the job: ``(fraction or None, status text)`` unless a subclass says otherwise."""
        fraction, text = report
        self.set_progress(fraction)
        self.set_status(text)

    def cancel(self) -> None:
        if self.job is not None and self.job.running:
            self.job.cancel()
            self.cancel_button.setEnabled(False)
            self.set_status("cancelling…")

    def _ended(self, how: str, message: str) -> None:
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if how == "done":
            self.set_progress(1.0)
        elif how == "cancelled":
            self.set_status("cancelled: nothing was added")
        elif how == "failed":
            self.set_status(f"error: {message}", error=True)
        else:
            self.set_status("failed: see the notification", error=True)

    def set_progress(self, fraction: float | None) -> None:
        if fraction is None:
            self.progress.setRange(0, 0)  # busy, without a known end
        else:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(1000 * min(max(fraction, 0.0), 1.0)))

    def set_status(self, text: str, error: bool = False) -> None:
        self.status.setStyleSheet("color: #ff6b6b;" if error else "")
        self.status.setText(text)
