"""Posterior sampling and generation by accumulating photons.

Three separate pieces, as in diffusers: :func:`sample_step` adds one batch of predicted
photons, a :class:`StopRule` says when an image is finished, and :func:`accumulate_photons`
is the loop that owns them (and reports each step through ``on_step``). Generation
(:func:`generate`) is the same loop started from an empty canvas.

The sampler never touches an ``nn.Module``: it calls a :data:`LogitsFn`, a plain function
from counts to logits. The caller wraps the network in it (device, autocast,
channels_last, tiling), e.g. ``lambda counts: net(counts)`` under ``torch.no_grad()``.
"""

from photongap.sampling.loop import PosteriorSamples, SamplingResult, StepState, accumulate_photons, generate
from photongap.sampling.step import sample_step
from photongap.sampling.stop import StopRule, expected_network_calls

__all__ = ["PosteriorSamples", "SamplingResult", "StepState", "StopRule", "accumulate_photons", "expected_network_calls", "generate", "sample_step"]
