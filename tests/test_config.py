from pathlib import Path

import pytest

from tunelab.config_file import dump_config, load_config, validate_config
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
    from tunelab.config import TASK_LEARNING_RATES
    from tunelab.config_file import validate_config

    head = validate_config({"task": "classify", "data": {"train": "t.csv"}}, "c")
    assert head.train.learning_rate == TASK_LEARNING_RATES["classify"] == 1e-3
    assert head.train.learning_rate_steps == 160  # and lower for plans longer than that
    chosen = {"task": "classify", "data": {"train": "t.csv"}, "train": {"learning_rate": 5e-5}}
    assert validate_config(chosen, "c").train.learning_rate == 5e-5
    assert validate_config(chosen, "c").train.learning_rate_steps is None  # as given
    sft = validate_config({"data": {"train": "t.csv"}}, "c").train
    assert sft.learning_rate == 2e-4 and sft.learning_rate_steps is None


@pytest.mark.parametrize(("setting", "every"), [("false", 0), ("true", 1), ("3", 3), ("yes", 1)])
def test_gradient_checkpointing_takes_a_switch_or_layers_apart(
    tmp_path: Path, setting: str, every: int
) -> None:
    text = f"data: {{train: t.jsonl}}\ntrain: {{gradient_checkpointing: {setting}}}\n"
    assert load_config(write(tmp_path, text)).train.checkpoint_every == every  # YAML's yes is true


def test_a_quoted_yes_is_text_not_a_switch() -> None:
    raw = {"data": {"train": "t.jsonl"}, "train": {"gradient_checkpointing": "yes"}}
    with pytest.raises(TunelabError, match="valid boolean"):
        validate_config(raw, "c")


def test_gradient_checkpointing_below_zero_is_refused() -> None:
    raw = {"data": {"train": "t.jsonl"}, "train": {"gradient_checkpointing": -2}}
    with pytest.raises(TunelabError, match=r"train\.gradient_checkpointing.*N >= 1"):
        validate_config(raw, "c")


def config_sections() -> list[type]:
    from pydantic import BaseModel

    from tunelab.config import RunConfig

    found, queue = [], [RunConfig]
    while queue:
        section = queue.pop()
        found.append(section)
        for field in section.model_fields.values():
            kind = field.annotation
            inner = [kind, *getattr(kind, "__args__", ())]
            queue += [k for k in inner if isinstance(k, type) and issubclass(k, BaseModel)]
    return found


def test_every_field_is_described() -> None:
    sections = config_sections()
    assert len(sections) >= 10
    undescribed = [
        f"{section.__name__}.{name}"
        for section in sections
        for name, field in section.model_fields.items()
        if not field.description and not _is_section(field.annotation)
    ]
    assert not undescribed, undescribed


def _is_section(annotation: object) -> bool:
    from pydantic import BaseModel

    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def test_moved_keys_still_work_and_say_their_new_name(tmp_path: Path) -> None:
    from tunelab.config_keys import RenamedKeyWarning

    old = (
        "data: {train: a.jsonl}\n"
        "train: {eval_every: 5}\n"
        "eval: {metric: accuracy, every: 10, max_new_tokens: 8, constrain: true, "
        "tasks: {t: {metrics: [bleu]}}}\n"
    )
    with pytest.warns(RenamedKeyWarning) as caught:
        config = load_config(write(tmp_path, old))
    (warning,) = caught  # one warning per config file, naming every moved key
    said = str(warning.message)
    assert "`eval.every` is now `eval.select.every`" in said
    assert said.count(" is now ") == 6 and said.endswith("work until the next release")
    assert config.train.val_loss_every == 5 and config.eval.select.every == 10
    assert config.eval.metric == config.eval.scoring.metric == "accuracy"
    assert config.eval.generation.max_new_tokens == 8 and config.eval.generation.constrain
    assert config.eval.scoring.tasks["t"].metrics == ["bleu"]
    resolved = dump_config(config)
    assert "eval_every" not in resolved and "select:" in resolved
    both = "data: {train: a.jsonl}\neval: {every: 3, select: {every: 4}}\n"
    with pytest.raises(TunelabError, match=r"eval\.every: unknown key"):
        load_config(write(tmp_path, both))


def test_a_moved_key_in_an_override_moves_too(tmp_path: Path) -> None:
    from tunelab.config_keys import RenamedKeyWarning

    with pytest.warns(RenamedKeyWarning):
        config = load_config(write(tmp_path, "data: {train: a.jsonl}\n"), ["eval.patience=2"])
    assert config.eval.select.patience == 2
