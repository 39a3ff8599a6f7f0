"""The classic baseline beside every label task: TF-IDF + logistic regression (scikit-learn).

Trained on exactly the run's training rows and scored on exactly its evaluation rows with
the same metrics, so a user sees at once whether the fine-tuned LLM beats a model that
trains in seconds. Character 1-3-grams for Chinese text, word 1-2-grams otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunelab.metrics import has_cjk, label_task_metrics
from tunelab.report import write_eval
from tunelab.run_dir import RunDir
from tunelab.scoring import EvalResult


@dataclass
class BaselineResult(EvalResult):
    """The baseline's scores in the same shape as a model's evaluation, and its fit time."""

    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """Everything but the rows (metrics.json)."""
        return {**super().summary(), "seconds": self.seconds}


def fit_and_score(
    train_texts: Sequence[str],
    train_labels: Sequence[str],
    eval_texts: Sequence[str],
    eval_labels: Sequence[str],
    labels: Sequence[str],
    metric: str = "accuracy",
) -> BaselineResult:
    """Fit TF-IDF + logistic regression on the training rows and score the eval rows."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    started = time.perf_counter()
    chinese = any(has_cjk(text) for text in train_texts[:200])
    vectorizer = (
        TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), sublinear_tf=True, min_df=1)
        if chinese
        else TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    )
    model = make_pipeline(vectorizer, LogisticRegression(max_iter=2000, C=10.0))
    model.fit(list(train_texts), list(train_labels))
    probabilities = model.predict_proba(list(eval_texts)) if eval_texts else []
    classes = list(model.classes_)
    predicted = [classes[int(p.argmax())] for p in probabilities]
    seconds = round(time.perf_counter() - started, 2)
    rows = [
        {
            "input": text,
            "reference": ref,
            "prediction": guess,
            "status": "correct" if guess == ref else "wrong",
            "probabilities": {c: round(float(q), 4) for c, q in zip(classes, p, strict=True)},
        }
        for text, ref, guess, p in zip(
            eval_texts, eval_labels, predicted, probabilities, strict=True
        )
    ]
    task = label_task_metrics(predicted, eval_labels, labels, metric)
    task["method"] = f"TF-IDF {'character 1-3' if chinese else 'word 1-2'}-grams + LR"
    return BaselineResult("TF-IDF+LR", metric, task["headline"], {"all": task}, rows, seconds)


LABEL_METRICS = ("accuracy", "macro_f1")


def is_label_task(eval_config: Any) -> bool:
    """A single-task SFT set whose answers are labels (scored by accuracy / macro-F1)."""
    scoring = eval_config.scoring
    return not scoring.tasks and (scoring.metric in LABEL_METRICS or bool(scoring.choices))


def sft_baseline(
    eval_config: Any, train_examples: Sequence[Any], val_examples: Sequence[Any]
) -> BaselineResult:
    """The baseline of an instruction label task: the last user turn is the text, the
    reference answer the label; scored on the rows the model is scored on."""
    rows = list(val_examples[: eval_config.max_rows])
    train_labels = [e.answer.strip() for e in train_examples]
    labels = list(eval_config.scoring.choices) or sorted(set(train_labels))
    metric = eval_config.metric if eval_config.metric in LABEL_METRICS else "accuracy"
    return fit_and_score(
        [e.prompt[-1]["content"] for e in train_examples],
        train_labels,
        [e.prompt[-1]["content"] for e in rows],
        [e.answer.strip() for e in rows],
        labels,
        metric,
    )


def classify_baseline(
    metric: str, train: Sequence[Any], val: Sequence[Any], labels: Sequence[str]
) -> BaselineResult:
    """The baseline of a class-head task, on the same table rows."""
    return fit_and_score(
        [t.text for t in train],
        [t.label for t in train],
        [t.text for t in val],
        [t.label for t in val],
        labels,
        metric if metric in LABEL_METRICS else "macro_f1",
    )


ENSEMBLE = "ensemble"


def ensemble(tuned: EvalResult | None, classic: EvalResult | None) -> EvalResult | None:
    """The mean of the fine-tuned model's and the baseline's class probabilities, row by row
    (`ensemble`): one more column, never in place of the model's own figure. None unless both
    scored the same rows with probabilities (a class head; generated labels have none)."""
    if tuned is None or classic is None or not tuned.rows or len(tuned.rows) != len(classic.rows):
        return None
    pairs = list(zip(tuned.rows, classic.rows, strict=True))
    if any(
        "probabilities" not in a or "probabilities" not in b or a["input"] != b["input"]
        for a, b in pairs
    ):
        return None
    labels = list(tuned.rows[0]["probabilities"])
    rows = [_mean_row(a, b, labels) for a, b in pairs]
    predicted, references = [r["prediction"] for r in rows], [r["reference"] for r in rows]
    metrics = label_task_metrics(predicted, references, labels, tuned.metric)
    metrics["method"] = "mean of the two models' class probabilities"
    return EvalResult(
        ENSEMBLE, tuned.metric, metrics["headline"], {"all": metrics}, rows, gap_shown=False
    )


def write_beside(
    run: RunDir, prefix: str, tuned: EvalResult | None, classic: EvalResult | None
) -> list[EvalResult]:
    """The classic baseline and the ensemble with it (where there is one), each written into
    the run's eval folder ``PREFIXbaseline`` / ``PREFIXensemble``; returns them."""
    shown = [r for r in (classic, ensemble(tuned, classic)) if r is not None]
    for result in shown:
        kind = "baseline" if result is classic else "ensemble"
        write_eval(run.eval_dir(prefix + kind), result)
    return shown


def _mean_row(mine: dict[str, Any], theirs: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    mean = {
        label: (mine["probabilities"][label] + theirs["probabilities"].get(label, 0.0)) / 2
        for label in labels
    }
    guess = max(mean, key=mean.__getitem__)
    return {
        "input": mine["input"],
        "reference": mine["reference"],
        "prediction": guess,
        "status": "correct" if guess == mine["reference"] else "wrong",
        "probabilities": {label: round(q, 4) for label, q in mean.items()},
    }
