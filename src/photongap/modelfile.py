"""The model file: one self-describing ``model.pt``.

It holds the weights, the :class:`~photongap.config.ModelConfig` that rebuilds the network,
the package version and ``info`` (the training configuration, the data's photon statistics,
the trained range of levels, the preset). It loads with ``torch.load(weights_only=True)``:
no code is unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from photongap.config import ModelConfig, from_dict, to_dict
from photongap.errors import PhotongapError
from photongap.io import atomic_output
from photongap.network import GapUNet

FORMAT = "photongap-model"
FORMAT_VERSION = 3  # 2: sine_levels became encoding_levels, next to encoding; 3: log_channel


def save_model(path: str | Path, network: nn.Module, config: ModelConfig, info: dict[str, Any]) -> Path:
    """Write a model file whole or not at all (:func:`photongap.io.atomic_output`)."""
    from photongap import __version__

    path = Path(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "photongap_version": __version__,
        "model_config": to_dict(config),
        "state_dict": {name: tensor.detach().cpu().contiguous() for name, tensor in network.state_dict().items()},
        "info": info,
    }
    try:
        with atomic_output(path) as partial:
            torch.save(payload, partial)
    except OSError as error:
        raise PhotongapError(f"{path}: cannot write the model file ({error.strerror or error})") from None
    return path


def load_model(path: str | Path) -> tuple[GapUNet, ModelConfig, dict[str, Any], str]:
    """Read a model file: ``(network in eval mode, config, info, photongap version that wrote it)``.

    Anything that is not a model this version can use is a one-line :class:`PhotongapError`.
    """
    path = Path(path)
    if not path.is_file():
        raise PhotongapError(f"{path}: model file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises many types for foreign or truncated files
        raise PhotongapError(f"{path}: not a photongap model file (unreadable or truncated)") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise PhotongapError(f"{path}: not a photongap model file (a Lightning checkpoint? use RUN_DIR/model.pt)")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise PhotongapError(
            f"{path}: model format {version} from photongap {payload.get('photongap_version')} is not supported by this version (format {FORMAT_VERSION})"
        )
    config = from_dict(ModelConfig, payload["model_config"], f"{path}, model_config")
    network = GapUNet(config)
    try:
        network.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError) as error:
        raise PhotongapError(f"{path}: weights do not fit the stored configuration ({str(error).splitlines()[0]})") from None
    return network.eval(), config, dict(payload.get("info") or {}), str(payload.get("photongap_version", "unknown"))
