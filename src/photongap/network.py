"""The network: photon counts in, logits of where the next photon lands out.

A plain U-Net on a multi-scale encoding of the counts, on ``(Y, X)`` planes or, built with
``dims=3``, on ``(D, Y, X)`` volumes (the same module with 3D convolutions). No loss,
optimiser or training code lives here.
"""

from __future__ import annotations

import torch
from torch import nn

from photongap.config import ModelConfig


class CountEncoding(nn.Module):
    """Encode counts at many scales: ``[f(x * 10**-k) for k in range(levels)]``, optionally ``log1p(x)``.

    One network thus sees images from 1e-4 to 1e4 photons per pixel: the low-k channels
    resolve single photons, the high-k channels stay linear in bright images. ``f`` is
    ``sin`` (published) or ``tanh``. ``sin`` is periodic, so a channel cannot tell ``x``
    from ``x + 2*pi*10**k``: at k = 1, 31 photons look like 0. ``tanh`` saturates instead,
    so every channel is monotonic in the counts and none aliases.

    Both leave a bright image's fine differences to channels that barely move: 10% more
    photons (one standard deviation of the noise at 100 photons) changes no channel by more
    than 0.04, at 100 or at 3500 photons. The logits the network must output there are close
    to ``log(x)`` itself. ``log_channel`` appends ``log1p(x)``, which moves by 0.095 for 10%
    at any brightness. Maps ``(B, 1, *S)`` to ``(B, channels, *S)`` for spatial axes ``S``.
    """

    scales: torch.Tensor

    def __init__(self, levels: int, kind: str = "sine", log_channel: bool = False, level_input: bool = False) -> None:
        super().__init__()
        self.log_channel = log_channel
        self.level_input = level_input
        self.channels = levels + int(log_channel) + int(level_input)
        # 1-D, so that converting the network to channels_last leaves it alone (a 4-D buffer
        # would get strides that alias its memory, which DDP's buffer broadcast rejects).
        self.register_buffer("scales", 10.0 ** -torch.arange(levels, dtype=torch.float32))
        self.function = {"sine": torch.sin, "tanh": torch.tanh}[kind]

    def forward(self, counts: torch.Tensor, fraction: float | torch.Tensor | None = None) -> torch.Tensor:
        encoded = self.function(counts * self.scales.reshape(1, -1, *([1] * (counts.dim() - 2))))
        channels = [encoded, torch.log1p(counts)] if self.log_channel else [encoded]
        if self.level_input:
            channels.append(level_channel(counts, fraction))
        return torch.cat(channels, dim=1) if len(channels) > 1 else encoded


def level_channel(counts: torch.Tensor, fraction: float | torch.Tensor | None) -> torch.Tensor:
    """``log(fraction)`` as a constant channel of ``counts``' shape ``(B, 1, *S)``: 0 for a whole acquisition (None).

    ``fraction`` is the share of its acquisition's photons an input holds, one for all images
    or ``(B,)``: a training input split from its crop holds about the split fraction of it.
    """
    batch = counts.shape[0]
    value = torch.as_tensor(1.0 if fraction is None else fraction, dtype=torch.float32, device=counts.device)
    value = value.clamp_min(1e-3).log().reshape(-1).expand(batch)
    return value.reshape(batch, 1, *([1] * (counts.dim() - 2))).expand(batch, 1, *counts.shape[2:]).to(counts.dtype)


CONVOLUTIONS = {2: nn.Conv2d, 3: nn.Conv3d}


class ResidualBlock(nn.Module):
    """Three 3x3 (3x3x3 for ``dims=3``; 1x3x3 ``planar``) convolutions with a residual connection.

    ``photongap``: ``relu(conv3(relu(conv2(relu(conv1 x)))) + skip(x))``, ``skip`` a 1x1
    projection where the widths differ. ``published``: the residual starts after the first
    convolution, which has no activation: ``s = conv1(x)``, ``relu(conv3(relu(conv2 s)) + s)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kind: str = "photongap", dims: int = 2, planar: bool = False) -> None:
        super().__init__()
        self.published = kind == "published"
        conv = CONVOLUTIONS[dims]
        kernel, padding = ((1, 3, 3), (0, 1, 1)) if planar and dims == 3 else (3, 1)
        self.conv1 = conv(in_channels, out_channels, kernel, padding=padding)
        self.conv2 = conv(out_channels, out_channels, kernel, padding=padding)
        self.conv3 = conv(out_channels, out_channels, kernel, padding=padding)
        self.skip = nn.Identity() if in_channels == out_channels or self.published else conv(in_channels, out_channels, 1)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.published:
            s = self.conv1(x)
            out = self.conv3(self.activation(self.conv2(s)))
            out += s
            return self.activation(out)
        h = self.activation(self.conv1(x))
        h = self.activation(self.conv2(h))
        # In place (the same sums): one full-resolution tensor less at the peak of a 3D tile.
        out = self.conv3(h)
        out += self.skip(x)
        return self.activation(out)


class GapUNet(nn.Module):
    """U-Net mapping photon counts ``(B, 1, Y, X)`` to logits ``(B, 1, Y, X)``, or ``(B, 1, D, Y, X)`` in 3D.

    Max-pool down, transposed convolution up, additive skip connections, a 1x1 output
    convolution. ``Y`` and ``X`` must be multiples of ``config.size_multiple``
    (``2**(depth-1)``), ``D`` of ``config.size_multiples[0]``; the tiling module pads for you.
    In 3D the poolings that ``config.pools_depth`` marks halve ``D`` too, the others pool
    ``(1, 2, 2)`` (and their transposed convolutions undo just that), and the finest
    ``config.planar_levels`` levels convolve within planes. The output convolution
    runs in float32 even under autocast, so logits keep full precision for the softmax.

    Examples
    --------
    >>> net = GapUNet(ModelConfig(depth=3, start_filters=8))
    >>> net(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 1, 32, 32])
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        widths, dims = config.widths, config.dims
        self.encoding = CountEncoding(config.encoding_levels, config.encoding, config.log_channel, config.level_input)
        self.down = nn.ModuleList()
        in_channels = self.encoding.channels
        planar = [dims == 3 and level < (config.planar_levels or 0) for level in range(len(widths))]
        for level, width in enumerate(widths):
            self.down.append(ResidualBlock(in_channels, width, config.block, dims, planar[level]))
            in_channels = width
        # One window per pooling: 2 on each axis, or (1, 2, 2) where a 3D network keeps D.
        windows = [2] * (len(widths) - 1) if dims == 2 else [(2 if halve else 1, 2, 2) for halve in config.pools_depth]
        pool, transposed = (nn.MaxPool2d, nn.ConvTranspose2d) if dims == 2 else (nn.MaxPool3d, nn.ConvTranspose3d)
        self.pools = nn.ModuleList(pool(window) for window in windows)
        self.upsample = nn.ModuleList(transposed(widths[i + 1], widths[i], windows[i], stride=windows[i]) for i in range(len(widths) - 1))
        self.up = nn.ModuleList(ResidualBlock(widths[i], widths[i], config.block, dims, planar[i]) for i in range(len(widths) - 1))
        self.head = CONVOLUTIONS[dims](widths[0], 1, 1)
        if config.init == "xavier":
            for conv in self.modules():
                if isinstance(conv, (nn.Conv2d, nn.Conv3d)):
                    nn.init.xavier_normal_(conv.weight)
                    nn.init.zeros_(conv.bias)

    def forward(self, counts: torch.Tensor, fraction: float | torch.Tensor | None = None) -> torch.Tensor:
        """Logits of ``counts``; ``fraction``: the share of their acquisition's photons they hold (read with ``config.level_input``)."""
        x = self.encoding(counts, fraction)
        skips = []
        for level, block in enumerate(self.down):
            if level > 0:
                x = self.pools[level - 1](x)
            x = block(x)
            skips.append(x)
        skips.pop()
        for level in reversed(range(len(self.up))):
            x = self.upsample[level](x)
            x += skips.pop()  # in place, and the skip released: less memory at full resolution
            x = self.up[level](x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.head(x.float())


def channels_last(dims: int) -> torch.memory_format:
    """The channels-last memory format for a network of ``dims`` spatial axes (oneDNN's fast layout)."""
    return torch.channels_last if dims == 2 else torch.channels_last_3d


def receptive_radius(network: GapUNet) -> int:
    """How many input pixels on each side of a pixel can change its logit in Y and X (see :func:`receptive_radii`).

    Examples
    --------
    >>> receptive_radius(GapUNet(ModelConfig(depth=1, start_filters=4)))  # three 3x3 convolutions
    3
    """
    return receptive_radii(network)[-1]


def receptive_radii(network: GapUNet) -> tuple[int, ...]:
    """Per spatial axis (``(Y, X)``, or ``(D, Y, X)`` in 3D), how many input pixels on each side of a pixel can change its logit.

    Walks the network's path from the input down to the deepest level and back up: each
    convolution widens the field by ``kernel // 2 * dilation`` of its level's pixels, each
    pooling or transposed convolution by ``kernel - 1`` pixels of the finer level (its window
    is not centred on the pixel). The residual blocks' 1x1 projections and the skip
    connections see less than the main path, so they add nothing. A tile needs this much
    context on each side for its core to match an untiled pass exactly. Each axis is walked
    on its own: a 3D network that does not pool ``D`` at a level widens ``D`` by that level's
    convolutions only.

    Examples
    --------
    >>> receptive_radii(GapUNet(ModelConfig(depth=2, start_filters=4, dims=3, depth_pools=0)))
    (9, 14, 14)
    """
    dims = network.config.dims

    def per_axis(value: int | tuple[int, ...]) -> tuple[int, ...]:
        return tuple(value) if isinstance(value, tuple) else (value,) * dims

    def widening(block: nn.Module, axis: int) -> int:
        return sum(
            per_axis(conv.kernel_size)[axis] // 2 * per_axis(conv.dilation)[axis]
            for conv in block.modules() if isinstance(conv, (nn.Conv2d, nn.Conv3d))
        )

    radii = []
    for axis in range(dims):
        radius, jump = 0, 1
        for level, block in enumerate(network.down):
            if level > 0:
                pool = network.pools[level - 1]
                radius += (per_axis(pool.kernel_size)[axis] - 1) * jump
                jump *= per_axis(pool.stride)[axis]
            radius += widening(block, axis) * jump
        for level in reversed(range(len(network.up))):
            upsample = network.upsample[level]
            jump //= upsample.stride[axis]
            radius += (upsample.kernel_size[axis] - 1) * jump + widening(network.up[level], axis) * jump
        radii.append(radius)
    return tuple(radii)
