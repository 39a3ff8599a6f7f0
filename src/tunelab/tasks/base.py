"""What a task kind provides, as one protocol.

``train.run.build_run`` composes a training run from a task, and ``use/`` opens and scores
finished runs through it: a new kind of task is one module and one entry in
``tasks.TASKS``, and no other code asks which kind it has.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from torch import nn

from tunelab.config import RunConfig
from tunelab.data.batching import Batch
from tunelab.data.readers import RawRow, Reject

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from tunelab.baseline import BaselineResult
    from tunelab.scoring import EvalResult

Batcher = Callable[[Sequence[Any]], list[Batch]]  # samples -> forward passes
# (model, name) -> an EvalResult: its score is the eval metric, its loss the eval loss where
# the same passes give it (a class head's), else None
Scorer = Callable[[Any, str], "EvalResult"]
Autocast = Callable[[], AbstractContextManager[Any]]


class TaskData(Protocol):
    """A run's data after preparation: both splits (``.samples`` each), the report, the
    label set (empty where answers are free text), and every rejected row."""

    train: Any
    val: Any
    report: dict[str, Any]
    labels: list[str]

    @property
    def rejects(self) -> list[Reject]:
        """Every rejected row of both splits."""
        ...


class RunModel(Protocol):
    """A finished run's model as ``use.open_run`` opens it (the parts tasks use)."""

    model: Any
    tokenizer: Any
    config: RunConfig
    labels: list[str]

    def generate_ids(
        self,
        prompts: Sequence[list[int]],
        formats: Sequence[Any] | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[str]:
        """Completions of tokenised prompts, decoded as the run's eval settings say."""
        ...

    def classify(self, texts: Sequence[str]) -> list[dict[str, float]]:
        """Per text, the probability of each label (a class-head run)."""
        ...


class EvalRows(Protocol):
    """Rows to score a run on, as a task reads them, with how many it could not use."""

    skipped: int


class Task(Protocol):
    """One kind of fine-tuning: its data, model, batches, loss, scoring and baseline."""

    adapter_type: str  # PEFT's task type for the adapter
    trained_modules: list[str] | None  # modules trained in full beside the adapter
    has_base_model: bool  # whether the base model alone can answer (a new class head cannot)

    def prepare(self, config: RunConfig, tokenizer: Any) -> TaskData:
        """Read, validate, split and encode the run's data."""
        ...

    def load_base(
        self, model_dir: Path, config: RunConfig, labels: list[str], tokenizer: Any, dtype: Any
    ) -> PreTrainedModel:
        """The base model the adapter goes on."""
        ...

    def batcher(self, config: RunConfig, tokenizer: Any, segmented: bool) -> Batcher:
        """Samples -> forward passes (``segmented``: one unpadded row each, where the model's
        attention takes sample boundaries)."""
        ...

    def loss(self, model: nn.Module, config: RunConfig, data: TaskData) -> nn.Module:
        """A module whose forward(batch) gives (summed loss, number of terms)."""
        ...

    def scorer(
        self,
        config: RunConfig,
        tokenizer: Any,
        data: TaskData,
        batcher: Batcher,
        autocast: Autocast,
    ) -> Scorer | None:
        """How a model is scored on the val split during and after training, if at all."""
        ...

    def score_base(
        self, model: Any, tokenizer: Any, config: RunConfig, data: TaskData
    ) -> EvalResult | None:
        """The base model on the val split before training (``eval.compare_base``)."""
        ...

    def baseline(self, config: RunConfig, data: TaskData) -> Callable[[], BaselineResult] | None:
        """The classic model trained and scored on the run's own rows, if the task has one."""
        ...

    def eval_rows(
        self, config: RunConfig, tokenizer: Any, labels: list[str], path: Path | None
    ) -> EvalRows:
        """Rows to score a finished run on: ``path``, else the run's val split."""
        ...

    def score(self, run: RunModel, rows: EvalRows, name: str) -> EvalResult:
        """A finished run's model on ``rows``."""
        ...

    def classic(self, config: RunConfig, path: Path | None = None) -> BaselineResult | None:
        """The classic baseline on the config's rows (scored on ``path`` if given)."""
        ...

    def predict(
        self, run: RunModel, rows: Sequence[RawRow], on_batch: Callable[[int], None] | None = None
    ) -> list[dict[str, Any]]:
        """Each row's columns plus its prediction (or an `error` naming what is missing);
        ``on_batch(n)`` after each batch of n rows."""
        ...
