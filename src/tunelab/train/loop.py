"""The optimisation loop: packed forward passes, token-normalised accumulation, exact resume.

``run_loop`` takes the steps; after each one it logs, evaluates when asked (keeping the
best adapter and stopping early on a plateau) and checkpoints. It knows nothing of how a
run was assembled (see run.py) or how answers are scored (it is handed a scorer).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import torch

from tunelab.data.batching import micro_batches
from tunelab.errors import Interrupted
from tunelab.train.checkpoint import (
    capture_rng,
)
from tunelab.train.launch import main_alone
from tunelab.train.pacing import count_scoring, pace, scoring_due, scoring_patience, start_clock
from tunelab.train.saving import Diverged, save, save_adapter, what_to_try
from tunelab.train.session import Session, log_metrics
from tunelab.train.stop import StopSignals, stop_signals


def run_loop(session: Session, start_step: int) -> int:
    """Train from ``start_step`` to the planned end; returns the last completed step.

    Ctrl-C or SIGTERM saves a checkpoint of the last completed step and raises
    ``Interrupted``: once the running step is done, or at once for a second Ctrl-C
    (``tunelab.train.stop``).
    """
    plan = session.plan
    stream = micro_batch_stream(session, start_step * plan.grad_accum)
    step = start_step
    interrupted = False
    stops = StopSignals()
    clock = start_clock(session, step)
    session.display.start(step)
    try:
        with stop_signals(announce=session.accelerator.is_main_process) as stops:
            while step < plan.total_steps:
                session.rng_at_step_start = capture_rng()
                if interrupted:
                    raise KeyboardInterrupt
                micro = [next(stream) for _ in range(plan.grad_accum)]
                record = train_step(session, micro, stops)
                step += 1
                spent = pace(session, step, record, clock)
                finished_early, interrupted = after_step(session, step, record, stops.requested)
                if finished_early or spent:
                    break
            if session.saved_step != step:  # the final state, so a finished run can go on
                save(session, step, capture_rng())
    except KeyboardInterrupt:
        path = save(session, step, session.rng_at_step_start or capture_rng())
        raise Interrupted(
            f"interrupted after step {step}; checkpoint saved in {path}. "
            "Continue with the same command and --resume.",
            stops.signal_number,
        ) from None
    finally:
        session.display.stop()
    return step


def train_step(
    session: Session, micro: list[list[Any]], stops: StopSignals | None = None
) -> dict[str, float]:
    """One optimizer step over the samples of ``grad_accum`` micro-batches.

    Each process takes its share of the step's samples; they go through the model in as
    few forward passes as ``train.forward_tokens`` allows. Each pass's summed loss is
    divided by the loss terms of the whole step over all processes, so the gradient is the
    mean over every term of the step, however the samples fall into passes and processes.
    """
    accelerator = session.accelerator
    started = time.perf_counter()
    everyone = [sample for batch in micro for sample in batch]
    samples = _shard(everyone, accelerator)
    # more processes than samples: a zero-weight pass keeps this process in the gradient sync
    ghost = not samples
    batches = [batch.to(accelerator.device) for batch in session.forward(samples or everyone[:1])]
    local = torch.tensor(
        [0.0 if ghost else sum(b.targets for b in batches)], device=accelerator.device
    )
    step_targets = max(accelerator.reduce(local, reduction="sum").item(), 1.0)
    weight = 0.0 if ghost else accelerator.num_processes / step_targets
    loss_sum = 0.0
    for index, batch in enumerate(batches):
        last = index == len(batches) - 1
        with accelerator.no_sync(session.loss_module) if not last else nullcontext():
            summed, _ = session.loss_module(batch)
            accelerator.backward(summed * weight)
        loss_sum += 0.0 if ghost else summed.item()
    grad_norm = _clip(session)
    # the gradients are summed over every process, so every process decides alike
    finite = math.isfinite(grad_norm)
    with stops.update() if stops else nullcontext():
        if finite:
            session.optimizer.step()
        session.scheduler.step()
        session.optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - started
    real = 0 if ghost else sum(b.real_tokens for b in batches)
    padded = 0 if ghost else sum(b.padded_tokens for b in batches)
    totals = torch.tensor([loss_sum, real, padded], dtype=torch.float64, device=accelerator.device)
    loss_sum, real, padded = accelerator.reduce(totals, reduction="sum").tolist()
    return {
        "loss": loss_sum / step_targets,
        "grad_norm": grad_norm,
        "lr": session.scheduler.get_last_lr()[0],
        "tokens_per_s": real / seconds,
        "padded_tokens_per_s": padded / seconds,
        "real_tokens": int(real),
        "padded_tokens": int(padded),
        "seconds": seconds,
        "processes": accelerator.num_processes,
        **({} if finite else {"update_skipped": True}),
    }


def after_step(
    session: Session, step: int, record: dict[str, float], stop_requested: bool = False
) -> tuple[bool, bool]:
    """Log, evaluate and checkpoint as the config asks.

    Returns (finished early, interrupted), agreed by every process: each one stops after
    the same step, whichever of them a signal or the plateau reached.
    """
    cfg = session.config.train
    session.display.update(step, record, session.plan.epoch_at(step))
    plateau = False
    logged = step % cfg.log_every == 0 or step == session.plan.total_steps
    if session.accelerator.is_main_process and logged:
        epoch = session.plan.epoch_at(step)
        log_metrics(session, {"step": step, "epoch": epoch, **_rounded(record)})
    watch_numbers(session, step, record)
    if session.accelerator.is_main_process:
        with main_alone(session.accelerator.device):
            loss_logged = False
            if session.scorer is not None and scoring_due(session, step):
                plateau, loss_logged = score_and_keep_best(session, step)
            due = cfg.val_loss_every and step % cfg.val_loss_every == 0
            if due and step < session.plan.total_steps and not loss_logged:
                log_metrics(session, {"step": step, "eval_loss": eval_loss(session)})
    flags = torch.tensor([plateau, stop_requested], dtype=torch.float32)
    agreed = session.accelerator.reduce(flags.to(session.accelerator.device), reduction="sum")
    plateau, interrupted = (bool(flag) for flag in agreed.tolist())
    # an interrupted run saves on its way out
    if cfg.save_every and not interrupted and (step % cfg.save_every == 0 or plateau):
        save(session, step, capture_rng())
    return plateau, interrupted


def watch_numbers(session: Session, step: int, record: dict[str, float]) -> None:
    """Stop after ``train.max_nonfinite_steps`` steps in a row with a non-finite loss or
    gradient (their updates were skipped); warn once when the gradient has been exactly zero
    for three steps, the sign of a model collapsed to uniform outputs."""
    if record.get("update_skipped") or not math.isfinite(record["loss"]):
        session.nonfinite_steps += 1
    else:
        session.nonfinite_steps = 0
    if session.nonfinite_steps >= session.config.train.max_nonfinite_steps:
        first = step - session.nonfinite_steps + 1
        found = session.run.list_checkpoints()
        last = f"the last checkpoint, {found[-1].name}, is intact" if found else "none was saved"
        raise Diverged(
            f"training diverged: the loss or its gradient was not finite at steps {first}-{step}"
            f" (their updates were skipped); {last}. {what_to_try(session)}"
        )
    session.zero_gradient_steps = session.zero_gradient_steps + 1 if record["grad_norm"] == 0 else 0
    if session.zero_gradient_steps == 3 and session.accelerator.is_main_process:
        session.display.console.print(
            f"[yellow]warning: the gradient has been exactly zero for 3 steps (loss "
            f"{record['loss']:.4f}): the model's outputs have likely collapsed to a uniform "
            f"distribution (the loss of guessing uniformly is ln of the number of outputs). "
            f"{what_to_try(session)}[/yellow]"
        )


def score_and_keep_best(session: Session, step: int) -> tuple[bool, bool]:
    """Score the model now and copy it to best/ when it improved.

    Returns (whether `eval.patience` evaluations in a row brought no improvement, whether
    the scoring gave the eval loss too, now logged).
    """
    cfg = session.config.eval
    started = time.perf_counter()
    result = session.scorer(session.model, f"step-{step}")
    count_scoring(session, time.perf_counter() - started)
    session.last_scored = (step, result)
    score, loss = result.score, result.loss
    record = {"step": step, f"eval_{cfg.metric}": score}
    if loss is not None:
        record["eval_loss"] = loss
    log_metrics(session, record)
    if not keep_if_best(session, step, score):
        session.best["stale"] += 1
    patience = scoring_patience(session)
    plateau = bool(patience and session.best["stale"] >= patience)
    if plateau and session.budget is not None:
        session.budget.ended = f"stopped early: no improvement in {patience} scorings"
    return plateau, loss is not None


def keep_if_best(session: Session, step: int, score: float) -> bool:
    """Copy the model to best/ if ``score`` beats the best so far (or is the first)."""
    best, mode = session.best, session.config.eval.select.mode
    improved = not best or (score > best["score"] if mode == "max" else score < best["score"])
    if improved:
        save_adapter(session, session.run.best, session.tokenizer)
        session.best = {"step": step, "score": score, "stale": 0}
    return improved


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


def micro_batch_stream(session: Session, skip: int) -> Iterator[list[Any]]:
    """Micro-batches across epochs, each epoch in its seeded order, after the first ``skip``."""
    plan, cfg = session.plan, session.config.train
    epoch, skip = divmod(skip, plan.micro_per_epoch)
    while True:
        for index, micro in enumerate(
            micro_batches(session.train_samples, cfg.batch_size, cfg.seed, epoch, cfg.shuffle)
        ):
            if index >= skip:
                yield micro
        skip, epoch = 0, epoch + 1


def _shard(micro: list[Any], accelerator: Any) -> list[Any]:
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
