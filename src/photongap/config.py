"""Typed configuration: one small frozen dataclass per topic, YAML round trip, presets.

A run is described by a :class:`ModelConfig` (what rebuilds the network) and a
:class:`TrainConfig` (how it is trained). A YAML file holds either or both under the
keys ``model`` and ``training``; command-line flags override the file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from photongap.errors import PhotongapError

Precision = Literal["auto", "fp32", "bf16"]
Schedule = Literal["constant", "cosine"]
SplitMode = Literal["absolute", "relative"]
Encoding = Literal["sine", "tanh"]
Block = Literal["photongap", "published"]
Init = Literal["torch", "xavier"]
Dims = Literal[2, 3]

MIN_POOLED_DEPTH = 8
"""A 3D network halves its third axis at a level only while that axis is at least this long there."""
DEFAULT_PATCH_DEPTH = 16
"""Planes (or frames) of a 3D training patch unless given; fewer if the stacks are thinner."""
PLANAR_LEVELS = 0
"""Finest levels of a 3D network made planar unless the configuration says (:attr:`ModelConfig.planar_levels`).
One denoised better, but its posterior samples were far too narrow (README, Volumes and time-lapses)."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise PhotongapError(f"invalid configuration: {message}")


def _describe(hint: Any) -> str:
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(map(str, get_args(hint)))
    if get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in get_args(hint))
    return {int: "a whole number", float: "a number", bool: "true or false", type(None): "null"}.get(hint, str(hint))


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    """``(fits, value)``: whether ``value`` fits the type ``hint``, and the value as that type."""
    origin = get_origin(hint)
    if origin is Literal:
        return value in get_args(hint), value
    if origin in (Union, types.UnionType):
        for arg in get_args(hint):
            fits, coerced = _coerce(value, arg)
            if fits:
                return True, coerced
        return False, value
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if isinstance(value, bool):
        return False, value
    if hint is int:
        return isinstance(value, int), value
    if hint is float:
        if isinstance(value, (int, float)):
            return True, float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return True, float(value)
            except ValueError:
                return False, value
    return False, value


def _check_types(config: Any, section: str) -> None:
    """Check every field against its annotation, converting numbers where that is exact."""
    for name, hint in get_type_hints(type(config)).items():
        fits, value = _coerce(getattr(config, name), hint)
        _check(fits, f"{section}.{name} must be {_describe(hint)}, got {getattr(config, name)!r}")
        object.__setattr__(config, name, value)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the GAP U-Net.

    Attributes
    ----------
    depth : int
        Resolution levels; images are padded to multiples of ``2**(depth-1)``.
    start_filters : int
        Channels at full resolution, doubled at each level.
    max_filters : int or None
        Cap on the channels of the deep levels (None: no cap, as published).

    The defaults (depth 4, 16 filters capped at 128, tanh + log1p encoding: 0.69 M weights)
    trained to a higher PSNR per minute on a CPU than the published network (depth 5, 32
    filters, no cap, sine encoding: 11 M weights, ``preset("paper")``), and denoise 5-7 times
    faster than it; see benchmarks/bench_peers.py and bench_throughput.py. Against 32 filters
    (1.6 M weights), 16 filters ran 3.2 times the training steps per minute and reached
    29.3 against 28.4 dB at 0.1 photons/px and 32.5 against 32.4 dB at 1 photon/px in the
    same 4 minutes; depth 5 with 16 filters was slower and no better.
    encoding : {"sine", "tanh"}
        The input encoding ``f(x * 10**-k)`` of the counts ``x``, for ``k < encoding_levels``:
        ``sin`` as published, or ``tanh``, which does not alias bright pixels to dark ones
        (see :class:`photongap.network.CountEncoding`).
    encoding_levels : int
        Scales of the input encoding.
    log_channel : bool
        Also give the network ``log1p(counts)``. Without it, a network trained over the full
        range of levels fell below its own input from about 10 photons/px (24.9 against
        47.4 dB at 100 photons/px); with it, 33 dB there and 1-2 dB better from 3 to 30
        photons/px, and the same at 1 photon/px (see :class:`photongap.network.CountEncoding`).
    level_input : bool
        Also give the network ``log(share)``, the share of its acquisition's photons an input
        holds (a training split's; 0 for an image denoised whole), which it must otherwise guess.
        On the Hubble deep field +0.57 dB at 0.1 photons/px and +0.24 dB at 1, on the demo data
        -0.07 and -0.05 dB (benchmarks/bench_level_input.py; README, Configuration). Off by
        default: its posterior samples are not calibrated. Needs ``split_mode: relative``.
    block : {"photongap", "published"}
        The residual block: ``relu(conv3(relu(conv2(relu(conv1 x)))) + skip(x))`` with a 1x1
        projection where widths change (photongap), or the published one, whose residual
        starts after a first convolution without activation,
        ``s = conv1(x); relu(conv3(relu(conv2 s)) + s)`` (no projection).
    init : {"torch", "xavier"}
        Initial weights: torch's defaults, or the published Xavier-normal weights with zero
        biases for every convolution (transposed convolutions keep torch's default).
    dims : {2, 3}
        2: the network sees one ``(Y, X)`` plane. 3: a ``(D, Y, X)`` volume, ``D`` the stack's
        third axis (Z, or T for a time-lapse); the convolutions are 3x3x3 (1x3x3 in ``planar_levels``).
    depth_pools : int or None
        3D only: how many of the ``depth - 1`` poolings also halve ``D`` (the first ones; the
        others pool Y and X alone, so a thin or coarse axis is not pooled away). None: decided
        by training from its patch depth (:func:`depth_pools_for`): ``D`` is halved at a level
        while it is at least ``MIN_POOLED_DEPTH`` planes there (16 planes: 2 poolings, 5: none).
        Set 0 for an axis much coarser than Y and X.
    planar_levels : int or None
        3D only: how many of the finest levels convolve within planes alone (1x3x3 kernels), so
        that neighbouring planes are pooled only where Y and X are coarsened (a frame's moving
        rims or a coarse Z step differ most at full resolution). None: ``PLANAR_LEVELS``, stored by
        training.
    """

    depth: int = 4
    start_filters: int = 16
    max_filters: int | None = 128
    encoding: Encoding = "tanh"
    encoding_levels: int = 10
    log_channel: bool = True
    level_input: bool = False
    block: Block = "photongap"
    init: Init = "torch"
    dims: Dims = 2
    depth_pools: int | None = None
    planar_levels: int | None = None

    def __post_init__(self) -> None:
        _check_types(self, "model")
        _check(self.depth_pools is None or 0 <= self.depth_pools <= self.depth - 1, "model.depth_pools must be between 0 and depth - 1")
        _check(self.planar_levels is None or 0 <= self.planar_levels <= self.depth, "model.planar_levels must be between 0 and depth")
        _check(self.depth >= 1, "model.depth must be at least 1")
        _check(self.start_filters >= 1, "model.start_filters must be at least 1")
        _check(self.encoding_levels >= 1, "model.encoding_levels must be at least 1")
        _check(self.max_filters is None or self.max_filters >= self.start_filters, "model.max_filters must be at least start_filters")

    @property
    def widths(self) -> list[int]:
        """Channels of each level, from full resolution down."""
        cap = self.max_filters or 1 << 30
        return [min(self.start_filters * 2**level, cap) for level in range(self.depth)]

    @property
    def size_multiple(self) -> int:
        """Image sides (Y and X) must be multiples of this (the tiling module pads to it)."""
        return 2 ** (self.depth - 1)

    @property
    def pools_depth(self) -> list[bool]:
        """Whether each of the ``depth - 1`` poolings halves the third axis (3D only; empty in 2D)."""
        if self.dims == 2:
            return []
        pools = depth_pools_for(DEFAULT_PATCH_DEPTH, self.depth) if self.depth_pools is None else self.depth_pools
        return [level < pools for level in range(self.depth - 1)]

    @property
    def size_multiples(self) -> tuple[int, ...]:
        """Multiples per spatial axis: ``(Y, X)``, or ``(D, Y, X)`` in 3D."""
        if self.dims == 2:
            return (self.size_multiple,) * 2
        return (2 ** sum(self.pools_depth), self.size_multiple, self.size_multiple)


def depth_pools_for(patch_depth: int, depth: int) -> int:
    """Poolings that halve a 3D patch of ``patch_depth`` planes: while at least ``MIN_POOLED_DEPTH`` planes remain to halve.

    >>> depth_pools_for(16, 4), depth_pools_for(5, 4), depth_pools_for(64, 4)
    (2, 0, 3)
    """
    pools = 0
    while pools < depth - 1 and patch_depth / 2**pools >= MIN_POOLED_DEPTH:
        pools += 1
    return pools


@dataclass(frozen=True)
class TrainConfig:
    """How a GAP network is trained.

    Attributes
    ----------
    steps : int
        Optimiser steps (``time_limit_minutes`` may stop earlier).
    batch_size, patch_size : int
        Random crops per step and their side in pixels.
    patch_depth : int or None
        Planes (or frames) of a 3D crop; None: ``DEFAULT_PATCH_DEPTH``, or the thinnest
        stack's depth if that is less. Unused in 2D.
    learning_rate : float
        Peak Adam learning rate.
    schedule : {"constant", "cosine"}
        Constant rate, or a short linear warm-up then cosine decay to 5% over ``steps``.
    split_mode : {"absolute", "relative"}
        How the input's photon level is drawn for each crop. ``absolute``: the input lands
        at a pseudo-PSNR drawn from ``[split_min_psnr, split_max_psnr]`` dB whatever the
        data (the published choice; needed for generation from an empty canvas).
        ``relative``: that many dB below the crop's own level (for denoising data at the
        level it was recorded).
    split_min_psnr, split_max_psnr : float
        The range of levels in dB. The default, -3 to -0.2 dB relative, keeps 50-95% of the
        photons in the input: close to the full images the model denoises, with enough target
        photons to learn from (-20 to 0 dB, and -6 to -0.2 dB, trained slower at 1 and 0.1
        photons/px). A model that must also sample up to brighter levels or generate needs
        the full range (``preset("generative")``).
    val_fraction : float
        Share of the images (or, for a single image, of its rows) held out for validation.
    val_every : int
        Steps between validation losses.
    average_decay : float or None
        Keep an exponential moving average of the weights, ``w_avg <- d * w_avg + (1 - d) * w``
        with ``d = min(average_decay, (1 + step) / (10 + step))`` (short memory early on); the
        saved model and the validation use the average. None: the last weights, as published.
        Without it, a model read at any time but the end of its schedule carries the noise of
        the last steps' high learning rate: at 0.1 photons/px its PSNR jumped by up to 1.3 dB
        between readings a minute apart.
    precision : {"auto", "fp32", "bf16"}
        ``auto`` is bf16 autocast with channels_last where the hardware runs it fast.
    seed : int
        Seeds crops, augmentation, splits and initial weights.
    time_limit_minutes : float or None
        Stop cleanly at this wall time and save the model as if the steps had run out.
    """

    steps: int = 1000
    batch_size: int = 16
    patch_size: int = 64
    patch_depth: int | None = None
    learning_rate: float = 1e-3
    schedule: Schedule = "cosine"
    split_mode: SplitMode = "relative"
    split_min_psnr: float = -3.0
    split_max_psnr: float = -0.2
    val_fraction: float = 0.1
    val_every: int = 100
    average_decay: float | None = 0.999
    precision: Precision = "auto"
    seed: int = 0
    time_limit_minutes: float | None = None

    def __post_init__(self) -> None:
        _check_types(self, "training")
        _check(self.steps >= 1, "training.steps must be at least 1")
        _check(self.batch_size >= 1, "training.batch_size must be at least 1")
        _check(self.patch_size >= 8, "training.patch_size must be at least 8")
        _check(self.patch_depth is None or self.patch_depth >= 1, "training.patch_depth must be at least 1")
        _check(self.learning_rate > 0, "training.learning_rate must be positive")
        _check(self.split_min_psnr <= self.split_max_psnr, "training.split_min_psnr must not exceed split_max_psnr")
        _check(0.0 <= self.val_fraction < 1.0, "training.val_fraction must be in [0, 1)")
        _check(self.val_every >= 1, "training.val_every must be at least 1")
        _check(self.average_decay is None or 0.0 <= self.average_decay < 1.0, "training.average_decay must be in [0, 1) or null")
        _check(self.time_limit_minutes is None or self.time_limit_minutes > 0, "training.time_limit_minutes must be positive")


PRESETS: dict[str, tuple[ModelConfig, TrainConfig]] = {
    # photongap's default, for denoising: inputs split at 50-95% of the data's own photons
    # (-3 to -0.2 dB), a smaller network on a tanh + log1p encoding, a fast schedule, bf16
    # where it pays.
    "default": (ModelConfig(), TrainConfig()),
    # For posterior sampling and generation: inputs at every level from -40 to +20 dB whatever
    # the data's brightness, as published, on the default network (its log1p channel keeps it
    # right at the bright levels a sampler passes through) and the default schedule.
    "generative": (ModelConfig(), TrainConfig(split_mode="absolute", split_min_psnr=-40.0, split_max_psnr=20.0)),
    # The published configuration: its network (block and initialisation, 10.9 M weights),
    # full-range absolute splits, Adam 1e-4, fp32, the last weights, every image trained on.
    "paper": (
        ModelConfig(depth=5, start_filters=32, max_filters=None, encoding="sine", encoding_levels=10, log_channel=False, block="published", init="xavier"),
        TrainConfig(learning_rate=1e-4, schedule="constant", split_mode="absolute", split_min_psnr=-40.0, split_max_psnr=20.0,
                    average_decay=None, precision="fp32", val_fraction=0.0),
    ),
}


# -- prediction defaults ---------------------------------------------------------------------
# Torch-free, so that the command line reads its defaults from here without importing torch.

DEFAULT_TILE = 512
"""Tile side for denoising: with the default network's 80 px of context a side, 512 px tiles keep 352 px cores."""
DEFAULT_TILE_DEPTH = None
"""Planes per window of a 3D model along D: None, the whole depth (a D margin of context is already
60 planes for the default network: tiling D pays only for deeper stacks, and costs memory)."""
MAX_TILE_VOXELS = 64 * 320 * 320
"""A 3D model's windows hold at most this many voxels: its Y X tile shrinks to fit (not below four
margins of context). One such window peaked at 1.8 GB with the default network (fp32, CPU)."""
DEFAULT_OVERLAP = 0
"""Extra context shared by neighbouring tiles beyond what the network's receptive field needs."""
DEFAULT_SAMPLE_TILE = 1024
"""Images larger than this are sampled tile by tile (logits stitched before each softmax)."""


def parse_patch_size(text: str) -> tuple[int, int | None]:
    """``(patch_size, patch_depth)`` of a patch size given as ``"64"`` (Y and X) or ``"16 64 64"``, ``"16x64x64"`` or ``"16,64,64"`` (D Y X).

    >>> parse_patch_size("64"), parse_patch_size("16x64x64")
    ((64, None), (64, 16))
    """
    parts = text.replace("x", " ").replace(",", " ").split()
    try:
        numbers = [int(part) for part in parts]
    except ValueError:
        numbers = []
    if len(numbers) == 1:
        return numbers[0], None
    if len(numbers) == 3 and numbers[1] == numbers[2]:
        return numbers[1], numbers[0]
    if len(numbers) == 3:
        raise PhotongapError(f"--patch-size {text!r}: Y and X must be equal (patches are turned by quarter turns)")
    raise PhotongapError(f"--patch-size {text!r}: give one whole number (Y and X) or three (D Y X, e.g. 16x64x64)")


def preset(name: str) -> tuple[ModelConfig, TrainConfig]:
    """The model and training configuration of a named preset (``default``, ``generative`` or ``paper``)."""
    if name not in PRESETS:
        raise PhotongapError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def to_dict(config: Any) -> dict[str, Any]:
    """A plain dict of a config dataclass (YAML- and checkpoint-safe)."""
    return dataclasses.asdict(config)


def from_dict(cls: type, values: dict[str, Any] | None, where: str = "configuration") -> Any:
    """Build ``cls`` from a dict, rejecting unknown keys with a clear message."""
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise PhotongapError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
    try:
        return cls(**values)
    except TypeError as error:
        raise PhotongapError(f"{where}: {error}") from None


def override(config: Any, **changes: Any) -> Any:
    """A copy of ``config`` with the changes that are not None."""
    changes = {key: value for key, value in changes.items() if value is not None}
    return dataclasses.replace(config, **changes) if changes else config


def load_yaml(path: str | Path, base: tuple[ModelConfig, TrainConfig] | None = None) -> tuple[ModelConfig, TrainConfig]:
    """Read ``model`` and ``training`` sections from a YAML file over ``base`` (the default preset)."""
    model, training = base or preset("default")
    try:
        document = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as error:
        raise PhotongapError(f"cannot read config {path}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise PhotongapError(f"config {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(document, dict):
        raise PhotongapError(f"config {path}: expected a mapping with 'model' and/or 'training' sections")
    unknown = sorted(map(str, set(document) - {"model", "training"}))
    if unknown:
        raise PhotongapError(f"config {path}: unknown section(s) {', '.join(unknown)}; expected 'model' and/or 'training'")
    for section in ("model", "training"):
        if not isinstance(document.get(section) or {}, dict):
            raise PhotongapError(f"config {path}: section '{section}' must be a mapping of keys to values")
    model = from_dict(ModelConfig, {**to_dict(model), **(document.get("model") or {})}, f"config {path}, model")
    training = from_dict(TrainConfig, {**to_dict(training), **(document.get("training") or {})}, f"config {path}, training")
    return model, training


def dump_yaml(model: ModelConfig, training: TrainConfig) -> str:
    """The YAML text that :func:`load_yaml` reads back to the same configs."""
    return yaml.safe_dump({"model": to_dict(model), "training": to_dict(training)}, sort_keys=False)
