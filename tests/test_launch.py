"""Data parallelism on CPU: 2 processes (gloo) reach what 1 process reaches with the same batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from conftest import alpaca_rows


def run(config: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunelab", "train", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_two_processes_match_one_with_the_same_global_batch(
    qwen3_dir, write_jsonl, tmp_path
) -> None:
    data = write_jsonl(alpaca_rows(40))
    for name in ("one", "two"):
        raw = {
            "name": name,
            "output_dir": str(tmp_path),
            "model": str(qwen3_dir),
            "data": {"train": str(data), "max_length": 64, "val_fraction": 0.2},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "train": {
                "max_steps": 4,
                "batch_size": 8,
                "learning_rate": 1e-2,
                "save_every": 2,
                "warmup_ratio": 0.0,
                "forward_tokens": 4096,
            },
            "eval": {"generate": False},
        }
        (tmp_path / f"{name}.json").write_text(json.dumps(raw))
    single = run(tmp_path / "one.json")
    assert single.returncode == 0, single.stdout + single.stderr
    double = run(tmp_path / "two.json", "--nproc", "2")
    assert double.returncode == 0, double.stdout + double.stderr
    assert double.stdout.count("run directory:") == 1  # only the main process reports

    def steps(name: str) -> list[dict]:
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines if '"loss"' in line]

    one, two = steps("one"), steps("two")
    assert [r["step"] for r in two] == [1, 2, 3, 4]  # logged once, not once per process
    for a, b in zip(one, two, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-4 * a["loss"], (a["loss"], b["loss"])
        assert a["real_tokens"] == b["real_tokens"]
    first = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    second = load_file(tmp_path / "two" / "adapter" / "adapter_model.safetensors")
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=1e-4, atol=1e-5)
