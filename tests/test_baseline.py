"""The classic baseline: TF-IDF + logistic regression on the run's own rows."""

from __future__ import annotations

from tunelab.baseline import fit_and_score, is_label_task
from tunelab.config import EvalConfig


def test_chinese_text_uses_character_ngrams_and_scores_the_given_rows() -> None:
    good = ["质量很好，很满意", "非常好用，推荐", "很好，物流快", "满意，好评"]
    bad = ["太差了，退货", "质量差，失望", "很差，不推荐", "差评，坏了"]
    result = fit_and_score(
        good + bad,
        ["正面"] * 4 + ["负面"] * 4,
        ["好评，很满意", "差评，失望"],
        ["正面", "负面"],
        ["正面", "负面"],
        metric="macro_f1",
    )
    assert result.tasks["all"]["method"].startswith("TF-IDF character")
    assert result.metric == "macro_f1" and result.score == 1.0
    assert [r["status"] for r in result.rows] == ["correct", "correct"]
    assert result.tasks["all"]["status"]["correct"] == 2


def test_english_text_uses_word_ngrams_and_wrong_rows_are_counted() -> None:
    result = fit_and_score(
        ["great film", "loved it", "awful film", "hated it"],
        ["pos", "pos", "neg", "neg"],
        ["great", "awful", "loved"],
        ["pos", "neg", "neg"],
        ["pos", "neg"],
    )
    assert result.tasks["all"]["method"].startswith("TF-IDF word")
    assert result.tasks["all"]["status"]["wrong"] == 1
    assert abs(result.score - 2 / 3) < 1e-3


def test_label_tasks_are_recognised_by_metric_or_choices() -> None:
    assert is_label_task(EvalConfig(scoring={"metric": "accuracy"}))
    assert is_label_task(EvalConfig(scoring={"metric": "bleu", "choices": ["a", "b"]}))
    assert not is_label_task(EvalConfig(scoring={"metric": "bleu"}))
