"""photongap: shot-noise removal, posterior sampling and generation for photon-limited images.

GAP (Generative Accumulation of Photons) trains a network on noisy photon counts alone to
predict where the next photon will land. One network call gives the MMSE denoised image;
repeatedly adding predicted photons gives posterior samples, or new images from an empty canvas.

Examples
--------
>>> import photongap
>>> result = photongap.train(["noisy_cells/"], "runs/cells")  # doctest: +SKIP
>>> model = photongap.load(result.model_path)  # doctest: +SKIP
>>> denoised = model.denoise(counts)  # doctest: +SKIP
>>> posterior = model.sample(counts, n=16)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["GapModel", "ModelConfig", "PhotongapError", "TrainConfig", "load", "train", "__version__"]

if TYPE_CHECKING:
    from photongap.config import ModelConfig, TrainConfig
    from photongap.errors import PhotongapError
    from photongap.model import GapModel, load
    from photongap.training import TrainResult

_LAZY = {
    "GapModel": "photongap.model",
    "load": "photongap.model",
    "ModelConfig": "photongap.config",
    "TrainConfig": "photongap.config",
    "PhotongapError": "photongap.errors",
}


def __getattr__(name: str) -> Any:
    # Importing torch and Lightning takes seconds: pay for it only when a name is used.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'photongap' has no attribute {name!r}")


def train(data: Sequence[Any], out: str | Path, *, axes: str | None = None, gain: float | None = None, offset: float | None = None, **options: Any) -> TrainResult:
    """Train a GAP model; mirrors ``photongap train``.

    Parameters
    ----------
    data : sequence of paths or arrays
        Image files or folders (read like the command line does), or 2D count arrays.
    out : path
        The run folder.
    axes, gain, offset
        For files: axes of ambiguous inputs, and camera conversion ``(value - offset) / gain``.
    **options
        Passed to :func:`photongap.training.train`: ``preset``, ``config_file``,
        ``model_config``, ``train_config``, ``overrides``, ``resume``, ``device``, ``devices``,
        ``strategy``, ... With ``resume=True`` the run continues with the configuration
        stored in ``out``, ``overrides`` (e.g. ``{"steps": 2000}``) over it.

    Examples
    --------
    >>> result = photongap.train(["noisy_cells/"], "runs/cells", overrides={"steps": 600})  # doctest: +SKIP
    >>> result = photongap.train(["noisy_cells/"], "runs/cells", overrides={"steps": 1200}, resume=True)  # doctest: +SKIP
    """
    from photongap.training import train as run

    if all(isinstance(item, (str, Path)) for item in data):
        from photongap.camera import Camera
        from photongap.io import find_images
        from photongap.pipeline import training_planes

        planes, names = training_planes(find_images(data), axes, Camera(gain, offset))
        return run(planes, out, names=names, **options)
    return run(list(data), out, **options)
