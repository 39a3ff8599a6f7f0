"""Training: accelerate, packed micro-batches, token-normalised accumulation, exact resume."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from tunelab.checkpoint import (
    TrainingState,
    capture_rng,
    list_checkpoints,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from tunelab.config import RunConfig, TrainConfig, dump_config
from tunelab.data.batching import forward_batches, micro_batches
from tunelab.data.encode import Encoded
from tunelab.data.prepare import write_rejects
from tunelab.errors import Interrupted, TunelabError
from tunelab.evaluate import evaluate_generation
from tunelab.models import attach_lora, load_causal_lm, load_tokenizer, resolve_model
from tunelab.progress import TrainDisplay
from tunelab.report import print_data_report
from tunelab.run_dir import RunDir, write_json
from tunelab.tasks.sft import CausalLMLoss, EncodedSet, PreparedData, prepare_sft

PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


@dataclass
class TrainResult:
    """What a finished run achieved, as printed at the end and saved in results.json."""

    run_dir: str
    steps: int
    train_loss: float | None
    eval_loss: float | None
    tokens_per_s: float
    metric: str | None = None
    scores: dict[str, float] = field(default_factory=dict)


def train(
    config: RunConfig,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
) -> TrainResult:
    """Fine-tune ``config.model`` on ``config.data`` with LoRA; everything lands in the run dir.

    Reads as the pipeline: run directory -> model files -> data -> model with adapter ->
    (base score) -> loop -> adapter, eval loss and generation scores.
    """
    from accelerate.utils import set_seed

    console = console or Console()
    run = RunDir(config.run_dir)
    run.start(resume, overwrite)
    accelerator = build_accelerator(config.train)
    set_seed(config.train.seed)
    model_dir = resolve_model(config.model)
    tokenizer = load_tokenizer(model_dir, config.model.trust_remote_code)
    data = prepare_sft(config.data, tokenizer)
    if accelerator.is_main_process:
        write_run_inputs(config, run, data, console)
    model = build_model(model_dir, config, accelerator)
    session = build_session(
        config, run, accelerator, model, (data.train, data.val), tokenizer.pad_token_id, console
    )
    base_scores = score_base(session, tokenizer, data) if config.eval.compare_base else {}
    start = restore_latest(session) if resume else 0
    last = run_loop(session, start)
    return finish(session, tokenizer, data, last, base_scores)


def build_model(model_dir: Path, config: RunConfig, accelerator: Any) -> Any:
    """The base model with a fresh LoRA adapter (frozen base, trainable adapter)."""
    dtype = torch.float16 if accelerator.mixed_precision == "fp16" else torch.float32
    if accelerator.mixed_precision == "bf16" and torch.cuda.is_available():
        dtype = torch.bfloat16
    model = load_causal_lm(model_dir, config.model, dtype)
    if config.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return attach_lora(model, config.lora)


def write_run_inputs(config: RunConfig, run: RunDir, data: PreparedData, console: Console) -> None:
    """config.yaml, data_report.json and rejects.jsonl, and the data report on screen."""
    write_resolved_config(config, run)
    write_json(run.data_report, data.report)
    write_rejects(run.rejects, data.rejects)
    print_data_report(console, data.report, data.rejects, run.rejects)


def score_base(session: Session, tokenizer: Any, data: PreparedData) -> dict[str, float]:
    """The base model's score on the eval rows (kept from the first attempt on resume)."""
    folder = session.run.eval_dir("base")
    if (folder / "metrics.json").exists():
        return {"base": json.loads((folder / "metrics.json").read_text())["score"]}
    if not (session.config.eval.generate and session.accelerator.is_main_process):
        return {}
    with session.model.disable_adapter():
        result = evaluate_generation(
            session.model, tokenizer, data.val.examples, session.config.eval, "base"
        )
    result.write(folder)
    return {"base": result.score}


def finish(
    session: Session, tokenizer: Any, data: PreparedData, steps: int, scores: dict[str, float]
) -> TrainResult:
    """Save the adapter (with tokenizer and chat template), then measure the result."""
    run, accelerator = session.run, session.accelerator
    result = TrainResult(
        str(run.root), steps, _last_train_loss(run), None, session.display.tokens_per_second
    )
    if not accelerator.is_main_process:
        return result
    session.model.save_pretrained(run.adapter)
    tokenizer.save_pretrained(run.adapter)
    result.eval_loss = eval_loss(session) if session.val_samples else None
    log_metrics(session, {"step": steps, "eval_loss": result.eval_loss})
    if session.config.eval.generate and data.val.examples:
        tuned = evaluate_generation(
            session.model, tokenizer, data.val.examples, session.config.eval, "final"
        )
        tuned.write(run.eval_dir("final"))
        result.metric, result.scores = tuned.metric, {**scores, "tuned": tuned.score}
    write_json(run.root / "results.json", asdict(result))
    return result


def _last_train_loss(run: RunDir) -> float | None:
    losses = [r["loss"] for r in run.read_metrics() if "loss" in r]
    return losses[-1] if losses else None


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
    train_samples: Sequence[Encoded]
    val_samples: Sequence[Encoded]
    pad_id: int
    display: TrainDisplay
    writer: Any = None
    rng_at_step_start: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> Any:
        """The PEFT model, unwrapped from any data-parallel wrapper."""
        return self.accelerator.unwrap_model(self.loss_module).model

    def forward(self, samples: Sequence[Encoded]) -> list[Any]:
        """The forward passes that carry ``samples``: packed or padded, within the budget."""
        data = self.config.data
        pack_length = data.max_length if data.packing else None
        return forward_batches(samples, self.pad_id, pack_length, self.config.train.forward_tokens)


def resolve_precision(requested: str) -> str:
    """`auto`: bf16 on a GPU that supports it, fp32 on CPU."""
    cuda = torch.cuda.is_available()
    if requested == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if requested == "fp16" and not cuda:
        raise TunelabError("train.precision: fp16 needs a GPU; use bf16 or fp32 on CPU")
    return requested


def build_accelerator(cfg: TrainConfig) -> Any:
    """An Accelerator for the chosen precision (CPU when there is no GPU)."""
    from accelerate import Accelerator

    precision = resolve_precision(cfg.precision)
    return Accelerator(mixed_precision=PRECISIONS[precision], cpu=not torch.cuda.is_available())


def build_session(
    config: RunConfig,
    run: RunDir,
    accelerator: Any,
    model: Any,
    data: tuple[EncodedSet, EncodedSet],
    pad_id: int,
    console: Console,
) -> Session:
    """Optimizer, schedule and progress display around a model that has its adapter."""
    from transformers import get_scheduler

    cfg = config.train
    plan = plan_steps(len(data[0].samples), cfg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(
        SCHEDULERS[cfg.scheduler],
        optimizer,
        num_warmup_steps=math.ceil(cfg.warmup_ratio * plan.total_steps),
        num_training_steps=plan.total_steps,
    )
    loss_module, optimizer = accelerator.prepare(CausalLMLoss(model), optimizer)
    display = TrainDisplay(console, plan.total_steps, enabled=accelerator.is_main_process)
    return Session(
        config,
        run,
        accelerator,
        loss_module,
        optimizer,
        scheduler,
        plan,
        data[0].samples,
        data[1].samples,
        pad_id,
        display,
    )


def run_loop(session: Session, start_step: int) -> int:
    """Train from ``start_step`` to the planned end; returns the last completed step.

    Ctrl-C saves a checkpoint of the last completed step and raises ``Interrupted``.
    """
    plan = session.plan
    stream = micro_batch_stream(session, start_step * plan.grad_accum)
    step = start_step
    session.display.start(step)
    try:
        while step < plan.total_steps:
            session.rng_at_step_start = capture_rng()
            record = train_step(session, [next(stream) for _ in range(plan.grad_accum)])
            step += 1
            after_step(session, step, record)
    except KeyboardInterrupt:
        path = save(session, step, session.rng_at_step_start or capture_rng())
        raise Interrupted(
            f"interrupted after step {step}; checkpoint saved in {path}. "
            "Continue with the same command and --resume."
        ) from None
    finally:
        session.display.stop()
    return step


def train_step(session: Session, micro: list[list[Encoded]]) -> dict[str, float]:
    """One optimizer step over the samples of ``grad_accum`` micro-batches.

    The samples go through the model in as few forward passes as ``train.forward_tokens``
    allows. Each pass's summed token loss is divided by the target tokens of the whole
    step (over all processes), so the gradient is the mean over every target token of the
    step, however the samples fall into passes.
    """
    accelerator = session.accelerator
    started = time.perf_counter()
    samples = [sample for batch in micro for sample in batch]
    batches = [batch.to(accelerator.device) for batch in session.forward(samples)]
    local_targets = torch.tensor(sum(b.target_tokens for b in batches), device=accelerator.device)
    step_targets = accelerator.reduce(local_targets, reduction="sum").item()
    loss_sum = 0.0
    for index, batch in enumerate(batches):
        last = index == len(batches) - 1
        with accelerator.no_sync(session.loss_module) if not last else nullcontext():
            summed, _ = session.loss_module(batch)
            accelerator.backward(summed * accelerator.num_processes / max(step_targets, 1))
        loss_sum += summed.item()
    grad_norm = _clip(session)
    session.optimizer.step()
    session.scheduler.step()
    session.optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - started
    real = sum(b.real_tokens for b in batches)
    return {
        "loss": loss_sum / max(local_targets.item(), 1),
        "grad_norm": grad_norm,
        "lr": session.scheduler.get_last_lr()[0],
        "tokens_per_s": real / seconds,
        "padded_tokens_per_s": sum(b.padded_tokens for b in batches) / seconds,
        "real_tokens": real,
        "padded_tokens": sum(b.padded_tokens for b in batches),
        "seconds": seconds,
    }


def after_step(session: Session, step: int, record: dict[str, float]) -> None:
    """Log, evaluate and checkpoint as the config asks."""
    cfg = session.config.train
    session.display.update(step, record)
    if not session.accelerator.is_main_process:
        return
    if step % cfg.log_every == 0 or step == session.plan.total_steps:
        log_metrics(
            session, {"step": step, "epoch": session.plan.epoch_at(step), **_rounded(record)}
        )
    if cfg.eval_every and step % cfg.eval_every == 0 and step < session.plan.total_steps:
        log_metrics(session, {"step": step, "eval_loss": eval_loss(session)})
    if cfg.save_every and step % cfg.save_every == 0:
        save(session, step, capture_rng())


def eval_loss(session: Session) -> float:
    """Mean token loss on the validation samples (dropout off, no gradients)."""
    module = session.accelerator.unwrap_model(session.loss_module)
    module.eval()
    total, count = 0.0, 0
    with torch.no_grad(), session.accelerator.autocast():
        for batch in session.forward(session.val_samples):
            summed, n = module(batch.to(session.accelerator.device))
            total, count = total + summed.item(), count + int(n.item())
    module.train()
    return round(total / max(count, 1), 6)


def save(session: Session, step: int, rng: dict[str, Any]) -> Path:
    """A checkpoint of the state after ``step`` completed steps (main process only)."""
    state = TrainingState(step, session.scheduler.state_dict(), rng)
    path = session.run.checkpoints / f"step-{step:06d}"
    if session.accelerator.is_main_process:
        path = save_checkpoint(
            session.run.checkpoints,
            session.model,
            session.optimizer,
            state,
            session.config.train.keep_checkpoints,
        )
    session.accelerator.wait_for_everyone()
    return path


def restore_latest(session: Session) -> int:
    """Load the newest checkpoint into the session; returns the step it was taken at."""
    found = list_checkpoints(session.run.checkpoints)
    if not found:
        raise TunelabError(f"{session.run.checkpoints}: no checkpoint to resume from")
    state = load_checkpoint(found[-1], session.model, session.optimizer)
    session.scheduler.load_state_dict(state.scheduler)
    restore_rng(state.rng)
    return state.step


def micro_batch_stream(session: Session, skip: int) -> Iterator[list[Encoded]]:
    """Micro-batches across epochs, each epoch in its seeded order, after the first ``skip``."""
    plan, cfg = session.plan, session.config.train
    epoch, skip = divmod(skip, plan.micro_per_epoch)
    while True:
        for index, micro in enumerate(
            micro_batches(session.train_samples, cfg.batch_size, cfg.seed, epoch, cfg.shuffle)
        ):
            if index >= skip:
                yield _shard(micro, session.accelerator)
        skip, epoch = 0, epoch + 1


def log_metrics(session: Session, record: dict[str, Any]) -> None:
    """One line in metrics.jsonl and the same scalars in TensorBoard."""
    session.run.append_metrics(record)
    if session.writer is None:
        from torch.utils.tensorboard import SummaryWriter

        session.writer = SummaryWriter(str(session.run.tensorboard))
    for key, value in record.items():
        if key not in ("step", "epoch") and isinstance(value, int | float):
            session.writer.add_scalar(
                f"{'eval' if key.startswith('eval') else 'train'}/{key}", value, record["step"]
            )
    session.writer.flush()


def write_resolved_config(config: RunConfig, run: RunDir) -> None:
    """config.yaml in the run directory: every default spelled out."""
    run.config.write_text(dump_config(config), encoding="utf-8")


def _shard(micro: list[Encoded], accelerator: Any) -> list[Encoded]:
    """This process's share of a micro-batch (all of it when there is one process)."""
    if accelerator.num_processes == 1:
        return micro
    return micro[accelerator.process_index :: accelerator.num_processes]


def _clip(session: Session) -> float:
    max_norm = session.config.train.max_grad_norm
    params = [p for p in session.loss_module.parameters() if p.requires_grad]
    norm = session.accelerator.clip_grad_norm_(params, max_norm if max_norm else float("inf"))
    return float(norm)


def _rounded(record: dict[str, float]) -> dict[str, float]:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()}
