"""Scoring: statuses per row, metrics per task, and the files a user reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.config import EvalConfig
from tunelab.data.formats import Example
from tunelab.data.readers import Source
from tunelab.scoring import score_predictions


def example(question: str, answer: str, task: str | None = None) -> Example:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return Example(messages, Source("rows.jsonl", line=1), {"task": task} if task else {})


def test_label_task_statuses_and_classification_metrics() -> None:
    rows = [example("a", "正面"), example("b", "负面"), example("c", "负面"), example("d", "正面")]
    predictions = ["正面", "正面\n因为", "好评", "正面"]
    result = score_predictions(rows, predictions, EvalConfig(scoring={"metric": "accuracy"}), "x")
    assert [r["status"] for r in result.rows] == ["correct", "wrong", "invalid", "correct"]
    task = result.tasks["all"]
    assert result.score == task["accuracy"] == 0.5
    assert task["invalid_rate"] == 0.25
    assert task["classification"]["confusion"]["matrix"] == [[2, 0, 0], [1, 0, 1]]
    assert task["macro_f1"] == pytest.approx((0.8 + 0.0) / 2, abs=1e-4)


def test_answer_task_partial_and_invalid_by_regex() -> None:
    rows = [
        example("q1", "照旧"),
        example("q2", "四季如春"),
        example("q3", "42"),
        example("q4", "7"),
    ]
    predictions = ["照旧", "四季如春天", "答案是42", "seven"]
    scoring = {"metric": "exact_match", "metrics": ["rouge_l", "bleu"], "regex": r"\S+"}
    config = EvalConfig(scoring=scoring)
    result = score_predictions(rows, predictions, config, "x")
    assert [r["status"] for r in result.rows] == ["correct", "partial", "partial", "wrong"]
    assert result.rows[1]["rouge_l"] == pytest.approx(2 * 4 / (5 + 4), abs=1e-3)
    assert result.tasks["all"]["exact_match"] == 0.25
    spaced = score_predictions([example("q", "a")], ["has space"], config, "x")
    assert spaced.rows[0]["status"] == "invalid"


def test_multi_task_rows_get_their_own_metrics_and_an_overall_line() -> None:
    config = EvalConfig.model_validate(
        {
            "scoring": {
                "tasks": {
                    "问题场景分类": {"metrics": ["accuracy"], "choices": ["投诉", "咨询"]},
                    "歇后语": {"metrics": ["exact_match", "rouge_l"]},
                }
            }
        }
    )
    rows = [
        example("x", "投诉", "问题场景分类"),
        example("y", "咨询", "问题场景分类"),
        example("z", "照舅（旧）", "歇后语"),
        example("w", "一清二白", "歇后语"),
    ]
    result = score_predictions(rows, ["投诉", "表扬", "照舅（旧）", "清白"], config, "x")
    assert result.tasks["问题场景分类"]["headline"] == 0.5
    assert result.tasks["问题场景分类"]["invalid_rate"] == 0.5
    assert result.tasks["歇后语"]["headline"] == 0.5
    assert result.tasks["overall"]["headline"] == result.score == 0.5
    assert result.metric == "mean of task headlines"
    assert result.tasks["overall"]["status"] == {
        "correct": 2,
        "partial": 1,
        "wrong": 0,
        "invalid": 1,
    }


def test_write_eval_files_and_plots(tmp_path: Path) -> None:
    from tunelab.report import write_eval

    rows = [example("a", "正面"), example("b", "负面")]
    result = score_predictions(
        rows, ["正面", "正面"], EvalConfig(scoring={"metric": "accuracy"}), "demo"
    )
    history = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}, {"step": 2, "eval_loss": 1.5}]
    notes = write_eval(tmp_path, result, history)
    assert json.loads((tmp_path / "metrics.json").read_text())["score"] == 0.5
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == 2
    header = (tmp_path / "predictions.csv").read_text(encoding="utf-8-sig").splitlines()[0]
    assert header.split(",")[:6] == ["source", "task", "input", "reference", "prediction", "status"]
    assert (tmp_path / "confusion_all.png").stat().st_size > 1000
    assert (tmp_path / "loss_curves.png").stat().st_size > 1000
    report = (tmp_path / "report.md").read_text()
    assert "| 正面 |" in report and "accuracy: 0.5000" in report
    if notes:  # no CJK font on this machine: coded labels with a key, and the user is told
        assert "Plot key for all: L0 = 正面, L1 = 负面" in report
        assert "no CJK font found" in notes[0]
