"""Malformed configs: each one a clear error naming the key, none silently accepted, and all
of them found before any training starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.config_file import load_config
from tunelab.errors import TunelabError

BASE = "data: {train: a.jsonl}\n"
# (config text after the base, --set overrides, what the error must say)
MALFORMED = [
    ("train: {max_steps: true}", [], "train.max_steps: Input should be a valid integer"),
    ("train: {max_steps: 1.5}", [], "train.max_steps"),
    ("train: {max_steps: 0}", [], "train.max_steps: Input should be greater than or equal to 1"),
    ("train: {max_steps: '10'}", [], "train.max_steps"),
    ("train: {learning_rate: .inf}", [], "train.learning_rate: Input should be a finite number"),
    ("train: {learning_rate: .nan}", [], "train.learning_rate: Input should be a finite number"),
    ("train: {learning_rate: -1}", [], "train.learning_rate: Input should be greater than 0"),
    ("train: {learning_rate: true}", [], "train.learning_rate: expected a number"),
    ("train: {epochs: 0}", [], "train.epochs"),
    ("train: {batch_size: -2}", [], "train.batch_size"),
    ("train: {grad_accum: 0}", [], "train.grad_accum"),
    ("train: {precision: fp8}", [], "train.precision"),
    ("train: {optimizer: adam}", [], "train.optimizer"),
    ("train: {scheduler: step}", [], "train.scheduler"),
    ("train: {warmup_ratio: 1.5}", [], "train.warmup_ratio"),
    ("train: {gradient_checkpointing: -1}", [], "train.gradient_checkpointing"),
    ("train: {class_weights: {a: true}}", [], "train.class_weights"),
    ("train: {forward_tokens: 10}", [], "train.forward_tokens"),
    ("train: {max_nonfinite_steps: 0}", [], "train.max_nonfinite_steps"),
    ("model: {trust_remote_code: 'yes'}", [], "model.trust_remote_code: Input should be a valid"),
    ("model: {trust_remote_code: 1}", [], "model.trust_remote_code"),
    ("model: {quantization: 8bit}", [], "model.quantization"),
    ("lora: {r: 0}", [], "lora.r"),
    ("lora: {dropout: 1.0}", [], "lora.dropout"),
    ("lora: {target_modules: []}", [], "lora.target_modules"),
    ("lora: {target_modules: some}", [], "lora.target_modules"),
    ("data: {train: a.jsonl, max_length: 0}", [], "data.max_length"),
    ("data: {train: a.jsonl, val_fraction: 1}", [], "data.val_fraction"),
    ("data: {train: a.jsonl, format: csv}", [], "data.format"),
    ("data: {train: a.jsonl, strict: maybe}", [], "data.strict"),
    ("data: {train: []}", [], "data.train: give at least one training file"),
    ("eval: {scoring: {regex: '('}}", [], "eval.scoring.regex: not a regular expression"),
    ("eval: {scoring: {json_schema: {type: nonsense}}}", [], "eval.scoring.json_schema"),
    ("eval: {scoring: {metric: f1}}", [], "eval.scoring.metric"),
    ("eval: {scoring: {choices: [a], regex: a}}", [], "give only one of choices"),
    ("eval: {generation: {temperature: -1}}", [], "eval.generation.temperature"),
    ("eval: {generation: {top_p: 0}}", [], "eval.generation.top_p"),
    ("eval: {select: {mode: best}}", [], "eval.select.mode"),
    ("task: regression", [], "task"),
    ("name: a/b/c", [], "name: 'a/b/c' is not one folder name"),
    ("name: '..'", [], "not one folder name"),
    ("trian: {}", [], "trian: unknown key; did you mean 'train'"),
    ("train: {lr: 1}", [], "did you mean 'train.learning_rate'"),
    ("", ["train.max_steps=["], "--set train.max_steps: not valid YAML"),
    ("", ["train.max_steps=!!python/object/apply:os.system ['true']"], "not valid YAML"),
    ("", ["nokey"], "expected key.path=value"),
    ("", ["data.train.x=1"], "is not a group of keys"),
    ("", ["train.max_steps=5", "train.max_steps=true"], "train.max_steps"),
]


@pytest.mark.parametrize(("text", "overrides", "said"), MALFORMED)
def test_a_malformed_config_is_a_clear_error(
    tmp_path: Path, text: str, overrides: list[str], said: str
) -> None:
    path = tmp_path / "c.yaml"
    body = text if text.startswith("data:") else BASE + text
    path.write_text(body, encoding="utf-8")
    with pytest.raises(TunelabError) as caught:
        load_config(path, overrides)
    assert said in str(caught.value)


def test_there_are_at_least_forty() -> None:
    assert len(MALFORMED) >= 40


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ("name: é\n".encode("latin-1"), "not UTF-8 text"),
        (b"a: " + b"[" * 20000 + b"]" * 20000, "not valid YAML"),
        (b"- just\n- a list\n", "expected a mapping of keys at the top level"),
        (b"a: [unclosed\n", "not valid YAML"),
    ],
)
def test_a_file_that_is_not_a_yaml_mapping_says_so(
    tmp_path: Path, content: bytes, said: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(TunelabError, match=said):
        load_config(path)


def test_unknown_target_modules_and_a_bogus_gguf_are_clear_errors(
    tmp_path: Path, qwen3_dir: Path, write_jsonl
) -> None:
    import json
    import subprocess
    import sys

    from conftest import alpaca_rows

    data = write_jsonl(alpaca_rows(12))
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"GGUF" + b"\x00" * 64)
    cases = [
        ({"model": str(qwen3_dir), "lora": {"target_modules": ["no_such_proj"]}}, "q_proj"),
        ({"model": str(bogus)}, "not a GGUF model transformers can load"),
    ]
    for extra, said in cases:
        raw = {"name": "x", "output_dir": str(tmp_path / "runs"), "data": {"train": str(data)}}
        path = tmp_path / "c.json"
        path.write_text(json.dumps(raw | extra))
        done = subprocess.run(
            [sys.executable, "-m", "tunelab", "train", str(path), "--overwrite"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        said_aloud = " ".join(done.stdout.split())  # the console wraps long lines
        assert done.returncode == 2 and said in said_aloud, done.stdout + done.stderr
        assert "Traceback" not in done.stdout + done.stderr
