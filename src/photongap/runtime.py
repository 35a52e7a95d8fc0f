"""Where and how the network runs: device, precision, batch size, and the network as a function.

Everything that predicts (tiling, the sampler) calls a :data:`LogitsFn`, a plain function from
counts to logits; :func:`logits_fn` makes one from a network, so device, autocast and memory
layout are decided here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from photongap.config import Precision
from photongap.errors import PhotongapError
from photongap.network import channels_last

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
"""Maps counts ``(B, 1, Y, X)`` (``(B, 1, D, Y, X)`` for a 3D network) float32, sides multiples of the network's size multiples, to logits of the same shape."""


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PhotongapError(f"unsupported device {name!r}; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PhotongapError("--device cuda was asked for, but no CUDA GPU is available; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise PhotongapError(f"unsupported device {name!r}; use auto, cpu or cuda")
    return device


def batch_size_for(device: torch.device, requested: int | None, on_gpu: int) -> int:
    """Images per network call: ``requested``, else 1 on a CPU and ``on_gpu`` on a GPU.

    On a CPU, oneDNN ran one 256 or 512 px image at a time faster per image than batches of
    4 or 16 (benchmarks/bench_throughput.py): larger batches only spill out of the caches.
    """
    if requested is None:
        return on_gpu if device.type == "cuda" else 1
    if requested < 1:
        raise PhotongapError(f"the batch size must be at least 1, got {requested}")
    return requested


def use_bf16(precision: Precision, device_type: str) -> bool:
    """Whether to run under bf16 autocast: ``auto`` picks it where the hardware has bf16 arithmetic.

    That is GPUs that support it, and CPUs with AMX tiles or AVX-512 BF16. On an AVX-512 BF16
    CPU without AMX, the default network ran 1.6 times the training steps per second in bf16
    and denoised 1.7-2.1 times faster (benchmarks/bench_throughput.py), for the same PSNR
    (0.02 dB less at 1 photon/px, none at 0.1). Elsewhere bf16 is emulated and slow.
    """
    if precision == "fp32":
        return False
    if precision == "bf16":
        return True
    if precision != "auto":
        raise PhotongapError(f"--precision must be auto, fp32 or bf16, got {precision!r}")
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    return any(bool(getattr(torch.cpu, check, lambda: False)()) for check in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


def logits_fn(network: nn.Module, device: str | torch.device = "auto", precision: Precision = "auto", fraction: float | None = None) -> LogitsFn:
    """The network as a function ``counts (B, 1, Y, X) -> logits``, on ``device``, under inference mode.

    The network runs in channels_last layout (on a CPU, oneDNN's convolutions ran 1.3-1.8x
    faster so, in fp32 too), under bf16 autocast where chosen; the output convolution and
    the logits stay float32. ``fraction``: the share of their acquisition's photons the counts
    hold, for a network that reads it (``ModelConfig.level_input``; None: all of them).
    """
    device = resolve_device(device)
    bf16 = use_bf16(precision, device.type)
    layout = channels_last(getattr(getattr(network, "config", None), "dims", 2))
    network = network.to(device).eval().to(memory_format=layout)

    def logits(counts: torch.Tensor) -> torch.Tensor:
        counts = counts.to(device, torch.float32).contiguous(memory_format=layout)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return (network(counts, fraction) if fraction is not None else network(counts)).float()

    return logits
