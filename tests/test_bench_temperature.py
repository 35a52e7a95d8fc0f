"""The sharpness benchmark's estimator (benchmarks/bench_temperature.py), behind docs/known-limits.md's temperature table."""

import sys
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    monkeypatch.delitem(sys.modules, "common", raising=False)
    import bench_temperature

    return bench_temperature


@pytest.mark.parametrize("true_gamma", [0.9, 1.0, 1.12])
def test_fitted_gamma_recovers_the_sharpness_of_a_miscalibrated_prediction(bench, true_gamma):
    """A prediction ``lambda**(1/g)`` (too sharp for g < 1) is brought back to the truth by ``gamma = g``:
    the held-out photons' likelihood finds it, and the squared error at it is the smallest."""
    rng = np.random.default_rng(0)
    clean = rng.gamma(0.7, 3.0, size=(128, 128))
    prediction = bench.sharpened(clean, 1 / true_gamma)
    pairs = [(prediction, rng.poisson(0.2 * clean).astype(np.float64)) for _ in range(4)]
    fitted = bench.fitted_gamma(pairs)
    assert fitted == pytest.approx(true_gamma, abs=0.02)
    errors = {gamma: float(((bench.sharpened(prediction, gamma) - clean) ** 2).mean()) for gamma in (true_gamma * 0.95, true_gamma, true_gamma * 1.05)}
    assert errors[true_gamma] < min(errors[true_gamma * 0.95], errors[true_gamma * 1.05])


def test_sharpened_keeps_the_photons_and_is_the_softmax_of_scaled_logits(bench):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(32, 32))
    mmse = np.exp(logits) / np.exp(logits).sum() * 500.0
    scaled = np.exp(0.8 * logits) / np.exp(0.8 * logits).sum() * 500.0
    np.testing.assert_allclose(bench.sharpened(mmse, 0.8), scaled, rtol=1e-9)
    assert bench.sharpened(mmse, 1.3).sum() == pytest.approx(500.0)
