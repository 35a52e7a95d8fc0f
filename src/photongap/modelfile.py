"""The model file: one self-describing ``model.pt``.

It holds the weights, the :class:`~photongap.config.ModelConfig` that rebuilds the network,
the package version and ``info`` (the training configuration, the data's photon statistics,
the trained range of levels, the preset). It loads with ``torch.load(weights_only=True)``:
no code is unpickled. A BioImage Model Zoo package written by ``photongap export``
(:mod:`photongap.bioimage`) loads too: its ``pytorch_state_dict`` weights and the same
configuration and ``info`` under ``config.photongap`` of its ``rdf.yaml`` (no bioimageio needed).
"""

from __future__ import annotations

import io
import zipfile
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
PACKAGE_FORMAT = "photongap-bioimage"
"""``config.photongap.format`` of a package made by ``photongap export``."""


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
    if zipfile.is_zipfile(path) and _package_description(path) is not None:
        return _load_package(path)
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
    return _network(path, config, payload["state_dict"]), config, dict(payload.get("info") or {}), str(payload.get("photongap_version", "unknown"))


def _network(path: Path, config: ModelConfig, state_dict: dict[str, torch.Tensor]) -> GapUNet:
    network = GapUNet(config)
    try:
        network.load_state_dict(state_dict)
    except (RuntimeError, KeyError) as error:
        raise PhotongapError(f"{path}: weights do not fit the stored configuration ({str(error).splitlines()[0]})") from None
    return network.eval()


def _package_description(path: Path) -> dict[str, Any] | None:
    """The ``rdf.yaml`` of a zip package, or None for a zip without one (a torch file is a zip too)."""
    import yaml

    with zipfile.ZipFile(path) as package:
        names = [name for name in package.namelist() if name in ("rdf.yaml", "bioimageio.yaml")]
        if not names:
            return None
        try:
            description = yaml.safe_load(package.read(names[0]))
        except yaml.YAMLError:
            raise PhotongapError(f"{path}: the package's {names[0]} is not valid YAML") from None
    return description if isinstance(description, dict) else None


def _load_package(path: Path) -> tuple[GapUNet, ModelConfig, dict[str, Any], str]:
    """A model from a package made by ``photongap export``: its state-dict weights and ``config.photongap``."""
    description = _package_description(path) or {}
    stored = (description.get("config") or {}).get("photongap") or {}
    if stored.get("format") != PACKAGE_FORMAT:
        raise PhotongapError(f"{path}: a BioImage Model Zoo package, but not one made by 'photongap export' (no config.photongap)")
    if stored.get("format_version") != FORMAT_VERSION:
        raise PhotongapError(f"{path}: package of model format {stored.get('format_version')} from photongap {stored.get('photongap_version')} "
                             f"is not supported by this version (format {FORMAT_VERSION})")
    source = ((description.get("weights") or {}).get("pytorch_state_dict") or {}).get("source")
    try:
        with zipfile.ZipFile(path) as package:
            state = torch.load(io.BytesIO(package.read(str(source))), map_location="cpu", weights_only=True)
    except Exception:  # a missing member (KeyError) or a foreign or truncated weights file
        raise PhotongapError(f"{path}: the package's pytorch_state_dict weights ({source}) are missing or unreadable") from None
    # The package's module wraps the network as its attribute `network`.
    state_dict = {key.removeprefix("network."): value for key, value in state.items() if key.startswith("network.")}
    config = from_dict(ModelConfig, stored.get("model_config"), f"{path}, model_config")
    return _network(path, config, state_dict), config, dict(stored.get("info") or {}), str(stored.get("photongap_version", "unknown"))


def trained_range_from_info(info: dict[str, Any]) -> tuple[float, float] | None:
    """``(low, high)`` pseudo-PSNR in dB of whole training inputs, from a model file's ``info``.

    Splitting only thins photons, so no training input is brighter than its training image:
    with a relative split range the inputs lie ``split_min_psnr .. min(split_max_psnr, 0)`` dB
    below each image's level, with an absolute one at ``split_min_psnr .. split_max_psnr``
    capped by the brightest image. Files written since the trained range was stored carry it
    as ``info["trained_range"]``; for older ones it is derived from the training record.
    """
    stored = info.get("trained_range")
    if stored is not None:
        return float(stored[0]), float(stored[1])
    training, data = info.get("training"), info.get("data")
    if not training or not data or "pseudo_psnr" not in data:
        return None
    low_image, high_image = data.get("min_image_psnr", data["pseudo_psnr"]), data.get("max_image_psnr", data["pseudo_psnr"])
    if training.get("split_mode") == "relative":
        return low_image + training["split_min_psnr"], high_image + min(training["split_max_psnr"], 0.0)
    return training["split_min_psnr"], min(training["split_max_psnr"], high_image)


def describe(model: Any) -> dict[str, Any]:
    """What ``photongap info`` shows of a :class:`~photongap.model.GapModel`: provenance, size, trained range, data statistics and the validation assessment."""
    trained = model.trained_range()
    return {
        "photongap_version": model.version,
        "format_version": FORMAT_VERSION,
        "preset": model.info.get("preset", "unknown"),
        "weights": sum(parameter.numel() for parameter in model.network.parameters()),
        "network": model.config.__dict__,
        "receptive_radius_px": model.context,
        "trained_range_db": list(trained) if trained else None,
        "trained_range_photons_per_px": [10 ** (level / 10) for level in trained] if trained else None,
        "steps_done": model.info.get("steps_done"),
        "data": {key: value for key, value in (model.info.get("data") or {}).items() if not key.endswith("_hashes")} or None,
        "fingerprinted_planes": len((model.info.get("data") or {}).get("plane_hashes", [])),
        "posterior_gain": model.info.get("posterior_gain"),
        "training": model.info.get("training"),
        "assessment": model.info.get("assessment"),
    }
