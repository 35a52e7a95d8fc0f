"""The posterior gain on one image: what a network's prediction is worth in photons, measured without ground truth.

The Dirichlet sampler (:mod:`photongap.sampling.predictive`) reads the network's prediction
from ``y`` photons as ``g * sum(y)`` photons of evidence. ``g`` is measured on the image itself,
on held-out photons (:func:`held_out_gain`), and spread over the image as the network's own
variance is (:func:`spread_gain`). Like the rest of the sampler these call a
:data:`~photongap.runtime.LogitsFn`, never a module: :class:`photongap.model.GapModel` passes
its network (``estimate_gain``, ``gain_map``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from photongap.errors import PhotongapError
from photongap.physics import mmse_from_logits, split_counts
from photongap.posterior import HeldOutError, gain_at_level, held_out_error, thin_to_level
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
GAIN_RESOLVED_SD = 2.0
"""The held-out photons resolve the network's error when it is at least this many of its standard errors."""


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
) -> tuple[float, bool]:
    """The network's gain ``g`` on ``counts``, and whether the held-out photons resolved its error: ``len(fractions) * repeats`` calls.

    The gain is wanted at the level the sampler runs the network at: the image's, or the top
    ``trained[1]`` (dB) of the trained range where the image is brighter (``f``, as a fraction of
    its photons). Measured there directly (``q`` near 1) it is swamped by the noise of the few
    held-out photons (its relative noise grows as ``q / (1 - q)``), so it is measured at lower
    fractions ``q`` (``fractions`` times ``f``: ``y ~ Binomial(x, q)``, ``z = x - y``, the error
    of :func:`photongap.posterior.held_out_error` averaged over the ``repeats``, its noise from
    :func:`error_of_mean`, ``g(q) = sum(y) / error``) and carried to ``f`` on a power law fitted
    through them, each weighted by its noise (:func:`photongap.posterior.gain_at_level`). On
    the held-out images of two data sets at 1 and 0.1 photons/px this came within 0.69-1.18 of
    the true gain, except on two dim time-lapse frames (1.6 and 2.2; benchmarks/bench_gain.py).
    The default fractions
    keep both inside a default-preset model's trained range (its lowest inputs are half the
    data's photons). An error below one standard error is taken as one (a gain the data can
    just tell from infinite, and weighted as that uncertain). ``resolved`` is False where the
    error at the lowest fraction was under ``GAIN_RESOLVED_SD`` standard errors: the gain is
    then little more than a lower bound. ``at_share``: for a ``level_input`` network, the network
    told each split's share of the image's photons (``logits`` is then not called).
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
    points, resolved = [], []
    for fraction in sorted(fractions):
        split = split_counts(image, torch.full((repeats,), fraction * level, device=device), generator)
        photons = split.input_counts.double().flatten(1).sum(dim=1)
        network = at_share(fraction * level) if at_share is not None else logits
        estimate = mmse_from_logits(network(split.input_counts), photons)
        error, standard_error = error_of_mean(
            [held_out_error(estimate[r : r + 1], split.target_counts[r : r + 1], fraction * level) for r in range(repeats)]
        )
        if not (math.isfinite(error) and standard_error > 0):
            raise PhotongapError(f"cannot estimate the posterior gain of an image with {total:g} photons; pass gain=")
        resolved.append(error >= GAIN_RESOLVED_SD * standard_error)
        error = max(error, standard_error)
        points.append((fraction * level, float(photons.mean()) / error, standard_error / error))
    return gain_at_level(points, level), resolved[0]


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
    gain: float,
    logits: LogitsFn,
    trained: tuple[float, float] | None,
    *,
    seed: int = 0,
    device: torch.device,
    at_least: bool = False,
    at_share: ShareLogits | None = None,
) -> tuple[torch.Tensor, float]:
    """The gain ``gain`` spread over the image as the network's own variance is: :func:`spread_calls` network calls (19 for an image, 37 for a volume).

    ``y``: ``counts`` thinned to the trained top ``trained[1]`` where brighter (what the sampler
    predicts from), then by as many photons as one call's probes add, so that the network is run
    inside its trained range. The network is run on ``y``, and on ``y`` plus one photon at each
    point of the two halves of every lattice of :func:`photongap.robbins.probe_halves` (spacing
    and grid of read pixels: :func:`photongap.robbins.robbins_lattice`; a photon in 72 pixels per
    call); :func:`photongap.robbins.self_response` reads the grid's pixels' own responses from
    them and :func:`photongap.robbins.robbins_gain_map` turns them into a map ``g_i``, scaled so
    that ``sum(mu / g_i) = sum(y) / gain``: the total posterior variance stays the one measured
    on held-out photons (:func:`held_out_gain`). With
    ``at_least`` (the held-out photons could not resolve the network's error, so ``gain`` is only
    a lower bound) the network's own overall gain is used where it is higher: its belief, within
    what the data allow. ``at_share``: as in :func:`held_out_gain`. Returns the map (``(1, 1, Y, X)``,
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
    used = max(gain, own) if at_least else gain
    return shape * (used / own), used


def spread_calls(dims: int) -> int:
    """Network calls of :func:`spread_gain` for images of ``dims`` spatial axes."""
    return 1 + 2 * len(lattice_offsets(*robbins_lattice(dims)))
