"""Is the sampler's uncertainty right on the user's own data? A check that needs no ground truth.

Split the noisy image ``x`` into ``a ~ Binomial(x, p)`` and ``b = x - a`` (independent Poisson
images of ``p lambda`` and ``(1 - p) lambda``), draw posterior samples from ``a`` alone and ask
whether their spread matches their error, which ``b`` measures without bias:

``t_i = ((b_i - r m_i)**2 - b_i) / r**2``, ``E[t_i] = (p lambda_i - m_i)**2`` (``r = (1 - p) / p``,
``m``: the samples' mean; :func:`photongap.physics.held_out_squared_error` pixel by pixel).

The pixels are binned by the samples' variance; the expected error of the mean of ``n``
samples against the truth is ``v_i (1 + 1/n)`` if they are calibrated, so in each bin
``R = sum t / sum v (1 + 1/n)`` is 1 for a calibrated sampler, and a Gaussian of variance ``v``
holding an error of variance ``R v`` covers it with its central 80% interval
``erf(1.2816 / sqrt(2 R))`` of the time. The check is the average over the bins: about 0.8 when
calibrated, lower when the samples are too narrow, higher when too wide. The bins are cut by
the variance of one half of the samples and scored with that of the other half (both ways,
averaged): cut and scored by the same noisy estimate, the low bins collect pixels whose spread
was underestimated, and exact posterior samples read 0.76-0.78 instead of 0.8 at n = 16.
The held-out photons' own noise gives the check a standard error, drawn both around the reading
and around a calibrated sampler's (a reading far out saturates and, drawn around itself alone,
looks steady however noisy it is); where it exceeds five points the check says it cannot tell.
Most of that noise is the split's (which photons are held out), so :func:`check_calibration`
pools :data:`CHECK_SPLITS` splits of each image, and checks pool further over the planes of a
stack or over several images (:func:`pool_checks`; bin ``k`` then holds the ``k``-th tenth of
every image's pixels by predicted variance). Noise also biases the reading: a bin whose samples
are too wide reads near 1, and noise in its error can only pull it down, so samples a little too
wide read low where the held-out photons are few (at 0.1 photons/px, docs/known-limits.md).
(Per-pixel PIT values of ``b`` are no check: ``b``'s own Poisson noise swamps the posterior
spread of a network that pools neighbours.) It checks the sampler at the level of
``a``, not of ``x``, reads a few points low on grossly biased samples, and about five points
high on samples six times too narrow (their shape is then far from Gaussian). Bin by bin it
reads the samples' variance, not their shape: on the benchmark's images at 1 photon/px it
followed the truth's coverage in every bin within 1.6 standard errors, but in a bin whose
errors are heavy-tailed (true error 1.12 times the spread, truth inside 83% of the time) it read
79% ± 2, as a Gaussian would (docs/known-limits.md).
"""

from __future__ import annotations

import functools
import math
import operator
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from photongap.errors import PhotongapError
from photongap.physics import held_out_squared_error, split_counts

if TYPE_CHECKING:
    from photongap.model import GapModel

CHECK_FRACTION = 0.8
"""Share ``p`` of the photons the samples of the check are drawn from.

Near 1, so that the check tests the sampler near the level it is used at: a default-preset
model's trained range reaches down to half the data's photons only, and at ``p = 0.5`` the
check's samples sat at its bottom, with their gain measured below it. There the check read
5-7 points below the coverage of the full-level samples at 1 photon/px; at 0.8 (1 dB below
the data) it was within 2.7 points on both data sets, and 1.2 and 4.3 points with the
per-pixel gain map (benchmarks/bench_sampling.py). The held-out ``b`` is then noisier (its
weight grows as ``p / (1 - p)``): at 0.1 photons/px it holds too few photons, the check's
standard error on one 256 px image is 4.4-8.0 points even with :data:`CHECK_SPLITS` splits, and
it mostly says it cannot tell; where it said it could (standard errors 4.6-4.9) it was off by up
to 10 points, mostly low (docs/known-limits.md)."""
CHECK_BINS = 10
"""Bins of predicted variance."""
CHECK_SPLITS = 4
"""Held-out splits of each image the check pools, each with its own sampling run.

Most of the check's noise is that of the split (which photons are held out), not of the image,
so it falls with more splits (less than as ``1 / sqrt(splits)``: a bin's reading is not linear in
its error). On 12 held-out images at 1 photon/px (the demo data and the Hubble deep field), one
split read 7 of them 5 or more points off the check's samples' true coverage (11.6 at worst),
at standard errors of 3.9-6.4 points; four splits read all but one within 4.3 points (that one
6.5 off), at 2.5-4.7 (a throwaway script on benchmarks/bench_sampling.py's images)."""
CHECK_RESOLUTION = 0.05
"""The check is conclusive when its standard error is at most this (5 points of coverage)."""
CHECK_DRAWS = 200
"""Draws of the held-out errors within their noise that give the check's standard error."""
NOMINAL = 0.8
"""The central interval whose coverage is implied."""


@dataclass(frozen=True)
class BinnedErrors:
    """What the check measures, summed per bin of predicted variance: ``(2, bins)`` arrays, one row per way of cutting.

    Sums pool: ``a + b`` is the check of both sets of pixels (more splits of one image, the planes
    of a stack, several images), each image's pixels binned by its own samples' variance, bin
    ``k`` holding the ``k``-th of ``bins`` equal shares of every image's pixels.

    Attributes
    ----------
    error, error_square : np.ndarray
        ``sum t`` and ``sum t**2`` of the held-out errors (photon units of ``a``).
    pixels : np.ndarray
        Pixels per bin.
    spread : np.ndarray
        ``sum v (1 + 1/n)``: the expected squared error of the samples' mean if they are calibrated.
    fraction : float
        ``p``, the share of the photons the samples were drawn from.
    """

    error: np.ndarray
    error_square: np.ndarray
    pixels: np.ndarray
    spread: np.ndarray
    fraction: float

    def __add__(self, other: BinnedErrors) -> BinnedErrors:
        if other.fraction != self.fraction or other.error.shape != self.error.shape:
            raise PhotongapError(f"cannot pool checks of different fractions or bins ({self.fraction}, {self.error.shape[-1]} and {other.fraction}, {other.error.shape[-1]})")
        return BinnedErrors(self.error + other.error, self.error_square + other.error_square, self.pixels + other.pixels, self.spread + other.spread, self.fraction)

    @property
    def error_standard_error(self) -> np.ndarray:
        """Of ``error``, from the spread of the pixels' terms about their bin's mean (taken as independent)."""
        return np.sqrt(np.maximum(self.error_square - self.error**2 / np.maximum(self.pixels, 1), 0.0))


@dataclass(frozen=True)
class CalibrationCheck:
    """Coverage of the samples' central interval implied by held-out photons.

    Attributes
    ----------
    implied_coverage : float
        Average over the bins; ``nominal`` when calibrated.
    per_bin : tuple of float
        Implied coverage of each bin, from the narrowest predicted variance to the widest
        (averaged over the two ways of cutting the bins).
    error_to_spread : tuple of float
        ``R = sum t / sum v`` per bin (1 when calibrated; > 1: samples too narrow).
    nominal : float
        The interval checked (0.8: the central 80%).
    fraction : float
        ``p``: the share of the photons the samples were drawn from.
    standard_error : float
        Of ``implied_coverage``, from the noise of the held-out photons (each bin's error
        drawn within its standard error, :data:`CHECK_DRAWS` times).
    splits : int
        Held-out splits pooled into the check (of one image, or of all the images pooled).
    per_bin_standard_error : tuple of float
        Of each bin's reading, drawn as ``standard_error`` is.
    binned : BinnedErrors, optional
        The sums it was read from; checks pool with :func:`pool_checks`.
    """

    implied_coverage: float
    per_bin: tuple[float, ...]
    error_to_spread: tuple[float, ...]
    nominal: float
    fraction: float
    standard_error: float = 0.0
    splits: int = 1
    per_bin_standard_error: tuple[float, ...] = ()
    binned: BinnedErrors | None = field(default=None, compare=False, repr=False)

    @property
    def conclusive(self) -> bool:
        """Whether the held-out photons could tell: a standard error of at most :data:`CHECK_RESOLUTION`."""
        return self.standard_error <= CHECK_RESOLUTION

    def summary(self, name: str) -> str:
        """One line for a person: the implied coverage and its noise, or that the photons were too few to tell."""
        reading = f"{self.implied_coverage:.0%} ± {self.standard_error:.0%}"
        if not self.conclusive:
            return (f"check {name}: inconclusive, too few held-out photons to tell within {CHECK_RESOLUTION:.0%} whether the samples are calibrated "
                    f"({reading} implied coverage of their central {self.nominal:.0%})")
        return f"check {name}: the samples' central {self.nominal:.0%} would hold {reading} of the truth ({self.nominal:.2f}: calibrated; from held-out photons)"


def implied_coverage(ratio: float, nominal: float = NOMINAL) -> float:
    """Coverage of a Gaussian's central ``nominal`` interval when the error's variance is ``ratio`` times its own.

    ``erf(z / sqrt(2 ratio))`` with ``z = Phi^-1((1 + nominal) / 2)`` (1.2816 for 80%).

    Examples
    --------
    >>> round(implied_coverage(1.0), 3)
    0.8
    """
    z = statistics.NormalDist().inv_cdf((1 + nominal) / 2)
    return math.erf(z / math.sqrt(2 * max(ratio, 1e-12)))


def binned_errors(samples: np.ndarray, held_out: np.ndarray, fraction: float, *, bins: int = CHECK_BINS) -> BinnedErrors:
    """The held-out errors of ``samples``, drawn from the ``fraction`` ``p`` of an image, against the rest, binned by their variance.

    Parameters
    ----------
    samples : np.ndarray
        ``(n, Y, X)`` (or ``(n, D, Y, X)``) posterior samples given ``a`` (photon units of ``a``), ``n >= 4``.
    held_out : np.ndarray
        ``(Y, X)`` (or ``(D, Y, X)``) the held-out counts ``b = x - a``.
    fraction : float
        ``p`` in (0, 1).
    """
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim not in (3, 4) or samples.shape[0] < 4 or samples.shape[1:] != np.shape(held_out):
        raise PhotongapError(f"spread_skill needs (n >= 4, [D,] Y, X) samples and a held-out image of their shape, got {samples.shape} and {np.shape(held_out)}")
    if not 0 < fraction < 1:
        raise PhotongapError(f"the check's fraction must lie in (0, 1), got {fraction}")
    n = samples.shape[0]
    mean = torch.from_numpy(samples.mean(axis=0).reshape(-1, 1))
    # One "image" per pixel: held_out_squared_error then gives each pixel's term, in the photon
    # units of x; times p**2 it is in those of a, the samples' units.
    t = fraction**2 * held_out_squared_error(mean, torch.from_numpy(np.asarray(held_out, dtype=np.float64).reshape(-1, 1)), fraction).numpy().reshape(-1)
    halves = [samples[0::2].var(axis=0, ddof=1).reshape(-1), samples[1::2].var(axis=0, ddof=1).reshape(-1)]
    rows = []
    for cut, score in (halves, halves[::-1]):
        parts = np.array_split(np.argsort(cut, kind="stable"), bins)
        rows.append([(t[part].sum(), (t[part] ** 2).sum(), len(part), score[part].sum() * (1 + 1 / n)) for part in parts])
    error, square, pixels, spread = np.moveaxis(np.array(rows, dtype=np.float64), -1, 0)
    return BinnedErrors(error, square, pixels, spread, fraction)


def coverage_check(binned: BinnedErrors, *, nominal: float = NOMINAL, splits: int = 1) -> CalibrationCheck:
    """The implied coverage of :class:`BinnedErrors` and its standard error."""
    spread = np.maximum(binned.spread, 1e-300)
    ratios = binned.error / spread
    per_bin_ways = [[implied_coverage(ratio, nominal) for ratio in way] for way in ratios]
    noise = np.random.default_rng(0).standard_normal((CHECK_DRAWS, 1, ratios.shape[-1])) * binned.error_standard_error / spread
    # The noise of the reading, drawn around it and around a calibrated sampler's: a reading far
    # out (a bin's error many times its spread, or negative) saturates, and drawn around itself
    # alone looks steady however noisy the held-out photons are.
    spreads, bin_spreads = [], []
    for centre in (ratios, np.ones_like(ratios)):
        drawn = np.vectorize(lambda ratio: implied_coverage(ratio, nominal))(centre + noise).mean(axis=1)  # (draws, bins), both ways
        spreads.append(float(np.std(drawn.mean(axis=1))))
        bin_spreads.append(drawn.std(axis=0))
    per_bin = tuple(float(value) for value in np.mean(per_bin_ways, axis=0))
    return CalibrationCheck(
        float(np.mean(per_bin)), per_bin, tuple(float(value) for value in ratios.mean(axis=0)), nominal, binned.fraction, max(spreads), splits,
        tuple(float(value) for value in np.maximum(*bin_spreads)), binned,
    )


def spread_skill(samples: np.ndarray, held_out: np.ndarray, fraction: float, *, bins: int = CHECK_BINS, nominal: float = NOMINAL) -> CalibrationCheck:
    """The binned spread-skill check of ``samples`` drawn from the ``fraction`` ``p`` of an image, against the rest.

    :func:`binned_errors` read by :func:`coverage_check`; the arguments are those of :func:`binned_errors`.
    """
    return coverage_check(binned_errors(samples, held_out, fraction, bins=bins), nominal=nominal)


def pool_checks(checks: Sequence[CalibrationCheck]) -> CalibrationCheck:
    """One check of all the pixels of ``checks`` (the planes of a stack, several images): their sums pooled.

    The held-out photons' noise falls about as the square root of the pixels pooled, so a stack
    resolves what one dim image cannot.
    """
    if not checks or any(check.binned is None for check in checks):
        raise PhotongapError("pool_checks needs at least one check with its binned sums")
    binned = functools.reduce(operator.add, [check.binned for check in checks])
    return coverage_check(binned, nominal=checks[0].nominal, splits=sum(check.splits for check in checks))


def pooled_check(checks: Sequence[tuple[str, CalibrationCheck]], what: str) -> tuple[str, CalibrationCheck] | None:
    """Named checks pooled (:func:`pool_checks`) under the name ``"all N {what} pooled"`` (``what``: ``"images"``, ``"planes"``, ``"volumes"``); None for fewer than two."""
    if len(checks) < 2:
        return None
    return f"all {len(checks)} {what} pooled", pool_checks([check for _, check in checks])


def check_calibration(
    model: GapModel, counts: np.ndarray, n: int = 16, *, fraction: float = CHECK_FRACTION, splits: int = CHECK_SPLITS, seed: int = 0, **sample_options: Any
) -> CalibrationCheck:
    """Split ``counts`` ``splits`` times, sample ``n`` times from each ``fraction`` kept, check against the rest, pooled.

    Costs ``splits`` more sampling runs of ``n`` samples (on four fifths of the photons by
    default). ``sample_options`` go to :meth:`photongap.model.GapModel.sample`; split ``k`` and
    its samples are seeded ``seed + k``.

    Examples
    --------
    >>> check = check_calibration(model, counts)  # doctest: +SKIP
    >>> check.implied_coverage  # about 0.8 if the samples' spread is right  # doctest: +SKIP
    """
    counts = np.asarray(counts, dtype=np.float32)
    if counts.ndim != model.config.dims:
        kind = "2D image" if model.config.dims == 2 else "(D, Y, X) volume (a 3D model)"
        raise PhotongapError(f"check_calibration takes one {kind}, got shape {counts.shape}")
    if n < 4:
        raise PhotongapError("the calibration check needs at least 4 samples")
    if splits < 1:
        raise PhotongapError(f"the calibration check needs at least one split, got {splits}")
    binned = []
    for split_seed in range(seed, seed + splits):
        split = split_counts(torch.from_numpy(counts)[None, None], torch.tensor([fraction]), torch.Generator().manual_seed(split_seed))
        kept, held_out = split.input_counts[0, 0].numpy(), split.target_counts[0, 0].numpy()
        posterior = model.sample(kept, n, seed=split_seed, **sample_options)
        binned.append(binned_errors(posterior.samples, held_out, fraction))
    return coverage_check(functools.reduce(operator.add, binned), splits=splits)
