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
from tunelab.train.budget import BudgetPlan
from tunelab.train.progress import TrainDisplay

UNPLANNED = 10**9  # a budgeted run's total until its first steps are timed
MIN_PEAK_SCALE = 0.2  # train.learning_rate_steps lowers the peak to a fifth at most


@dataclass
class Plan:
    """How many optimizer steps a run takes, from the data size and the batch settings (or
    from a time budget, once the first steps are timed); the schedule reads it every step."""

    micro_per_epoch: int
    grad_accum: int
    total_steps: int
    warmup_ratio: float = 0.0
    full_rate_steps: int | None = None  # train.learning_rate_steps

    @property
    def peak_scale(self) -> float:
        """The share of the configured peak learning rate this plan's length allows."""
        if self.full_rate_steps is None or self.total_steps <= self.full_rate_steps:
            return 1.0
        return max(MIN_PEAK_SCALE, self.full_rate_steps / self.total_steps)

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one pass over the training set."""
        return math.ceil(self.micro_per_epoch / self.grad_accum)

    def epoch_at(self, step: int) -> float:
        """Epochs completed after ``step`` optimizer steps."""
        return round(step * self.grad_accum / self.micro_per_epoch, 4)

    @property
    def warmup_steps(self) -> int:
        """Steps of linear warmup at the start of the plan."""
        return math.ceil(self.warmup_ratio * self.total_steps)


def plan_steps(num_samples: int, cfg: TrainConfig) -> Plan:
    """Steps = max_steps, or epochs x micro-batches per epoch / accumulation, rounded up; a
    budgeted run starts unplanned (``train.budget``)."""
    micro_per_epoch = math.ceil(num_samples / cfg.batch_size)
    if cfg.budget is not None:
        total = UNPLANNED
    else:
        total = cfg.max_steps or max(1, math.ceil(micro_per_epoch * cfg.epochs / cfg.grad_accum))
    return Plan(micro_per_epoch, cfg.grad_accum, total, cfg.warmup_ratio, cfg.learning_rate_steps)


def schedule_factor(kind: str, step: int, plan: Plan) -> float:
    """The learning rate's share of the configured peak at ``step``: linear warmup, then
    the curve of ``kind`` over the rest of the plan (the same formulas as transformers'
    schedulers), times the share the plan's length allows (``Plan.peak_scale``)."""
    return plan.peak_scale * _curve(kind, step, plan.warmup_steps, plan.total_steps)


def _curve(kind: str, step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return float(step) / float(max(1, warmup))
    if kind == "constant":
        return 1.0
    progress = float(step - warmup) / float(max(1, total - warmup))
    if kind == "linear":
        return max(0.0, float(total - step) / float(max(1, total - warmup)))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))


def build_scheduler(optimizer: torch.optim.Optimizer, kind: str, plan: Plan) -> Any:
    """A learning-rate schedule that follows ``plan`` even when it is planned again."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: schedule_factor(kind, step, plan)
    )


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
    budget: BudgetPlan | None = None  # train.budget's plan and spending
    timing: dict[str, float] = field(default_factory=dict)  # load, train, final-eval seconds

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
    from accelerate.state import AcceleratorState

    mode = autocast_mode(precision)
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != mode:
        # accelerate keeps one precision per process and refuses another; a process that trains
        # several runs (the studio, the Python API, a test session) starts each afresh. The
        # distributed state (PartialState) is kept.
        AcceleratorState._reset_state()
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
    cfg = config.train
    plan = plan_steps(len(samples[0]), cfg)
    trainable = [p for p in loss_module.parameters() if p.requires_grad]
    optimizer = build_optimizer(trainable, cfg)
    scheduler = build_scheduler(optimizer, cfg.scheduler, plan)
    if cfg.compile:
        loss_module = torch.compile(loss_module, dynamic=True)
    loss_module, optimizer = accelerator.prepare(loss_module, optimizer)
    display = TrainDisplay(console, plan.total_steps, enabled=accelerator.is_main_process)
    train_samples, val_samples = samples
    session = Session(
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
    if cfg.budget is not None:
        session.budget = BudgetPlan(cfg.budget_seconds)
    return session


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
