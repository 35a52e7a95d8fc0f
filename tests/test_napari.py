"""The napari plugin: every widget docks in a real viewer, and its work runs in thread workers.

Headless: Qt's offscreen platform (set here, before Qt starts, for these tests only). It has
OpenGL only with an X display; without one, napari's two queries of the GL capabilities (the
extensions and the largest texture, asked once when the first image layer gets its texture)
get no answer and fail, so they are answered here with the most conservative values: no
extensions, 2048 px textures. Nothing is drawn either way (the viewer is not shown).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from qtpy.QtCore import QTimer  # noqa: E402

from photongap.errors import PhotongapError  # noqa: E402
from photongap.model import GapModel  # noqa: E402

WIDGETS = {"Train": "TrainWidget", "Denoise": "DenoiseWidget", "Sample posterior": "SampleWidget", "Generate": "GenerateWidget"}
TINY_RUN = """\
model: {depth: 3, start_filters: 8, encoding_levels: 4}
training: {batch_size: 4, patch_size: 32, val_fraction: 0.0, precision: fp32}
"""


MANIFEST = Path(__file__).parents[1] / "src/photongap/napari/napari.yaml"


def _register_if_not_installed() -> None:
    """Register the manifest from the source tree where photongap was installed before its entry point existed.

    Only :func:`test_manifest_is_valid_and_installed` then fails, naming the missing entry point
    (reinstall: ``pip install --no-deps -e .``), instead of every widget test.
    """
    import npe2

    plugins = npe2.PluginManager.instance()
    plugins.discover()
    try:
        plugins.get_manifest("photongap")
    except KeyError:
        plugins.register(npe2.PluginManifest.from_file(MANIFEST))


@pytest.fixture(scope="module")
def shared_viewer():
    patch = pytest.MonkeyPatch()
    if os.environ["QT_QPA_PLATFORM"] == "offscreen" and not os.environ.get("DISPLAY"):
        import napari._vispy
        import napari._vispy.layers.image
        from napari._vispy.utils import gl

        answers = {gl.get_gl_extensions: lambda: "", gl.get_max_texture_sizes: lambda: (2048, 256)}
        for module in [module for name, module in sys.modules.items() if name.startswith("napari._vispy")]:
            for original, answer in answers.items():
                name = original.__name__
                if getattr(module, name, None) is original:
                    patch.setattr(module, name, answer)
    _register_if_not_installed()
    viewer = napari.Viewer(show=False)
    yield viewer
    viewer.close()
    patch.undo()


@pytest.fixture()
def viewer(shared_viewer, qtbot):
    """The module's viewer, emptied of layers and dock widgets after each test."""
    yield shared_viewer
    shared_viewer.layers.clear()
    shared_viewer.window.remove_dock_widget("all")


@pytest.fixture()
def notifications():
    from napari.utils.notifications import notification_manager

    caught = []
    notification_manager.notification_ready.connect(caught.append)
    yield caught
    notification_manager.notification_ready.disconnect(caught.append)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """An untrained tiny model's file: the widgets' plumbing, not the denoising, is tested here."""
    import torch

    from photongap.config import ModelConfig
    from photongap.network import GapUNet

    config = ModelConfig(depth=3, start_filters=8, encoding_levels=4)
    torch.manual_seed(0)
    return GapModel(GapUNet(config).eval(), config, {"note": "untrained test model"}).save(tmp_path_factory.mktemp("model") / "model.pt")


def dock(viewer, name: str):
    _, widget = viewer.window.add_plugin_dock_widget("photongap", name)
    return widget


def finish(qtbot, widget, timeout_ms: int = 60_000) -> None:
    qtbot.waitUntil(lambda: widget.job is not None and not widget.job.running, timeout=timeout_ms)


def counts(shape, level=2.0, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(0, 3, shape[-2]), np.linspace(0, 4, shape[-1]), indexing="ij")
    return rng.poisson(level * (1 + np.sin(y) * np.cos(x)), size=shape).astype(np.float32)


# --- without napari ---------------------------------------------------------------------------


def test_photongap_and_its_cli_do_not_import_napari_or_qt():
    code = "import sys, photongap, photongap.cli.app, photongap.cli.commands; print(sorted(m for m in ('napari', 'qtpy', 'PyQt6', 'magicgui') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    assert done.stdout.strip() == "[]"


def test_manifest_is_valid_and_installed():
    from importlib.metadata import entry_points

    import npe2

    manifest = npe2.PluginManifest.from_file(MANIFEST)
    assert sorted(widget.display_name for widget in manifest.contributions.widgets) == sorted(WIDGETS)
    assert [entry.value for entry in entry_points(group="napari.manifest") if entry.name == "photongap"] == ["photongap.napari:napari.yaml"]
    manifest.validate_imports()  # every python_name imports (raises if not)
    plugins = npe2.PluginManager.instance()
    plugins.discover()
    assert plugins.get_manifest("photongap").name == "photongap"


def test_layer_axes_and_refusals(shared_viewer):
    from napari.layers import Image

    from photongap.napari.layers import layer_axes, layer_counts

    assert layer_axes(Image(np.zeros((3, 8, 8)))) == "ZYX"
    assert layer_axes(Image(np.zeros((3, 8, 8)), axis_labels=("t", "y", "x"))) == "TYX"
    moved = layer_counts(Image(np.arange(24, dtype=np.float32).reshape(2, 3, 4), axis_labels=("y", "x", "t")))
    assert moved.axes == "TYX" and moved.counts.shape == (4, 2, 3)
    assert np.array_equal(moved.to_layer(moved.counts), np.arange(24).reshape(2, 3, 4))
    with pytest.raises(PhotongapError, match="RGB"):
        layer_counts(Image(np.zeros((8, 8, 3), np.uint8), rgb=True))
    with pytest.raises(PhotongapError, match="non-integer"):
        layer_counts(Image(np.full((8, 8), 0.5, np.float32), name="half"))


# --- in a viewer ------------------------------------------------------------------------------


def test_every_widget_docks(viewer):
    for name, cls in WIDGETS.items():
        widget = dock(viewer, name)
        assert type(widget).__name__ == cls
    assert len(viewer.window.dock_widgets) == len(WIDGETS)


def test_sample_data_is_noisy_counts_and_ground_truth(viewer):
    viewer.open_sample("photongap", "cells")
    noisy, truth = viewer.layers["cells"].data, viewer.layers["cells (ground truth)"].data
    assert noisy.shape == truth.shape == (255, 511)
    assert np.array_equal(noisy, np.rint(noisy)) and noisy.min() >= 0
    assert abs(noisy.mean() - 1.0) < 0.05 and abs(truth.mean() - 1.0) < 1e-4


def test_denoise_adds_a_layer_in_the_source_coordinates(viewer, qtbot, model_file):
    data = counts((2, 40, 48))
    viewer.add_image(data, name="cells", scale=(2.0, 0.5, 0.25), translate=(1.0, 10.0, -3.0), axis_labels=("z", "y", "x"), units=("um", "um", "um"))
    widget = dock(viewer, "Denoise")
    widget.model.path = model_file
    widget.layer.setCurrentText("cells")
    widget.run()
    finish(qtbot, widget)
    result = viewer.layers["cells [photongap]"]
    assert result.data.shape == data.shape and result.data.dtype == np.float32
    for attribute in ("scale", "translate"):
        assert np.array_equal(getattr(result, attribute), getattr(viewer.layers["cells"], attribute))
    assert result.axis_labels == ("z", "y", "x") and [str(u) for u in result.units] == ["micrometer"] * 3
    # MMSE in the photon units of the input: each plane keeps its photons, and equals the library's result.
    np.testing.assert_allclose(result.data.sum(axis=(1, 2)), data.sum(axis=(1, 2)), rtol=1e-4)
    np.testing.assert_allclose(result.data, GapModel.load(model_file).denoise(data, device="cpu"), rtol=1e-5, atol=1e-6)
    assert widget.progress.value() == widget.progress.maximum()


def test_a_3d_model_denoises_a_volume_layer_as_one_volume(viewer, qtbot, tmp_path, notifications):
    import torch

    from photongap.config import ModelConfig
    from photongap.network import GapUNet

    torch.manual_seed(0)
    config = ModelConfig(depth=2, start_filters=4, encoding_levels=3, dims=3, depth_pools=1)
    path = str(GapModel(GapUNet(config).eval(), config, {"note": "untrained 3D test model"}).save(tmp_path / "model3d.pt"))
    data = counts((6, 32, 40))
    viewer.add_image(data, name="stack", scale=(2.0, 0.5, 0.5), axis_labels=("z", "y", "x"))
    widget = dock(viewer, "Denoise")
    widget.model.path = path
    widget.layer.setCurrentText("stack")
    widget.run()
    finish(qtbot, widget)
    result = viewer.layers["stack [photongap]"]
    # One softmax over the volume (not per plane), as the library's 3D denoising gives.
    np.testing.assert_allclose(result.data, GapModel.load(path).denoise(data, device="cpu"), rtol=1e-5, atol=1e-6)
    assert abs(float(result.data.sum()) - float(data.sum())) < 1e-3 * float(data.sum())
    assert not np.allclose(result.data.sum(axis=(1, 2)), data.sum(axis=(1, 2)), rtol=1e-3)
    assert widget.progress.value() == widget.progress.maximum()

    viewer.add_image(data[0], name="plane", axis_labels=("y", "x"))  # a 2D layer: a one-line error, no new layer
    widget.layer.setCurrentText("plane")
    widget.run()
    finish(qtbot, widget)
    assert "plane [photongap]" not in viewer.layers
    assert [str(n.severity) for n in notifications] == ["error"] and "Z or T axis" in notifications[0].message


def test_sample_posterior_adds_samples_mean_and_std(viewer, qtbot, model_file):
    data = counts((40, 48))
    viewer.add_image(data, name="cells", scale=(0.5, 0.25), translate=(10.0, -3.0), axis_labels=("y", "x"), units=("um", "um"))
    widget = dock(viewer, "Sample posterior")
    widget.model.path = model_file
    widget.layer.setCurrentText("cells")
    widget.n.setValue(3)
    widget.device.setCurrentText("cpu")
    widget.run()
    finish(qtbot, widget)
    samples, mean, std = (viewer.layers[f"cells [{tag}]"] for tag in ("samples", "mean", "std"))
    assert samples.data.shape == (3, 40, 48) and mean.data.shape == std.data.shape == (40, 48)
    assert np.array_equal(samples.scale, [1.0, 0.5, 0.25]) and np.array_equal(samples.translate, [0.0, 10.0, -3.0])
    assert samples.axis_labels == ("sample", "y", "x")
    for layer in (mean, std):
        assert np.array_equal(layer.scale, [0.5, 0.25]) and np.array_equal(layer.translate, [10.0, -3.0]) and layer.axis_labels == ("y", "x")
    np.testing.assert_allclose(mean.data, samples.data.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(std.data, samples.data.std(axis=0, ddof=1), rtol=1e-3, atol=1e-5)
    assert std.colormap.name == "inferno" and std.contrast_limits[0] == 0.0
    # The same seed gives the library's samples, and the status says what the library says of the gain.
    library = GapModel.load(model_file).sample(data, 3, seed=0, device="cpu")
    np.testing.assert_allclose(samples.data, library.samples, rtol=1e-5)
    assert library.gain_resolved is not None
    assert ("held-out photons were too few" in widget.status.text()) == (not library.gain_resolved)


def test_generate_adds_a_stack(viewer, qtbot, model_file):
    widget = dock(viewer, "Generate")
    widget.model.path = model_file
    for box, value in ((widget.n, 2), (widget.height, 16), (widget.width, 24)):
        box.setValue(value)
    widget.target.setValue(-5.0)
    widget.device.setCurrentText("cpu")
    widget.run()
    finish(qtbot, widget)
    generated = viewer.layers["generated [photongap]"].data
    assert generated.shape == (2, 16, 24) and generated.min() >= 0


def test_a_bad_model_file_gives_one_error_notification_and_no_traceback(viewer, qtbot, tmp_path, notifications):
    from napari.utils.notifications import ErrorNotification

    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(PhotongapError) as expected:  # what `photongap denoise` prints after "error: "
        GapModel.load(bad)
    viewer.add_image(counts((32, 32)), name="cells")
    widget = dock(viewer, "Denoise")
    widget.model.path = bad
    widget.layer.setCurrentText("cells")
    widget.run()
    finish(qtbot, widget)
    assert [(str(n.severity), n.message) for n in notifications] == [("error", str(expected.value))]
    assert not any(isinstance(n, ErrorNotification) for n in notifications)  # those carry a traceback
    assert widget.status.text() == f"error: {expected.value}" and widget.run_button.isEnabled()
    assert [layer.name for layer in viewer.layers] == ["cells"]


def test_napari_cancelling_the_task_cancels_the_job(viewer, qtbot, model_file):
    viewer.add_image(counts((2, 256, 256)), name="cells")
    widget = dock(viewer, "Denoise")
    widget.model.path = model_file
    widget.layer.setCurrentText("cells")
    widget.tile.setValue(64)
    widget.run()
    widget.job.worker.quit()  # what napari's activity panel and closing the window do
    finish(qtbot, widget)
    assert widget.status.text() == "cancelled: nothing was added" and widget.run_button.isEnabled()
    assert [layer.name for layer in viewer.layers] == ["cells"]


def start_training(viewer, tmp_path: Path, steps: int):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_RUN)
    viewer.open_sample("photongap", "cells")
    widget = dock(viewer, "Train")
    widget.layers.tick(["cells"])
    widget.config.path = config
    widget.steps.setValue(steps)
    widget.minutes.setValue(0.0)
    widget.out.path = tmp_path / "run"
    widget.device.setCurrentText("cpu")
    widget.run()
    return widget


@pytest.mark.slow
def test_training_runs_in_a_worker_while_the_event_loop_turns(viewer, qtbot, tmp_path):
    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start(20)
    denoise = dock(viewer, "Denoise")
    widget = start_training(viewer, tmp_path, steps=20)
    started = time.monotonic()
    finish(qtbot, widget)
    ended = time.monotonic()
    timer.stop()
    model = GapModel.load(tmp_path / "run" / "model.pt")
    assert model.info["steps_done"] == 20 and widget.status.text().startswith("done: 20 steps")
    # The GUI thread kept turning while the worker trained: its timer fired all along (blocked,
    # it would fire once, after a gap as long as the training).
    during = [tick for tick in ticks if started <= tick <= ended]
    gaps = np.diff([started, *during, ended])
    assert len(during) >= 10 and gaps.max() < (ended - started) / 2, (len(during), gaps.max(), ended - started)
    # The live curve has every step's loss, and the bar is full.
    assert widget.plot.steps == list(range(1, 21)) and np.isfinite(widget.plot.losses).all()
    assert widget.progress.value() == widget.progress.maximum()
    assert denoise.model.path == tmp_path / "run" / "model.pt"  # the new model is offered to the other widgets


@pytest.mark.slow
def test_cancel_stops_training_and_keeps_a_usable_model(viewer, qtbot, tmp_path):
    widget = start_training(viewer, tmp_path, steps=100_000)
    qtbot.waitUntil(lambda: len(widget.plot.steps) > 0, timeout=60_000)
    widget.cancel_button.click()
    finish(qtbot, widget)
    assert widget.status.text().startswith("stopped by Cancel")
    model = GapModel.load(tmp_path / "run" / "model.pt")
    assert 0 < model.info["steps_done"] < 1000
    noisy = viewer.layers["cells"].data
    np.testing.assert_allclose(model.denoise(noisy, device="cpu").sum(), noisy.sum(), rtol=1e-4)
