"""Shared fixtures: a tiny network configuration and single-threaded torch.

The machine running the tests has few, shared cores and the tensors here are tiny:
a second thread only adds contention, so the whole session runs on one.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest
import torch

from photongap.config import ModelConfig
from photongap.model import GapModel
from photongap.network import GapUNet


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_config() -> ModelConfig:
    """Depth 3 (sides multiples of 4), 8 filters, 4 sine levels: a few thousand weights."""
    return ModelConfig(depth=3, start_filters=8, encoding_levels=4)


def _untrained_model(config: ModelConfig, seed: int = 0) -> GapModel:
    torch.manual_seed(seed)
    return GapModel(GapUNet(config).eval(), config, {"note": "untrained test model"})


def _poisson_image(shape: tuple[int, int], level: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(0, 3, shape[0]), np.linspace(0, 4, shape[1]), indexing="ij")
    clean = 1.0 + np.sin(y) * np.cos(x) ** 2
    return rng.poisson(clean * (level / clean.mean())).astype(np.float32)


@pytest.fixture(scope="session")
def untrained_model():
    """``untrained_model(config, seed=0)``: a randomly initialised GapModel, same seed same weights."""
    return _untrained_model


@pytest.fixture()
def tiny_model(tiny_config: ModelConfig) -> GapModel:
    """An untrained GapModel of :func:`tiny_config` (seed 0), fresh for each test."""
    return _untrained_model(tiny_config)


@pytest.fixture(scope="session")
def poisson_image():
    """``poisson_image((Y, X), level, seed=0)``: counts of a smooth scene at ``level`` photons/px on average."""
    return _poisson_image


@pytest.fixture(scope="session")
def trained_default_model(tmp_path_factory) -> GapModel:
    """The default network (depth 4, 16 filters) trained for real: 40 steps on the embedded sample at 1 photon/px."""
    from photongap.config import TrainConfig
    from photongap.sample_data import load_sample_data, simulate_counts
    from photongap.training import train

    rng = np.random.default_rng(0)
    noisy = [simulate_counts(image, 1.0, rng) for image in load_sample_data().train]
    config = TrainConfig(steps=40, batch_size=8, val_fraction=0.0, precision="fp32")
    result = train(noisy, tmp_path_factory.mktemp("default") / "run", model_config=ModelConfig(), train_config=config, progress=False)
    return GapModel.load(result.model_path)


def _resident_kb(path) -> int | None:
    """Kilobytes of ``path``'s memory maps resident in this process (``/proc/self/smaps``), None off Linux."""
    smaps = Path("/proc/self/smaps")
    if not smaps.exists():
        return None
    name, total, inside = str(Path(path).resolve()), 0, False
    for line in smaps.read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5:  # a mapping's header: address range, perms, offset, device, inode[, path]
            inside = len(fields) >= 6 and " ".join(fields[5:]) == name
        elif inside and fields[:1] == ["Rss:"]:
            total += int(fields[1])
    return total


@pytest.fixture(scope="session")
def resident_kb():
    """``resident_kb(path)``: kilobytes of that file's memory maps resident in this process; skips where it cannot be told."""
    if _resident_kb(__file__) is None or not hasattr(mmap, "MADV_DONTNEED"):
        pytest.skip("needs /proc/self/smaps and madvise(MADV_DONTNEED) (Linux)")
    return _resident_kb
