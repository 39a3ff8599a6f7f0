from pathlib import Path

import pytest

from tunelab.config import dump_config, load_config, validate_config
from tunelab.errors import TunelabError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_unknown_keys_name_their_path_and_nearest_key_all_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  train: a.jsonl\n  max_lenght: 3\ntrian: {}\nlora:\n  r: 0\n")
    with pytest.raises(TunelabError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "3 config error(s)" in message
    assert "data.max_lenght: unknown key; did you mean 'data.max_length'?" in message
    assert "trian: unknown key; did you mean 'train'?" in message
    assert "lora.r: Input should be greater than or equal to 1 (got 0)" in message
    assert str(path) in message


def test_relative_data_paths_follow_the_config_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "data:\n  train: sub/a.jsonl\n"))
    assert config.data.train == [(tmp_path / "sub" / "a.jsonl").resolve()]
    assert config.name == "run"
    assert config.model.name == "smollm2-135m"


def test_set_overrides_parse_yaml_values_and_reject_unknown_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "model: Qwen/Qwen3-0.6B\ndata: {train: a.jsonl}\n")
    config = load_config(
        path, ["train.max_steps=7", "model.revision=main", "lora.target_modules=[q_proj]"]
    )
    assert config.train.max_steps == 7
    assert config.model.name == "Qwen/Qwen3-0.6B" and config.model.revision == "main"
    assert config.lora.target_modules == ["q_proj"]
    with pytest.raises(
        TunelabError, match=r"train.lr: unknown key; did you mean 'train.learning_rate'"
    ):
        load_config(path, ["train.lr=0.1"])
    with pytest.raises(TunelabError, match=r"expected key\.path=value"):
        load_config(path, ["train.max_steps"])


def test_missing_training_data_and_bad_yaml_are_clear(tmp_path: Path) -> None:
    with pytest.raises(TunelabError, match=r"data\.train: give at least one training file"):
        validate_config({}, "x.yaml")
    with pytest.raises(TunelabError, match="not valid YAML"):
        load_config(write(tmp_path, "data: [\n"))
    with pytest.raises(TunelabError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "data: {train: a.jsonl}\ntrain: {epochs: 2}\n"))
    again = load_config(write(tmp_path, dump_config(config)))
    assert again == config


def test_classify_gets_its_own_learning_rate_unless_one_is_given() -> None:
    from tunelab.config import CLASSIFY_LEARNING_RATE, validate_config

    head = validate_config({"task": "classify", "data": {"train": "t.csv"}}, "c")
    assert head.train.learning_rate == CLASSIFY_LEARNING_RATE
    chosen = {"task": "classify", "data": {"train": "t.csv"}, "train": {"learning_rate": 5e-5}}
    assert validate_config(chosen, "c").train.learning_rate == 5e-5
    assert validate_config({"data": {"train": "t.csv"}}, "c").train.learning_rate == 2e-4


@pytest.mark.parametrize(("setting", "every"), [(False, 0), (True, 1), (3, 3), ("yes", 1)])
def test_gradient_checkpointing_takes_a_switch_or_layers_apart(setting, every) -> None:
    raw = {"data": {"train": "t.jsonl"}, "train": {"gradient_checkpointing": setting}}
    assert validate_config(raw, "c").train.checkpoint_every == every


def test_gradient_checkpointing_below_zero_is_refused() -> None:
    raw = {"data": {"train": "t.jsonl"}, "train": {"gradient_checkpointing": -2}}
    with pytest.raises(TunelabError, match=r"train\.gradient_checkpointing.*N >= 1"):
        validate_config(raw, "c")
