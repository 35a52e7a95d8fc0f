"""The ground-truth-free calibration check: about 0.8 for samples right by construction, far off for wrong ones."""

from __future__ import annotations

import numpy as np
import pytest

from photongap.errors import PhotongapError
from photongap.posterior_check import check_calibration, implied_coverage, pool_checks, spread_skill


def gamma_toy(seed: int = 0, shape: tuple[int, int] = (96, 96), p: float = 0.5, n: int = 16, beta: float = 0.5):
    """A scene whose posterior is known exactly: lambda ~ Gamma(k, rate beta) per pixel, x ~ Poisson(lambda),
    a ~ Binomial(x, p) ~ Poisson(p lambda); given a, p lambda ~ Gamma(k + a, rate beta / p + 1).

    Returns the exact posterior samples of p lambda given a, and the held-out b = x - a."""
    rng = np.random.default_rng(seed)
    k = np.linspace(2.0, 40.0, shape[0] * shape[1]).reshape(shape)  # a range of brightness and spread
    clean = rng.gamma(k, 1 / beta)
    x = rng.poisson(clean)
    a = rng.binomial(x, p)
    samples = rng.gamma(k + a, 1 / (beta / p + 1), size=(n, *shape))
    return samples, (x - a).astype(np.float64), p


def test_implied_coverage_is_the_nominal_one_when_error_and_spread_agree():
    assert implied_coverage(1.0) == pytest.approx(0.8, abs=1e-4)
    assert implied_coverage(1.0, nominal=0.5) == pytest.approx(0.5, abs=1e-4)
    assert implied_coverage(4.0) < 0.5 and implied_coverage(0.25) > 0.95


def test_the_check_reads_about_80_percent_on_exact_posterior_samples():
    readings = [spread_skill(*gamma_toy(seed)).implied_coverage for seed in range(3)]
    assert all(0.77 < reading < 0.83 for reading in readings), readings
    check = spread_skill(*gamma_toy(0))
    assert len(check.per_bin) == 10 and all(0.6 < ratio < 1.6 for ratio in check.error_to_spread)


def test_the_check_reads_far_lower_on_samples_too_narrow_and_higher_on_samples_too_wide():
    samples, held_out, p = gamma_toy(1)
    mean = samples.mean(axis=0)
    narrow = mean + 0.4 * (samples - mean)  # a third of the spread: a calibrated 80% interval would cover about 35%
    wide = mean + 2.0 * (samples - mean)
    assert spread_skill(narrow, held_out, p).implied_coverage < 0.5
    assert spread_skill(wide, held_out, p).implied_coverage > 0.95
    # A biased sampler: right spread, shifted by one posterior sd, reads low too.
    shifted = samples + samples.std(axis=0)
    assert spread_skill(shifted, held_out, p).implied_coverage < 0.7


def test_the_check_rejects_what_it_cannot_use():
    samples, held_out, p = gamma_toy(2, shape=(8, 8), n=4)
    with pytest.raises(PhotongapError, match="n >= 4"):
        spread_skill(samples[:3], held_out, p)
    with pytest.raises(PhotongapError, match="fraction"):
        spread_skill(samples, held_out, 1.0)


def test_check_calibration_pools_four_splits_each_sampled_from_four_fifths_of_the_photons(tiny_model, poisson_image, monkeypatch):
    tiny_model.info = {"trained_range": [-3.0, -0.2]}
    counts = poisson_image((32, 32), 2.0)
    seen = []
    sample = tiny_model.sample
    monkeypatch.setattr(tiny_model, "sample", lambda image, n, **options: seen.append((image.copy(), n, options)) or sample(image, n, **options))
    check = check_calibration(tiny_model, counts, 4, gain=5.0, device="cpu")
    assert len(seen) == 4 == check.splits and check.binned.pixels.sum() == 2 * 4 * counts.size
    for kept, n, options in seen:
        assert n == 4 and options["gain"] == 5.0 and (kept <= counts).all()
        assert abs(float(kept.sum()) / float(counts.sum()) - 0.8) < 5 * np.sqrt(0.16 / counts.sum())
    assert len({kept.tobytes() for kept, _, _ in seen}) == 4  # four different splits
    assert 0.0 <= check.implied_coverage <= 1.0 and check.fraction == 0.8
    assert check_calibration(tiny_model, counts, 4, splits=1, gain=5.0, device="cpu").splits == 1
    with pytest.raises(PhotongapError, match="at least 4"):
        check_calibration(tiny_model, counts, 3, gain=5.0, device="cpu")
    with pytest.raises(PhotongapError, match="at least one split"):
        check_calibration(tiny_model, counts, 4, splits=0, gain=5.0, device="cpu")


def gamma_splits(seed: int, splits: int, shape: tuple[int, int] = (64, 64), p: float = 0.8, n: int = 16, beta: float = 2.0):
    """``splits`` held-out splits of one Poisson image of the Gamma scene of :func:`gamma_toy`, each with its exact posterior samples."""
    rng = np.random.default_rng(seed)
    k = np.linspace(2.0, 40.0, shape[0] * shape[1]).reshape(shape)
    x = rng.poisson(rng.gamma(k, 1 / beta))
    for _ in range(splits):
        a = rng.binomial(x, p)
        yield rng.gamma(k + a, 1 / (beta / p + 1), size=(n, *shape)), (x - a).astype(np.float64), p


def test_pooled_splits_shrink_the_checks_noise():
    """Most of the check's noise is the split's, not the image's: four splits of one image scatter
    about 0.7 as much as one (not 0.5: a bin's reading is not linear in its error), stay near 0.8
    on exact samples, and their standard error says how much they scatter."""
    single = [spread_skill(*next(gamma_splits(seed, 1))) for seed in range(12)]
    pooled = [pool_checks([spread_skill(*split) for split in gamma_splits(seed, 4)]) for seed in range(12)]
    scatter = [float(np.std([check.implied_coverage for check in checks], ddof=1)) for checks in (single, pooled)]
    stated = [float(np.mean([check.standard_error for check in checks])) for checks in (single, pooled)]
    assert scatter[1] / scatter[0] < 0.8 and stated[1] / stated[0] < 0.8, (scatter, stated)
    assert 0.7 < stated[1] / scatter[1] < 1.5, (scatter, stated)
    assert abs(float(np.mean([check.implied_coverage for check in pooled])) - 0.8) < 0.03
    assert all(check.splits == 4 for check in pooled)


def test_pooling_adds_the_sums_of_like_checks_only():
    first, second = (spread_skill(*split) for split in gamma_splits(0, 2))
    both = pool_checks([first, second])
    assert np.array_equal(both.binned.error, first.binned.error + second.binned.error) and both.splits == 2
    assert pool_checks([first]) == first
    other = spread_skill(*gamma_toy(0, shape=(64, 64)))  # p = 0.5
    with pytest.raises(PhotongapError, match="different fractions"):
        pool_checks([first, other])
    with pytest.raises(PhotongapError, match="at least one check"):
        pool_checks([])


def test_the_sample_command_prints_the_check(tiny_model, poisson_image, tmp_path):
    import tifffile
    from typer.testing import CliRunner

    from photongap.cli import app

    tiny_model.info = {"trained_range": [-3.0, -0.2]}
    tiny_model.save(tmp_path / "model.pt")
    tifffile.imwrite(tmp_path / "cell.tif", poisson_image((128, 128), 1.0))  # enough held-out photons to be conclusive
    result = CliRunner().invoke(app, ["sample", str(tmp_path / "model.pt"), str(tmp_path / "cell.tif"), "-o", str(tmp_path / "out"), "-n", "4", "--posterior-gain", "4", "--device", "cpu", "--check"])
    assert result.exit_code == 0, result.output
    assert "check cell.tif: the samples' central 80% would hold" in result.output
    assert "2 network calls each" in result.output  # 0 dB -> 0.8 dB: one step and the final draw


def test_the_checks_standard_error_is_the_spread_of_its_readings_and_dim_images_are_inconclusive():
    readings = [spread_skill(*gamma_toy(seed)) for seed in range(8)]
    spread = float(np.std([check.implied_coverage for check in readings], ddof=1))
    stated = float(np.mean([check.standard_error for check in readings]))
    assert 0.5 < stated / spread < 2.0, (stated, spread)
    assert all(check.conclusive for check in readings) and "would hold" in readings[0].summary("toy")
    # A scene a hundred times dimmer, its posterior as exact: too few held-out photons to resolve its spread.
    dim = spread_skill(*gamma_toy(0, beta=50.0))
    assert not dim.conclusive and dim.standard_error > 3 * stated, (dim.standard_error, stated)
    assert dim.summary("dim.tif").startswith("check dim.tif: inconclusive, too few held-out photons")


def test_the_check_of_a_volume_is_the_check_of_its_voxels():
    samples, held_out, p = gamma_toy(3)  # 96 x 96 pixels: 4 planes of 48 x 48 as a volume
    volume = spread_skill(samples.reshape(len(samples), 4, 48, 48), held_out.reshape(4, 48, 48), p)
    assert volume == spread_skill(samples, held_out, p)
    with pytest.raises(PhotongapError, match="held-out image of their shape"):
        spread_skill(samples.reshape(len(samples), 4, 48, 48), held_out, p)


def test_the_sample_command_checks_a_3d_model_volume_by_volume(tmp_path):
    import tifffile
    from typer.testing import CliRunner

    from photongap.cli import app
    from photongap.config import ModelConfig
    from photongap.model import GapModel
    from photongap.network import GapUNet

    config = ModelConfig(depth=2, start_filters=4, encoding_levels=3, dims=3, depth_pools=1)
    GapModel(GapUNet(config), config, {"trained_range": [-3.0, -0.2]}).save(tmp_path / "model.pt")
    counts = np.random.default_rng(0).poisson(1.0, (2, 6, 24, 24)).astype(np.float32)  # two time points of a z-stack
    tifffile.imwrite(tmp_path / "stack.tif", counts, imagej=True, metadata={"axes": "TZYX"})
    result = CliRunner().invoke(app, ["sample", str(tmp_path / "model.pt"), str(tmp_path / "stack.tif"), "-o", str(tmp_path / "out"), "-n", "4",
                                      "--posterior-gain", "4", "--device", "cpu", "--check", "--check-splits", "2"])
    assert result.exit_code == 0, result.output
    assert "check stack.tif volume (0,): the samples' central 80% would hold" in result.output
    assert "check stack.tif volume (1,):" in result.output
    assert "check all 2 volumes pooled:" in result.output
    # Progress bars count the volumes sampled and checked (not the steps of one volume).
    lines = result.output.splitlines()
    assert any(line.startswith("sampling stack.tif") and " 2/2 " in line for line in lines), result.output
    assert any(line.startswith("checking stack.tif") and " 2/2 2 splits each" in line for line in lines), result.output
    model = GapModel.load(tmp_path / "model.pt")
    checks = [check_calibration(model, volume, 4, splits=2, gain=4.0, device="cpu") for volume in counts]
    assert all(check.splits == 2 for check in checks)
    assert pool_checks(checks).summary("all 2 volumes pooled") in " ".join(result.output.split())  # as printed, unwrapped


def pooled_toy(seed: int, level: float, shape: tuple[int, int] = (128, 128), p: float = 0.8, n: int = 16):
    """Calibrated samples far narrower than the held-out photons' noise, as from a network that pools many pixels.

    The truth ``p lambda`` and the samples are exchangeable draws around one centre (spread 10% of
    the signal), so their coverage is 80% by construction; ``b`` is the held-out Poisson image."""
    rng = np.random.default_rng(seed)
    clean = level * np.exp(rng.normal(0.0, 0.5, shape))
    x = rng.poisson(clean)
    held_out = x - rng.binomial(x, p)
    sigma = 0.1 * p * clean
    centre = p * clean + sigma * rng.standard_normal(shape)
    return centre + sigma * rng.standard_normal((n, *shape)), held_out.astype(np.float64), p


@pytest.mark.parametrize("level", [0.1, 10.0])
def test_the_standard_error_holds_when_the_held_out_photons_swamp_the_spread(level):
    """Each bin's error is then many times its spread or negative, and the reading saturates: drawn
    around itself alone, its noise read 0.6-0.8 of the spread of the readings, and at 10 photons/px
    11 of 12 readings called themselves conclusive."""
    readings = [spread_skill(*pooled_toy(seed, level)) for seed in range(8)]
    spread = float(np.std([check.implied_coverage for check in readings], ddof=1))
    stated = float(np.mean([check.standard_error for check in readings]))
    assert 0.85 < stated / spread < 2.0, (stated, spread)
    assert not any(check.conclusive for check in readings)


def test_each_bins_standard_error_is_the_spread_of_its_readings():
    """Per bin, as for the whole check: on exact samples of 16 images the stated error of each bin's
    reading matches the readings' scatter, and pooling four splits shrinks it."""
    single = [spread_skill(*next(gamma_splits(seed, 1))) for seed in range(16)]
    scatter = np.std([check.per_bin for check in single], axis=0, ddof=1)
    stated = np.mean([check.per_bin_standard_error for check in single], axis=0)
    assert len(stated) == 10 and 0.7 < float(np.mean(stated / scatter)) < 1.5, (stated, scatter)
    pooled = pool_checks([spread_skill(*split) for split in gamma_splits(0, 4)])
    assert float(np.mean(pooled.per_bin_standard_error)) < 0.8 * float(np.mean(stated))


def test_the_check_plot_draws_each_check_and_the_pooled_one_with_its_errors(monkeypatch, tmp_path):
    import photongap.plotting as plotting

    checks = [(f"image {seed}", spread_skill(*next(gamma_splits(seed, 1)))) for seed in range(3)]
    pooled = pool_checks([check for _, check in checks])
    drawn = []
    monkeypatch.setattr(plotting, "_save", lambda figure, path: drawn.append(figure))
    plotting.plot_calibration_check(checks, tmp_path / "check.png", ("all pooled", pooled))
    axes = drawn[0].axes[0]
    lines = {line.get_label(): line.get_ydata() for line in axes.get_lines()}
    for name, check in checks:
        (label,) = [label for label in lines if label.startswith(f"{name}: {check.implied_coverage:.0%} ± {check.standard_error:.0%}")]
        assert np.allclose(lines[label], 100 * np.array(check.per_bin)), label
    (thick,) = axes.containers  # the pooled check, with its bars
    assert thick.get_label().startswith(f"all pooled: {pooled.implied_coverage:.0%}")
    line, _, (bars,) = thick.lines
    assert np.allclose(line.get_ydata(), 100 * np.array(pooled.per_bin))
    assert np.allclose([segment[1, 1] - segment[0, 1] for segment in bars.get_segments()], 200 * np.array(pooled.per_bin_standard_error))


def test_the_sample_command_writes_the_check_plot_and_keeps_an_existing_one(tiny_model, poisson_image, tmp_path):
    import tifffile
    from typer.testing import CliRunner

    from photongap.cli import app

    tiny_model.info = {"trained_range": [-3.0, -0.2]}
    tiny_model.save(tmp_path / "model.pt")
    tifffile.imwrite(tmp_path / "cell.tif", poisson_image((64, 64), 1.0))

    def sample(out: str, *extra: str):
        return CliRunner().invoke(app, ["sample", str(tmp_path / "model.pt"), str(tmp_path / "cell.tif"), "-o", str(tmp_path / out), "-n", "4",
                                        "--posterior-gain", "4", "--device", "cpu", "--check-splits", "1", "--check-plot", str(tmp_path / "check.png"), *extra])

    result = sample("out")  # --check-plot implies --check
    assert result.exit_code == 0, result.output
    assert "check cell.tif:" in result.output and "check plot written to" in result.output
    written = (tmp_path / "check.png").read_bytes()
    assert written[:8] == b"\x89PNG\r\n\x1a\n"
    refused = sample("again")
    assert refused.exit_code != 0 and "check.png" in str(refused.exception) and "--overwrite" in str(refused.exception)
    assert not (tmp_path / "again").exists() and (tmp_path / "check.png").read_bytes() == written
    assert sample("again", "--overwrite").exit_code == 0


def test_the_benchmarks_truth_per_bin_is_flat_on_exact_samples(monkeypatch):
    """``bench_sampling.truth_in_bins``, which the README's bin-by-bin table rests on, ranks the
    truth among the half of the samples that did not choose the bin: among all of them even exact
    samples read about 76% in the lowest tenth and 87% in the top one."""
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    monkeypatch.delitem(sys.modules, "common", raising=False)
    from bench_sampling import truth_in_bins

    rng = np.random.default_rng(0)
    sums = np.zeros((10, 4))
    for seed in range(6):
        generator = np.random.default_rng(seed)
        shape, p, beta = (96, 96), 0.8, 0.5
        k = np.linspace(2.0, 40.0, shape[0] * shape[1]).reshape(shape)
        clean = generator.gamma(k, 1 / beta)
        a = generator.binomial(generator.poisson(clean), p)
        samples = generator.gamma(k + a, 1 / (beta / p + 1), size=(16, *shape))
        sums += truth_in_bins(samples, p * clean, rng)
    coverage, ratio = sums[:, 2] / sums[:, 3], sums[:, 0] / sums[:, 1]
    assert np.all(np.abs(coverage - 0.8) < 0.03), coverage
    assert np.all(np.abs(ratio - 1.0) < 0.15), ratio


def test_the_benchmarks_brightness_classes_are_flat_on_exact_samples_and_see_overshoot(monkeypatch):
    """``bench_sampling.truth_by_brightness`` cuts the pixels by the MMSE, a function of the data, so
    exact posterior samples read 80% and a centred rank in every class; cut by the truth they
    would not (the brightest truths lie above their samples). Samples 20% too bright read the
    truth below them in the bright classes."""
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    monkeypatch.delitem(sys.modules, "common", raising=False)
    from bench_sampling import truth_by_brightness

    rng, generator = np.random.default_rng(0), np.random.default_rng(1)
    shape, k, beta = (128, 128), 2.0, 0.5
    exact, bright, by_truth = np.zeros((4, 3)), np.zeros((4, 3)), np.zeros((4, 3))
    for _ in range(4):
        clean = generator.gamma(k, 1 / beta, size=shape)
        counts = generator.poisson(clean)
        mmse = (k + counts) / (beta + 1)
        samples = generator.gamma(k + counts, 1 / (beta + 1), size=(16, *shape))
        exact += truth_by_brightness(samples, clean, mmse, rng)
        bright += truth_by_brightness(1.2 * samples, clean, 1.2 * mmse, rng)
        by_truth += truth_by_brightness(samples, clean, clean, rng)
    coverage, rank = exact[:, 1] / exact[:, 0], exact[:, 2] / exact[:, 0]
    assert np.all(np.abs(coverage - 0.8) < 0.03), coverage
    assert np.all(np.abs(rank) < 0.03), rank
    assert np.all((bright[1:, 2] / bright[1:, 0]) < -0.05), bright[:, 2] / bright[:, 0]
    assert by_truth[-1, 2] / by_truth[-1, 0] > 0.1, by_truth[:, 2] / by_truth[:, 0]


def test_the_benchmarks_error_in_spreads_reads_exact_samples_as_calibrated_and_sees_an_error_in_few_pixels(monkeypatch):
    """``bench_sampling.error_in_spreads``, behind the README's error-to-spread figures: exact
    posterior samples read a squared error equal to their spread, with the median ``z**2`` of a
    near-Gaussian posterior. On a prior of sparse faint sources, per-pixel draws with the exact
    posterior's mean and variance read the same total, but the error lies in the few pixels that
    hold a source: a far lower median, and an 80% interval that holds the truth far too often."""
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    monkeypatch.delitem(sys.modules, "common", raising=False)
    from bench_sampling import error_in_spreads, rank_coverage_80

    rng, generator = np.random.default_rng(0), np.random.default_rng(1)
    shape, k, beta = (256, 256), 8.0, 0.5
    clean = generator.gamma(k, 1 / beta, size=shape)
    counts = generator.poisson(clean)
    samples = generator.gamma(k + counts, 1 / (beta + 1), size=(16, *shape))
    for error, spread in error_in_spreads(samples, clean, (k + counts) / (beta + 1)):
        assert abs(error.sum() / spread.sum() - 1) < 0.1
        assert 0.42 < np.median(error / spread) < 0.55

    # Sky at 0.1 photons/px, a faint source (1 photon/px) in 5% of the pixels.
    sky, source, share = 0.1, 1.0, 0.05
    clean = np.where(generator.random((256, 256)) < share, source, sky)
    counts = generator.poisson(clean)
    odds = share * source**counts * np.exp(-source) / ((1 - share) * sky**counts * np.exp(-sky))
    p = odds / (1 + odds)
    mean, variance = sky + p * (source - sky), p * (1 - p) * (source - sky) ** 2
    samples = generator.gamma(mean**2 / variance, variance / mean, size=(16, *clean.shape))
    error, spread = np.concatenate(error_in_spreads(samples, clean, mean), axis=1)
    assert abs(error.sum() / spread.sum() - 1) < 0.2
    assert np.median(error / spread) < 0.1 and np.mean(error / spread > 9) > 0.02
    assert rank_coverage_80(samples, clean, rng) > 0.9
