"""The network as a BioImage Model Zoo package runs it: photon counts in, the MMSE image out.

:class:`GapBioimageModule` wraps :class:`~photongap.network.GapUNet` with what
``photongap denoise`` does around it, so that a consumer without photongap's tiling (Fiji
with deepImageJ, bioimageio.core, napari) gets the same answer: padding to the network's size
multiples, ``softmax(logits) * sum(counts)``, in the photon units of the input, for 2D images
and (a 3D network) volumes alike. Its
``pytorch_state_dict`` weights are built from here (the package's architecture imports this
module); the TorchScript weights are the same module with the network traced. No bioimageio
import: this must load wherever the weights load.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from photongap.config import ModelConfig, from_dict
from photongap.network import GapUNet

PAD_VALUE = -1.0
"""What the package asks consumers to pad with: no photon count is negative, so the module
can tell padding from data and drop it, seeing the image's edges as photongap does."""


class GapBioimageModule(nn.Module):
    """``(B, 1, *S)`` counts to ``(B, 1, *S)`` expected photons: ``softmax(net(x)) * sum(x)`` per window.

    ``S`` is ``(Y, X)`` for a 2D network, ``(Z, Y, X)`` for a 3D one. Planes at the edges of
    any spatial axis that are all :data:`PAD_VALUE` (negative) are padding: they are cut off
    before the network runs (their output is 0), so that the image's edges look to the network
    as they do in ``photongap denoise``, and the softmax and photon total are over the data
    alone. A whole image padded so gives exactly photongap's answer. A consumer's tile (its
    core with a halo of its neighbours' pixels) is normalised by the photons of the whole
    window it sees: its core's logits are exact, but its scale ``N_window / sum exp(logits)``
    is an estimate of the image's ``N / sum exp(logits)`` (measured in the package's README).
    Other padding (a consumer that mirrors the image) is taken as data: the edge pixels then
    differ somewhat. Negative values inside the data are read as 0 photons.

    Parameters
    ----------
    model_config : dict
        The :class:`~photongap.config.ModelConfig` fields that rebuild the network.
    """

    def __init__(self, model_config: dict[str, Any]) -> None:
        super().__init__()
        config = from_dict(ModelConfig, dict(model_config), "bioimage package, model_config")
        self.network: nn.Module = GapUNet(config)
        self.multiples = list(config.size_multiples)

    def _logits(self, counts: torch.Tensor) -> torch.Tensor:
        """Logits of one ``(1, 1, *S)`` window, reflect-padded at the far edges to the size multiples (as photongap pads)."""
        sizes = counts.shape[2:]
        pads = [(multiple - size % multiple) % multiple for size, multiple in zip(sizes, self.multiples)]
        if sum(pads) > 0:
            reflect = True
            for pad, size in zip(pads, sizes):
                reflect = reflect and pad < size
            # F.pad lists the last axis first: (0, pad_x, 0, pad_y[, 0, pad_z]).
            widths: list[int] = []
            for pad in pads[::-1]:
                widths += [0, pad]
            counts = nn.functional.pad(counts, widths, mode="reflect" if reflect else "replicate")
        logits = self.network(counts)
        for axis, size in enumerate(sizes):
            logits = logits.narrow(axis + 2, 0, size)
        return logits

    def _extent(self, padding: torch.Tensor, axis: int) -> tuple[int, int]:
        """``(first, stop)`` along spatial ``axis`` of the planes of a ``(1, 1, *S)`` padding mask that hold data."""
        planes = padding.movedim(axis + 2, 0)
        data = torch.nonzero(~planes.reshape(planes.shape[0], -1).all(dim=1)).flatten()
        if data.numel() == 0:
            return 0, 0
        return int(data[0]), int(data[-1]) + 1

    def _one(self, counts: torch.Tensor) -> torch.Tensor:
        padding = counts < 0
        out = torch.zeros_like(counts, dtype=torch.float32)
        window, target = counts, out
        for axis in range(counts.dim() - 2):
            first, stop = self._extent(padding, axis)
            if stop <= first:
                return out
            window = window.narrow(axis + 2, first, stop - first)
            target = target.narrow(axis + 2, first, stop - first)
        window = window.float().clamp(min=0.0)
        logits = self._logits(window).double()
        # The whole window, halo included: normalising a tile by its core alone was measured
        # 2-4 times further from the whole-image answer (fewer photons fix its scale).
        normaliser = torch.logsumexp(logits.flatten(), dim=0)
        target.copy_((torch.exp(logits - normaliser) * window.double().sum()).float())
        return out

    def forward(self, counts: torch.Tensor) -> torch.Tensor:
        # One window at a time: blocks batched together may be padded differently.
        return torch.cat([self._one(counts[index : index + 1]) for index in range(counts.shape[0])], dim=0)


def exportable(network: GapUNet, config: ModelConfig) -> GapBioimageModule:
    """A :class:`GapBioimageModule` holding ``network``'s weights, in eval mode."""
    from photongap.config import to_dict

    module = GapBioimageModule(to_dict(config))
    module.network.load_state_dict(network.state_dict())
    return module.eval()


def scripted(module: GapBioimageModule, example: torch.Tensor) -> torch.jit.ScriptModule:
    """TorchScript of ``module``: the network traced (it is shape-generic), the wrapper scripted.

    The wrapper's padding and normalisation depend on the input's size, which a trace would
    freeze; the U-Net has no such branches, and its encoding picks ``sin`` or ``tanh`` by a
    Python attribute that scripting cannot compile.
    """
    import copy

    wrapper = copy.deepcopy(module).eval()
    with torch.no_grad():
        wrapper.network = torch.jit.trace(wrapper.network, example, check_trace=False)
    return torch.jit.script(wrapper)
