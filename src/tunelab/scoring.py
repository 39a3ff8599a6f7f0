"""Score a model's answers on held-out rows: per task, per row, against the references.

``score_predictions`` is pure (predictions in, scores out); ``evaluate_generation`` makes
the predictions first. Each row gets a status: correct, partial (answers only: close but
not exact), wrong, or invalid (not in the answer format: not a label, regex or schema).
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tunelab.config import EvalConfig
from tunelab.config_eval import AnswerFormatConfig
from tunelab.data.encode import encode_prompt
from tunelab.data.formats import Example
from tunelab.generate import AnswerFormat, GenerationOptions, generate_texts
from tunelab.metrics import (
    bleu,
    classification_report,
    exact_match,
    first_line,
    is_exact,
    normalize,
    rouge_l,
    rouge_l_row,
    sentence_bleu,
)

LABEL_METRICS = ("accuracy", "macro_f1")
PARTIAL_ROUGE = 0.5  # an answer sharing half its characters in order with the reference
SINGLE_TASK = "all"


@dataclass
class TaskSpec:
    """How one task's rows are scored."""

    name: str
    metrics: list[str]
    answer: AnswerFormat
    labels: tuple[str, ...] = ()

    @property
    def is_label_task(self) -> bool:
        """Answers are labels: the first line is compared, statuses have no `partial`."""
        return bool(self.answer.choices) or any(m in LABEL_METRICS for m in self.metrics)


@dataclass
class EvalResult:
    """One model's scores on a set of rows."""

    name: str
    metric: str
    score: float
    tasks: dict[str, dict[str, Any]]
    rows: list[dict[str, Any]] = field(default_factory=list)
    loss: float | None = None  # the training loss on these rows, where the scoring gives it
    notes: list[str] = field(default_factory=list)  # what the user should know about it
    gap_shown: bool = True  # whether tables show the fine-tuned model's gap to this one

    def summary(self) -> dict[str, Any]:
        """Everything but the rows (metrics.json)."""
        return {"name": self.name, "metric": self.metric, "score": self.score, "tasks": self.tasks}


def answer_format(config: AnswerFormatConfig) -> AnswerFormat:
    """The hashable answer format of a config section."""
    schema = json.dumps(config.json_schema, ensure_ascii=False) if config.json_schema else None
    return AnswerFormat(tuple(config.choices), config.regex, schema)


def generation_options(config: EvalConfig, **overrides: Any) -> GenerationOptions:
    """How the ``eval`` section says to decode, with any field overridden."""
    settings = {
        "max_new_tokens": config.generation.max_new_tokens,
        "batch_size": config.generation.batch_size,
        "temperature": config.generation.temperature,
        "top_p": config.generation.top_p,
        "seed": config.generation.seed,
        "stop": tuple(config.generation.stop),
    }
    return GenerationOptions(**{**settings, **overrides})


# multi-task rows that name their task in the question's first line: "任务: 问题场景分类\n输入: ..."
TASK_LINE = re.compile(
    r"\A\s*(?:任务|task)[ \t]*[:：][ \t]*(\S[^\n]*?)[ \t]*(?:\n|\Z)", re.IGNORECASE
)


def task_of(example: Example, config: EvalConfig) -> str:
    """The task a row belongs to: its task column, else a first line `任务: X` (or `task: X`)
    of its question, else `all` (single-task data).

    >>> from tunelab.data.readers import Source
    >>> chat = [{"role": "user", "content": "任务: 问题场景分类\\n输入: 手机坏了"},
    ...         {"role": "assistant", "content": "投诉"}]
    >>> task_of(Example(chat, Source("f")), EvalConfig())
    '问题场景分类'
    """
    value = example.extra.get(config.scoring.task_field)
    if value not in (None, ""):
        return str(value)
    found = TASK_LINE.match(example.prompt[-1]["content"]) if example.prompt else None
    return found.group(1) if found else SINGLE_TASK


def task_specs(config: EvalConfig, examples: Sequence[Example]) -> dict[str, TaskSpec]:
    """Each task present in the rows, with its metrics, answer format and label set."""
    specs = {}
    for name in sorted({task_of(e, config) for e in examples}):
        scoring = config.scoring
        section: AnswerFormatConfig = scoring.tasks.get(name, scoring)
        metrics = (
            scoring.tasks[name].metrics
            if name in scoring.tasks
            else [scoring.metric, *scoring.metrics]
        )
        answer = answer_format(section)
        references = {e.answer.strip() for e in examples if task_of(e, config) == name}
        labels = answer.choices or tuple(sorted(references))
        specs[name] = TaskSpec(name, list(dict.fromkeys(metrics)), answer, labels)
    return specs


def evaluate_generation(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    config: EvalConfig,
    name: str,
    on_batch: Callable[[int], None] | None = None,
) -> EvalResult:
    """Generate answers for the first ``config.max_rows`` rows and score them."""
    chosen = list(examples[: config.max_rows])
    specs = task_specs(config, chosen)
    thinking = config.generation.thinking
    prompts = [encode_prompt(tokenizer, e.prompt, thinking=thinking) for e in chosen]
    formats = None
    if config.generation.constrain:
        formats = [_constraint(specs[task_of(e, config)]) for e in chosen]
    options = generation_options(config)
    was_training = model.training
    model.eval()
    predictions = generate_texts(model, tokenizer, prompts, options, formats, on_batch)
    model.train(was_training)
    return score_predictions(chosen, predictions, config, name)


def score_predictions(
    examples: Sequence[Example], predictions: Sequence[str], config: EvalConfig, name: str
) -> EvalResult:
    """Statuses per row, metrics per task, and the headline score."""
    specs = task_specs(config, examples)
    rows = [
        _score_row(example, prediction, specs[task_of(example, config)], config)
        for example, prediction in zip(examples, predictions, strict=True)
    ]
    tasks = {
        task: _task_metrics([r for r in rows if r["task"] == task], spec, config)
        for task, spec in specs.items()
    }
    if len(tasks) == 1:
        (only,) = tasks.values()
        score, metric = only.get(config.metric, only["headline"]), config.metric
    else:
        score, metric = (
            statistics.fmean(t["headline"] for t in tasks.values()),
            "mean of task headlines",
        )
        tasks["overall"] = _overall(rows, score)
    unmatched = sorted(set(config.scoring.tasks) - set(specs))
    found = sorted(specs)
    notes = [f"eval.scoring.tasks names {unmatched}: no evaluated row has them ({found})"]
    return EvalResult(name, metric, round(score, 4), tasks, rows, notes=notes if unmatched else [])


def _constraint(spec: TaskSpec) -> AnswerFormat | None:
    if spec.answer.defined:
        return spec.answer
    if spec.is_label_task and spec.labels:
        return AnswerFormat(choices=spec.labels)
    return None


def _score_row(
    example: Example, prediction: str, spec: TaskSpec, config: EvalConfig
) -> dict[str, Any]:
    reference = example.answer.strip()
    scores: dict[str, float] = {}
    if spec.is_label_task:
        label = first_line(prediction)
        status = (
            "invalid"
            if label not in spec.labels
            else ("correct" if label == reference else "wrong")
        )
    else:
        scoring = config.scoring
        exact = is_exact(prediction, reference, scoring.lowercase, scoring.strip_punctuation)
        overlap = rouge_l_row(prediction, reference)
        scores = {"exact": float(exact), "rouge_l": round(overlap, 4)}
        if "bleu" in spec.metrics:
            scores["bleu"] = round(sentence_bleu(prediction, reference), 2)
        status = _answer_status(prediction, reference, spec, exact, overlap)
    return {
        "source": str(example.source),
        "task": spec.name,
        "input": example.prompt[-1]["content"],
        "reference": reference,
        "prediction": prediction,
        "status": status,
        **scores,
    }


def _answer_status(
    prediction: str, reference: str, spec: TaskSpec, exact: bool, overlap: float
) -> str:
    if spec.answer.defined and not spec.answer.is_valid(prediction):
        return "invalid"
    if exact:
        return "correct"
    if overlap >= PARTIAL_ROUGE or normalize(reference) in normalize(prediction):
        return "partial"
    return "wrong"


def _task_metrics(rows: list[dict[str, Any]], spec: TaskSpec, config: EvalConfig) -> dict[str, Any]:
    predictions = [r["prediction"] for r in rows]
    references = [r["reference"] for r in rows]
    statuses = Counter(r["status"] for r in rows)
    result: dict[str, Any] = {
        "rows": len(rows),
        "status": {s: statuses.get(s, 0) for s in ("correct", "partial", "wrong", "invalid")},
        "invalid_rate": round(statuses.get("invalid", 0) / len(rows), 4) if rows else 0.0,
    }
    if spec.is_label_task:
        report = classification_report(
            [first_line(p) for p in predictions], references, spec.labels
        )
        result["classification"] = report
        result["accuracy"] = round(report["accuracy"], 4)
        result["macro_f1"] = round(report.get("macro", {}).get("f1", 0.0), 4)
    for metric in spec.metrics:
        if metric == "exact_match":
            scoring = config.scoring
            matched = exact_match(
                predictions, references, scoring.lowercase, scoring.strip_punctuation
            )
            result[metric] = round(matched, 4)
        elif metric == "bleu":
            result[metric] = round(bleu(predictions, references), 2)
        elif metric == "rouge_l":
            result[metric] = round(rouge_l(predictions, references), 4)
    result["headline_metric"] = spec.metrics[0]
    result["headline"] = result.get(spec.metrics[0], 0.0)
    return result


def _overall(rows: list[dict[str, Any]], score: float) -> dict[str, Any]:
    statuses = Counter(r["status"] for r in rows)
    return {
        "rows": len(rows),
        "status": {s: statuses.get(s, 0) for s in ("correct", "partial", "wrong", "invalid")},
        "invalid_rate": round(statuses.get("invalid", 0) / len(rows), 4) if rows else 0.0,
        "headline_metric": "mean of task headlines",
        "headline": round(score, 4),
    }
