"""Baselines beside every next-event result, fitted on the same training samples.

- most-frequent: the commonest next event in training, whatever came before;
- Markov: the previous event (action | target) -> the commonest next event after it;
- n-gram with back-off: the last n-1 events, backing off to shorter contexts (stupid
  back-off, factor 0.4) and finally to the overall frequencies.
Each ranks whole events, so the same scoring (exact / partial, top-k targets) applies.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from tunelab.behavior.events import FIELD_SEPARATOR

BACKOFF = 0.4


def event_key(answer: str) -> str:
    """`action | target` of an answer text (the delay suffix and details dropped)."""
    return FIELD_SEPARATOR.join(answer.split(" @ +")[0].split(FIELD_SEPARATOR)[:2])


def strip_delay(answer: str) -> str:
    """An answer without its ` @ +Nm` suffix."""
    return answer.split(" @ +")[0]


class NGramPredictor:
    """Ranks next events by the counts that followed the last `order - 1` events."""

    def __init__(self, name: str, order: int) -> None:
        self.name = name
        self.order = order
        self.counts: dict[tuple[str, ...], Counter[str]] = defaultdict(Counter)

    def fit(self, rows: Sequence[dict[str, Any]]) -> NGramPredictor:
        """Count, for every context length up to order - 1, what came next."""
        for row in rows:
            context = tuple(event_key(h) for h in row["recent"])
            outcome = strip_delay(row["output"])
            for length in range(0, self.order):
                if length <= len(context):
                    self.counts[context[len(context) - length :]][outcome] += 1
        return self

    def rank(self, history: Sequence[str], limit: int = 20) -> list[tuple[str, float]]:
        """Whole events, best first, with back-off scores."""
        context = tuple(event_key(h) for h in history)
        scores: dict[str, float] = {}
        weight = 1.0
        for length in range(min(self.order - 1, len(context)), -1, -1):
            seen = self.counts.get(context[len(context) - length :])
            if not seen:
                continue
            total = sum(seen.values())
            for outcome, count in seen.most_common(limit):
                scores.setdefault(outcome, weight * count / total)
            weight *= BACKOFF
        return sorted(scores.items(), key=lambda item: -item[1])[:limit]


def baselines(train_rows: Sequence[dict[str, Any]], ngram_order: int = 3) -> list[NGramPredictor]:
    """The three baselines, fitted."""
    return [
        NGramPredictor("most-frequent", 1).fit(train_rows),
        NGramPredictor("Markov", 2).fit(train_rows),
        NGramPredictor(f"{ngram_order}-gram back-off", ngram_order).fit(train_rows),
    ]


def ranked_keys(ranked: Sequence[tuple[str, float]]) -> list[str]:
    """Candidate keys best first, each once (scores of whole events summed per key)."""
    totals: dict[str, float] = defaultdict(float)
    for answer, score in ranked:
        totals[event_key(answer)] += score
    return sorted(totals, key=lambda key: -totals[key])


def ranked_apps(keys: Sequence[str], apps: dict[str, str]) -> list[str]:
    """The apps of ranked keys, best first, each once; keys without an app are skipped."""
    return list(dict.fromkeys(apps[k] for k in keys if k in apps))
