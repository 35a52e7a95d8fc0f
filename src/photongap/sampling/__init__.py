"""Posterior sampling and generation by accumulating photons.

Three separate pieces, as in diffusers: :func:`sample_step` (or :func:`dirichlet_step`) adds
one batch of predicted photons, a :class:`StopRule` says when an image is finished, and
:func:`accumulate_photons` is the loop that owns them (and reports each step through
``on_step``). Generation (:func:`generate`) is the same loop started from an empty canvas.
For a network trained on dim data, a :class:`DirichletPosterior` makes the loop predict
from copies thinned to the trained range (:mod:`photongap.sampling.predictive`).

The sampler never touches an ``nn.Module``: it calls a :data:`LogitsFn`, a plain function
from counts to logits. The caller wraps the network in it (device, autocast,
channels_last, tiling), e.g. ``lambda counts: net(counts)`` under ``torch.no_grad()``.
"""

from photongap.sampling.loop import PosteriorSamples, SamplingResult, StepState, accumulate_photons, generate
from photongap.sampling.predictive import DirichletPosterior, Prediction, centred, draw_variance, final_estimate, predict, prior_variance
from photongap.sampling.step import dirichlet_step, draw_photons, sample_step
from photongap.sampling.stop import DB_ABOVE_TRAINED, StopRule, expected_network_calls

__all__ = [
    "DB_ABOVE_TRAINED", "DirichletPosterior", "PosteriorSamples", "Prediction", "SamplingResult", "StepState", "StopRule",
    "accumulate_photons", "centred", "dirichlet_step", "draw_photons", "draw_variance", "expected_network_calls", "final_estimate", "generate", "predict",
    "prior_variance", "sample_step",
]
