"""The classic baseline: TF-IDF + logistic regression on the run's own rows."""

from __future__ import annotations

from tunelab.baseline import ENSEMBLE, ensemble, fit_and_score, is_label_task
from tunelab.config import EvalConfig
from tunelab.scoring import EvalResult


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


def scored(name: str, rows: list[tuple[str, str, dict[str, float]]]) -> EvalResult:
    """An evaluation whose rows carry class probabilities, as a class head's and the
    baseline's do."""
    return EvalResult(
        name,
        "accuracy",
        0.0,
        {},
        [
            {"input": text, "reference": ref, "prediction": max(p, key=p.get), "probabilities": p}
            for text, ref, p in rows
        ],
    )


def test_the_ensemble_averages_probabilities_row_by_row() -> None:
    # each model is unsure and wrong on one row, sure and right on the other
    tuned = scored(
        "fine-tuned",
        [("a", "pos", {"pos": 0.45, "neg": 0.55}), ("b", "neg", {"pos": 0.1, "neg": 0.9})],
    )
    classic = scored(
        "TF-IDF+LR",
        [("a", "pos", {"pos": 0.8, "neg": 0.2}), ("b", "neg", {"pos": 0.6, "neg": 0.4})],
    )
    mixed = ensemble(tuned, classic)
    assert mixed is not None and mixed.name == ENSEMBLE
    assert [r["prediction"] for r in mixed.rows] == ["pos", "neg"]
    assert mixed.rows[0]["probabilities"] == {"pos": 0.625, "neg": 0.375}
    assert mixed.score == 1.0 and mixed.tasks["all"]["status"]["correct"] == 2


def test_no_ensemble_without_probabilities_or_on_other_rows() -> None:
    tuned = scored("fine-tuned", [("a", "pos", {"pos": 0.9, "neg": 0.1})])
    assert ensemble(tuned, scored("TF-IDF+LR", [("b", "pos", {"pos": 1.0, "neg": 0.0})])) is None
    assert ensemble(tuned, None) is None
    generated = EvalResult("fine-tuned", "accuracy", 1.0, {}, [{"input": "a", "reference": "pos"}])
    assert ensemble(generated, scored("TF-IDF+LR", [("a", "pos", {"pos": 1.0})])) is None


def test_baseline_rows_carry_every_class_probability() -> None:
    result = fit_and_score(
        ["great film", "loved it", "awful film", "hated it"],
        ["pos", "pos", "neg", "neg"],
        ["great", "awful"],
        ["pos", "neg"],
        ["pos", "neg"],
    )
    for row in result.rows:
        assert set(row["probabilities"]) == {"pos", "neg"}
        assert row["prediction"] == max(row["probabilities"], key=row["probabilities"].get)
