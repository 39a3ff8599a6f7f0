"""Data parallelism on CPU: 2 processes (gloo) reach what 1 process reaches with the same batch,
and stop together, after the same step, when a signal reaches any of them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from conftest import (
    PRECISIONS,
    alpaca_rows,
    lora_deltas,
    relative_distance,
    reordering_tolerance,
)
from tunelab.cpu.allocator import on_glibc, system_jemalloc


def run(config: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunelab", "train", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=900,
    )


def write_config(
    folder: Path, name: str, model_dir: Path, data: Path, lora: dict, **train: object
) -> Path:
    """``folder/NAME.json``: a run of batch 4 on 64-token rows, no generation scoring."""
    raw = {
        "name": name,
        "output_dir": str(folder),
        "model": str(model_dir),
        "data": {"train": str(data), "max_length": 64},
        "lora": lora,
        "train": {"batch_size": 4, **train},
        "eval": {"generate": False},
    }
    path = folder / f"{name}.json"
    path.write_text(json.dumps(raw))
    return path


STEP_TOKENS = 8 * 64  # at most batch 8 x max_length 64 loss terms in one step


@pytest.mark.parametrize("precision", PRECISIONS)
def test_two_processes_match_one_with_the_same_global_batch(
    qwen3_dir, write_jsonl, tmp_path, precision
) -> None:
    """One process and two see the same samples per step and take the same mean gradient.

    Their arithmetic differs only in order: each process packs its half of a step into its
    own rows, and the all-reduce adds the halves, so losses and gradients agree within
    ``reordering_tolerance``. The losses are compared under AdamW, the default. The
    adapters are compared under SGD: AdamW divides by sqrt(v), which turns a rounding
    difference in a gradient element near zero into an update of up to the learning rate (a
    few elements of every adapter), while SGD's update is linear in the gradient, so its end
    point inherits the gradients' relative error.
    """
    data = write_jsonl(alpaca_rows(40))
    tolerance = reordering_tolerance(precision, STEP_TOKENS)
    runs = {}
    for optimizer in ("adamw", "sgd"):
        for processes in (1, 2):
            name = f"{optimizer}-{processes}"
            raw = {
                "name": name,
                "output_dir": str(tmp_path),
                "model": str(qwen3_dir),
                "data": {"train": str(data), "max_length": 64, "val_fraction": 0.2},
                "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                "train": {
                    "max_steps": 4,
                    "batch_size": 8,
                    "optimizer": optimizer,
                    "learning_rate": 1e-2 if optimizer == "adamw" else 0.1,
                    "save_every": 2,
                    "warmup_ratio": 0.0,
                    "forward_tokens": 4096,
                    "precision": precision,
                },
                "eval": {"generate": False},
            }
            (tmp_path / f"{name}.json").write_text(json.dumps(raw))
            done = run(tmp_path / f"{name}.json", *(["--nproc", "2"] if processes == 2 else []))
            assert done.returncode == 0, done.stdout + done.stderr
            assert done.stdout.count("run directory:") == 1  # only the main process reports
            lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
            runs[name] = [json.loads(line) for line in lines if '"loss"' in line]

    for optimizer in ("adamw", "sgd"):
        one, two = runs[f"{optimizer}-1"], runs[f"{optimizer}-2"]
        assert [r["step"] for r in two] == [1, 2, 3, 4]  # logged once, not once per process
        assert {r["processes"] for r in one} == {1} and {r["processes"] for r in two} == {2}
        for a, b in zip(one, two, strict=True):
            assert a["real_tokens"] == b["real_tokens"]
            # AdamW's amplified elements are those whose gradient is near zero, so they move
            # the loss by second-order amounts only: the losses keep the gradients' tolerance
            assert abs(a["loss"] - b["loss"]) <= tolerance * a["loss"], (a, b, tolerance)
    first = lora_deltas(tmp_path / "sgd-1" / "adapter")
    second = lora_deltas(tmp_path / "sgd-2" / "adapter")
    assert first.keys() == second.keys() and len(first) == 2 * 7
    for key, delta in first.items():
        assert delta.norm() > 0, key  # B starts at zero: every layer learned something
        distance = relative_distance(delta, second[key])
        assert distance <= tolerance, (key, distance, tolerance)


def test_two_process_resume_with_dropout_equals_the_uninterrupted_run(
    qwen3_dir, write_jsonl, tmp_path
) -> None:
    # dropout: each process draws its own masks, from its own generator state
    lora = {"r": 4, "alpha": 8, "dropout": 0.2}
    data = write_jsonl(alpaca_rows(40))
    steps = {"max_steps": 4, "learning_rate": 1e-2, "save_every": 2}
    config = write_config(tmp_path, "r", qwen3_dir, data, lora, **steps)
    whole = run(config, "--nproc", "2")
    assert whole.returncode == 0, whole.stdout + whole.stderr
    run_dir = tmp_path / "r"
    uninterrupted = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    # as if stopped after step 2: its checkpoint is the newest, nothing after it survives
    shutil.rmtree(run_dir / "checkpoints" / "step-000004")
    shutil.rmtree(run_dir / "adapter")
    resumed = run(config, "--nproc", "2", "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "does not repeat" not in resumed.stdout
    again = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert again.keys() == uninterrupted.keys()
    for key in again:
        assert torch.equal(again[key], uninterrupted[key]), key
    # one process taking over two processes' checkpoint goes on, and says it cannot be exact
    shutil.rmtree(run_dir / "checkpoints" / "step-000004")
    alone = run(config, "--resume")
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert "saved by 2 process(es) and this run has 1" in " ".join(alone.stdout.split())


@pytest.mark.parametrize("target", ["the terminal's process group", "one worker"])
def test_a_signal_stops_every_worker_after_the_same_step(
    qwen3_dir, write_jsonl, tmp_path, target
) -> None:
    data = write_jsonl(alpaca_rows(40))
    lora = {"r": 4, "alpha": 8}
    write_config(tmp_path, "c", qwen3_dir, data, lora, max_steps=100000, save_every=3)
    parent = subprocess.Popen(
        [sys.executable, "-m", "tunelab", "train", str(tmp_path / "c.json"), "--nproc", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a command
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "c" / "checkpoints" / "step-000003").exists():
            assert parent.poll() is None, parent.stdout.read()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        workers = psutil.Process(parent.pid).children()
        assert len(workers) == 2
        if on_glibc():  # the allocator the main process restarted on reaches the workers
            library = f"lib{'jemalloc' if system_jemalloc() else 'mimalloc'}"
            assert all(any(library in m.path for m in w.memory_maps()) for w in workers)
        if target == "one worker":
            rank_one = next(w for w in workers if w.environ()["RANK"] == "1")
            rank_one.send_signal(signal.SIGINT)
        else:
            os.killpg(parent.pid, signal.SIGINT)
        output = parent.communicate(timeout=120)[0]
    finally:
        with suppress(ProcessLookupError):  # a run of 100,000 steps must not outlive a test
            os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()
    assert parent.returncode == 130, output
    assert output.count("interrupted after step") == 1 and "Traceback" not in output, output
    step = int(output.split("interrupted after step ")[1].split(";")[0])
    assert (tmp_path / "c" / "checkpoints" / f"step-{step:06d}").is_dir()
    logged = [json.loads(x) for x in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in logged) == step
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)


def test_the_main_process_alone_gets_the_cores_the_workers_share(monkeypatch) -> None:
    from tunelab.train.launch import main_alone

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        monkeypatch.setattr(os, "cpu_count", lambda: 8)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
        with main_alone(torch.device("cpu")):
            assert torch.get_num_threads() == 4
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
        with main_alone(torch.device("cpu")):
            assert torch.get_num_threads() == 8  # never more threads than cores
        with main_alone(torch.device("cuda")):
            assert torch.get_num_threads() == 1
        monkeypatch.delenv("LOCAL_WORLD_SIZE")
        with main_alone(torch.device("cpu")):
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
