"""The layout of a run directory: everything a run writes, and everything later commands read."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

CHECKPOINT_PREFIX = "step-"


@dataclass(frozen=True)
class RunDir:
    """Paths inside ``runs/<name>/``."""

    root: Path

    @property
    def config(self) -> Path:
        """The resolved config: everything downstream needs only this directory."""
        return self.root / "config.yaml"

    @property
    def data_report(self) -> Path:
        """Counts of kept / rejected / truncated rows and token lengths."""
        return self.root / "data_report.json"

    @property
    def rejects(self) -> Path:
        """One line per rejected row: file, line or row, field, reason."""
        return self.root / "rejects.jsonl"

    @property
    def metrics(self) -> Path:
        """One line per logged step and per evaluation."""
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        """TensorBoard event files."""
        return self.root / "tensorboard"

    @property
    def checkpoints(self) -> Path:
        """``step-NNNNNN`` directories, written atomically."""
        return self.root / "checkpoints"

    @property
    def adapter(self) -> Path:
        """The final adapter with the tokenizer and chat template beside it."""
        return self.root / "adapter"

    @property
    def labels(self) -> Path:
        """task classify: the label set in id order, used by eval, predict and serve."""
        return self.root / "labels.json"

    @property
    def best(self) -> Path:
        """The adapter that scored best during training (with `eval.every`)."""
        return self.root / "best"

    @property
    def record(self) -> Path:
        """What the run resolved once and every later command uses (its precision)."""
        return self.root / "run.json"

    @property
    def results(self) -> Path:
        """What a finished run achieved: steps, losses, scores."""
        return self.root / "results.json"

    def checkpoint(self, step: int) -> Path:
        """The checkpoint taken after ``step`` optimizer steps."""
        return self.checkpoints / f"{CHECKPOINT_PREFIX}{step:06d}"

    def list_checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.checkpoints.exists():
            return []
        found = self.checkpoints.iterdir()
        return sorted(p for p in found if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))

    def adapter_of(self, checkpoint: str | None = None) -> Path:
        """The adapter of ``checkpoint``: `final` (None), `best`, or the step number N."""
        if checkpoint in (None, "final"):
            folder = self.adapter
        elif checkpoint == "best":
            folder = self.best
        elif str(checkpoint).isdigit():
            folder = self.checkpoint(int(checkpoint)) / "adapter"
        else:
            raise TunelabError(f"--checkpoint {checkpoint}: expected final, best or a step number")
        if not (folder / "adapter_config.json").is_file():
            raise TunelabError(
                f"{folder}: no adapter there; has the run finished (or saved that step)?"
            )
        return folder

    def read_labels(self) -> list[str]:
        """task classify: the label set in id order."""
        return json.loads(self.labels.read_text(encoding="utf-8"))["labels"]

    def write_labels(self, labels: list[str]) -> None:
        """task classify: record the label set in id order."""
        write_json(self.labels, {"labels": labels})

    def read_record(self) -> dict[str, Any]:
        """run.json, or an empty record for a run written before it existed."""
        if not self.record.is_file():
            return {}
        return json.loads(self.record.read_text(encoding="utf-8"))

    def eval_dir(self, name: str) -> Path:
        """Where one evaluation's metrics and predictions go."""
        return self.root / "eval" / name

    def start(self, resume: bool, overwrite: bool) -> None:
        """Create the directory; refuse to mix a new run into an old one by accident."""
        if self.root.exists() and not resume:
            if overwrite:
                shutil.rmtree(self.root)
            elif self.checkpoints.exists() or self.adapter.exists():
                raise TunelabError(
                    f"{self.root} already holds a run; add --resume to continue it, "
                    "--overwrite to start again, or --set name=NEW for a new run"
                )
        if resume and not self.checkpoints.exists():
            raise TunelabError(f"{self.root}: nothing to resume (no checkpoints/ directory)")
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Add one line to metrics.jsonl."""
        with self.metrics.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every line of metrics.jsonl."""
        if not self.metrics.exists():
            return []
        lines = self.metrics.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]


def write_json(path: Path, value: Any) -> None:
    """Pretty JSON, UTF-8, Chinese left readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """A staging folder that takes ``target``'s place only when the block completes.

    A crash leaves the old ``target`` (or none) and a hidden staging folder, never a
    half-written ``target``.
    """
    staging = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    retired = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, retired)
    os.replace(staging, target)
    shutil.rmtree(retired, ignore_errors=True)
