"""Checkpoints bring back every process's random generators, each in its own slot, and the
optimizer's state."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from tunelab.config import LoraConfig, TrainConfig
from tunelab.models.load import attach_lora
from tunelab.run_dir import RunDir
from tunelab.train.checkpoint import (
    TrainingState,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from tunelab.train.session import build_optimizer


def draws() -> tuple[list[float], list[float], int]:
    """One draw from each generator a training step may use."""
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), random.getrandbits(32)


def seeded_state(seed: int) -> dict:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    return capture_rng()


def test_each_process_gets_its_own_generators_back(qwen3_dir: Path, tmp_path: Path) -> None:
    model = attach_lora(AutoModelForCausalLM.from_pretrained(qwen3_dir), LoraConfig(r=2))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    per_rank = [seeded_state(1), seeded_state(2), seeded_state(3)]
    expected = []
    for state in per_rank:
        restore_rng(state)
        expected.append(draws())
    assert len({str(e) for e in expected}) == 3  # the ranks really differ

    saved = save_checkpoint(
        RunDir(tmp_path), model, optimizer, TrainingState(7, {}, per_rank), keep=1
    )
    loaded = load_checkpoint(saved, model, optimizer)
    assert loaded.step == 7 and len(loaded.rng) == 3
    for rank, state in enumerate(loaded.rng):
        restore_rng(state)
        assert draws() == expected[rank], rank


def test_a_checkpoint_from_before_per_rank_states_loads_as_one_process(
    qwen3_dir: Path, tmp_path: Path
) -> None:
    model = attach_lora(AutoModelForCausalLM.from_pretrained(qwen3_dir), LoraConfig(r=2))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    state = TrainingState(2, {}, [seeded_state(5)])
    saved = save_checkpoint(RunDir(tmp_path), model, optimizer, state, keep=1)
    record_file = saved / "trainer_state.json"
    record = json.loads(record_file.read_text())
    del record["other_ranks"]  # the layout older releases wrote
    record_file.write_text(json.dumps(record))
    restore_rng(state.rng[0])
    expected = draws()
    (loaded,) = load_checkpoint(saved, model, optimizer).rng
    restore_rng(loaded)
    assert draws() == expected


@pytest.mark.parametrize("optimizer_name", ["adamw", "sgd"])
def test_the_optimizer_state_comes_back_exactly(
    qwen3_dir: Path, tmp_path: Path, optimizer_name: str
) -> None:
    model = attach_lora(AutoModelForCausalLM.from_pretrained(qwen3_dir), LoraConfig(r=2))
    trainable = [p for p in model.parameters() if p.requires_grad]
    settings = TrainConfig(optimizer=optimizer_name, learning_rate=0.1)
    optimizer = build_optimizer(trainable, settings)
    for param in trainable:
        param.grad = torch.randn_like(param)
    optimizer.step()
    saved = save_checkpoint(
        RunDir(tmp_path), model, optimizer, TrainingState(1, {}, [capture_rng()]), 1
    )
    fresh = build_optimizer(trainable, settings)
    load_checkpoint(saved, model, fresh)
    before, after = optimizer.state_dict(), fresh.state_dict()
    as_json = json.loads(json.dumps(before["param_groups"]))  # AdamW's betas come back a list
    assert after["param_groups"] == as_json
    assert before["state"] and after["state"].keys() == before["state"].keys()
    for index, values in before["state"].items():
        for name, value in values.items():
            assert torch.equal(torch.as_tensor(after["state"][index][name]), torch.as_tensor(value))
