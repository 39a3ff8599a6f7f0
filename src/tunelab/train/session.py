"""A training session: everything the loop touches, built once per run: the step plan, the
accelerator, the optimizer and its schedule, the metrics log."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console

from tunelab.config import RunConfig, TrainConfig
from tunelab.data.batching import Batch
from tunelab.precision import autocast_mode
from tunelab.run_dir import RunDir
from tunelab.tasks.base import Batcher, Scorer
from tunelab.train.progress import TrainDisplay

SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


@dataclass
class Plan:
    """How many optimizer steps a run takes, from the data size and the batch settings."""

    micro_per_epoch: int
    grad_accum: int
    total_steps: int

    def epoch_at(self, step: int) -> float:
        """Epochs completed after ``step`` optimizer steps."""
        return round(step * self.grad_accum / self.micro_per_epoch, 4)


def plan_steps(num_samples: int, cfg: TrainConfig) -> Plan:
    """Steps = max_steps, or epochs x micro-batches per epoch / accumulation, rounded up."""
    micro_per_epoch = math.ceil(num_samples / cfg.batch_size)
    total = cfg.max_steps or max(1, math.ceil(micro_per_epoch * cfg.epochs / cfg.grad_accum))
    return Plan(micro_per_epoch, cfg.grad_accum, total)


@dataclass
class Session:
    """Everything the loop touches, built once per run."""

    config: RunConfig
    run: RunDir
    accelerator: Any
    loss_module: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    plan: Plan
    train_samples: Sequence[Any]
    val_samples: Sequence[Any]
    batcher: Batcher
    display: TrainDisplay
    writer: Any = None
    rng_at_step_start: dict[str, Any] = field(default_factory=dict)
    scorer: Scorer | None = None
    best: dict[str, Any] = field(default_factory=dict)  # step, score, stale (evals since)
    last_scored: tuple[int, Any] | None = None  # (step, its EvalResult)
    tokenizer: Any = None  # saved beside every adapter
    resumed_from: int | None = None  # the checkpoint's step, when resumed
    saved_step: int | None = None  # the step of the newest checkpoint written or loaded
    nonfinite_steps: int = 0  # steps in a row with a non-finite loss or gradient
    zero_gradient_steps: int = 0  # steps in a row whose gradient was exactly zero

    def scored_at(self, step: int) -> Any:
        """The scorer's EvalResult of ``step``, if that was the last step scored; else None."""
        if self.last_scored is None or self.last_scored[0] != step:
            return None
        return self.last_scored[1]

    @property
    def model(self) -> Any:
        """The PEFT model, unwrapped from any data-parallel wrapper."""
        return self.accelerator.unwrap_model(self.loss_module).model

    def forward(self, samples: Sequence[Any]) -> list[Batch]:
        """The forward passes that carry ``samples`` (the task decides how)."""
        return self.batcher(samples)


def build_accelerator(precision: str) -> Any:
    """An Accelerator for the run's resolved precision (CPU when there is no GPU)."""
    from accelerate import Accelerator

    mode = autocast_mode(precision)
    return Accelerator(mixed_precision=mode, cpu=not torch.cuda.is_available())


def build_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer that ``train.optimizer`` names, over the trainable parameters."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.learning_rate, momentum=0.9, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def build_session(
    config: RunConfig,
    run: RunDir,
    accelerator: Any,
    loss_module: torch.nn.Module,
    samples: tuple[Sequence[Any], Sequence[Any]],
    batcher: Batcher,
    console: Console,
) -> Session:
    """Optimizer, schedule and progress display around a task's loss module.

    ``loss_module.model`` is the model with its adapter; ``loss_module(batch)`` returns the
    summed loss and the number of its terms; ``batcher`` turns samples into batches.
    """
    from transformers import get_scheduler

    cfg = config.train
    plan = plan_steps(len(samples[0]), cfg)
    trainable = [p for p in loss_module.parameters() if p.requires_grad]
    optimizer = build_optimizer(trainable, cfg)
    scheduler = get_scheduler(
        SCHEDULERS[cfg.scheduler],
        optimizer,
        num_warmup_steps=math.ceil(cfg.warmup_ratio * plan.total_steps),
        num_training_steps=plan.total_steps,
    )
    if cfg.compile:
        loss_module = torch.compile(loss_module, dynamic=True)
    loss_module, optimizer = accelerator.prepare(loss_module, optimizer)
    display = TrainDisplay(console, plan.total_steps, enabled=accelerator.is_main_process)
    train_samples, val_samples = samples
    return Session(
        config,
        run,
        accelerator,
        loss_module,
        optimizer,
        scheduler,
        plan,
        train_samples,
        val_samples,
        batcher,
        display,
    )


def log_metrics(session: Session, record: dict[str, Any]) -> None:
    """One line in metrics.jsonl and the same scalars in TensorBoard."""
    session.run.append_metrics(record)
    if session.writer is None:
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run drops the events it logged after its checkpoint
        purge = None if session.resumed_from is None else session.resumed_from + 1
        session.writer = SummaryWriter(str(session.run.tensorboard), purge_step=purge)
    for key, value in record.items():
        if key not in ("step", "epoch") and isinstance(value, int | float):
            session.writer.add_scalar(
                f"{'eval' if key.startswith('eval') else 'train'}/{key}", value, record["step"]
            )
    session.writer.flush()
