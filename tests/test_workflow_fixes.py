"""What users of the replaced projects stumbled on, each reproduced: multi-task rows in the
`任务: X` convention, perplexity, absent classes, merged models in use commands, extending a
finished run, a class head on another text column, chat modes, plots without a CJK font,
epoch times in event tables."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from conftest import alpaca_rows
from tunelab.config import EvalConfig
from tunelab.data.formats import Example
from tunelab.data.readers import Source
from tunelab.metrics import classification_report
from tunelab.scoring import score_predictions


def tunelab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunelab", *args], capture_output=True, text=True, timeout=600
    )


def convention_row(task: str, question: str, answer: str) -> Example:
    chat = [
        {"role": "user", "content": f"任务: {task}\n输入: {question}"},
        {"role": "assistant", "content": answer},
    ]
    return Example(chat, Source("multi.jsonl", line=1))


def test_multi_task_rows_in_the_task_line_convention_are_scored_per_task() -> None:
    rows = [
        convention_row("问题场景分类", "手机坏了", "投诉"),
        convention_row("问题场景分类", "怎么退款", "咨询"),
        convention_row("歇后语", "外甥打灯笼", "照舅（旧）"),
    ]
    scoring = {"tasks": {"问题场景分类": {"metrics": ["accuracy"]}, "信息抽取": {}}}
    result = score_predictions(
        rows, ["投诉", "投诉", "照舅（旧）"], EvalConfig(scoring=scoring), "x"
    )
    assert set(result.tasks) == {"问题场景分类", "歇后语", "overall"}
    assert result.tasks["问题场景分类"]["accuracy"] == 0.5
    assert result.notes and "信息抽取" in result.notes[0]  # named, but no row has it


def test_macro_averages_skip_labels_no_row_has_and_say_so() -> None:
    report = classification_report(["a", "a", "b"], ["a", "a", "b"], ["a", "b", "c"])
    assert report["accuracy"] == 1.0 and report["macro"]["f1"] == 1.0
    assert report["absent"] == ["c"]
    closed = classification_report(["a", "b"], ["a", "b"], ["a", "b"], closed=True)
    assert closed["confusion"]["columns"] == ["a", "b"]  # a class head has no invalid answers


def test_a_run_reports_perplexity_beside_its_eval_loss(tiny_run: Path) -> None:
    results = json.loads((tiny_run / "results.json").read_text())
    assert results["eval_perplexity"] == pytest.approx(math.exp(results["eval_loss"]), rel=1e-3)


def test_a_merged_model_can_be_used_like_a_run(tiny_run: Path, tmp_path: Path) -> None:
    merged = tmp_path / "merged"
    assert tunelab("merge", str(tiny_run), "--output", str(merged)).returncode == 0
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"instruction": "评论 1：好还是坏？"}, ensure_ascii=False) + "\n")
    done = tunelab(
        "predict", str(merged), "--input", str(source), "--output", str(tmp_path / "o.jsonl")
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "prediction" in json.loads((tmp_path / "o.jsonl").read_text())
    data = tmp_path / "val.jsonl"
    data.write_text(json.dumps({"instruction": "评论 2：好还是坏？", "output": "好"}) + "\n")
    scored = tunelab("eval", str(merged), "--data", str(data), "--name", "plain")
    assert scored.returncode == 0, scored.stdout + scored.stderr
    assert (merged / "eval" / "plain" / "metrics.json").is_file()


def test_a_finished_run_can_be_extended(qwen3_dir: Path, write_jsonl, tmp_path: Path) -> None:
    from tunelab.config_file import validate_config
    from tunelab.train.run import train

    raw = {
        "name": "short",
        "output_dir": str(tmp_path / "runs"),
        "model": str(qwen3_dir),
        "data": {"train": str(write_jsonl(alpaca_rows(24))), "max_length": 64},
        "train": {"max_steps": 3, "batch_size": 4, "save_every": None},
        "eval": {"generate": False},
    }
    train(validate_config(raw, "t"))
    run = tmp_path / "runs" / "short"
    assert (run / "checkpoints" / "step-000003").is_dir()  # the final state is always saved
    raw["train"]["max_steps"] = 5
    assert train(validate_config(raw, "t"), resume=True).steps == 5
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3, 4, 5]


def test_a_class_head_reads_the_text_column_it_is_told(class_run: Path, tmp_path: Path) -> None:
    from tunelab.errors import TunelabError
    from tunelab.use.predict import predict_file

    source = tmp_path / "in.jsonl"
    source.write_text(
        "\n".join(json.dumps({"content": t}) for t in ["很好", "很差"]) + "\n", encoding="utf-8"
    )
    with pytest.raises(TunelabError, match=r"no row could be predicted.*--text-column"):
        predict_file(class_run, source, tmp_path / "out.jsonl")
    summary = predict_file(class_run, source, tmp_path / "out.jsonl", text_column="content")
    assert summary["predicted"] == 2


def test_chat_reads_multiline_messages_and_can_forget(tiny_run: Path) -> None:
    from tunelab.use.chat import ChatSession, run_repl
    from tunelab.use.open import open_run

    session = ChatSession(open_run(tiny_run), max_new_tokens=2, remember=False)
    typed = iter(["第一行", "第二行", "", "再问一次", "", "/exit"])
    said: list[str] = []
    asked: list[str] = []
    original = session.reply

    def reply(text: str, on_piece) -> str:
        asked.append(text)
        return original(text, on_piece)

    session.reply = reply
    run_repl(session, lambda prompt: next(typed), said.append, multiline=True)
    assert asked == ["第一行\n第二行", "再问一次"]
    assert len(session.history) == 2  # only the last exchange: each message alone


def test_plots_without_a_cjk_font_warn_once_not_per_glyph(tmp_path: Path, monkeypatch) -> None:
    from tunelab import report

    monkeypatch.setattr(report, "find_cjk_font", lambda: None)
    rows = [
        convention_row("问题场景分类", "x", "投诉"),
        convention_row("问题场景分类", "y", "咨询"),
    ]
    result = score_predictions(
        rows, ["投诉", "咨询"], EvalConfig(scoring={"metric": "accuracy"}), "m"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        notes = report.write_eval(tmp_path, result)
    assert notes == [report.NO_CJK_FONT]
    assert not [w for w in caught if "Glyph" in str(w.message)]


def test_an_event_table_with_epoch_times_builds(tmp_path: Path) -> None:
    table = tmp_path / "ratings.csv"
    lines = ["user,time,action,target,details"]
    for user in ("u1", "u2"):
        for i in range(30):
            lines.append(f"{user},{1260759108 + 3600 * i},使用应用,App{i % 4},")
    table.write_text("\n".join(lines) + "\n")
    done = tunelab(
        "behavior", "build", str(table), "--output", str(tmp_path / "s"), "--window", "3"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "read as Unix epoch seconds" in " ".join(done.stdout.split())
    broken = tmp_path / "broken.csv"
    broken.write_text("user,time,action,target\nu1,yesterday,使用应用,QQ.exe\n")
    failed = tunelab("behavior", "build", str(broken), "--output", str(tmp_path / "b"))
    said = " ".join(failed.stdout.split())
    assert failed.returncode == 2 and "1 rows read, 1 rejected" in said and "yesterday" in said
    assert (tmp_path / "b" / "rejects.jsonl").read_text().count("\n") == 1
