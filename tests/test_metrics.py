"""Every metric against values computed by hand."""

import math

import pytest

from tunelab.metrics import (
    INVALID,
    bleu,
    classification_report,
    exact_match,
    invalid_rate,
    label_accuracy,
    perplexity,
    rouge_l,
    rouge_l_row,
    sentence_bleu,
)


def test_exact_match_normalisation_options() -> None:
    preds = ["Paris", "  new   york ", "Rome.", ""]
    refs = ["paris", "New York", "rome", "x"]
    assert exact_match(preds, refs) == 0.5
    assert exact_match(preds, refs, strip_punctuation=True) == 0.75
    assert exact_match(preds, refs, lowercase=False) == 0.0
    assert exact_match(["ＡＢＣ"], ["abc"]) == 1.0  # full-width folds by NFKC
    assert exact_match([], []) == 0.0
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        exact_match(["a", "b"], ["a"])


def test_label_accuracy_reads_the_first_line() -> None:
    assert label_accuracy(
        ["正面\n因为……", "\n负面", "负面吧"], ["正面", "负面", "负面"]
    ) == pytest.approx(2 / 3)


def test_classification_report_by_hand() -> None:
    refs = ["a", "a", "b", "b", "c"]
    preds = ["a", "b", "b", "b", "zzz"]  # "zzz" is not a label: invalid
    report = classification_report(preds, refs)
    assert report["accuracy"] == pytest.approx(0.6)
    assert report["invalid_rate"] == pytest.approx(0.2)
    per = report["per_class"]
    assert per["a"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert per["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert per["c"] == pytest.approx({"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1})
    assert report["macro"]["f1"] == pytest.approx((2 / 3 + 0.8 + 0) / 3)
    # micro: TP 3, FP 1 (the wrong "b"), FN 2 -> P 3/4, R 3/5
    assert report["micro"]["precision"] == pytest.approx(0.75)
    assert report["micro"]["recall"] == pytest.approx(0.6)
    assert report["weighted"]["f1"] == pytest.approx((2 * 2 / 3 + 2 * 0.8) / 5)
    assert report["confusion"] == {
        "rows": ["a", "b", "c"],
        "columns": ["a", "b", "c", INVALID],
        "matrix": [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 0, 1]],
    }


def test_classification_with_chinese_labels_and_an_unseen_label_set() -> None:
    report = classification_report(
        ["正面", "负面", "中性"], ["正面", "正面", "负面"], labels=["正面", "负面"]
    )
    assert report["accuracy"] == pytest.approx(1 / 3)
    assert report["confusion"]["matrix"] == [[1, 1, 0], [0, 0, 1]]
    assert classification_report([], [])["accuracy"] == 0.0


def test_bleu_chinese_by_hand() -> None:
    # char n-gram precisions 4/6, 3/5, 2/4, 1/3; equal lengths so no brevity penalty
    expected = 100 * (4 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert bleu(["今天天气很好"], ["今天天气不错"]) == pytest.approx(expected, abs=1e-2)
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert bleu([""], ["有内容"]) == 0.0
    assert 0 < sentence_bleu("今天天气很好", "今天天气不错") <= 100


def test_rouge_l_character_level_for_chinese() -> None:
    # LCS of 今天天气很好 / 今天天气不错 is 今天天气: P = R = 4/6
    assert rouge_l_row("今天天气很好", "今天天气不错") == pytest.approx(2 / 3)
    # mixed text: words for latin script, characters for Chinese
    assert rouge_l_row("Qwen3 很小", "qwen3 很大") == pytest.approx(2 / 3)
    assert rouge_l(["", "完全一样"], ["有", "完全一样"]) == pytest.approx(0.5)


def test_perplexity_and_invalid_rate() -> None:
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(7)) == pytest.approx(7)
    assert math.isfinite(perplexity(1e6))
    assert invalid_rate([], bool) == 0.0
    assert invalid_rate(["{}", "x"], lambda p: p.startswith("{")) == 0.5
