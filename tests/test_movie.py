"""The movie recorder: frames of one image during sampling, bounded memory, atomic files."""

from __future__ import annotations

import importlib.util

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from photongap.errors import PhotongapError
from photongap.movie import MovieRecorder
from photongap.sampling import StopRule, accumulate_photons, generate


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ramp(counts: torch.Tensor) -> torch.Tensor:
    """Logits brighter to the right: the prediction panel shows a gradient."""
    x = torch.linspace(0.0, 3.0, counts.shape[-1], device=counts.device)
    return x.expand(counts.shape).clone()


def record(recorder: MovieRecorder, images: int = 1, target_psnr: float = 10.0) -> int:
    result = generate(ramp, (16, 16), images, stop=StopRule(target_psnr=target_psnr), generator=seeded(0), on_step=recorder)
    return int(result.steps_per_sample[recorder.sample])


def test_keeps_the_first_every_kth_and_final_step():
    recorder = MovieRecorder(every=5, size=32)
    steps = record(recorder)
    expected = sorted({1, steps} | set(range(5, steps + 1, 5)))
    assert recorder.steps == expected
    assert len(recorder) == len(expected)
    frame = recorder.frames[0]
    assert frame.dtype == np.uint8 and frame.ndim == 2
    assert frame.shape[1] == 2 * 32 + 4  # two panels upscaled to 32 px, a 4 px gap


def test_memory_is_bounded_and_spans_the_whole_run():
    recorder = MovieRecorder(every=1, max_frames=6, size=16)
    steps = record(recorder, target_psnr=15.0)
    assert steps > 50
    assert len(recorder) <= 7
    assert recorder.steps[0] == 1 and recorder.steps[-1] == steps
    assert all(step % recorder.every == 0 for step in recorder.steps[1:-1])


def test_films_the_chosen_sample_until_it_is_done():
    # Image 1 starts near the target and finishes first; film it.
    start = torch.cat([torch.full((1, 1, 8, 8), 0.5), torch.full((1, 1, 8, 8), 8.0)])
    recorder = MovieRecorder(sample=1, size=8)
    result = accumulate_photons(ramp, start, scale_to=None, stop=StopRule(target_psnr=10.0), generator=seeded(1), on_step=recorder)
    assert recorder.steps == list(range(1, int(result.steps_per_sample[1]) + 1))
    assert result.steps > recorder.steps[-1]


def test_single_photons_are_visible_and_the_prediction_is_stretched():
    recorder = MovieRecorder(size=16, text=False)
    record(recorder)
    # The first frame in which photons have landed holds only a few of them.
    first = next(frame for frame in recorder.frames if frame[:, :16].max() > 0)
    photons, prediction = first[:, :16], first[:, 20:]
    assert photons.max() == 255 and (photons == 0).mean() > 0.9
    assert prediction[:, 0].max() == 0 and prediction[:, -1].min() == 255


def test_gif_is_written_and_has_every_frame(tmp_path):
    recorder = MovieRecorder(every=3, size=32)
    record(recorder)
    path = recorder.save(tmp_path / "generation.gif", fps=20)
    movie = iio.imread(path, index=None)
    assert movie.shape[0] == len(recorder)
    assert movie.shape[1:3] == recorder.frames[0].shape
    assert [p.name for p in tmp_path.iterdir()] == ["generation.gif"]


def test_mp4_is_written_when_imageio_ffmpeg_is_installed(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    recorder = MovieRecorder(every=4, size=32)
    record(recorder)
    path = recorder.save(tmp_path / "generation.mp4")
    assert iio.imread(path, index=None, plugin="FFMPEG").shape[0] == len(recorder)
    assert [p.name for p in tmp_path.iterdir()] == ["generation.mp4"]


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    recorder = MovieRecorder(size=16)
    record(recorder)

    def broken(path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"GIF89a partial")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(iio, "imwrite", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        recorder.save(tmp_path / "generation.gif")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_movie_survives_a_failed_write(tmp_path, monkeypatch):
    recorder = MovieRecorder(size=16)
    record(recorder)
    path = recorder.save(tmp_path / "generation.gif")
    before = path.read_bytes()
    monkeypatch.setattr(iio, "imwrite", lambda *args, **kwargs: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(PhotongapError, match="No space left"):
        recorder.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["generation.gif"]


def test_mp4_without_imageio_ffmpeg_says_how_to_fix_it(tmp_path, monkeypatch):
    recorder = MovieRecorder(size=16)
    record(recorder)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "imageio_ffmpeg" else real(name, *a))
    with pytest.raises(PhotongapError, match="pip install imageio-ffmpeg"):
        recorder.save(tmp_path / "generation.mp4")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["generation.png", "generation"])
def test_unknown_format_raises(tmp_path, name):
    recorder = MovieRecorder(size=16)
    record(recorder)
    with pytest.raises(PhotongapError, match=r"\.gif or \.mp4"):
        recorder.save(tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_empty_recorder_and_bad_settings_raise(tmp_path):
    with pytest.raises(PhotongapError, match="no frames"):
        MovieRecorder().save(tmp_path / "empty.gif")
    for settings in ({"every": 0}, {"max_frames": 2}, {"gamma": 0.0}, {"percentile": 40.0}):
        with pytest.raises(PhotongapError):
            MovieRecorder(**settings)
