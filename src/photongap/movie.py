"""Movies of photon accumulation: the photons so far beside the current prediction.

A :class:`MovieRecorder` is an ``on_step`` callback for the sampling loop
(:func:`photongap.sampling.accumulate_photons`, :func:`photongap.sampling.generate`);
it keeps display-ready frames of one image of the batch, in bounded memory, and
writes them as a GIF or MP4. The sampler itself draws nothing.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch

from photongap.errors import PhotongapError
from photongap.physics import mmse_from_logits
from photongap.io import atomic_output
from photongap.sampling import StepState

_GAP_PIXELS = 4
_TEXT_PIXELS = 16


class MovieRecorder:
    """Record frames of one image while photons accumulate, as in the GAP paper's videos.

    Each frame shows, side by side, the accumulated photons (``(counts / high) ** gamma``,
    so that single photons stay visible next to bright pixels) and the prediction the
    step drew its photons from (``softmax(logits)``, stretched between low and high
    percentiles), with the step and the photons per pixel written below. A volume (a 3D
    model's) is shown as the maximum projection of both along its third axis. Each frame is
    scaled on its own. Frames are resized to about ``size`` pixels high (nearest
    neighbour up, block mean down) and stored as uint8 grey.

    Memory is bounded: every ``every``-th step is kept, and when more than ``max_frames``
    frames are held, every other one is dropped and ``every`` doubles, so a movie spans
    the whole run however long it is. The first step and the step at which the image
    reaches the stop rule are always kept.

    Parameters
    ----------
    every : int
        Keep every ``every``-th step (to start with).
    max_frames : int
        Most frames held at once (at least 3).
    sample : int
        Which image of the batch to film.
    size : int
        Approximate frame height in pixels.
    gamma : float
        Display exponent for the photon counts (< 1 brightens single photons).
    percentile : float
        Upper display percentile (the prediction's lower one is ``100 - percentile``).
    text : bool
        Write the step and the level under each frame.

    Examples
    --------
    >>> recorder = MovieRecorder(every=2)
    >>> result = generate(logits_fn, (64, 64), 1, on_step=recorder)  # doctest: +SKIP
    >>> recorder.save("generation.gif")  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        every: int = 1,
        max_frames: int = 200,
        sample: int = 0,
        size: int = 256,
        gamma: float = 0.5,
        percentile: float = 99.5,
        text: bool = True,
    ) -> None:
        if every < 1 or max_frames < 3 or sample < 0 or size < 8:
            raise PhotongapError("movie: every >= 1, max_frames >= 3, sample >= 0 and size >= 8 are required")
        if not (gamma > 0 and 50.0 < percentile <= 100.0):
            raise PhotongapError("movie: gamma must be positive and percentile in (50, 100]")
        self.every = every
        self.max_frames = max_frames
        self.sample = sample
        self.size = size
        self.gamma = gamma
        self.percentile = percentile
        self.text = text
        self._frames: list[np.ndarray] = []
        self._steps: list[int] = []

    @property
    def frames(self) -> list[np.ndarray]:
        """The frames held, ``(H, W)`` uint8 each, oldest first."""
        return list(self._frames)

    @property
    def steps(self) -> list[int]:
        """The sampling step of each frame."""
        return list(self._steps)

    def __len__(self) -> int:
        return len(self._frames)

    def __call__(self, state: StepState) -> None:
        """Take a frame from a sampling step (the ``on_step`` callback)."""
        rows = (state.active == self.sample).nonzero()
        if rows.numel() == 0:
            return
        finished = bool(state.done[self.sample])
        if not (finished or state.step == 1 or state.step % self.every == 0):
            return
        row = int(rows[0, 0])
        counts = state.counts[self.sample, 0].detach().float().cpu().numpy()
        logits = state.logits[row, 0].detach().float().cpu()
        prediction = mmse_from_logits(logits[None], torch.ones(1))[0].numpy()
        if counts.ndim == 3:  # a volume (3D model): the maximum projection along D of both
            counts, prediction = counts.max(axis=0), prediction.max(axis=0)
        level = float(state.photons_per_pixel[self.sample])
        self._frames.append(self._render(counts, prediction, f"step {state.step}   {level:.3g} photons/px"))
        self._steps.append(state.step)
        if len(self._frames) > self.max_frames:
            self._thin(keep_last=finished)

    def _thin(self, keep_last: bool) -> None:
        self.every *= 2
        last = len(self._steps) - 1
        keep = [
            i for i, step in enumerate(self._steps) if i == 0 or step % self.every == 0 or (keep_last and i == last)
        ]
        self._frames = [self._frames[i] for i in keep]
        self._steps = [self._steps[i] for i in keep]

    def _resize(self, image: np.ndarray) -> np.ndarray:
        height = image.shape[0]
        if height < self.size:
            factor = max(self.size // height, 1)
            return image.repeat(factor, axis=0).repeat(factor, axis=1)
        factor = -(-height // self.size)
        if factor == 1:
            return image
        y, x = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
        blocks = image[:y, :x].reshape(y // factor, factor, x // factor, factor)
        return blocks.mean(axis=(1, 3))

    def _render(self, counts: np.ndarray, prediction: np.ndarray, caption: str) -> np.ndarray:
        counts, prediction = self._resize(counts), self._resize(prediction)
        high = float(np.percentile(counts, self.percentile))
        # Early in a generation almost every pixel is empty and the percentile is 0:
        # scale to the brightest pixel instead so that the first photons show.
        high = high if high > 0 else float(counts.max()) or 1.0
        left = np.clip(counts / high, 0.0, 1.0) ** self.gamma
        low, high = np.percentile(prediction, [100.0 - self.percentile, self.percentile])
        right = np.clip((prediction - low) / max(float(high - low), 1e-30), 0.0, 1.0)
        gap = np.zeros((left.shape[0], _GAP_PIXELS))
        frame = (np.concatenate([left, gap, right], axis=1) * 255.0 + 0.5).astype(np.uint8)
        if self.text:
            frame = np.concatenate([frame, _caption(caption, frame.shape[1])], axis=0)
        return frame

    def save(self, path: str | Path, *, fps: float = 10.0) -> Path:
        """Write the frames to ``path`` (``.gif``, or ``.mp4`` with imageio-ffmpeg), atomically.

        The movie is written under a temporary name next to ``path`` and renamed, so
        ``path`` is either the complete movie or untouched. Note that GIF writers merge
        identical consecutive frames (only possible with ``text=False``).
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if not self._frames:
            raise PhotongapError("movie: no frames recorded; pass the recorder as on_step to a sampler first")
        if suffix not in (".gif", ".mp4"):
            raise PhotongapError(f"movie: cannot write {path.name}; use a .gif or .mp4 file name")
        if suffix == ".mp4" and importlib.util.find_spec("imageio_ffmpeg") is None:
            raise PhotongapError("movie: writing .mp4 needs imageio-ffmpeg (pip install imageio-ffmpeg), or save as .gif")
        if not fps > 0:
            raise PhotongapError(f"movie: fps must be positive, got {fps}")
        try:
            with atomic_output(path) as partial:
                _write(partial, np.stack(self._frames), suffix, fps)
        except OSError as error:
            raise PhotongapError(f"movie: cannot write {path}: {error.strerror or error}") from None
        return path


def _write(path: Path, frames: np.ndarray, suffix: str, fps: float) -> None:
    import imageio.v3 as iio

    if suffix == ".gif":
        # Pillow's GIF writer takes the frame duration in milliseconds.
        iio.imwrite(path, frames, extension=".gif", duration=1000.0 / fps, loop=0)
        return
    # H.264 in yuv420p wants sides in multiples of 16; pad rather than let ffmpeg resample.
    _, height, width = frames.shape
    frames = np.pad(frames, ((0, 0), (0, -height % 16), (0, -width % 16)))
    rgb = np.repeat(frames[..., None], 3, axis=-1)
    iio.imwrite(path, rgb, plugin="FFMPEG", extension=".mp4", fps=fps)


@functools.lru_cache(maxsize=1)
def _font():  # noqa: ANN202 (a PIL font; PIL is imported lazily)
    from PIL import ImageFont

    # Pillow's built-in font: text without a font file or a new dependency.
    return ImageFont.load_default()


def _caption(text: str, width: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    strip = Image.new("L", (width, _TEXT_PIXELS), 0)
    ImageDraw.Draw(strip).text((2, 1), text, fill=255, font=_font())
    return np.asarray(strip, dtype=np.uint8)
