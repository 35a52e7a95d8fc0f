"""The network: photon counts in, logits of where the next photon lands out.

A plain U-Net on a multi-scale encoding of the counts. No loss, optimiser or
training code lives here.
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
    at any brightness. Maps ``(B, 1, Y, X)`` to ``(B, channels, Y, X)``.
    """

    scales: torch.Tensor

    def __init__(self, levels: int, kind: str = "sine", log_channel: bool = False) -> None:
        super().__init__()
        self.log_channel = log_channel
        self.channels = levels + int(log_channel)
        # 1-D, so that converting the network to channels_last leaves it alone (a 4-D buffer
        # would get strides that alias its memory, which DDP's buffer broadcast rejects).
        self.register_buffer("scales", 10.0 ** -torch.arange(levels, dtype=torch.float32))
        self.function = {"sine": torch.sin, "tanh": torch.tanh}[kind]

    def forward(self, counts: torch.Tensor) -> torch.Tensor:
        encoded = self.function(counts * self.scales.reshape(1, -1, 1, 1))
        return torch.cat([encoded, torch.log1p(counts)], dim=1) if self.log_channel else encoded


class ResidualBlock(nn.Module):
    """Three 3x3 convolutions with a residual connection.

    ``photongap``: ``relu(conv3(relu(conv2(relu(conv1 x)))) + skip(x))``, ``skip`` a 1x1
    projection where the widths differ. ``published``: the residual starts after the first
    convolution, which has no activation: ``s = conv1(x)``, ``relu(conv3(relu(conv2 s)) + s)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kind: str = "photongap") -> None:
        super().__init__()
        self.published = kind == "published"
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv3 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Identity() if in_channels == out_channels or self.published else nn.Conv2d(in_channels, out_channels, 1)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.published:
            s = self.conv1(x)
            return self.activation(self.conv3(self.activation(self.conv2(s))) + s)
        h = self.activation(self.conv1(x))
        h = self.activation(self.conv2(h))
        return self.activation(self.conv3(h) + self.skip(x))


class GapUNet(nn.Module):
    """U-Net mapping photon counts ``(B, 1, Y, X)`` to logits ``(B, 1, Y, X)``.

    Max-pool down, transposed convolution up, additive skip connections, a 1x1 output
    convolution. ``Y`` and ``X`` must be multiples of ``config.size_multiple``
    (``2**(depth-1)``); the tiling module pads for you. The output convolution runs in
    float32 even under autocast, so logits keep full precision for the softmax.

    Examples
    --------
    >>> net = GapUNet(ModelConfig(depth=3, start_filters=8))
    >>> net(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 1, 32, 32])
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        widths = config.widths
        self.encoding = CountEncoding(config.encoding_levels, config.encoding, config.log_channel)
        self.down = nn.ModuleList()
        in_channels = self.encoding.channels
        for width in widths:
            self.down.append(ResidualBlock(in_channels, width, config.block))
            in_channels = width
        self.pool = nn.MaxPool2d(2)
        self.upsample = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(len(widths) - 1))
        self.up = nn.ModuleList(ResidualBlock(widths[i], widths[i], config.block) for i in range(len(widths) - 1))
        self.head = nn.Conv2d(widths[0], 1, 1)
        if config.init == "xavier":
            for conv in self.modules():
                if isinstance(conv, nn.Conv2d):
                    nn.init.xavier_normal_(conv.weight)
                    nn.init.zeros_(conv.bias)

    def forward(self, counts: torch.Tensor) -> torch.Tensor:
        x = self.encoding(counts)
        skips = []
        for level, block in enumerate(self.down):
            if level > 0:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        skips.pop()
        for level in reversed(range(len(self.up))):
            x = self.up[level](self.upsample[level](x) + skips[level])
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.head(x.float())


def receptive_radius(network: GapUNet) -> int:
    """How many input pixels on each side of a pixel can change its logit, read off the modules.

    Walks the network's path from the input down to the deepest level and back up: each
    convolution widens the field by ``kernel // 2 * dilation`` of its level's pixels, each
    pooling or transposed convolution by ``kernel - 1`` pixels of the finer level (its window
    is not centred on the pixel). The residual blocks' 1x1 projections and the skip
    connections see less than the main path, so they add nothing. A tile needs this much
    context on each side for its core to match an untiled pass exactly.

    Examples
    --------
    >>> receptive_radius(GapUNet(ModelConfig(depth=1, start_filters=4)))  # three 3x3 convolutions
    3
    """

    def widening(block: nn.Module) -> int:
        return sum(conv.kernel_size[0] // 2 * conv.dilation[0] for conv in block.modules() if isinstance(conv, nn.Conv2d))

    radius, jump = 0, 1
    for level, block in enumerate(network.down):
        if level > 0:
            radius += (network.pool.kernel_size - 1) * jump
            jump *= network.pool.stride
        radius += widening(block) * jump
    for level in reversed(range(len(network.up))):
        upsample = network.upsample[level]
        jump //= upsample.stride[0]
        radius += (upsample.kernel_size[0] - 1) * jump + widening(network.up[level]) * jump
    return radius
