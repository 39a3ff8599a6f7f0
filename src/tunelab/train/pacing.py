"""The loop's side of ``train.budget``: counting the loop's time, planning the steps that fit,
stopping when the budget is spent. Every process takes the main process's decisions, so
they all stop after the same step."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from tunelab.config import BUDGET_PATIENCE
from tunelab.train.budget import BudgetPlan, choose_scoring_interval, wants_plan
from tunelab.train.session import Session


@dataclass
class LoopClock:
    """When this process's loop started, at which step, with how much budget spent before."""

    first_step: int
    spent_before: float
    started: float = field(default_factory=time.perf_counter)


def start_clock(session: Session, step: int) -> LoopClock:
    """The clock of a loop starting after ``step`` completed steps."""
    return LoopClock(step, session.budget.spent if session.budget is not None else 0.0)


def scoring_every(session: Session) -> int | None:
    """Steps between scorings: eval.select.every, else the budget's choice."""
    every = session.config.eval.select.every
    if every is None and session.budget is not None:
        return session.budget.every or None
    return every


def scoring_due(session: Session, step: int) -> bool:
    """Whether the model is scored after ``step``: every eval.select.every steps, or on the
    budget's schedule (``BudgetPlan.scores_after``)."""
    every = scoring_every(session)
    if not every:
        return False
    budget = session.budget
    if budget is None:
        return step % every == 0
    return budget.scores_after(step, session.plan.total_steps, every, _interval_chosen(session))


def _interval_chosen(session: Session) -> bool:
    """Whether the budget chooses when to score (eval.select.every is not set)."""
    return session.config.eval.select.every is None


def scoring_patience(session: Session) -> int | None:
    """Scorings without improvement that stop the run (a budgeted run has a default)."""
    patience = session.config.eval.select.patience
    if patience is None and session.budget is not None:
        return BUDGET_PATIENCE
    return patience


def count_scoring(session: Session, seconds: float) -> None:
    """A scoring's cost, for the next plan."""
    if session.budget is not None:
        session.budget.scoring_seconds.append(seconds)


def pace(session: Session, step: int, record: dict[str, Any], clock: LoopClock) -> bool:
    """Count the time up to the end of ``step``; plan (again) when due (``wants_plan``).
    Returns whether the budget is spent before the plan's end. Every process takes the
    main process's plan and decision."""
    budget = session.budget
    if budget is None:
        return False
    budget.spent = clock.spent_before + time.perf_counter() - clock.started
    if step > clock.first_step + 1:  # a process's first step pays one-off costs
        budget.step_seconds.append(float(record["seconds"]))
    due = wants_plan(budget)
    planned = plan_budget(session, step) if due else session.plan.total_steps
    due, planned, spent_out = _agreed(session, due, planned, budget.spent_out)
    if due:
        budget.planned_steps = planned
        set_total(session, planned)
    if spent_out and step < session.plan.total_steps:
        budget.ended = "the budget was spent before the plan's end"
        return True
    return False


def plan_budget(session: Session, step: int) -> int:
    """The total steps that fit the rest of the budget, at most train.max_steps."""
    budget = session.budget
    assert budget is not None
    estimate = scoring_estimate(session)
    chosen = _interval_chosen(session)
    if budget.every is None and chosen:
        epoch = session.plan.steps_per_epoch
        budget.every = choose_scoring_interval(budget, step, estimate, epoch)
    total = budget.steps_that_fit(step, scoring_every(session), estimate, chosen)
    budget.scorings_planned = len(budget.scoring_seconds)
    budget.planned_at = budget.spent
    max_steps = session.config.train.max_steps
    return min(total, max_steps) if max_steps else total


def scoring_estimate(session: Session) -> float:
    """Seconds one scoring should take before one was timed: a forward pass (about a third
    of a training step's work) over the val rows, at the training steps' pace. Generating
    answers costs more per row, but eval.max_rows scores fewer; the first scoring's measured
    time replaces the estimate."""
    budget = session.budget
    assert budget is not None
    rows = len(session.val_samples)
    per_step = session.config.train.batch_size * session.config.train.grad_accum
    return rows * budget.step_cost / per_step / 3


def set_total(session: Session, total: int) -> None:
    """Make ``total`` the plan's end: the schedule and the progress display follow."""
    if total != session.plan.total_steps:
        session.plan.total_steps = total
        session.display.set_total(total)


def keep_budget_plan(session: Session, saved: dict[str, Any] | None) -> None:
    """On resume: the checkpoint's plan and spending; a different budget is planned anew."""
    if session.budget is None or saved is None:
        return
    plan = BudgetPlan.from_dict(saved)
    if plan.seconds != session.budget.seconds:
        plan.seconds, plan.planned_steps, plan.ended = session.budget.seconds, None, ""
    session.budget = plan
    if plan.planned_steps is not None:
        set_total(session, plan.planned_steps)


def _agreed(session: Session, due: bool, planned: int, spent_out: bool) -> tuple[bool, int, bool]:
    accelerator = session.accelerator
    if accelerator.num_processes == 1:
        return due, planned, spent_out
    from accelerate.utils import broadcast

    decision = torch.tensor(
        [int(due), planned, int(spent_out)], dtype=torch.int64, device=accelerator.device
    )
    due_flag, total, spent = broadcast(decision, from_process=0).tolist()
    return bool(due_flag), int(total), bool(spent)
