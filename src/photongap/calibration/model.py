"""The calibration itself: how a camera turns photons into numbers, and its JSON file."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from photongap.errors import PhotongapError
from photongap.io import atomic_output

CalibrationMethod = Literal["stack", "single", "dark+stack", "dark+single", "manual"]
METHODS = ("stack", "single", "dark+stack", "dark+single", "manual")
_NUMBERS = ("gain", "offset", "read_noise", "gain_uncertainty", "offset_uncertainty", "read_noise_uncertainty")
_KEYS = ("gain", "offset", "read_noise", "method", "gain_uncertainty", "offset_uncertainty", "read_noise_uncertainty")


@dataclass(frozen=True)
class Calibration:
    """How a camera turns photons into numbers: ``adu = gain * photons + offset + noise``.

    Attributes
    ----------
    gain : float
        ADU per photon (per detected photo-electron).
    offset : float
        ADU recorded with no light.
    read_noise : float
        Standard deviation of the additive noise, ADU (quantisation included).
    method : str
        ``"stack"``, ``"single"``, ``"dark+stack"``, ``"dark+single"`` or ``"manual"``.
    gain_uncertainty, offset_uncertainty, read_noise_uncertainty : float
        1-sigma uncertainties, in the units of each value.
    details : dict
        JSON-able facts about the fit: bins used, exclusions, residual.
    read_noise_upper : float or None
        Set when the data cannot resolve the read noise (its variance is not two standard
        errors above zero): a 97.7% upper bound, ADU; ``read_noise`` is then only the best guess.

    Examples
    --------
    >>> Calibration(gain=2.0, offset=100.0, read_noise=1.5).method
    'manual'
    """

    gain: float
    offset: float
    read_noise: float
    method: CalibrationMethod = "manual"
    gain_uncertainty: float = 0.0
    offset_uncertainty: float = 0.0
    read_noise_uncertainty: float = 0.0
    details: dict[str, Any] = field(default_factory=dict, compare=False)
    read_noise_upper: float | None = None

    def __post_init__(self) -> None:
        for name in _NUMBERS + (() if self.read_noise_upper is None else ("read_noise_upper",)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
                raise PhotongapError(f"{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
            if name == "gain" and value <= 0:
                raise PhotongapError(f"gain must be positive (ADU per photon), got {value}")
            if name != "offset" and value < 0:
                raise PhotongapError(f"{name} must not be negative, got {value}")
        if self.read_noise_upper is not None and self.read_noise_upper < self.read_noise:
            raise PhotongapError(f"read_noise_upper ({self.read_noise_upper}) must not be below read_noise ({self.read_noise})")
        if self.method not in METHODS:
            raise PhotongapError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not isinstance(self.details, dict):
            raise PhotongapError(f"details must be a JSON object, got {type(self.details).__name__}")

    @property
    def read_noise_resolved(self) -> bool:
        """Whether ``read_noise`` is a measurement (True) or only a guess under ``read_noise_upper``."""
        return self.read_noise_upper is None

    def to_json(self) -> str:
        """The calibration as a JSON object with numeric ``gain``, ``offset``, ``read_noise``."""
        payload = {key: getattr(self, key) for key in _KEYS}
        if self.read_noise_upper is not None:
            payload["read_noise_upper"] = self.read_noise_upper
        payload["details"] = jsonable(self.details)
        return json.dumps(payload, indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str, name: str = "calibration") -> Calibration:
        """Parse and validate :meth:`to_json` output; ``name`` labels error messages."""
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as error:
            raise PhotongapError(
                f"{name} is not valid JSON ({error.msg}, line {error.lineno}): provide a file written by Calibration.save"
            ) from None
        if not isinstance(payload, dict):
            raise PhotongapError(f"{name} must hold a JSON object with gain, offset and read_noise")
        missing = [key for key in ("gain", "offset", "read_noise") if key not in payload]
        if missing:
            raise PhotongapError(f"{name} lacks {', '.join(missing)}: provide gain (ADU per photon), offset (ADU) and read_noise (ADU)")
        known = (*_KEYS, "details", "read_noise_upper")
        try:
            return cls(**{key: payload[key] for key in known if key in payload})
        except PhotongapError as error:
            raise PhotongapError(f"{name}: {error}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_json` to ``path`` whole or not at all (:func:`photongap.io.atomic_output`)."""
        path = Path(path)
        if not path.parent.is_dir():
            raise PhotongapError(f"folder {path.parent} does not exist: create it or choose another path")
        text = self.to_json()
        with atomic_output(path) as partial:
            partial.write_text(text, encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Calibration:
        """Read a calibration written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise PhotongapError(f"calibration file {path} does not exist: run the calibration first or check the path")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise PhotongapError(f"{path} is not a text file: provide the JSON written by Calibration.save") from None
        return cls.from_json(text, name=str(path))


def jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars and arrays converted, non-finite floats as None."""
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(item) for item in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
