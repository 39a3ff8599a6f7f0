"""Text classification as a task kind: a table with a text and a label column in, a class
head plus LoRA out, scored by accuracy / macro-F1 on the val rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from tunelab.baseline import BaselineResult, classify_baseline
from tunelab.config import RunConfig
from tunelab.data.readers import RawRow
from tunelab.models.load import load_classifier
from tunelab.scoring import EvalResult
from tunelab.tasks.base import Autocast, Batcher, RunModel, Scorer
from tunelab.tasks.classify.data import (
    ClassSet,
    PreparedClasses,
    encode_texts,
    prepare_classify,
    read_eval_texts,
    read_splits,
)
from tunelab.tasks.classify.head import (
    HEAD_MODULES,
    ClassifierLoss,
    class_batcher,
    class_weights,
    evaluate_classifier,
    inference_batcher,
)

HEADLINE_METRICS = ("accuracy", "macro_f1")


@dataclass
class ClassRows:
    """Encoded rows to score, and how many rows had no text, no label or an unknown one."""

    split: ClassSet
    skipped: int


def headline_metric(config: RunConfig) -> str:
    """``eval.metric`` where a class head can score it, else macro-F1."""
    return config.eval.metric if config.eval.metric in HEADLINE_METRICS else "macro_f1"


class ClassifyTask:
    """`task: classify`: a class head on the last token, trained in full, LoRA on the body."""

    adapter_type = "SEQ_CLS"
    trained_modules = HEAD_MODULES
    has_base_model = False  # a fresh head knows no labels

    def prepare(self, config: RunConfig, tokenizer: Any) -> PreparedClasses:
        """Read, validate, split and encode the table."""
        return prepare_classify(config.data, tokenizer)

    def load_base(
        self, model_dir: Path, config: RunConfig, labels: list[str], tokenizer: Any, dtype: Any
    ) -> Any:
        """The base with a class head over ``labels`` (seeded random weights)."""
        return load_classifier(model_dir, config.model, labels, tokenizer.pad_token_id, dtype)

    def batcher(self, config: RunConfig, tokenizer: Any, segmented: bool) -> Batcher:
        """Texts longest first, within ``train.forward_tokens`` per pass."""
        return class_batcher(tokenizer.pad_token_id, config.train.forward_tokens, segmented)

    def loss(self, model: nn.Module, config: RunConfig, data: PreparedClasses) -> nn.Module:
        """Cross-entropy of the head, class-weighted as ``train.class_weights`` says."""
        return ClassifierLoss(model, class_weights(config, data.labels, data.train))

    def scorer(
        self,
        config: RunConfig,
        tokenizer: Any,
        data: PreparedClasses,
        batcher: Batcher,
        autocast: Autocast,
    ) -> Scorer | None:
        """Accuracy / macro-F1 on the val rows, with the eval loss from the same passes."""
        weights = class_weights(config, data.labels, data.train)
        metric = headline_metric(config)

        def score(model: Any, name: str) -> EvalResult:
            return evaluate_classifier(model, data.val, data.labels, batcher, name, weights, metric)

        return score

    def score_base(
        self, model: Any, tokenizer: Any, config: RunConfig, data: PreparedClasses
    ) -> EvalResult | None:
        """None: an untrained head has nothing to say."""
        return None

    def baseline(
        self, config: RunConfig, data: PreparedClasses
    ) -> Callable[[], BaselineResult] | None:
        """TF-IDF + LR on the same table rows."""
        return partial(
            classify_baseline,
            headline_metric(config),
            data.train.texts,
            data.val.texts,
            data.labels,
        )

    def eval_rows(
        self, config: RunConfig, tokenizer: Any, labels: list[str], path: Path | None
    ) -> ClassRows:
        """The table at ``path``, else the run's val rows, encoded as in training."""
        texts, skipped = read_eval_texts(config.data, labels, path)
        return ClassRows(encode_texts(tokenizer, texts, labels, config.data), skipped)

    def score(self, run: RunModel, rows: ClassRows, name: str) -> EvalResult:
        """Accuracy, P/R/F1 and the confusion matrix of the run's head on ``rows``."""
        batcher = inference_batcher(
            run.model, run.tokenizer.pad_token_id, run.config.train.forward_tokens
        )
        metric = headline_metric(run.config)
        return evaluate_classifier(run.model, rows.split, run.labels, batcher, name, None, metric)

    def classic(self, config: RunConfig, path: Path | None = None) -> BaselineResult | None:
        """TF-IDF + LR on the training table, scored on the val rows (or ``path``)."""
        splits = read_splits(config.data, [path] if path else None)
        return classify_baseline(headline_metric(config), splits.train, splits.val, splits.labels)

    def predict(
        self, run: RunModel, rows: Sequence[RawRow], on_batch: Callable[[int], None] | None = None
    ) -> list[dict[str, Any]]:
        """A label and one probability column per class for each row with a text."""
        column = run.config.data.text_column
        records = [dict(row.data) for row in rows]
        usable = [i for i, row in enumerate(rows) if str(row.data.get(column, "")).strip()]
        for index in set(range(len(rows))) - set(usable):
            records[index]["error"] = f"{rows[index].source}: {column}: missing or empty text"
        probabilities = run.classify([str(rows[i].data[column]) for i in usable])
        for index, per_label in zip(usable, probabilities, strict=True):
            records[index]["prediction"] = max(per_label, key=per_label.__getitem__)
            records[index].update({f"p_{label}": round(p, 4) for label, p in per_label.items()})
        if on_batch is not None:
            on_batch(len(rows))
        return records
