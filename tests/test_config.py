"""Typed configuration: YAML round trip, clear errors naming the key, and the presets."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from photongap.config import ModelConfig, TrainConfig, dump_yaml, from_dict, load_yaml, override, preset
from photongap.errors import PhotongapError


def test_yaml_round_trip_gives_equal_configs(tmp_path):
    model = ModelConfig(depth=4, start_filters=16, max_filters=64, encoding_levels=7)
    training = TrainConfig(
        steps=123, batch_size=5, patch_size=96, learning_rate=3e-4, schedule="constant", split_mode="absolute",
        split_min_psnr=-35.5, split_max_psnr=12.0, val_fraction=0.25, val_every=7, precision="bf16", seed=42,
        time_limit_minutes=1.5,
    )
    path = tmp_path / "run.yaml"
    path.write_text(dump_yaml(model, training))
    assert load_yaml(path) == (model, training)
    for name in ("default", "paper"):
        path.write_text(dump_yaml(*preset(name)))
        assert load_yaml(path) == preset(name)


def test_a_partial_file_overrides_only_its_keys(tmp_path):
    path = tmp_path / "partial.yaml"
    path.write_text("training:\n  steps: 50\nmodel:\n  depth: 3\n")
    model, training = load_yaml(path)
    default_model, default_training = preset("default")
    assert model == dataclasses.replace(default_model, depth=3)
    assert training == dataclasses.replace(default_training, steps=50)
    # Over the paper preset, the rest stays the paper's.
    model, training = load_yaml(path, base=preset("paper"))
    assert training.learning_rate == 1e-4 and training.steps == 50 and model.depth == 3
    path.write_text("")
    assert load_yaml(path) == preset("default")



@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("training:\n  stepz: 5\n", "stepz"),
        ("model:\n  filters: 8\n", "filters"),
        pytest.param("trainng:\n  steps: 5\n", "trainng"),
    ],
)
def test_unknown_keys_raise_naming_the_key(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PhotongapError) as error:
        load_yaml(path)
    assert "bad.yaml" in str(error.value)
    assert key in str(error.value).replace(str(path), "")


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("training", "steps", 0),
        ("training", "batch_size", -1),
        ("training", "patch_size", 4),
        ("training", "learning_rate", 0),
        ("training", "val_fraction", 1.0),
        ("training", "val_every", 0),
        ("training", "time_limit_minutes", -1),
        ("training", "schedule", "linear"),
        ("training", "split_mode", "sideways"),
        ("training", "precision", "fp16"),
        ("training", "average_decay", 1.0),
        ("training", "average_decay", -0.5),
        ("model", "depth", 0),
        ("model", "start_filters", 0),
        ("model", "encoding_levels", 0),
        ("model", "log_channel", "yes"),
        ("model", "log_channel", 1),
        ("model", "level_input", "yes"),
    ],
)
def test_bad_values_raise_naming_the_key(tmp_path, section, key, value):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({section: {key: value}}))
    with pytest.raises(PhotongapError) as error:
        load_yaml(path)
    assert f"{section}.{key}" in str(error.value).replace(str(path), "")



@pytest.mark.parametrize(
    ("section", "key", "value"),
    [("training", "steps", "ten"), ("training", "seed", "abc"), ("model", "depth", 2.5), ("model", "max_filters", "big")],
)
def test_values_of_the_wrong_type_raise_naming_the_key(tmp_path, section, key, value):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({section: {key: value}}))
    with pytest.raises(PhotongapError) as error:
        load_yaml(path)
    assert key in str(error.value).replace(str(path), "")


def test_learning_rate_in_exponent_notation_is_a_number(tmp_path):
    path = tmp_path / "lr.yaml"
    path.write_text("training:\n  learning_rate: 1e-4\n")
    assert load_yaml(path)[1].learning_rate == 1e-4


def test_a_section_that_is_not_a_mapping_raises(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: 5\n")
    with pytest.raises(PhotongapError) as error:
        load_yaml(path)
    assert "model" in str(error.value).replace(str(path), "")


def test_split_range_must_be_ordered():
    with pytest.raises(PhotongapError, match="split_min_psnr"):
        TrainConfig(split_min_psnr=5.0, split_max_psnr=0.0)


def test_unreadable_and_malformed_files_raise(tmp_path):
    with pytest.raises(PhotongapError, match="cannot read config"):
        load_yaml(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("training: [unclosed\n")
    with pytest.raises(PhotongapError, match="not valid YAML"):
        load_yaml(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(PhotongapError, match="mapping"):
        load_yaml(tmp_path / "list.yaml")


def test_from_dict_and_override():
    with pytest.raises(PhotongapError, match="unknown key.*colour"):
        from_dict(ModelConfig, {"depth": 3, "colour": "red"}, "model")
    assert from_dict(ModelConfig, {"depth": 3}) == ModelConfig(depth=3)
    training = TrainConfig()
    assert override(training, steps=None, seed=None) is training
    assert override(training, steps=7, seed=None) == dataclasses.replace(training, steps=7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        training.steps = 3  # type: ignore[misc]


def test_presets():
    default_model, default_training = preset("default")
    assert default_model == ModelConfig() and default_training == TrainConfig()
    paper_model, paper = preset("paper")
    assert (paper_model.depth, paper_model.start_filters, paper_model.encoding, paper_model.encoding_levels) == (5, 32, "sine", 10)
    assert paper_model.max_filters is None and not paper_model.log_channel
    assert paper.learning_rate == 1e-4
    assert paper.split_mode == "absolute" and (paper.split_min_psnr, paper.split_max_psnr) == (-40.0, 20.0)
    assert paper.precision == "fp32"
    generative_model, generative = preset("generative")
    assert generative_model == default_model and generative.split_mode == "absolute"
    assert generative.learning_rate == default_training.learning_rate
    assert (generative.split_min_psnr, generative.split_max_psnr) == (-40.0, 20.0)
    with pytest.raises(PhotongapError, match="unknown preset 'fast'.*default, generative, paper"):
        preset("fast")
