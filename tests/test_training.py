"""Training: the run folder, reproducibility, resuming, time limits, the model file, the data
module, and a short training on real noisy data that beats the untrained network."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from photongap.config import ModelConfig, TrainConfig, to_dict
from photongap.data import GapDataModule, PatchDataset, augment, hold_out
from photongap.errors import PhotongapError
from photongap.model import GapModel
from photongap.modelfile import FORMAT, FORMAT_VERSION
from photongap.network import GapUNet
from photongap.physics import split_counts
from photongap.sample_data import clean_at_level, load_sample_data, psnr, simulate_counts
from photongap.training import RunClock, RunProgress, TrainResult, data_statistics, read_metrics, train, trained_range


def noisy_images(count: int = 3, shape: tuple[int, int] = (72, 80), level: float = 3.0, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(0, 4, shape[0]), np.linspace(0, 5, shape[1]), indexing="ij")
    clean = level * (1 + np.sin(y) * np.cos(x))
    return [rng.poisson(clean).astype(np.float32) for _ in range(count)]


def quick_config(**changes) -> TrainConfig:
    values = dict(steps=6, batch_size=4, patch_size=32, val_every=3, precision="fp32", seed=0)
    return TrainConfig(**{**values, **changes})


def quick_train(run_dir: Path, tiny_config: ModelConfig, images=None, **changes) -> TrainResult:
    resume = changes.pop("resume", False)
    return train(
        images if images is not None else noisy_images(), run_dir, model_config=tiny_config,
        train_config=quick_config(**changes), device="cpu", progress=False, resume=resume,
    )


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    return GapModel.load(path).network.state_dict()


def digest(tensors) -> str:
    return hashlib.sha1(b"".join(t.detach().float().contiguous().numpy().tobytes() for t in tensors)).hexdigest()



# --- the run folder and the model file ---------------------------------------------------


def test_a_short_run_writes_the_run_folder_and_a_usable_model(tmp_path, tiny_config):
    images = noisy_images()
    result = quick_train(tmp_path / "run", tiny_config, images)
    assert result.steps == 6 and not result.stopped_early and result.elapsed_s > 0
    assert result.model_path == tmp_path / "run" / "model.pt"
    for name in ("model.pt", "last.ckpt", "metrics.csv", "loss.png"):
        assert (tmp_path / "run" / name).stat().st_size > 0, name
    assert not list((tmp_path / "run").glob("*partial*"))
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [int(row["step"]) for row in rows if row["val_loss"]] == [3, 6]
    assert all(math.isfinite(float(row["val_loss"])) for row in rows if row["val_loss"])

    model = GapModel.load(result.model_path)
    assert model.config == tiny_config
    assert model.info["steps_done"] == 6 and model.info["training"] == to_dict(quick_config())
    assert model.info["data"]["images"] == 3
    assert model.info["data"]["photons_per_pixel"] == pytest.approx(np.mean(images), rel=1e-6)
    denoised = model.denoise(images[0], device="cpu", precision="fp32")
    assert denoised.shape == images[0].shape and np.isfinite(denoised).all()



@pytest.mark.parametrize("decay", [0.9, None])
def test_the_saved_model_is_the_weight_average_when_one_is_kept(tmp_path, tiny_config, decay):
    result = quick_train(tmp_path / "run", tiny_config, average_decay=decay)
    checkpoint = torch.load(tmp_path / "run" / "last.ckpt", weights_only=False)["state_dict"]
    saved = state_dict(result.model_path)
    last = {name: checkpoint[f"network.{name}"] for name in saved}
    if decay is None:
        assert not any(key.startswith("average.") for key in checkpoint)
        assert all(torch.equal(saved[name], last[name]) for name in saved)
        return
    average = {name: checkpoint[f"average.{name}"] for name in saved}
    assert all(torch.equal(saved[name], average[name]) for name in saved)
    weights = [name for name in saved if name.endswith("weight")]
    assert any(not torch.allclose(saved[name], last[name]) for name in weights)  # an average, not the last step

def test_same_seed_same_weights_other_seed_other_weights(tmp_path, tiny_config):
    first = state_dict(quick_train(tmp_path / "a", tiny_config, steps=4, val_every=4).model_path)
    again = state_dict(quick_train(tmp_path / "b", tiny_config, steps=4, val_every=4).model_path)
    other = state_dict(quick_train(tmp_path / "c", tiny_config, steps=4, val_every=4, seed=1).model_path)
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not all(torch.equal(first[name], other[name]) for name in first)
    # Training changed the weights: the file is not the initialisation.
    torch.manual_seed(0)
    initial = GapUNet(tiny_config).state_dict()
    assert not all(torch.equal(first[name], initial[name]) for name in first)


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, tiny_config):
    """A run of 10 steps, then resumed to 20 (constant learning rate, so that the 20-step run is the same
    schedule): (folder, first result, its metrics, its weights, resumed result)."""
    run_dir = tmp_path_factory.mktemp("resume") / "run"
    first = quick_train(run_dir, tiny_config, steps=10, val_every=5, schedule="constant")
    rows_before = read_metrics(run_dir / "metrics.csv")
    weights_before = state_dict(first.model_path)
    second = quick_train(run_dir, tiny_config, steps=20, val_every=5, schedule="constant", resume=True)
    return run_dir, first, rows_before, weights_before, second


def test_resume_continues_to_the_new_step_count(resumed_run):
    run_dir, first, rows_before, weights_before, second = resumed_run
    assert first.steps == 10 and second.steps == 20 and not second.stopped_early
    assert GapModel.load(second.model_path).info["steps_done"] == 20
    checkpoint = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 20
    after = state_dict(second.model_path)
    assert not all(torch.equal(after[name], weights_before[name]) for name in after)
    rows = read_metrics(run_dir / "metrics.csv")
    steps = [int(row["step"]) for row in rows]
    assert max(steps) == 20 and any(step > 10 for step in steps)
    keys = [(row["step"], bool(row["train_loss"]), bool(row["val_loss"])) for row in rows]
    assert len(keys) == len(set(keys)), rows  # no duplicated rows
    assert steps == sorted(steps)


def test_resume_keeps_the_metrics_of_the_first_run(resumed_run):
    run_dir, first, rows_before, weights_before, second = resumed_run
    assert [int(row["step"]) for row in rows_before] and max(int(row["step"]) for row in rows_before) == 10
    rows = read_metrics(run_dir / "metrics.csv")
    assert rows[: len(rows_before)] == rows_before
    elapsed = [float(row["elapsed_s"]) for row in rows]
    assert elapsed == sorted(elapsed)


def test_a_resumed_run_equals_an_uninterrupted_run(tmp_path, tiny_config, resumed_run):
    run_dir, first, rows_before, weights_before, second = resumed_run
    straight = quick_train(tmp_path / "straight", tiny_config, steps=20, val_every=5, schedule="constant")
    resumed, uninterrupted = state_dict(second.model_path), state_dict(straight.model_path)
    difference = max(float((resumed[name] - uninterrupted[name]).abs().max()) for name in resumed)
    assert difference == 0.0, f"largest weight difference {difference:.3g}"


class RecordPatches(L.Callback):
    """The digests of the patches of every step: ``{global_step: [digest, ...]}``."""

    def __init__(self) -> None:
        self.steps: dict[int, list[str]] = {}

    def on_train_batch_start(self, trainer, module, batch, batch_index) -> None:
        self.steps[trainer.global_step] = [digest([patch]) for patch in batch]


class StopAt(L.Callback):
    """Stops a run after ``step`` steps, as a time limit does."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index) -> None:
        trainer.should_stop = trainer.global_step >= self.step


@pytest.mark.parametrize(("first_steps", "stop_at"), [(6, None), (10, 3)], ids=["after-a-finished-run", "after-a-stop"])
def test_a_resumed_run_continues_with_patches_it_had_not_seen(tmp_path, tiny_config, first_steps, stop_at):
    # No validation and no checkpoint on the way, so Lightning restarts an unfinished epoch: the
    # case in which it used to end the resumed epoch early and start its patches again.
    images = noisy_images()
    first, second = RecordPatches(), RecordPatches()
    training = quick_config(steps=first_steps, val_fraction=0.0, val_every=1000, batch_size=2)
    stops = [StopAt(stop_at)] if stop_at else []
    train(images, tmp_path / "run", model_config=tiny_config, train_config=training, device="cpu", progress=False, callbacks=[first, *stops])
    done = stop_at or first_steps
    train(images, tmp_path / "run", resume=True, overrides={"steps": 10}, device="cpu", progress=False, callbacks=[second])
    assert sorted(first.steps) == list(range(done)) and sorted(second.steps) == list(range(done, 10))
    stream = PatchDataset(images, patch_size=32, length=20, seed=0)
    expected = [[digest([stream[2 * step + i]]) for i in range(2)] for step in range(10)]
    assert [{**first.steps, **second.steps}[step] for step in range(10)] == expected


def test_an_existing_run_is_not_overwritten_and_resume_needs_a_checkpoint(tmp_path, tiny_config):
    with pytest.raises(PhotongapError, match="cannot resume.*last.ckpt"):
        quick_train(tmp_path / "fresh", tiny_config, resume=True)
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "model.pt").write_bytes(b"an earlier run")
    with pytest.raises(PhotongapError, match="already holds a run"):
        quick_train(tmp_path / "done", tiny_config)
    assert (tmp_path / "done" / "model.pt").read_bytes() == b"an earlier run"


def test_a_second_run_into_the_same_folder_raises(tmp_path, tiny_config):
    quick_train(tmp_path / "run", tiny_config, steps=2, val_every=2)
    model_bytes = (tmp_path / "run" / "model.pt").read_bytes()
    with pytest.raises(PhotongapError, match="already holds a run.*--resume"):
        quick_train(tmp_path / "run", tiny_config, steps=2, val_every=2)
    assert (tmp_path / "run" / "model.pt").read_bytes() == model_bytes


def test_the_time_limit_stops_early_and_still_saves_the_model(tmp_path, tiny_config):
    result = quick_train(tmp_path / "run", tiny_config, steps=100_000, val_every=50, time_limit_minutes=0.05)
    assert result.stopped_early and 0 < result.steps < 100_000
    assert 2.5 < result.elapsed_s < 60
    model = GapModel.load(result.model_path)
    assert model.info["steps_done"] == result.steps
    assert (tmp_path / "run" / "last.ckpt").exists() and (tmp_path / "run" / "loss.png").exists()


def test_a_resumed_time_limited_run_anneals_by_the_total_time_limit(tmp_path, tiny_config):
    # 1.2 s of training, then resumed to a 2.4 s limit: the clock (and so the cosine schedule's
    # progress) must include the first 1.2 s, as Lightning's timer does when it stops the run.
    run_dir = tmp_path / "run"
    first = quick_train(run_dir, tiny_config, steps=1_000_000, val_every=100_000, time_limit_minutes=0.02)
    assert first.stopped_early
    second = quick_train(run_dir, tiny_config, steps=1_000_000, val_every=100_000, time_limit_minutes=0.04, resume=True)
    assert second.stopped_early and second.steps > first.steps
    assert second.elapsed_s < 0.04 * 60  # Lightning's timer kept the time before the resume
    checkpoint = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=False)
    factor = checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] / quick_config().learning_rate
    assert factor < 0.15, f"learning rate at {factor:.2f} of its peak at the time limit: the schedule did not anneal"
    elapsed = [float(row["elapsed_s"]) for row in read_metrics(run_dir / "metrics.csv")]
    assert elapsed == sorted(elapsed) and elapsed[-1] > 0.9 * 0.04 * 60


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, tiny_config, monkeypatch):
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    run_dir = tmp_path / "run"
    quick_train(run_dir, tiny_config, steps=2, val_every=2)
    before = (run_dir / "last.ckpt").read_bytes()

    def failing_save(self, checkpoint, path, storage_options=None):
        Path(path).write_bytes(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", failing_save)
    with pytest.raises(OSError, match="No space"):
        quick_train(run_dir, tiny_config, steps=6, val_every=2, resume=True)
    assert (run_dir / "last.ckpt").read_bytes() == before
    assert sorted(p.name for p in run_dir.iterdir()) == ["assessment.json", "config.yaml", "last.ckpt", "loss.png", "metrics.csv", "model.pt"]


def test_a_failed_config_write_keeps_the_stored_config(tmp_path, tiny_config, monkeypatch):
    run_dir = tmp_path / "run"
    quick_train(run_dir, tiny_config, steps=2, val_every=2)
    stored = (run_dir / "config.yaml").read_text()
    write_text = Path.write_text

    def half_then_full_disk(path, text, *args, **kwargs):
        write_text(path, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_full_disk)
    with pytest.raises(OSError, match="No space"):
        quick_train(run_dir, tiny_config, steps=6, val_every=2, resume=True)
    assert (run_dir / "config.yaml").read_text() == stored
    assert not [p.name for p in run_dir.iterdir() if "partial" in p.name]


# --- the Python API: photongap.train -------------------------------------------------------


def test_photongap_train_on_arrays_and_resume_from_the_stored_config(tmp_path, tiny_config):
    import photongap

    images = noisy_images()
    result = photongap.train(images, tmp_path / "run", model_config=tiny_config, train_config=quick_config(steps=4, val_every=2),
                             device="cpu", progress=False)
    assert result.steps == 4 and GapModel.load(result.model_path).config == tiny_config
    # No configuration given: the run continues as stored, not from the default preset.
    again = photongap.train(images, tmp_path / "run", resume=True, device="cpu", progress=False)
    model = GapModel.load(again.model_path)
    assert again.steps == 4 and model.config == tiny_config and model.info["training"] == to_dict(quick_config(steps=4, val_every=2))


def test_photongap_train_on_a_folder_of_tiffs_resumes_with_overrides(tmp_path, tiny_config):
    import tifffile

    import photongap

    folder = tmp_path / "data"
    folder.mkdir()
    for i, image in enumerate(noisy_images()):
        tifffile.imwrite(folder / f"cells{i}.tif", image.astype(np.uint16))
    training = quick_config(steps=4, val_every=2, schedule="constant")
    first = photongap.train([folder], tmp_path / "run", model_config=tiny_config, train_config=training, device="cpu", progress=False)
    model = GapModel.load(first.model_path)
    assert first.steps == 4 and model.info["data"]["images"] == 3 and model.info["preset"] == "custom"
    second = photongap.train([folder], tmp_path / "run", resume=True, overrides={"steps": 8}, device="cpu", progress=False)
    model = GapModel.load(second.model_path)
    assert second.steps == 8 and model.info["steps_done"] == 8 and model.config == tiny_config
    assert model.info["training"] == to_dict(quick_config(steps=8, val_every=2, schedule="constant"))
    assert model.info["preset"] == "custom"  # as the run was started
    stored = (tmp_path / "run" / "config.yaml").read_text()
    assert "steps: 8" in stored and f"start_filters: {tiny_config.start_filters}" in stored


def test_a_preset_run_keeps_its_name_and_network_when_resumed(tmp_path):
    images = noisy_images()
    small = {"steps": 2, "batch_size": 2, "patch_size": 32, "val_every": 2, "precision": "fp32"}
    first = train(images, tmp_path / "run", preset="generative", overrides=small, device="cpu", progress=False)
    model = GapModel.load(first.model_path)
    assert model.info["preset"] == "generative" and model.config == ModelConfig()
    assert model.info["training"]["split_mode"] == "absolute" and model.info["trained_range"][0] == -40.0
    second = train(images, tmp_path / "run", overrides={"steps": 3}, resume=True, device="cpu", progress=False)
    model = GapModel.load(second.model_path)
    assert second.steps == 3 and model.info["preset"] == "generative" and model.info["training"]["split_mode"] == "absolute"
    with pytest.raises(PhotongapError, match="preset applies to new runs") as error:
        train(images, tmp_path / "run", preset="paper", resume=True, device="cpu", progress=False)
    with pytest.raises(PhotongapError, match=r"another network: depth 3 \(stored 4\)") as error:
        train(images, tmp_path / "run", model_config=ModelConfig(depth=3), resume=True, device="cpu", progress=False)
    assert "\n" not in str(error.value)
    with pytest.raises(PhotongapError, match="unknown key.*stpes"):
        train(images, tmp_path / "run", overrides={"stpes": 4}, resume=True, device="cpu", progress=False)
    assert GapModel.load(second.model_path).info["steps_done"] == 3  # the refused calls changed nothing


def test_the_schedule_counts_the_time_before_a_resume():
    config = TrainConfig(steps=1000, time_limit_minutes=1.0)
    clock = RunClock()
    clock.load_state_dict({"elapsed_s": 45.0})  # what a checkpoint of a 45 s session holds
    assert RunProgress(config, clock)(0) == pytest.approx(0.75, abs=0.01)
    assert RunProgress(config, clock)(900) == pytest.approx(0.9)
    assert RunProgress(config)(0) == 0.0  # no clock: the steps alone (the ranks of a distributed run)
    assert RunClock().state_dict()["elapsed_s"] == 0.0


def test_a_ctrl_c_inside_a_progress_bars_constructor_waits_until_the_bar_is_whole(monkeypatch):
    """The interrupt lands in tqdm's constructor (here: where it makes its moving averages).

    Unheld, it leaves a half-built bar whose destructor fails when it is collected, and the
    interpreter prints that traceback after the run had stopped cleanly.
    """
    import gc
    import signal

    import tqdm.std

    from photongap.training.callbacks import TrainingBar

    moving_average = tqdm.std.EMA
    def interrupted(*args):
        signal.raise_signal(signal.SIGINT)
        return moving_average(*args)

    unraisable = []
    monkeypatch.setattr(tqdm.std, "EMA", interrupted)
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)  # a terminal's, even when pytest runs under nohup
    try:
        bar = TrainingBar(RunClock(), None)
        for build in (bar.init_train_tqdm, bar.init_sanity_tqdm):
            with pytest.raises(KeyboardInterrupt):
                build()
            gc.collect()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, handler)
    assert not unraisable, [str(hook.exc_value) for hook in unraisable]


# --- distributed training ----------------------------------------------------------------

DDP_SCRIPT = '''
import hashlib, json, sys
from pathlib import Path

import lightning as L
import numpy as np
import torch

from photongap.config import ModelConfig, TrainConfig
from photongap.training import train


def digest(tensors):
    return hashlib.sha1(b"".join(t.detach().float().contiguous().numpy().tobytes() for t in tensors)).hexdigest()


class Record(L.Callback):
    """Each rank's patches per step, and its weights after the last step."""

    def __init__(self, out):
        self.out = Path(out)

    def on_train_batch_start(self, trainer, module, batch, batch_index):
        with open(self.out / f"patches.rank{trainer.global_rank}.jsonl", "a") as file:
            file.write(json.dumps({"step": trainer.global_step, "patches": [digest([patch]) for patch in batch]}) + "\\n")

    def on_train_end(self, trainer, module):
        state = module.inference_network.state_dict()
        final = {"step": trainer.global_step, "weights": digest([state[name] for name in sorted(state)])}
        (self.out / f"final.rank{trainer.global_rank}.json").write_text(json.dumps(final))


if __name__ == "__main__":
    torch.set_num_threads(1)
    root, steps, resume = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "resume"
    images = [np.random.default_rng(seed).poisson(3.0, (72, 80)).astype(np.float32) for seed in range(3)]
    model_config = ModelConfig(depth=2, start_filters=4, encoding_levels=3)
    train_config = TrainConfig(steps=steps, batch_size=2, patch_size=16, val_fraction=0.0, val_every=100, precision="fp32")
    train(images, root / "run", model_config=model_config, train_config=train_config, device="cpu", devices=2,
          strategy="ddp", progress=False, resume=resume, callbacks=[Record(root)])
'''


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    """Two CPU processes (gloo): 6 steps, then resumed to 10; each rank records its patches and final weights."""
    root = tmp_path_factory.mktemp("ddp")
    script = root / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    for steps, how in ((6, "fresh"), (10, "resume")):
        done = subprocess.run([sys.executable, str(script), str(root), str(steps), how], capture_output=True, text=True, env=environment, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    return root


@pytest.mark.slow
def test_ddp_ranks_draw_their_own_patches_and_a_resume_continues_after_them(ddp_run):
    records = {rank: [json.loads(line) for line in (ddp_run / f"patches.rank{rank}.jsonl").read_text().splitlines()] for rank in (0, 1)}
    for rank in (0, 1):
        assert [row["step"] for row in records[rank]] == list(range(10))  # one batch per step, none again after the resume
    for first, second in zip(records[0], records[1]):
        assert not set(first["patches"]) & set(second["patches"]), f"both ranks trained on a patch at step {first['step']}"
    seen = [patch for rank in (0, 1) for row in records[rank] for patch in row["patches"]]
    assert len(seen) == len(set(seen)) == 10 * 2 * 2, "a patch was used twice"
    # Together the ranks drew patches 0 .. steps * batch_size * world_size - 1 of the run's patch stream.
    images = [np.random.default_rng(seed).poisson(3.0, (72, 80)).astype(np.float32) for seed in range(3)]
    stream = PatchDataset(images, patch_size=16, length=10 * 2 * 2, seed=0)
    assert set(seen) == {digest([stream[i]]) for i in range(len(stream))}


@pytest.mark.slow
def test_ddp_saves_rank_zeros_model_after_the_last_step(ddp_run):
    final = {rank: json.loads((ddp_run / f"final.rank{rank}.json").read_text()) for rank in (0, 1)}
    assert final[0]["step"] == final[1]["step"] == 10
    model = GapModel.load(ddp_run / "run" / "model.pt")
    assert model.info["steps_done"] == 10
    state = model.network.state_dict()
    assert digest([state[name] for name in sorted(state)]) == final[0]["weights"]


# --- loading model files -----------------------------------------------------------------


def model_payload(tiny_config: ModelConfig, **changes) -> dict:
    torch.manual_seed(0)
    payload = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "photongap_version": "0.1.0",
        "model_config": to_dict(tiny_config), "state_dict": GapUNet(tiny_config).state_dict(), "info": {},
    }
    return {**payload, **changes}


def test_a_saved_model_round_trips(tmp_path, tiny_model):
    path = tiny_model.save(tmp_path / "model.pt")
    loaded = GapModel.load(path)
    assert loaded.config == tiny_model.config and loaded.info == tiny_model.info
    original = tiny_model.network.state_dict()
    assert all(torch.equal(tensor, original[name]) for name, tensor in loaded.network.state_dict().items())
    assert not loaded.network.training
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda path, config: None, "model file not found"),
        (lambda path, config: path.write_bytes(np.random.default_rng(0).bytes(3000)), "not a photongap model file"),
        (lambda path, config: path.write_bytes(b""), "not a photongap model file"),
        (lambda path, config: torch.save({"weights": torch.zeros(3)}, path), "not a photongap model file"),
        (lambda path, config: torch.save([1, 2, 3], path), "not a photongap model file"),
        (lambda path, config: torch.save(model_payload(config, format_version=FORMAT_VERSION + 1), path), f"model format {FORMAT_VERSION + 1}"),
        (
            lambda path, config: torch.save(model_payload(config, model_config={**to_dict(config), "start_filters": 16}), path),
            "weights do not fit",
        ),
        (
            lambda path, config: torch.save(model_payload(config, model_config={**to_dict(config), "width": 3}), path),
            "unknown key",
        ),
    ],
    ids=["missing", "random-bytes", "empty", "plain-dict", "list", "future-version", "wrong-shapes", "bad-config"],
)
def test_loading_a_file_that_is_not_a_usable_model_raises(tmp_path, tiny_config, make, message):
    path = tmp_path / "model.pt"
    make(path, tiny_config)
    with pytest.raises(PhotongapError, match=message) as error:
        GapModel.load(path)
    assert "\n" not in str(error.value) and "model.pt" in str(error.value)


def test_a_lightning_checkpoint_is_refused_with_a_hint(tmp_path, tiny_config):
    torch.save({"state_dict": {}, "global_step": 3}, tmp_path / "last.ckpt")
    with pytest.raises(PhotongapError, match="model.pt"):
        GapModel.load(tmp_path / "last.ckpt")


# --- level input ---------------------------------------------------------------------------


def test_the_held_fraction_is_the_inputs_realised_share_of_its_crop():
    from photongap.training.module import held_fraction

    counts = torch.poisson(torch.full((3, 1, 32, 32), 2.0), generator=torch.Generator().manual_seed(0))
    counts[2] = 0  # a crop without photons
    drawn = torch.tensor([0.6, 0.8, 0.7])
    split = split_counts(counts, drawn, torch.Generator().manual_seed(1))
    held = held_fraction(split.input_counts, split.target_counts, drawn)
    expected = split.input_counts[:2].sum(dim=(1, 2, 3)) / counts[:2].sum(dim=(1, 2, 3))
    torch.testing.assert_close(held[:2], expected)
    assert abs(float(held[0]) - 0.6) < 0.05 and abs(float(held[1]) - 0.8) < 0.05
    assert float(held[2]) == pytest.approx(0.7)  # no photons: the drawn fraction
    assert held_fraction(counts[:2], torch.zeros_like(counts[:2])).tolist() == [1.0, 1.0]  # a whole image


def test_a_level_input_model_trains_and_reads_the_share_it_is_given(tmp_path, tiny_config):
    config = dataclasses.replace(tiny_config, level_input=True)
    result = quick_train(tmp_path / "run", config, steps=4)
    model = GapModel.load(result.model_path)
    assert model.config.level_input and model.describe()["network"]["level_input"] is True  # what `photongap info` shows
    counts = noisy_images(1, shape=(32, 32))[0]
    whole, half = model.denoise(counts, device="cpu"), model.denoise(counts, device="cpu", fraction=0.5)
    assert whole.sum() == pytest.approx(counts.sum(), rel=1e-4) and np.abs(whole - half).max() > 1e-4
    stack = model.denoise(np.stack([counts, counts]), device="cpu", fraction=np.array([1.0, 0.5]))
    np.testing.assert_allclose(stack, np.stack([whole, half]), rtol=1e-5, atol=1e-6)


def test_level_input_with_absolute_splits_is_refused_before_anything_is_written(tmp_path, tiny_config):
    with pytest.raises(PhotongapError, match="only relative splits") as error:
        quick_train(tmp_path / "run", dataclasses.replace(tiny_config, level_input=True), split_mode="absolute")
    assert "\n" not in str(error.value) and not (tmp_path / "run").exists()


def test_files_written_before_level_input_existed_load_without_it(tmp_path, tiny_config):
    """Model files and run folders from before lack the key: they must keep meaning a network without the channel."""
    from photongap.config import load_yaml

    payload = model_payload(tiny_config)
    del payload["model_config"]["level_input"]
    torch.save(payload, tmp_path / "old.pt")
    assert GapModel.load(tmp_path / "old.pt").config.level_input is False
    stored = tmp_path / "config.yaml"
    stored.write_text("model: {depth: 3}\ntraining: {steps: 5}\n")  # a run folder's config from before
    assert load_yaml(stored)[0].level_input is False


# --- the data module ---------------------------------------------------------------------


def data_module(images, **changes) -> GapDataModule:
    values = dict(patch_size=32, batch_size=4, steps=5, val_fraction=0.1, split_range=(-20.0, 0.0), split_relative=True, seed=0)
    return GapDataModule(images, **{**values, **changes})


def test_an_image_smaller_than_the_patch_raises_naming_it():
    images = [np.ones((64, 64), np.float32), np.ones((64, 20), np.float32)]
    with pytest.raises(PhotongapError, match=r"narrow\.tif.*64x20.*smaller than the patch size 32"):
        data_module(images, names=["wide.tif", "narrow.tif"])
    with pytest.raises(PhotongapError, match="image 1"):
        data_module(images)
    with pytest.raises(PhotongapError, match="2D"):
        data_module([np.ones((2, 64, 64), np.float32)], names=["stack.tif"])
    with pytest.raises(PhotongapError, match="no training images"):
        data_module([])


def test_hold_out_of_several_images_keeps_whole_images():
    images = [np.full((40, 40), i, np.float32) for i in range(5)]
    train_images, val_images = hold_out(images, 0.1, 32)
    assert [int(i[0, 0]) for i in train_images] == [0, 1, 2, 3] and [int(i[0, 0]) for i in val_images] == [4]
    train_images, val_images = hold_out(images, 0.5, 32)
    assert len(train_images) == 2 and len(val_images) == 3
    train_images, val_images = hold_out(images[:2], 0.9, 32)
    assert len(train_images) == 1 and len(val_images) == 1  # at least one image stays for training
    train_images, val_images = hold_out(images, 0.0, 32)
    assert len(train_images) == 5 and val_images == []


def test_hold_out_of_one_image_keeps_its_bottom_rows():
    image = np.arange(200 * 50, dtype=np.float32).reshape(200, 50)
    (train_part,), (val_part,) = hold_out([image], 0.25, 32)
    assert train_part.shape == (150, 50) and val_part.shape == (50, 50)
    np.testing.assert_array_equal(np.concatenate([train_part, val_part]), image)
    (train_part,), (val_part,) = hold_out([image], 0.05, 32)
    assert val_part.shape[0] == 32  # at least one patch high
    # Too small to give up a patch's height: everything trains, nothing validates.
    train_images, val_images = hold_out([image[:60]], 0.25, 32)
    assert len(train_images) == 1 and train_images[0].shape == (60, 50) and val_images == []
    assert data_module([image[:60]]).val_split is None


def test_validation_patches_are_fixed_splits_that_conserve_photons():
    images = noisy_images(4, (64, 64))
    module = data_module(images)
    again = data_module(images)
    split = module.val_split
    assert split is not None and split.input_counts.shape == (4, 1, 32, 32)  # the last image's 2x2 grid
    assert torch.equal(split.input_counts, again.val_split.input_counts)
    val = torch.from_numpy(images[-1]).unfold(0, 32, 32).unfold(1, 32, 32).reshape(4, 32, 32)
    torch.testing.assert_close(split.input_counts[:, 0] + split.target_counts[:, 0], val, rtol=0, atol=0)
    assert len(module.train_dataloader().dataset) == 5 * 4


def test_patches_depend_only_on_seed_and_index_and_reach_all_eight_symmetries():
    image = np.arange(16 * 16, dtype=np.float32).reshape(16, 16)
    dataset = PatchDataset([image], patch_size=16, length=400, seed=3)
    twin = PatchDataset([image], patch_size=16, length=400, seed=3)
    other = PatchDataset([image], patch_size=16, length=400, seed=4)
    assert dataset[5].shape == (1, 16, 16) and dataset[5].dtype == torch.float32
    assert all(torch.equal(dataset[i], twin[i]) for i in (0, 7, 399))
    assert torch.equal(dataset[7], dataset[7])  # no hidden state between calls
    assert not all(torch.equal(dataset[i], other[i]) for i in range(20))
    # With the patch as large as the image, a patch is the image under one of the 8 symmetries.
    symmetries = [np.ascontiguousarray(augment(image, k)) for k in range(8)]
    assert len({s.tobytes() for s in symmetries}) == 8
    seen = set()
    for i in range(len(dataset)):
        patch = dataset[i][0].numpy()
        matches = [k for k, s in enumerate(symmetries) if np.array_equal(patch, s)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == set(range(8))


def test_patches_are_crops_of_the_images_in_proportion_to_their_area():
    small = np.zeros((32, 32), np.float32)
    large = np.ones((96, 96), np.float32)
    dataset = PatchDataset([small, large], patch_size=16, length=900, seed=0)
    from_large = sum(float(dataset[i].mean()) == 1.0 for i in range(len(dataset)))
    assert abs(from_large / 900 - 0.9) < 4 * math.sqrt(0.09 / 900)


# --- real data ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_short_training_on_real_noisy_data_beats_the_untrained_network(tmp_path):
    # 1 photon/px acquisitions of the embedded fluorescence images; held-out test images.
    data = load_sample_data()
    rng = np.random.default_rng(0)
    noisy = [simulate_counts(image, 1.0, rng) for image in data.train]
    tests = [(clean_at_level(image, 1.0), simulate_counts(image, 1.0, rng)) for image in data.test]
    config = ModelConfig(depth=3, start_filters=16)
    training = TrainConfig(steps=60, batch_size=8, patch_size=64, val_every=30, precision="auto", seed=0)
    result = train(noisy, tmp_path / "run", model_config=config, train_config=training, device="cpu", progress=False)
    assert result.steps == 60
    trained = GapModel.load(result.model_path)
    torch.manual_seed(training.seed)
    untrained = GapModel(GapUNet(config).eval(), config)

    def mean_psnr(model: GapModel) -> float:
        return float(np.mean([psnr(clean, model.denoise(counts, tile=None, device="cpu", precision="fp32")) for clean, counts in tests]))

    trained_psnr, untrained_psnr = mean_psnr(trained), mean_psnr(untrained)
    noisy_psnr = float(np.mean([psnr(clean, counts) for clean, counts in tests]))
    summary = f"trained {trained_psnr:.2f} dB, untrained {untrained_psnr:.2f} dB, noisy input {noisy_psnr:.2f} dB"
    assert trained_psnr > untrained_psnr + 1.0, summary
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [int(row["step"]) for row in rows if row["val_loss"]] == [30, 60], rows


# --- the trained range --------------------------------------------------------------------


def test_data_statistics_record_the_dimmest_and_the_brightest_image():
    images = [np.full((4, 4), 1.0, np.float32), np.full((2, 8), 10.0, np.float32), np.full((4, 4), 0.1, np.float32)]
    data = data_statistics(images)
    assert data["min_image_psnr"] == pytest.approx(-10.0) and data["max_image_psnr"] == pytest.approx(10.0)
    assert data["pseudo_psnr"] == pytest.approx(10 * math.log10(11.1 / 3))


def test_the_trained_range_follows_the_split_mode():
    data = {"min_image_psnr": -5.0, "max_image_psnr": 3.0}
    relative = TrainConfig(split_mode="relative", split_min_psnr=-3.0, split_max_psnr=-0.2)
    assert trained_range(data, relative) == pytest.approx([-8.0, 2.8])
    assert trained_range(data, TrainConfig(split_mode="relative", split_min_psnr=-3.0, split_max_psnr=2.0)) == pytest.approx([-8.0, 3.0])
    absolute = TrainConfig(split_mode="absolute", split_min_psnr=-40.0, split_max_psnr=20.0)
    assert trained_range(data, absolute) == pytest.approx([-40.0, 3.0])  # no input brighter than the brightest image
    assert trained_range(data, TrainConfig(split_mode="absolute", split_min_psnr=-40.0, split_max_psnr=0.0)) == pytest.approx([-40.0, 0.0])


def test_the_saved_model_records_its_trained_range_and_preset(tmp_path, tiny_config):
    images = [noisy_images(level=1.0)[0], noisy_images(level=10.0)[0], noisy_images(level=3.0)[0]]
    result = quick_train(tmp_path / "run", tiny_config, images)
    info = GapModel.load(result.model_path).info
    levels = [10 * math.log10(image.mean()) for image in images]
    assert info["data"]["min_image_psnr"] == pytest.approx(min(levels)) and info["data"]["max_image_psnr"] == pytest.approx(max(levels))
    assert info["trained_range"] == pytest.approx(trained_range(info["data"], quick_config()))
    assert info["trained_range"] == pytest.approx([min(levels) - 3.0, max(levels) - 0.2])
    assert info["preset"] == "custom"


@pytest.mark.parametrize("overrides, model, message", [
    ({"patch_size": 57}, {}, "a patch size of 57 is not a multiple of 8, which this network's poolings need; use 56 or 64"),
    ({"patch_size": 16, "patch_depth": 9}, {"dims": 3}, "a patch depth of 9 is not a multiple of 2"),
])
def test_a_patch_the_poolings_cannot_halve_is_refused_before_anything_is_written(tmp_path, overrides, model, message):
    from photongap.errors import PhotongapError
    from photongap.training import train

    images = [np.ones((12, 64, 64) if model else (64, 64), np.float32)]
    with pytest.raises(PhotongapError, match=message.replace("(", "\\(")):
        train(images, tmp_path / "run", overrides={**overrides, "steps": 1}, model_overrides=model, progress=False, device="cpu")
    assert not (tmp_path / "run").exists()
