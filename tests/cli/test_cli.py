"""The command line: lazy imports, clear errors without tracebacks, init, data check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from conftest import alpaca_rows
from tunelab.cli.main import app

runner = CliRunner()


def tunelab(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunelab", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_help_does_not_import_torch_or_transformers() -> None:
    heavy = "{'torch', 'transformers', 'peft'}"
    code = (
        f"import sys; from tunelab.cli.main import app; print(sorted({heavy} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]"
    shown = runner.invoke(app, ["--help"])
    assert shown.exit_code == 0
    for command in ("train", "data", "init"):
        assert command in shown.output


def test_user_errors_print_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = tunelab("train", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2
    assert "error:" in missing.stdout and "config file not found" in missing.stdout
    assert "Traceback" not in missing.stdout + missing.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {train: x.jsonl}\ntrain: {epochs: -1, bacth_size: 2}\n")
    result = tunelab("train", str(bad))
    assert result.returncode == 2
    assert "train.epochs: Input should be greater than 0" in result.stdout
    assert "train.bacth_size: unknown key; did you mean 'train.batch_size'?" in result.stdout


def test_init_writes_a_config_that_trains(tmp_path: Path, qwen3_dir: Path) -> None:
    folder = tmp_path / "project"
    result = runner.invoke(app, ["init", str(folder)])
    assert result.exit_code == 0, result.output
    assert (folder / "config.yaml").read_text().startswith("# tunelab run config")
    assert len((folder / "data" / "sample.jsonl").read_text().splitlines()) == 10
    again = runner.invoke(app, ["init", str(folder)])
    assert again.exit_code != 0
    trained = tunelab(
        "train",
        str(folder / "config.yaml"),
        "--model",
        str(qwen3_dir),
        "--set",
        "train.max_steps=2",
        "--set",
        "eval.max_rows=2",
        "--set",
        "eval.generation.max_new_tokens=2",
        "--set",
        f"output_dir={tmp_path / 'runs'}",
    )
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert (tmp_path / "runs" / "starter" / "adapter" / "adapter_model.safetensors").exists()
    assert "run directory:" in trained.stdout


def test_data_check_reports_counts_lengths_and_writes_rejects(
    tmp_path: Path, qwen3_dir: Path
) -> None:
    data = tmp_path / "mixed.jsonl"
    rows = [json.dumps(r, ensure_ascii=False) for r in alpaca_rows(8)] + [
        '{"instruction": 1',
        '{"output": "x"}',
    ]
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    rejects = tmp_path / "rejects.jsonl"
    result = tunelab(
        "data",
        "check",
        str(data),
        "--model",
        str(qwen3_dir),
        "--max-length",
        "12",
        "--rejects",
        str(rejects),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "p50" in result.stdout and "p99" in result.stdout
    written = [json.loads(line) for line in rejects.read_text().splitlines()]
    reasons = [r["reason"] for r in written]
    assert reasons[0].startswith("malformed JSON") and written[0]["line"] == 9
    assert any("no assistant tokens left after truncation to max_length=12" in r for r in reasons)


def test_nproc_must_be_at_least_one(tmp_path: Path) -> None:
    done = tunelab("train", str(tmp_path / "c.yaml"), "--nproc", "0")
    assert done.returncode == 2 and "Traceback" not in done.stdout + done.stderr
    assert "--nproc" in done.stdout + done.stderr
