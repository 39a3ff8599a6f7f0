"""The training loop on tiny random models: what it writes, and that resume is exact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import PRECISIONS, alpaca_rows, lora_deltas, relative_distance, reordering_tolerance
from tunelab.config_file import validate_config
from tunelab.train.run import train


def tiny_config(model_dir: Path, data: Path, out: Path, name: str = "run", **train: object) -> dict:
    return {
        "name": name,
        "output_dir": str(out),
        "model": str(model_dir),
        "data": {"train": str(data), "max_length": 64, "val_fraction": 0.1},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
        "train": {
            "batch_size": 4,
            "learning_rate": 1e-2,
            "max_steps": 6,
            "save_every": 3,
            "warmup_ratio": 0.2,
            **train,
        },
        "eval": {"max_rows": 4, "generation": {"max_new_tokens": 4}},
    }


def adapter_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "adapter" / "adapter_model.safetensors")


def test_a_run_writes_its_directory_and_moves_only_the_adapter(
    qwen3_dir, write_jsonl, tmp_path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = write_jsonl([*alpaca_rows(30), "{broken", {"instruction": "x", "output": ""}])
    config = validate_config(
        tiny_config(qwen3_dir, data, tmp_path / "runs", val_loss_every=2), "test"
    )
    result = train(config)
    run = tmp_path / "runs" / "run"

    assert {p.name for p in run.iterdir()} >= {
        "config.yaml",
        "data_report.json",
        "rejects.jsonl",
        "metrics.jsonl",
        "tensorboard",
        "checkpoints",
        "adapter",
        "results.json",
        "eval",
    }
    report = json.loads((run / "data_report.json").read_text())
    assert (report["train"]["kept"], report["val"]["kept"], report["train"]["rejected"]) == (
        27,
        3,
        2,
    )
    assert report["val"]["origin"]["seed"] == 42 and len(report["val"]["origin"]["rows"]) == 3
    rejects = [json.loads(line) for line in (run / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["field"]) for r in rejects] == [(31, None), (32, "output")]

    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert set(steps[0]) >= {"step", "epoch", "loss", "lr", "tokens_per_s", "grad_norm"}
    assert [r["step"] for r in lines if "eval_loss" in r] == [2, 4, 6]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == [
        "step-000003",
        "step-000006",
    ]
    assert result.steps == 6 and result.eval_loss is not None

    base = AutoModelForCausalLM.from_pretrained(qwen3_dir)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    tuned = PeftModel.from_pretrained(base, run / "adapter")
    lora_b = [v for k, v in adapter_weights(run).items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: it moved
    merged_names = {
        k.replace("base_model.model.", "").replace(".base_layer", "") for k in tuned.state_dict()
    }
    for name, value in tuned.get_base_model().state_dict().items():
        clean = name.replace(".base_layer", "")
        if "lora_" not in name and clean in before:
            assert torch.equal(value, before[clean]), name
    assert merged_names
    saved_tokenizer = AutoTokenizer.from_pretrained(run / "adapter")
    assert saved_tokenizer.chat_template == AutoTokenizer.from_pretrained(qwen3_dir).chat_template


@pytest.mark.parametrize("precision", PRECISIONS)
def test_token_normalised_accumulation_matches_one_big_batch(
    qwen3_dir, write_jsonl, tmp_path, precision
) -> None:
    """The same step's gradient whether its samples go through one pass or four.

    SGD for one step: lora_B starts at zero, so it ends at -lr times the step's gradient
    (and lora_A, whose gradient is zero while B is, stays put); the two runs add the same
    per-token terms in another order. AdamW would divide by sqrt(v) and amplify rounding
    in the elements whose gradient is near zero (test_launch says more).
    """
    rows = [{"instruction": f"q{i}", "output": "答" * (1 + i % 7)} for i in range(8)]
    data = write_jsonl(rows)
    common = {
        "max_steps": 1,
        "save_every": None,
        "max_grad_norm": None,
        "warmup_ratio": 0.0,
        "optimizer": "sgd",
        "precision": precision,
    }
    # one forward pass for the whole step, against one pass per one or two samples
    one = tiny_config(qwen3_dir, data, tmp_path, "one", batch_size=8, grad_accum=1, **common)
    two = tiny_config(
        qwen3_dir, data, tmp_path, "two", batch_size=2, grad_accum=4, forward_tokens=64, **common
    )
    for raw in (one, two):
        raw["lora"]["dropout"] = 0.0
        raw["data"]["val"] = str(data)
        raw["eval"]["generate"] = False
        train(validate_config(raw, "test"))
    a, b = lora_deltas(tmp_path / "one" / "adapter"), lora_deltas(tmp_path / "two" / "adapter")
    assert a.keys() == b.keys() and len(a) == 2 * 7
    tolerance = reordering_tolerance(precision, 8 * 64)  # batch 8 x max_length 64 terms
    for key, delta in a.items():
        assert delta.norm() > 0, key
        assert relative_distance(delta, b[key]) <= tolerance, key


def cli(config: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tunelab", "train", str(config), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def write_config(path: Path, raw: dict) -> Path:
    path.write_text(json.dumps(raw), encoding="utf-8")  # JSON is YAML
    return path


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "checkpoint never appeared"
        time.sleep(0.01)


def test_sigkill_then_resume_equals_an_uninterrupted_run(qwen3_dir, write_jsonl, tmp_path) -> None:
    data = write_jsonl(alpaca_rows(64))
    settings = {"max_steps": 120, "save_every": 10, "batch_size": 2, "grad_accum": 2}
    killed = write_config(
        tmp_path / "killed.json", tiny_config(qwen3_dir, data, tmp_path, "killed", **settings)
    )
    whole = write_config(
        tmp_path / "whole.json", tiny_config(qwen3_dir, data, tmp_path, "whole", **settings)
    )

    process = cli(killed)
    wait_for(tmp_path / "killed" / "checkpoints" / "step-000030", process)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "adapter").exists()

    resumed = cli(killed, "--resume")
    assert resumed.wait() == 0, resumed.stdout.read()
    uninterrupted = cli(whole)
    assert uninterrupted.wait() == 0, uninterrupted.stdout.read()

    a, b = adapter_weights(tmp_path / "killed"), adapter_weights(tmp_path / "whole")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    losses = [
        json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in losses if "loss" in r][-1] == 120


@pytest.mark.parametrize(("stop_signal", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_signal_saves_a_checkpoint_and_exits_as_its_signal(
    qwen3_dir, write_jsonl, tmp_path, stop_signal, status
) -> None:
    data = write_jsonl(alpaca_rows(64))
    config = write_config(
        tmp_path / "c.json",
        tiny_config(qwen3_dir, data, tmp_path, "c", max_steps=100000, save_every=5),
    )
    process = cli(config)
    try:
        wait_for(tmp_path / "c" / "checkpoints" / "step-000005", process)
        process.send_signal(stop_signal)
        output = process.communicate(timeout=120)[0]
    finally:
        process.kill()  # a run of 100,000 steps must not outlive a failed test
    assert process.returncode == status, output
    assert "interrupted after step" in output and "--resume" in output
    assert "Traceback" not in output
    saved = sorted((tmp_path / "c" / "checkpoints").glob("step-*"))
    assert int(saved[-1].name.split("-")[1]) >= 5


def test_existing_run_is_not_overwritten_by_accident(qwen3_dir, write_jsonl, tmp_path) -> None:
    from tunelab.errors import TunelabError

    raw = tiny_config(qwen3_dir, write_jsonl(alpaca_rows(12)), tmp_path, max_steps=1, save_every=1)
    raw["eval"]["generate"] = False
    train(validate_config(raw, "test"))
    with pytest.raises(TunelabError, match="already holds a run; add --resume"):
        train(validate_config(raw, "test"))
    train(validate_config(raw, "test"), overwrite=True)


@pytest.mark.parametrize(("setting", "layers"), [(True, [True, True]), (2, [True, False])])
def test_gradient_checkpointing_recomputes_the_same_dropout_masks(
    qwen3_dir, tmp_path, setting, layers
) -> None:
    from tunelab.models.load import set_activation_checkpointing
    from tunelab.tasks.registry import TASKS
    from tunelab.train.run import build_model

    raw = tiny_config(
        qwen3_dir, tmp_path / "unused.jsonl", tmp_path, gradient_checkpointing=setting
    )
    model = build_model(TASKS["sft"], qwen3_dir, validate_config(raw, "test"), "fp32").train()
    decoder = model.get_base_model().model.layers
    assert [layer.gradient_checkpointing for layer in decoder] == layers
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    grads = []
    for checkpointing in (True, False):
        if not checkpointing:
            set_activation_checkpointing(model.get_base_model(), 0)
        model.zero_grad()
        torch.manual_seed(5)
        model(input_ids=ids).logits.pow(2).mean().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    assert any(g.abs().sum() > 0 for g in grads[0])
    for with_checkpointing, without in zip(*grads, strict=True):
        torch.testing.assert_close(with_checkpointing, without)
