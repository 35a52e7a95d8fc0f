"""The sampling loop: steps until the stop rule, reporting each one; generation is the loop from zeros."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from photongap.errors import PhotongapError
from photongap.physics import mmse_from_logits, photons_per_pixel, pseudo_psnr
from photongap.runtime import LogitsFn
from photongap.sampling.predictive import DirichletPosterior, centred, checked_logits, draw_variance, final_estimate, predict, prior_variance
from photongap.sampling.step import dirichlet_step, sample_step
from photongap.sampling.stop import StopRule
from photongap.schedule import PUBLISHED_SCHEDULE, PhotonSchedule


@dataclass(frozen=True)
class StepState:
    """What the loop reports after each step (to ``on_step``: progress bars, movies).

    Attributes
    ----------
    step : int
        Steps done so far (1 after the first network call).
    counts : torch.Tensor
        ``(B, 1, Y, X)`` accumulated photons of the whole batch after this step.
    logits : torch.Tensor
        ``(A, 1, Y, X)`` the logits this step drew from, for the active images only.
    active : torch.Tensor
        ``(A,)`` batch indices of the images this step updated (rows of ``logits``).
    photons_per_pixel : torch.Tensor
        ``(B,)`` level of each image after this step.
    done : torch.Tensor
        ``(B,)`` bool, images that have reached the stop rule (frozen from now on).
    predictive : torch.Tensor or None
        ``(A, 1, Y, X)`` where the step's photons were drawn from, when that is not the
        softmax of ``logits`` (the Dirichlet sampler: ``logits`` are then of a thinned copy).
    """

    step: int
    counts: torch.Tensor
    logits: torch.Tensor
    active: torch.Tensor
    photons_per_pixel: torch.Tensor
    done: torch.Tensor
    predictive: torch.Tensor | None = None

    @property
    def probabilities(self) -> torch.Tensor:
        """``(A, 1, Y, X)`` where the next photon lands: the predictive, else the softmax of ``logits``."""
        if self.predictive is not None:
            return self.predictive
        return mmse_from_logits(self.logits, torch.ones(self.logits.shape[0], device=self.logits.device))


@dataclass(frozen=True)
class SamplingResult:
    """Samples from accumulated photons.

    Attributes
    ----------
    samples : torch.Tensor
        ``(B, 1, Y, X)`` the final estimate of each image, ``softmax(logits(counts)) * scale_to``
        (the Dirichlet sampler: a draw from, or the mean of, the final predictive, times ``scale_to``).
    counts : torch.Tensor
        ``(B, 1, Y, X)`` the accumulated photons at the end.
    steps : int
        Steps of the loop (batched network calls before the final estimate).
    steps_per_sample : torch.Tensor
        ``(B,)`` steps each image took before it was frozen.
    reached_stop : torch.Tensor
        ``(B,)`` bool; False where ``max_steps`` ended the loop before the image's target.
    thinned_per_sample : torch.Tensor or None
        ``(B,)`` network calls (the final one included) whose input was a thinned copy of the
        image: each is one binomial thinning draw. None without a Dirichlet posterior.
    """

    samples: torch.Tensor
    counts: torch.Tensor
    steps: int
    steps_per_sample: torch.Tensor
    reached_stop: torch.Tensor
    thinned_per_sample: torch.Tensor | None = None

    @property
    def network_calls(self) -> int:
        """Batched calls of the logits function: the steps plus the final estimate."""
        return self.steps + 1


@dataclass(frozen=True)
class PosteriorSamples:
    """Samples of clean images as numpy arrays, and their per-pixel summary.

    Attributes
    ----------
    samples : np.ndarray
        ``(n, Y, X)`` float32 in the photon units of the input (for generation: photons
        of the final level).
    mean, std : np.ndarray
        ``(Y, X)`` per-pixel mean and standard deviation over the samples (the std is the
        uncertainty map).
    steps : int
        Photon-adding steps of the longest sample.
    network_calls : int
        Network calls per sample, including the final estimate (not the gain's).
    thinned_calls : int
        Of those, the calls made on a thinned copy (each after one binomial thinning draw).
    gain : float or None
        The Dirichlet sampler's gain ``g`` (None: the plain loop).
    gain_calls : int
        Network calls spent estimating ``g`` from the image, once for all samples (0 when
        given or read from the model file).
    gain_resolved : bool or None
        Whether the image's held-out photons resolved the network's error, so that ``g`` is
        measured; False: they were too few, and the samples' total spread rests mostly on the
        network's own estimate of its error, which they only adjust (see
        :func:`photongap.sampling.gain.sampler_gain`). None: ``g`` was given, or the plain loop.
    """

    samples: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    steps: int
    network_calls: int
    thinned_calls: int = 0
    gain: float | None = None
    gain_calls: int = 0
    gain_resolved: bool | None = None

    @classmethod
    def from_result(cls, result: SamplingResult, gain: float | None = None, gain_calls: int = 0, gain_resolved: bool | None = None) -> PosteriorSamples:
        samples = result.samples[:, 0].float().cpu().numpy()
        std = samples.std(axis=0, ddof=1) if len(samples) > 1 else np.zeros_like(samples[0])
        thinned = 0 if result.thinned_per_sample is None else int(result.thinned_per_sample.max())
        return cls(samples, samples.mean(axis=0), std.astype(np.float32), result.steps, result.network_calls, thinned, gain, gain_calls, gain_resolved)


def _check_counts(counts: torch.Tensor) -> torch.Tensor:
    if not isinstance(counts, torch.Tensor) or counts.dim() not in (4, 5) or counts.shape[1] != 1 or counts.shape[0] == 0:
        shape = tuple(counts.shape) if isinstance(counts, torch.Tensor) else type(counts).__name__
        raise PhotongapError(f"counts must have shape (B, 1, Y, X) or (B, 1, D, Y, X) with B >= 1, got {shape}")
    counts = counts.float()
    if not torch.isfinite(counts).all():
        raise PhotongapError("counts contain NaN or infinite values")
    if (counts < 0).any():
        raise PhotongapError(
            f"counts must be non-negative photon counts (minimum {float(counts.min()):g}); convert camera ADU with photongap.camera.Camera(gain, offset).to_counts"
        )
    return counts


def _check_start(counts: torch.Tensor, stop: StopRule) -> None:
    done = stop.done(counts)
    if done.any():
        index = int(done.nonzero()[0, 0])
        level = float(pseudo_psnr(counts[index : index + 1].double()).reshape(()))
        photons = float(counts[index].double().sum())
        targets = " or ".join(
            text
            for text in (
                f"{stop.target_psnr:g} dB" if stop.target_psnr is not None else "",
                f"{stop.target_photons:g} photons" if stop.target_photons is not None else "",
            )
            if text
        )
        raise PhotongapError(
            f"the stop target ({targets}) is not above image {index}'s current level "
            f"({level:.2f} dB, {photons:g} photons): raise the target to sample"
        )


def _check_scale(scale_to: torch.Tensor | float | None, batch: int, device: torch.device) -> torch.Tensor | None:
    if scale_to is None:
        return None
    scale = torch.as_tensor(scale_to, dtype=torch.float64, device=device).reshape(-1)
    if scale.numel() == 1:
        scale = scale.expand(batch)
    if scale.shape != (batch,):
        raise PhotongapError(f"scale_to must hold one value per image ({batch}), got {scale.numel()}")
    if not (torch.isfinite(scale).all() and (scale >= 0).all()):
        raise PhotongapError("scale_to must be finite and non-negative photon totals")
    return scale


def accumulate_photons(
    logits_fn: LogitsFn,
    counts: torch.Tensor,
    *,
    scale_to: torch.Tensor | float | None,
    schedule: PhotonSchedule = PUBLISHED_SCHEDULE,
    stop: StopRule = StopRule(),
    generator: torch.Generator | None = None,
    on_step: Callable[[StepState], None] | None = None,
    posterior: DirichletPosterior | None = None,
) -> SamplingResult:
    """Posterior samples: add predicted photons to ``counts`` until the stop rule holds.

    Each step ``x <- x + Poisson(softmax(logits_fn(x)) * n)`` with ``n`` from the schedule.
    Images that reach the stop rule are frozen and leave the batch given to
    ``logits_fn``, so they cost no further network work. At the end one more
    call on the final counts gives each sample ``softmax(logits_fn(x)) * scale_to``: the
    clean image given all accumulated photons, in the photon units of ``scale_to``.

    With a :class:`DirichletPosterior` each step predicts with
    :func:`~photongap.sampling.predictive.predict` instead (the network runs on a copy thinned
    to the trained top whenever ``x`` is brighter, the photons thinned away update it pixel
    by pixel) and draws from the Dirichlet-multinomial predictive
    (:func:`~photongap.sampling.step.dirichlet_step`: the schedule's ``dispersion`` is replaced
    by the predictive's own strength). The sample is one draw ``q ~ Dir(alpha_T)`` of the
    final predictive times ``scale_to`` (``final="draw"``), or its mean; with ``centre`` (a
    batch of samples of one image) the final predictives are first drawn back to average to
    the first one (:func:`~photongap.sampling.predictive.centred`), and the draw adds only
    the variance their spread leaves of the first predictive's
    (:func:`~photongap.sampling.predictive.draw_variance`).

    Parameters
    ----------
    logits_fn : LogitsFn
        Counts ``(B, 1, Y, X)`` float32 to logits of the same shape.
    counts : torch.Tensor
        ``(B, 1, Y, X)`` non-negative noisy counts to start from (repeat one image
        ``B`` times for ``B`` samples of its posterior).
    scale_to : torch.Tensor, float or None
        ``(B,)`` photon totals of the samples, usually the input's ``counts.sum((1, 2, 3))``
        so that samples compare with the MMSE ``softmax(logits) * sum(x)`` of the input.
        None: the final accumulated photons.
    schedule : PhotonSchedule
        Photons per step (default: the published ``beta = 0.1``).
    stop : StopRule
        When each image is finished (default: pseudo-PSNR 20 dB).
    generator : torch.Generator, optional
        Source of randomness, on the device of ``counts``; same seed, same samples.
    on_step : callable, optional
        Called with a :class:`StepState` after every step (progress, movies). Tensors in
        it are not modified later, but copy what you keep to save memory.
    posterior : DirichletPosterior, optional
        The Dirichlet sampler's gain, trained top and ending; None: the plain loop above.

    Returns
    -------
    SamplingResult

    Examples
    --------
    >>> noisy = torch.poisson(torch.full((1, 1, 16, 16), 2.0))
    >>> flat = lambda counts: torch.zeros_like(counts)  # stands in for a network
    >>> result = accumulate_photons(flat, noisy.expand(4, -1, -1, -1), scale_to=noisy.sum(),
    ...                             stop=StopRule(target_psnr=10.0), generator=torch.Generator().manual_seed(0))
    >>> result.samples.shape, bool(result.reached_stop.all())
    (torch.Size([4, 1, 16, 16]), True)
    """
    counts = _check_counts(counts)
    batch = counts.shape[0]
    num_pixels = counts[0, 0].numel()  # voxels of a volume: one image, one softmax
    spatial = tuple(range(1, counts.dim()))
    scale = _check_scale(scale_to, batch, counts.device)
    _check_start(counts, stop)

    steps_per_sample = torch.zeros(batch, dtype=torch.long, device=counts.device)
    thinned_per_sample = torch.zeros(batch, dtype=torch.long, device=counts.device)
    done = torch.zeros(batch, dtype=torch.bool, device=counts.device)
    active = torch.arange(batch, device=counts.device)
    first = variance = None  # the batch's mean predictive at step 1 and its variance (for DirichletPosterior.centre)
    step = 0
    while active.numel() > 0 and step < stop.max_steps:
        step += 1
        current = counts[active]
        photons = schedule.photons_to_add(current.double().sum(dim=spatial), num_pixels)
        predictive = None
        if posterior is None:
            logits = checked_logits(logits_fn, current, step)
            updated = sample_step(logits, current, photons, generator, schedule.dispersion)
        else:
            prediction = predict(logits_fn, current, posterior, generator, step)
            logits, predictive = prediction.logits, prediction.predictive.probabilities
            if posterior.centre and first is None:
                first = predictive.double().mean(dim=0, keepdim=True)
                variance = prior_variance(prediction.predictive)
            thinned_per_sample = thinned_per_sample.index_add(0, active, prediction.thinned.long())
            updated = dirichlet_step(prediction.predictive, current, photons, generator)
        # A new tensor each step (not an in-place write), so the counts handed to
        # on_step stay as they were when a callback keeps them.
        counts = counts.index_copy(0, active, updated)
        steps_per_sample = steps_per_sample.index_add(0, active, torch.ones_like(active))
        finished = stop.done(updated)
        done = done.index_copy(0, active, finished)
        if on_step is not None:
            level = photons_per_pixel(counts.double()).reshape(-1)
            on_step(StepState(step, counts, logits, active, level, done, predictive))
        active = active[~finished]

    total = scale if scale is not None else counts.double().sum(dim=spatial)
    if posterior is None:
        final_logits = checked_logits(logits_fn, counts, step + 1)
        return SamplingResult(mmse_from_logits(final_logits, total), counts, step, steps_per_sample, done)
    prediction = predict(logits_fn, counts, posterior, generator, step + 1)
    thinned_per_sample = thinned_per_sample + prediction.thinned.long()
    allowed = None
    if first is not None:
        prediction = centred(prediction, first)
        allowed = draw_variance(prediction, first, variance)
    samples = final_estimate(prediction, total, posterior.final, generator, allowed)
    return SamplingResult(samples, counts, step, steps_per_sample, done, thinned_per_sample)


def generate(
    logits_fn: LogitsFn,
    shape: tuple[int, int],
    n: int,
    *,
    schedule: PhotonSchedule = PUBLISHED_SCHEDULE,
    stop: StopRule = StopRule(),
    generator: torch.Generator | None = None,
    on_step: Callable[[StepState], None] | None = None,
    device: torch.device | str | None = None,
    posterior: DirichletPosterior | None = None,
) -> SamplingResult:
    """New images from an empty canvas: :func:`accumulate_photons` started from zeros.

    The first steps add ``max(beta * 0, 1) = 1`` photon (in expectation) at a time; the
    network must have been trained down to very low levels (absolute splits from about
    -40 dB) for the first photons to land sensibly.

    Parameters
    ----------
    logits_fn : LogitsFn
        Counts to logits, as for :func:`accumulate_photons`.
    shape : tuple of int
        ``(Y, X)`` of the images.
    n : int
        Number of images.
    schedule, stop, generator, on_step, posterior
        As for :func:`accumulate_photons`.
    device : torch.device or str, optional
        Where the canvas lives (default: the generator's device, else CPU).

    Returns
    -------
    SamplingResult
        ``samples`` are ``softmax(logits) * final photons`` (no input units to return to).
    """
    if len(shape) not in (2, 3) or any(int(side) < 1 for side in shape):
        raise PhotongapError(f"shape must be (Y, X), or (D, Y, X) for a 3D network, with positive sides, got {tuple(shape)}")
    if n < 1:
        raise PhotongapError(f"the number of images must be at least 1, got {n}")
    if device is None:
        device = generator.device if generator is not None else "cpu"
    canvas = torch.zeros(n, 1, *(int(side) for side in shape), device=device)
    return accumulate_photons(
        logits_fn, canvas, scale_to=None, schedule=schedule, stop=stop, generator=generator, on_step=on_step, posterior=posterior
    )
