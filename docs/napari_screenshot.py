"""Retake docs/napari.png: napari with the photongap plugin docked, the noisy sample beside its denoised layer.

Everything goes through the widgets, as a user would click: File > Open Sample (the embedded
fluorescence cells at 1 photon/px), Train (a time budget, the default preset), then Denoise and
Sample posterior with the model just trained (or, with ``--model``, with a model trained
before: then the Denoise tab is shown instead of Train's loss curve). The viewer is then shown in
a 2 x 2 grid: noisy, photongap, ground truth, and the posterior's std (the uncertainty map). The
PNG is reduced to 256 colours to stay small.

Needs a display; on a server, Debian's xvfb:

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python docs/napari_screenshot.py --minutes 3

It prints the PSNR of the noisy and the denoised layer against the ground truth.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import napari
import numpy as np
from PIL import Image
from qtpy.QtWidgets import QApplication

from photongap.sample_data import psnr


def wait_for(widget) -> None:
    """Turn the event loop until the widget's job is over (the job runs in a napari thread worker)."""
    app = QApplication.instance()
    while widget.job is None or widget.job.running:
        app.processEvents()
        time.sleep(0.02)
    print(widget.status.text(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="Training time budget.")
    parser.add_argument("--steps", type=int, default=600, help="Training steps (the time budget may stop it earlier).")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--model", type=Path, help="Use this model.pt instead of training one in the Train widget.")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("napari.png"))
    args = parser.parse_args()

    viewer = napari.Viewer(title="napari + photongap")
    viewer.window._qt_window.resize(1900, 960)
    viewer.open_sample("photongap", "cells")
    train_dock, train = viewer.window.add_plugin_dock_widget("photongap", "Train")
    denoise_dock, denoise = viewer.window.add_plugin_dock_widget("photongap", "Denoise", tabify=True)
    _, sample = viewer.window.add_plugin_dock_widget("photongap", "Sample posterior", tabify=True)

    train.layers.tick(["cells"])
    train.minutes.setValue(args.minutes)
    train.steps.setValue(args.steps)
    train.out.path = Path(tempfile.mkdtemp(prefix="photongap-screenshot-")) / "cells"
    if args.model is None:
        train.run()
        wait_for(train)  # its new model fills the other widgets' model fields
    for widget in (denoise, sample):
        widget.layer.setCurrentText("cells")
        if args.model is not None:
            widget.model.path = args.model
    denoise.run()
    wait_for(denoise)
    sample.n.setValue(args.samples)
    sample.run()
    wait_for(sample)

    truth, noisy, denoised = (viewer.layers[name] for name in ("cells (ground truth)", "cells", "cells [photongap]"))
    scores = {name: psnr(truth.data, layer.data) for name, layer in (("noisy", noisy), ("photongap", denoised))}
    print(", ".join(f"{name} {value:.2f} dB" for name, value in scores.items()), flush=True)
    for name in ("cells [samples]", "cells [mean]"):
        viewer.layers.remove(name)
    truth.visible = True
    top = float(np.percentile(truth.data, 99.8))
    for layer in (truth, denoised):
        layer.contrast_limits = (0.0, top)
    noisy.contrast_limits = (0.0, float(np.percentile(noisy.data, 99.5)))
    # Grid cells fill from the first layer: noisy | photongap, then ground truth | std.
    order = ["cells", "cells [photongap]", "cells (ground truth)", "cells [std]"]
    for index, name in enumerate(order):
        viewer.layers.move(viewer.layers.index(name), index)
    viewer.canvas.grid.enabled = True
    viewer.canvas.grid.shape = (2, 2)
    caption = viewer.canvas.overlays.text
    caption.visible, caption.font_size = True, 9
    caption.text = (f"noisy, 1 photon/px ({scores['noisy']:.1f} dB) | photongap ({scores['photongap']:.1f} dB)\n"
                                f"ground truth | posterior std ({args.samples} samples; inferno: dark = trust)")
    viewer.layers.selection.active = denoised
    viewer.reset_view()
    (train_dock if args.model is None else denoise_dock).raise_()  # Train shows its loss curve
    for _ in range(20):
        QApplication.instance().processEvents()
        time.sleep(0.05)
    viewer.window.screenshot(path=str(args.out), canvas_only=False)
    with Image.open(args.out) as picture:
        small = picture.convert("RGB").quantize(colors=256)
    small.save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} kB)", flush=True)
    viewer.close()


if __name__ == "__main__":
    main()
