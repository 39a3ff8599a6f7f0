"""The behaviour workflow on a tiny model: build, train, eval beside baselines, simulate, sweep."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


def tunelab(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunelab", *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def behavior_run(tmp_path_factory: pytest.TempPathFactory, qwen3_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("behavior")
    log = root / "desk.log"
    done = tunelab("behavior", "synth", str(log), "--days", "6")
    assert done.returncode == 0, done.stdout + done.stderr
    built = tunelab(
        "behavior", "build", str(log), "--output", str(root / "samples"), "--window", "3",
        "--session-gap", "240", "--max-test", "24", "--max-val", "8",
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    assert "split at" in built.stdout and "rejected 0" in built.stdout
    config = {
        "name": "desk",
        "output_dir": str(root / "runs"),
        "model": str(qwen3_dir),
        "data": {
            "train": str(root / "samples" / "train.jsonl"),
            "val": str(root / "samples" / "val.jsonl"),
            "max_length": 256,
        },
        "lora": {"r": 4, "alpha": 8},
        "train": {"max_steps": 3, "batch_size": 4, "learning_rate": 1e-3},
        "eval": {
            "scoring": {"metric": "exact_match"},
            "generation": {"max_new_tokens": 24},
            "max_rows": 4,
        },
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    trained = tunelab("train", str(root / "config.yaml"))
    assert trained.returncode == 0, trained.stdout + trained.stderr
    return root


def test_eval_puts_model_and_baselines_in_one_table_and_grammar_removes_invalid(
    behavior_run: Path,
) -> None:
    run = behavior_run / "runs" / "desk"
    done = tunelab("behavior", "eval", str(run), "--max-rows", "12")
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("model", "most-frequent", "Markov", "3-gram back-off", "overall", "top3_target"):
        assert name in done.stdout, name
    metrics = json.loads((run / "eval" / "behavior-test" / "metrics.json").read_text())
    assert metrics["rows"] == 12 and metrics["constrained"]
    assert metrics["results"]["model"]["invalid"] == 0.0
    for result in metrics["results"].values():
        status = result["status"]
        assert sum(status.values()) == 12
        assert result["overall"] == round(result["exact"] + 0.5 * result["partial"], 4)
    predictions = (run / "eval" / "behavior-test" / "predictions-model.csv").read_text()
    assert predictions.splitlines()[0].startswith("user,time,reference,prediction,status")
    assert len(predictions.splitlines()) == 13


def test_simulation_table_and_plot_for_each_capacity(behavior_run: Path) -> None:
    run = behavior_run / "runs" / "desk"
    done = tunelab("behavior", "simulate", str(run), "--capacity", "1-3", "--max-rows", "12")
    assert done.returncode == 0, done.stdout + done.stderr
    saved = json.loads((run / "eval" / "simulation" / "simulation.json").read_text())
    policies = {r["policy"] for r in saved["results"]}
    assert policies == {
        "LRU",
        "most-frequent apps",
        "fine-tuned model",
        "Markov",
        "3-gram back-off",
    }
    assert {r["capacity"] for r in saved["results"]} == {1, 2, 3}
    for policy in policies:
        rates = [r["hit_rate"] for r in saved["results"] if r["policy"] == policy]
        assert rates == sorted(rates) or policy != "LRU"  # more room never hurts LRU
    assert (run / "eval" / "simulation" / "hit_rate.png").stat().st_size > 10_000


def test_sweep_trains_on_growing_prefixes(behavior_run: Path) -> None:
    done = tunelab(
        "sweep", str(behavior_run / "config.yaml"), "--train-fraction", "0.5,1.0",
        "--set", "train.max_steps=2", "--set", "eval.max_rows=2",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    points = json.loads((behavior_run / "runs" / "desk-sweep" / "sweep.json").read_text())
    assert [p["fraction"] for p in points] == [0.5, 1.0]
    assert points[0]["train_samples"] < points[1]["train_samples"]
    assert (behavior_run / "runs" / "desk-sweep" / "sweep.png").exists()
