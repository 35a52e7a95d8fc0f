"""The network maps counts to logits of the same shape, at the published size, in any precision."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from photongap.config import ModelConfig, preset
from photongap.errors import PhotongapError
from photongap.network import CountEncoding, GapUNet, ResidualBlock


def parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("shape", [(1, 1, 4, 4), (2, 1, 8, 12), (1, 1, 36, 20), (3, 1, 64, 32)])
def test_logits_have_the_shape_of_the_counts(tiny_config, shape):
    torch.manual_seed(0)
    net = GapUNet(tiny_config).eval()
    counts = torch.poisson(torch.full(shape, 2.0))
    with torch.no_grad():
        logits = net(counts)
    assert logits.shape == counts.shape and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_the_size_multiple_is_two_to_the_depth_minus_one():
    assert [ModelConfig(depth=d).size_multiple for d in (1, 3, 5)] == [1, 4, 16]
    net = GapUNet(ModelConfig(depth=5, start_filters=4, encoding_levels=2))
    assert net(torch.zeros(1, 1, 16, 48)).shape == (1, 1, 16, 48)


def test_the_published_network_has_about_eleven_million_weights():
    count = parameters(GapUNet(preset("paper")[0]))
    assert 10e6 < count < 12e6, count


def test_the_default_network_is_smaller():
    assert ModelConfig().widths == [16, 32, 64, 128]
    assert 0.6e6 < parameters(GapUNet(ModelConfig())) < 0.8e6 < 10.5e6 < parameters(GapUNet(preset("paper")[0]))


def test_max_filters_caps_the_deep_levels():
    capped = ModelConfig(depth=5, start_filters=8, max_filters=32)
    assert capped.widths == [8, 16, 32, 32, 32]
    assert ModelConfig(depth=5, start_filters=8).widths == [8, 16, 32, 64, 128]
    net = GapUNet(capped)
    conv_widths = {m.out_channels for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))}
    assert max(conv_widths) == 32
    assert parameters(net) < parameters(GapUNet(ModelConfig(depth=5, start_filters=8)))
    with pytest.raises(PhotongapError, match="max_filters"):
        ModelConfig(start_filters=32, max_filters=16)


def test_sine_encoding_is_sin_of_the_counts_at_decades():
    encoding = CountEncoding(4)
    counts = torch.tensor([0.0, 1.0, 7.0, 250.0, 31415.0]).reshape(1, 1, 1, 5)
    encoded = encoding(counts)
    assert encoded.shape == (1, 4, 1, 5)
    for k in range(4):
        expected = torch.sin(counts.double() * 10.0**-k).float()
        torch.testing.assert_close(encoded[0, k], expected[0, 0], rtol=1e-5, atol=1e-5)
    assert not encoded[..., 0].any()  # zero photons encode as zero
    # The weakest scale stays linear for bright images: sin(x / 1000) ~ x / 1000.
    assert float(encoded[0, 3, 0, 1]) == pytest.approx(1e-3, rel=1e-6)
    assert not list(encoding.parameters())  # a fixed encoding, nothing to learn


def test_tanh_encoding_is_monotonic_where_sine_aliases():
    counts = torch.arange(0.0, 400.0).reshape(1, 1, 1, -1)
    sine, tanh = CountEncoding(3, "sine")(counts), CountEncoding(3, "tanh")(counts)
    torch.testing.assert_close(tanh[0, 1, 0], torch.tanh(counts[0, 0, 0] / 10))
    assert (tanh.diff(dim=-1) >= 0).all()  # more photons never encode as fewer
    # sin(x / 10) at 31 photons is within 0.05 of its value at 0: the published encoding's blind spot.
    assert abs(float(sine[0, 1, 0, 31])) < 0.05 and float(tanh[0, 1, 0, 31]) > 0.99


def test_the_log_channel_follows_the_encoding_and_resolves_bright_pixels_best():
    counts = torch.tensor([0.0, 1.0, 100.0, 110.0, 3500.0, 3850.0]).reshape(1, 1, 1, 6)
    encoded = CountEncoding(5, "tanh", log_channel=True)(counts)
    assert encoded.shape == (1, 6, 1, 6)
    torch.testing.assert_close(encoded[0, :5], CountEncoding(5, "tanh")(counts)[0])
    torch.testing.assert_close(encoded[0, 5, 0], torch.log1p(counts[0, 0, 0]))
    # 10% brighter (one noise standard deviation at 100 photons): the log channel moves by
    # 0.095 at any brightness, the best-resolving tanh channel by less than half of that.
    for dim, bright in ((2, 3), (4, 5)):
        change = (encoded[0, :, 0, bright] - encoded[0, :, 0, dim]).abs()
        assert float(change[5]) > 0.09 and float(change[:5].max()) < 0.045


def test_a_level_input_network_reads_each_images_share_of_its_acquisition(tiny_config):
    net = GapUNet(dataclasses.replace(tiny_config, level_input=True)).eval()
    assert net.down[0].conv1.in_channels == tiny_config.encoding_levels + 2  # + log1p(counts) + log(share)
    counts = torch.poisson(torch.full((2, 1, 16, 16), 3.0), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole, half = net(counts), net(counts, 0.5)
        assert torch.equal(net(counts, 1.0), whole)  # None means the whole acquisition
        assert (half - whole).abs().max() > 1e-4
        mixed = net(counts, torch.tensor([1.0, 0.5]))  # one share per image
        torch.testing.assert_close(mixed, torch.cat([whole[:1], half[1:]]))
    encoded = net.encoding(counts, torch.tensor([1.0, 0.25]))
    assert torch.equal(encoded[0, -1], torch.zeros(16, 16))
    torch.testing.assert_close(encoded[1, -1], torch.full((16, 16), math.log(0.25)))
    plain = GapUNet(tiny_config).eval()
    with torch.no_grad():
        assert torch.equal(plain(counts, 0.5), plain(counts))  # a network without it ignores the share


def test_the_network_input_is_the_encoding(tiny_config):
    net = GapUNet(tiny_config)
    assert net.encoding.scales.flatten().tolist() == pytest.approx([1.0, 0.1, 0.01, 0.001])
    assert net.down[0].conv1.in_channels == tiny_config.encoding_levels + 1  # + log1p(counts)
    assert net.head.out_channels == 1
    published = GapUNet(dataclasses.replace(tiny_config, encoding="sine", log_channel=False))
    assert published.down[0].conv1.in_channels == tiny_config.encoding_levels


def test_bf16_autocast_with_channels_last_returns_float32_logits(tiny_config):
    torch.manual_seed(1)
    net = GapUNet(tiny_config).eval()
    counts = torch.poisson(torch.full((2, 1, 32, 40), 3.0))
    with torch.no_grad():
        reference = net(counts)
        fast_net = net.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = fast_net(counts.contiguous(memory_format=torch.channels_last))
    assert logits.dtype == torch.float32 and logits.shape == counts.shape
    assert torch.isfinite(logits).all()
    # bf16 keeps ~3 significant digits: the logits agree with fp32 to a few percent of their spread.
    spread = float(reference.max() - reference.min())
    assert float((logits - reference).abs().max()) < 0.05 * spread + 1e-3


def test_unknown_encoding_is_a_configuration_error():
    with pytest.raises(PhotongapError, match="model.encoding"):
        ModelConfig(encoding="cos")


def test_the_paper_preset_is_the_published_network():
    # The published U-Net (depth 5, 32 filters, its residual block without projections):
    # 10,906,241 weights; photongap's block adds 1x1 projections where widths change.
    from photongap.config import preset

    paper = GapUNet(preset("paper")[0])
    assert sum(p.numel() for p in paper.parameters()) == 10_906_241
    assert not any(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) for block in paper.down for m in block.modules())
    ours = GapUNet(dataclasses.replace(preset("paper")[0], block="photongap", init="torch"))
    assert sum(p.numel() for p in ours.parameters()) > 10_906_241
    # Xavier-normal weights and zero biases on every convolution (not the transposed ones).
    conv = paper.down[2].conv2
    fan = conv.weight[0].numel()
    assert float(conv.weight.std()) == pytest.approx((2.0 / (fan + conv.out_channels * 9)) ** 0.5, rel=0.05)
    assert not paper.head.bias.any() and not conv.bias.any()
    assert paper.upsample[0].bias.any()


def test_the_published_block_starts_its_residual_after_the_first_convolution():
    block = ResidualBlock(3, 5, "published").eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        s = block.conv1(x)
        expected = torch.relu(block.conv3(torch.relu(block.conv2(s))) + s)
        torch.testing.assert_close(block(x), expected)
