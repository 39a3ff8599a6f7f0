"""Pure metric functions: predictions and references in, numbers out.

Label metrics come from scikit-learn, BLEU from sacrebleu, ROUGE-L from rouge-score (with
a tokenizer that splits Chinese into characters); only the glue is written here.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any

_SPACE = re.compile(r"\s+")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_TOKEN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W_]+", re.UNICODE)
INVALID = "(invalid)"


def first_line(text: str) -> str:
    """The first non-empty line of a generation, stripped.

    >>> first_line("\\n 正面 \\n because ...")
    '正面'
    """
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def normalize(text: str, lowercase: bool = True, strip_punctuation: bool = False) -> str:
    """Unicode NFKC, collapsed whitespace, optional lower-casing and punctuation removal.

    >>> normalize("  Hello,   World！ ", strip_punctuation=True)
    'hello world'
    """
    text = _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()
    if lowercase:
        text = text.lower()
    if strip_punctuation:
        kept = (c for c in text if not unicodedata.category(c).startswith("P"))
        text = _SPACE.sub(" ", "".join(kept)).strip()
    return text


def is_exact(
    prediction: str, reference: str, lowercase: bool = True, strip_punctuation: bool = False
) -> bool:
    """The prediction equals the reference after ``normalize``.

    >>> is_exact(" Paris", "paris"), is_exact("Paris.", "paris", strip_punctuation=True)
    (True, True)
    """
    options = {"lowercase": lowercase, "strip_punctuation": strip_punctuation}
    return normalize(prediction, **options) == normalize(reference, **options)


def is_label(prediction: str, reference: str) -> bool:
    """The generation's first line is exactly the reference label.

    >>> is_label("正面\\n理由……", "正面"), is_label("负面。", "负面")
    (True, False)
    """
    return first_line(prediction) == reference.strip()


def exact_match(
    predictions: Sequence[str],
    references: Sequence[str],
    lowercase: bool = True,
    strip_punctuation: bool = False,
) -> float:
    """Share of predictions equal to their reference after ``normalize``.

    >>> exact_match(["Paris", "rome "], ["paris", "Madrid"])
    0.5
    """
    _check_lengths(predictions, references)
    hits = [
        is_exact(p, r, lowercase, strip_punctuation)
        for p, r in zip(predictions, references, strict=True)
    ]
    return sum(hits) / len(hits) if hits else 0.0


def label_accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of generations whose first line is exactly the reference label.

    >>> label_accuracy(["正面", "负面。"], ["正面", "负面"])
    0.5
    """
    _check_lengths(predictions, references)
    hits = [is_label(p, r) for p, r in zip(predictions, references, strict=True)]
    return sum(hits) / len(hits) if hits else 0.0


def classification_report(
    predicted: Sequence[str],
    references: Sequence[str],
    labels: Sequence[str] | None = None,
    closed: bool = False,
) -> dict[str, Any]:
    """Accuracy, P/R/F1 (macro, micro, weighted, per class) and the confusion matrix.

    A prediction outside ``labels`` (default: the labels seen in the references) counts as
    wrong for its row and appears in the confusion matrix's ``(invalid)`` column; it is no
    class's false positive. ``closed``: every prediction is a label (a class head), so the
    matrix has no such column. The averages are over the labels the rows have (as a
    reference or a prediction): a label absent from both would count as an F1 of 0 without
    any row behind it; those are listed under ``absent``.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    _check_lengths(predicted, references)
    classes = list(labels) if labels else sorted(set(references))
    cleaned = [p if p in classes else INVALID for p in predicted]
    report: dict[str, Any] = {
        "rows": len(references),
        "accuracy": _share(cleaned, references),
        "invalid_rate": cleaned.count(INVALID) / len(cleaned) if cleaned else 0.0,
    }
    if not references:
        return report
    present = [c for c in classes if c in set(references) | set(cleaned)]
    report["absent"] = [c for c in classes if c not in present]
    for average in ("macro", "micro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            references, cleaned, labels=present, average=average, zero_division=0
        )
        report[average] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    p, r, f, support = precision_recall_fscore_support(
        references, cleaned, labels=classes, average=None, zero_division=0
    )
    report["per_class"] = {
        label: {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(classes)
    }
    columns = classes if closed else [*classes, INVALID]
    matrix = confusion_matrix(references, cleaned, labels=columns)[: len(classes)]
    report["confusion"] = {"rows": classes, "columns": columns, "matrix": matrix.tolist()}
    return report


def label_task_metrics(
    predicted: Sequence[str], references: Sequence[str], labels: Sequence[str], headline: str
) -> dict[str, Any]:
    """The per-task metrics of a closed label set, where every answer is a valid label: row
    statuses, the scikit-learn report, accuracy, macro-F1 and the headline among them."""
    report = classification_report(list(predicted), list(references), list(labels), closed=True)
    correct = sum(p == r for p, r in zip(predicted, references, strict=True))
    metrics: dict[str, Any] = {
        "rows": len(references),
        "status": {
            "correct": correct,
            "partial": 0,
            "wrong": len(references) - correct,
            "invalid": 0,
        },
        "invalid_rate": 0.0,
        "classification": report,
        "accuracy": round(report["accuracy"], 4),
        "macro_f1": round(report.get("macro", {}).get("f1", 0.0), 4),
        "headline_metric": headline,
    }
    metrics["headline"] = metrics[headline]
    return metrics


def has_cjk(text: str) -> bool:
    """Whether the text holds Chinese characters.

    >>> has_cjk("ok 好"), has_cjk("ok")
    (True, False)
    """
    return bool(_CJK.search(text))


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0-100) by sacrebleu; `zh` tokenisation when the references are Chinese."""
    import sacrebleu

    _check_lengths(predictions, references)
    if not references:
        return 0.0
    tokenize = "zh" if any(has_cjk(r) for r in references) else "13a"
    return float(
        sacrebleu.corpus_bleu(list(predictions), [list(references)], tokenize=tokenize).score
    )


def sentence_bleu(prediction: str, reference: str) -> float:
    """BLEU of one row (smoothed, as sacrebleu does for sentences)."""
    import sacrebleu

    tokenize = "zh" if has_cjk(reference) else "13a"
    return float(sacrebleu.sentence_bleu(prediction, [reference], tokenize=tokenize).score)


class _MixedTokenizer:
    """Chinese characters one by one, other scripts by words, lower-cased (for rouge-score)."""

    def tokenize(self, text: str) -> list[str]:
        return _TOKEN.findall(text.lower())


def rouge_l_row(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure of one row; character level for Chinese.

    >>> round(rouge_l_row("今天天气很好", "今天天气不错"), 4)
    0.6667
    """
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_MixedTokenizer())
    return float(scorer.score(reference, prediction)["rougeL"].fmeasure)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure over rows."""
    _check_lengths(predictions, references)
    scores = [rouge_l_row(p, r) for p, r in zip(predictions, references, strict=True)]
    return sum(scores) / len(scores) if scores else 0.0


def perplexity(mean_token_loss: float) -> float:
    """exp(mean token cross-entropy).

    >>> round(perplexity(math.log(20.0)), 6)
    20.0
    """
    return math.exp(min(mean_token_loss, 50.0))


def invalid_rate(predictions: Sequence[str], is_valid: Callable[[str], bool]) -> float:
    """Share of outputs that do not parse as the task's answer format.

    >>> invalid_rate(["正面", "好评", "负面"], lambda p: p in {"正面", "负面"})
    0.3333333333333333
    """
    flags = [not is_valid(p) for p in predictions]
    return sum(flags) / len(flags) if flags else 0.0


ROW_METRICS: dict[str, Callable[[str, str], bool]] = {"accuracy": is_label, "exact_match": is_exact}


def _share(predicted: Sequence[str], references: Sequence[str]) -> float:
    hits = [p == r for p, r in zip(predicted, references, strict=True)]
    return sum(hits) / len(hits) if hits else 0.0


def _check_lengths(predictions: Sequence[Any], references: Sequence[Any]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
