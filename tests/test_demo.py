"""The demo: a tiny run end to end, and a figure that names the photon level it simulated."""

from __future__ import annotations

import json

import pytest

import photongap.demo
from photongap.model import GapModel


@pytest.fixture()
def captured_titles(monkeypatch) -> list[list[str]]:
    """The column titles of every comparison figure the demo draws (the figure is still written)."""
    titles: list[list[str]] = []
    draw = photongap.demo.plot_comparison

    def recording(rows, column_titles, path, **options):
        titles.append(list(column_titles))
        return draw(rows, column_titles, path, **options)

    monkeypatch.setattr(photongap.demo, "plot_comparison", recording)
    return titles


def test_a_tiny_demo_writes_its_outputs_at_the_requested_level(tmp_path, captured_titles):
    result = photongap.demo.run_demo(tmp_path, photons_per_pixel=0.5, steps=3, minutes=1.0, device="cpu", progress=False)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["photons_per_pixel"] == 0.5 and metrics["steps"] == result.steps == 3
    assert len(metrics["psnr_per_image"]) == 8
    assert (tmp_path / "comparison.png").read_bytes().startswith(b"\x89PNG")
    assert len(list((tmp_path / "denoised").glob("*.tif"))) == len(list((tmp_path / "noisy").glob("*.tif"))) == 8
    model = GapModel.load(tmp_path / "run" / "model.pt")
    assert model.info["data"]["photons_per_pixel"] == pytest.approx(0.5, rel=0.05)  # trained on the requested level
    assert captured_titles == [["noisy (0.5 photons/px)", "photongap", "ground truth"]]


@pytest.mark.parametrize(("photons", "title"), [(1.0, "noisy (1 photon/px)"), (0.1, "noisy (0.1 photons/px)"), (30.0, "noisy (30 photons/px)")])
def test_the_comparison_names_the_photon_level(photons, title):
    assert photongap.demo.comparison_titles(photons) == [title, "photongap", "ground truth"]
