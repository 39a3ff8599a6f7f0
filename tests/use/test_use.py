"""Using a finished run: eval from the command line, predict, merge, chat."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.models.export import check_template_round_trip
from tunelab.use.merge import merge_run
from tunelab.use.open import open_run


def tunelab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunelab", *args], capture_output=True, text=True, timeout=600
    )


def test_training_scored_the_model_and_kept_files(tiny_run: Path) -> None:
    results = json.loads((tiny_run / "results.json").read_text())
    assert results["metric"] == "accuracy" and "fine-tuned" in results["scores"]
    for name in (
        "metrics.json",
        "predictions.jsonl",
        "predictions.csv",
        "report.md",
        "loss_curves.png",
    ):
        assert (tiny_run / "eval" / "final" / name).exists(), name
    assert any(name.startswith("TF-IDF") for name in results["scores"])
    assert (tiny_run / "eval" / "baseline" / "metrics.json").exists()


def test_baseline_command_on_a_run(tiny_run: Path) -> None:
    done = tunelab("baseline", str(tiny_run))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "TF-IDF" in done.stdout and "accuracy" in done.stdout


def test_eval_command_with_base_comparison_and_constraint(tiny_run: Path) -> None:
    done = tunelab(
        "eval",
        str(tiny_run),
        "--compare-base",
        "--set",
        "eval.generation.constrain=true",
        "--name",
        "c",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "base" in done.stdout and "fine-tuned" in done.stdout and "invalid_rate" in done.stdout
    tuned = json.loads((tiny_run / "eval" / "c" / "metrics.json").read_text())
    base = json.loads((tiny_run / "eval" / "c-base" / "metrics.json").read_text())
    assert tuned["tasks"]["all"]["invalid_rate"] == base["tasks"]["all"]["invalid_rate"] == 0.0
    assert (tiny_run / "eval" / "c" / "confusion_all.png").exists()


def test_eval_a_checkpoint_by_step(tiny_run: Path) -> None:
    done = tunelab("eval", str(tiny_run), "--checkpoint", "2", "--name", "step2")
    assert done.returncode == 0, done.stdout + done.stderr
    missing = tunelab("eval", str(tiny_run), "--checkpoint", "3")
    assert missing.returncode == 2 and "no adapter there" in missing.stdout


def test_predict_keeps_every_input_column(tiny_run: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text(
        "id,instruction,note\n1,评论 1：好还是坏？,甲\n2,,乙\n3,评论 3：好还是坏？,丙\n",
        encoding="utf-8",
    )
    output = tmp_path / "out.csv"
    done = tunelab("predict", str(tiny_run), "--input", str(source), "--output", str(output))
    assert done.returncode == 0, done.stdout + done.stderr
    rows = list(csv.DictReader(output.open(encoding="utf-8-sig")))
    assert [r["id"] for r in rows] == ["1", "2", "3"]
    assert [r["note"] for r in rows] == ["甲", "乙", "丙"]
    assert rows[0]["prediction"] != "" and rows[1]["prediction"] == ""
    assert "instruction: missing" in rows[1]["error"]
    assert "predicted: 2" in done.stdout and "without prompt: 1" in done.stdout


def test_merge_equals_base_plus_adapter(tiny_run: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    summary = merge_run(tiny_run, tmp_path / "merged")
    assert summary["max_logit_difference"] <= 1e-4
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    model = open_run(tiny_run, precision="fp32").model
    ids = torch.tensor([[1, 200, 3000, 151644, 42]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, model(ids).logits, rtol=0, atol=1e-4)
    assert not list((tmp_path / "merged").glob("adapter_*"))
    assert (tmp_path / "merged" / "chat_template.jinja").exists() or "chat_template" in (
        tmp_path / "merged" / "tokenizer_config.json"
    ).read_text()


def test_template_round_trip_check_fails_loudly(qwen3_tok) -> None:
    import copy

    changed = copy.deepcopy(qwen3_tok)
    changed.chat_template = qwen3_tok.chat_template.replace(
        "<|im_start|>assistant\\n", "<|im_start|>bot\\n"
    )
    check_template_round_trip(qwen3_tok, copy.deepcopy(qwen3_tok))
    with pytest.raises(TunelabError, match="chat template round trip failed"):
        check_template_round_trip(qwen3_tok, changed)


def test_chat_streams_answers_and_reset_clears_history(tiny_run: Path) -> None:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "tunelab", "chat", str(tiny_run), "--max-new-tokens", "5"],
        encoding="utf-8",
        timeout=240,
    )
    child.expect("you> ")
    child.sendline("评论 7：好还是坏？")
    child.expect("model> ")
    child.expect("you> ")
    assert child.before.strip(), "no answer was streamed"
    child.sendline("/system 你是一个评论分类器")
    child.expect("system message set")
    child.sendline("/reset")
    child.expect(r"\(history cleared\)")
    child.sendline("/exit")
    child.expect(pexpect.EOF)


def test_chat_session_history(tiny_run: Path) -> None:
    from tunelab.use.chat import ChatSession

    session = ChatSession(open_run(tiny_run), max_new_tokens=3)
    pieces: list[str] = []
    session.reply("评论 1：好还是坏？", pieces.append)
    assert pieces and len(session.history) == 2
    session.reply("再说一次", pieces.append)
    assert len(session.history) == 4
    assert session.command("/reset") == "(history cleared)" and session.history == []
    assert session.command("/exit") is None
