"""The posterior gain on one image: what a network's prediction is worth in photons, measured without ground truth.

The Dirichlet sampler (:mod:`photongap.sampling.predictive`) reads the network's prediction
from ``y`` photons as ``g * sum(y)`` photons of evidence. ``g`` is measured on the image itself,
on held-out photons (:func:`held_out_gain`); where they are too few to measure it alone, they
update the network's own estimate of its error (:func:`sampler_gain`). It is spread over the
image as the network's own variance is (:func:`spread_gain`). Like the rest of the sampler these call a
:data:`~photongap.runtime.LogitsFn`, never a module: :class:`photongap.model.GapModel` passes
its network (``estimate_gain``, ``gain_map``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from photongap.errors import PhotongapError
from photongap.physics import mmse_from_logits, split_counts
from photongap.posterior import HeldOutError, gain_at_level, gain_given_prior, held_out_error, thin_to_level
from photongap.robbins import lattice_offsets, probe_halves, probes_per_pixel, robbins_gain_map, robbins_lattice, self_response
from photongap.runtime import LogitsFn

ShareLogits = Callable[[float], LogitsFn]
"""For a network that reads the share of the image's photons its input holds (``level_input``): the network at a share."""


class SamplerNetwork(NamedTuple):
    """What the Dirichlet sampler runs: ``logits`` at its own level, the ``trained`` range it thins to, and ``at_share`` (or None)."""

    logits: LogitsFn
    trained: tuple[float, float] | None
    at_share: ShareLogits | None


GAIN_FRACTIONS = (0.5, 0.7)
"""Binomial fractions ``q1, q2`` of the held-out splits the posterior gain is measured at (of the sampler's level)."""
GAIN_REPEATS = 6
"""Held-out splits per fraction: ``len(GAIN_FRACTIONS) * GAIN_REPEATS`` network calls, once per image."""
GAIN_RESOLVED_SD = 4.0
"""The held-out photons measure the network's error alone where it is at least this many of its
standard errors (their gain then has about 25% noise, less than the network's own has error:
:data:`~photongap.posterior.OWN_GAIN_SD`); below it they update the network's own gain
(:func:`sampler_gain`). At 2, the held-out gain alone was used on more images, and the noise
chose them: an error pushed up by it passed, one pushed down did not. On the 16 held-out planes
of a nuclei z-stack at 0.1 photons/px the gain used then came to a median 0.80 of the truth, now
0.89 (benchmarks/bench_gain.py), and their samples held the truth inside their central 80% at
84.6-88.4% of pixels over three draws, now 83.6-85.7% (benchmarks/bench_sampling.py)."""


@dataclass(frozen=True)
class HeldOutGain:
    """The held-out errors of one image (:func:`held_out_gain`) and the gain they give.

    Attributes
    ----------
    points : tuple
        ``(q, S, E, s)`` per fraction, lowest first: the level ``q`` (of the image's photons),
        the photons ``S`` of the split's input, the held-out error ``E`` of its estimate
        (:func:`photongap.posterior.held_out_error`, averaged over the repeats) and its standard
        error ``s`` (:func:`error_of_mean`).
    level : float
        The level (fraction of the image's photons) the sampler runs the network at.
    """

    points: tuple[tuple[float, float, float, float], ...]
    level: float

    @property
    def gain(self) -> float:
        """The gain at ``level`` from the held-out errors alone (an error under one standard error taken as one)."""
        return gain_at_level([(q, S / max(E, s), s / max(E, s)) for q, S, E, s in self.points], self.level)

    @property
    def resolved(self) -> bool:
        """Whether the error at the lowest fraction is at least :data:`GAIN_RESOLVED_SD` standard errors."""
        _, _, error, standard_error = self.points[0]
        return error >= GAIN_RESOLVED_SD * standard_error


def held_out_gain(
    counts: np.ndarray,
    logits: LogitsFn,
    trained: tuple[float, float] | None,
    *,
    fractions: tuple[float, ...] = GAIN_FRACTIONS,
    repeats: int = GAIN_REPEATS,
    seed: int = 0,
    device: torch.device,
    at_share: ShareLogits | None = None,
) -> HeldOutGain:
    """The network's held-out errors on ``counts``, and the gain ``g`` they give: ``len(fractions) * repeats`` calls.

    The gain is wanted at the level the sampler runs the network at: the image's, or the top
    ``trained[1]`` (dB) of the trained range where the image is brighter (``f``, as a fraction of
    its photons). Measured there directly (``q`` near 1) it is swamped by the noise of the few
    held-out photons (its relative noise grows as ``q / (1 - q)``), so it is measured at lower
    fractions ``q`` (``fractions`` times ``f``: ``y ~ Binomial(x, q)``, ``z = x - y``, the error
    of :func:`photongap.posterior.held_out_error` averaged over the ``repeats``, its noise from
    :func:`error_of_mean`, ``g(q) = sum(y) / error``) and carried to ``f`` on a power law fitted
    through them, each weighted by its noise (:func:`photongap.posterior.gain_at_level`;
    :attr:`HeldOutGain.gain`). On the held-out images of two data sets at 1 and 0.1 photons/px
    this came within 0.69-1.18 of the true gain, except on two dim time-lapse frames (1.6 and
    2.2; benchmarks/bench_gain.py). The default fractions keep both inside a default-preset
    model's trained range (its lowest inputs are half the data's photons). Where the error is
    not :attr:`HeldOutGain.resolved`, :func:`sampler_gain` weighs it against the network's own.
    ``at_share``: for a ``level_input`` network, the network told each split's share of the
    image's photons (``logits`` is then not called).
    """
    counts = np.asarray(counts, dtype=np.float32)
    total = float(counts.sum(dtype=np.float64))
    if not total > 0:
        raise PhotongapError(f"cannot estimate the posterior gain of an image without photons ({total:g}); pass gain=")
    level = 1.0
    if trained is not None:
        level = min(1.0, 10 ** (trained[1] / 10) * counts.size / total)
    generator = torch.Generator(device=device).manual_seed(seed)
    image = torch.from_numpy(counts).to(device)[None, None].expand(repeats, 1, *counts.shape).contiguous()
    points = []
    for fraction in sorted(fractions):
        split = split_counts(image, torch.full((repeats,), fraction * level, device=device), generator)
        photons = split.input_counts.double().flatten(1).sum(dim=1)
        network = at_share(fraction * level) if at_share is not None else logits
        estimate = mmse_from_logits(network(split.input_counts), photons)
        error, standard_error = error_of_mean(
            [held_out_error(estimate[r : r + 1], split.target_counts[r : r + 1], fraction * level) for r in range(repeats)]
        )
        if not (math.isfinite(error) and standard_error > 0 and float(photons.mean()) > 0):
            raise PhotongapError(f"cannot estimate the posterior gain of an image with {total:g} photons; pass gain=")
        points.append((fraction * level, float(photons.mean()), error, standard_error))
    return HeldOutGain(tuple(points), level)


def sampler_gain(held_out: HeldOutGain, own: float) -> float:
    """The gain the sampler uses: the held-out one where it is resolved, else the network's ``own`` updated by the held-out errors.

    The network's own gain (:func:`spread_gain`) is its belief, off by a factor of about
    ``exp(OWN_GAIN_SD)`` from image to image; on a dim image the held-out errors are noisier than
    that and only move it (:func:`photongap.posterior.gain_given_prior`). Across the planes of
    a z-stack and a time-lapse at 0.1 photons/px this roughly halved the scatter of the gain
    against the truth (log standard deviation 0.25-0.47 to 0.10-0.29 per data set and draw, three
    draws; a throwaway script running both rules on benchmarks/bench_gain.py's images).
    """
    if held_out.resolved:
        return held_out.gain
    return gain_given_prior(held_out.points, held_out.level, own)


def error_of_mean(errors: list[HeldOutError]) -> tuple[float, float]:
    """The mean of held-out errors of one image over repeated splits, and its standard error.

    Each split's standard error (from its pixels) is the whole noise of one estimate: that of
    the split, which repeats average away, and that of the image's own photons, which they
    share. The spread between the repeats measures the first; the second is what is left.
    """
    values = [float(error.error) for error in errors]
    single = sum(float(error.standard_error) ** 2 for error in errors) / len(errors)
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.sqrt(single)
    between = sum((value - mean) ** 2 for value in values) / (len(values) - 1)
    return mean, math.sqrt(max(single - between, 0.0) + between / len(values))


def spread_gain(
    counts: np.ndarray,
    gain: float | HeldOutGain | None,
    logits: LogitsFn,
    trained: tuple[float, float] | None,
    *,
    seed: int = 0,
    device: torch.device,
    at_share: ShareLogits | None = None,
) -> tuple[torch.Tensor, float]:
    """A gain spread over the image as the network's own variance is: :func:`spread_calls` network calls (19 for an image, 37 for a volume).

    ``y``: ``counts`` thinned to the trained top ``trained[1]`` where brighter (what the sampler
    predicts from), then by as many photons as one call's probes add, so that the network is run
    inside its trained range. The network is run on ``y``, and on ``y`` plus one photon at each
    point of the two halves of every lattice of :func:`photongap.robbins.probe_halves` (spacing
    and grid of read pixels: :func:`photongap.robbins.robbins_lattice`; a photon in 72 pixels per
    call); :func:`photongap.robbins.self_response` reads the grid's pixels' own responses from
    them and :func:`photongap.robbins.robbins_gain_map` turns them into a map ``g_i``, scaled so
    that ``sum(mu / g_i) = sum(y) / gain``: the total posterior variance stays the one measured
    on held-out photons. ``gain``: that gain; the held-out errors of :func:`held_out_gain` (the
    gain is then :func:`sampler_gain`'s, from them and the network's own overall gain); or None,
    the network's own. ``at_share``: as in :func:`held_out_gain`. Returns the map (``(1, 1, Y, X)``,
    a volume's ``(1, 1, D, Y, X)``) float64 on ``device`` and the overall gain it was scaled to.
    """
    counts = np.asarray(counts, dtype=np.float32)
    generator = torch.Generator(device=device).manual_seed(seed)
    image = torch.from_numpy(counts).to(device)[None, None]
    if trained is not None:
        image = thin_to_level(image, 10 ** (trained[1] / 10), generator).thinned
    spacing, grid = robbins_lattice(image.dim() - 2)
    level = float(image.double().mean())
    if not level > 0:
        raise PhotongapError("cannot map the posterior gain over an image without photons; pass gain=")
    probes = probes_per_pixel(spacing)
    image = thin_to_level(image, level * level / (level + probes), generator).thinned
    photons = float(image.double().sum())
    if at_share is not None:
        logits = at_share(photons / max(float(counts.sum(dtype=np.float64)), 1.0))
    mean = mmse_from_logits(logits(image), torch.tensor([photons], dtype=torch.float64, device=device)).double()
    response = torch.zeros_like(mean)
    for first, second in probe_halves(image, spacing, generator, grid):
        both = torch.cat([image + first, image + second])
        probed = mmse_from_logits(logits(both), both.double().flatten(1).sum(dim=1))
        response += self_response(probed[:1], probed[1:], first, second)
    shape = robbins_gain_map(response, grid=grid)
    own = photons / float((mean / shape).sum())
    used = own if gain is None else sampler_gain(gain, own) if isinstance(gain, HeldOutGain) else float(gain)
    return shape * (used / own), used


def spread_calls(dims: int) -> int:
    """Network calls of :func:`spread_gain` for images of ``dims`` spatial axes."""
    return 1 + 2 * len(lattice_offsets(*robbins_lattice(dims)))
