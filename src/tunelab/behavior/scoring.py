"""Scoring next-event predictions: exact / partial / wrong / invalid, and the figures around.

exact: action, target and details all match; partial: action and target match; invalid: the
answer does not parse as an event with a known action. overall = exact + 0.5 x partial, the
figure users already report; beside it action and target accuracy, top-k target accuracy
from a ranking of candidate targets, and the time error when times are predicted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunelab.behavior.events import FIELD_SEPARATOR

TOP_K = (1, 3, 5)
_DELAY = re.compile(r"^(?P<event>.*?) @ \+(?P<minutes>\d+)m$")


@dataclass(frozen=True)
class ParsedEvent:
    """A predicted event as text fields."""

    action: str
    target: str
    details: str = ""
    minutes: int | None = None

    @property
    def key(self) -> str:
        return f"{self.action}{FIELD_SEPARATOR}{self.target}"


def parse_answer(text: str, actions: Sequence[str]) -> ParsedEvent | None:
    """The event in a model's answer (first line), or None when it is not a valid event."""
    line = (text.strip().splitlines() or [""])[0].strip()
    minutes = None
    delay = _DELAY.match(line)
    if delay:
        line, minutes = delay["event"], int(delay["minutes"])
    parts = [p.strip() for p in line.split(FIELD_SEPARATOR.strip(), 2)]
    if len(parts) < 2 or parts[0] not in actions or not parts[1]:
        return None
    return ParsedEvent(parts[0], parts[1], parts[2] if len(parts) == 3 else "", minutes)


def status_of(predicted: ParsedEvent | None, reference: ParsedEvent) -> str:
    """exact / partial / wrong / invalid for one prediction."""
    if predicted is None:
        return "invalid"
    if predicted.key != reference.key:
        return "wrong"
    return "exact" if predicted.details == reference.details else "partial"


def score_predictions(
    references: Sequence[str],
    answers: Sequence[str],
    actions: Sequence[str],
    rankings: Sequence[Sequence[str]] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics over all rows and one record per row (status, parsed fields, ranks).

    `rankings` are candidate keys (`action | target`), best first, one list per row.
    """
    rows = []
    for i, (reference_text, answer) in enumerate(zip(references, answers, strict=True)):
        reference = parse_answer(reference_text, actions) or ParsedEvent("", reference_text)
        predicted = parse_answer(answer, actions)
        ranking = list(rankings[i]) if rankings is not None else []
        rows.append(_row(reference, predicted, answer, ranking))
    return _metrics(rows, rankings is not None), rows


def _row(
    reference: ParsedEvent, predicted: ParsedEvent | None, answer: str, ranking: list[str]
) -> dict[str, Any]:
    rank = ranking.index(reference.key) + 1 if reference.key in ranking else None
    minutes_error = None
    if predicted and predicted.minutes is not None and reference.minutes is not None:
        minutes_error = abs(predicted.minutes - reference.minutes)
    return {
        "reference": reference.key + (f" | {reference.details}" if reference.details else ""),
        "prediction": answer.strip(),
        "status": status_of(predicted, reference),
        "action_correct": bool(predicted and predicted.action == reference.action),
        "target_correct": bool(predicted and predicted.key == reference.key),
        "target_rank": rank,
        "top_candidates": " ; ".join(ranking[:5]),
        "minutes_error": minutes_error,
    }


def _metrics(rows: list[dict[str, Any]], ranked: bool) -> dict[str, Any]:
    total = max(1, len(rows))
    counts = {
        s: sum(r["status"] == s for r in rows) for s in ("exact", "partial", "wrong", "invalid")
    }
    metrics: dict[str, Any] = {"rows": len(rows), "status": counts}
    for status, count in counts.items():
        metrics[status] = round(count / total, 4)
    metrics["overall"] = round(metrics["exact"] + 0.5 * metrics["partial"], 4)
    metrics["action_accuracy"] = round(sum(r["action_correct"] for r in rows) / total, 4)
    metrics["target_accuracy"] = round(sum(r["target_correct"] for r in rows) / total, 4)
    if ranked:
        for k in TOP_K:
            hits = sum(r["target_rank"] is not None and r["target_rank"] <= k for r in rows)
            metrics[f"top{k}_target"] = round(hits / total, 4)
    errors = [r["minutes_error"] for r in rows if r["minutes_error"] is not None]
    if errors:
        metrics["time_mae_minutes"] = round(sum(errors) / len(errors), 2)
    return metrics
