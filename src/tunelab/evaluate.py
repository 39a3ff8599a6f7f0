"""Generate answers for held-out examples and score them against the references."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.config import EvalConfig
from tunelab.data.encode import encode_prompt
from tunelab.data.formats import Example
from tunelab.generate import generate_texts
from tunelab.metrics import ROW_METRICS
from tunelab.run_dir import write_json


@dataclass
class GenerationResult:
    """The score of one model on one set of rows, and every row's prediction."""

    name: str
    metric: str
    score: float
    rows: list[dict[str, Any]]

    def write(self, folder: Path) -> None:
        """metrics.json and predictions.jsonl in ``folder``."""
        import json

        write_json(
            folder / "metrics.json",
            {"metric": self.metric, "score": self.score, "rows": len(self.rows)},
        )
        with (folder / "predictions.jsonl").open("w", encoding="utf-8") as handle:
            for row in self.rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def evaluate_generation(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    config: EvalConfig,
    name: str,
    on_batch: Callable[[int], None] | None = None,
) -> GenerationResult:
    """Score greedy answers to the first ``config.max_rows`` examples with ``config.metric``."""
    chosen = list(examples[: config.max_rows])
    prompts = [encode_prompt(tokenizer, example.prompt) for example in chosen]
    was_training = model.training
    model.eval()
    outputs = generate_texts(
        model, tokenizer, prompts, config.max_new_tokens, config.batch_size, on_batch
    )
    model.train(was_training)
    matches = ROW_METRICS[config.metric]
    rows = [
        {
            "source": str(example.source),
            "input": example.prompt[-1]["content"],
            "reference": example.answer,
            "prediction": output,
            "correct": matches(output, example.answer),
        }
        for example, output in zip(chosen, outputs, strict=True)
    ]
    score = sum(row["correct"] for row in rows) / len(rows) if rows else 0.0
    return GenerationResult(name, config.metric, round(score, 4), rows)
