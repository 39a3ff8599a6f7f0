"""The one workload every contender trains on: same model, rows, order, LoRA and steps."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from tunelab.config import ModelConfig
from tunelab.data.corpora import sentiment_rows
from tunelab.models.resolve import resolve_model

BENCH_DIR = Path(__file__).parent
WORK_DIR = BENCH_DIR / "work"
SHORT_REVIEW = (
    48  # characters: samples of ~110 tokens, like the short chat data of the seed scripts
)


@dataclass
class Workload:
    """What is held equal across contenders."""

    model_dir: str
    data_file: str
    steps: int
    batch_size: int = 2
    grad_accum: int = 4
    max_length: int = 512
    learning_rate: float = 2e-4
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    seed: int = 42

    @property
    def samples(self) -> int:
        """Rows consumed: every contender sees exactly these, in file order, once."""
        return self.steps * self.batch_size * self.grad_accum

    def to_json(self) -> str:
        """For the command line of a contender's subprocess."""
        return json.dumps(asdict(self))


def build_workload(steps: int) -> Workload:
    """Write the data file (seeded) and resolve the embedded model."""
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    model_dir = resolve_model(ModelConfig())
    probe = Workload(str(model_dir), "", steps)
    rows, _, _ = sentiment_rows(probe.samples + probe.samples % 2, 0, seed=7)
    data_file = WORK_DIR / f"sentiment-{probe.samples}.jsonl"
    with data_file.open("w", encoding="utf-8") as handle:
        for row in rows[: probe.samples]:
            short = {**row, "input": row["input"][:SHORT_REVIEW]}
            handle.write(json.dumps(short, ensure_ascii=False) + "\n")
    return Workload(str(model_dir), str(data_file), steps)


def load_workload(text: str) -> Workload:
    """The inverse of ``Workload.to_json``."""
    return Workload(**json.loads(text))
