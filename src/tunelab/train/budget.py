"""Training for a time budget instead of a number of epochs.

The run times its first steps, then plans the optimizer steps that fill what is left of the
budget; the warmup and the learning-rate curve follow the plan (``session.Plan`` is read by
the schedule at every step). Scoring every ``eval.select.every`` steps costs time too: the
plan is made again after each scoring and after each tenth of the budget, from the measured
cost of steps and scorings. If the machine slows down anyway, the run stops when the budget
is spent and says so. Loading and the final evaluation are outside the budget.

Scorings the budget chooses come after the first epoch only: until then every batch is new
to the model, so the training loss already measures it on unseen rows and it cannot have
overfitted them yet. A run whose budget ends within one epoch, or less than half an epoch
after it, gives all of it to training; and a scoring due when the plan's end is nearer than
half the interval is left to the final evaluation. The plan pays for the scorings it will
hold and for no others.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from tunelab.config import SCORING_SHARE, SCORINGS_PER_BUDGET
from tunelab.durations import format_duration

CALIBRATION_STEPS = 3  # timed after the first, whose one-off costs (allocation, caches) mislead
REPLAN_SHARE = 0.1  # of a budget spent since the last plan, after which it is made again
MIN_SECOND_EPOCH_SHARE = 0.5  # of an epoch after the first, below which a budget never scores


@dataclass
class BudgetPlan:
    """The budget's state: saved in every checkpoint, so a resumed run keeps its plan."""

    seconds: float
    spent: float = 0.0  # seconds of the training loop so far (steps, scorings, saves)
    planned_steps: int | None = None  # None until the first steps are timed
    step_seconds: list[float] = field(default_factory=list)  # the steps timed (not the first)
    scoring_seconds: list[float] = field(default_factory=list)
    every: int | None = None  # steps between scorings when the budget chose it (0: none)
    score_from: int = 0  # the budget's scorings come every ``every`` steps after this one
    scorings_planned: int = 0  # scorings timed when the plan was last made
    planned_at: float = 0.0  # seconds spent when the plan was last made
    ended: str = ""  # why the run stopped before its plan, if it did

    def to_dict(self) -> dict[str, Any]:
        """For the checkpoint's training state (recent timings only)."""
        state = asdict(self)
        state["step_seconds"] = self.step_seconds[-50:]
        state["scoring_seconds"] = self.scoring_seconds[-10:]
        return state

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> BudgetPlan:
        """The plan a checkpoint saved."""
        return cls(**state)

    @property
    def remaining(self) -> float:
        """Seconds of the budget not yet spent."""
        return max(self.seconds - self.spent, 0.0)

    @property
    def spent_out(self) -> bool:
        """Whether the loop has used the whole budget."""
        return self.spent >= self.seconds

    @property
    def step_cost(self) -> float:
        """Mean seconds of a timed step."""
        steps = self.step_seconds or [0.0]
        return max(sum(steps) / len(steps), 1e-6)

    def scoring_cost(self, estimate: float) -> float:
        """Mean seconds of a scoring: measured once there was one, else ``estimate``."""
        if self.scoring_seconds:
            return sum(self.scoring_seconds) / len(self.scoring_seconds)
        return estimate

    def steps_that_fit(
        self,
        step: int,
        scoring_every: int | None,
        scoring_estimate: float = 0.0,
        chosen: bool = True,
    ) -> int:
        """The plan's total steps: those done and those the rest of the budget pays for,
        with the scorings ``scores_after`` will hold among them (``chosen``: the budget chose
        the interval), and no others."""
        steps = max(1, math.floor(self.remaining / self.step_cost))
        if not scoring_every:
            return step + steps
        cost = self.scoring_cost(scoring_estimate)

        def spent(count: int) -> float:  # grows with count: each step can only add a scoring
            held = self.scorings_between(step, step + count, scoring_every, chosen)
            return count * self.step_cost + held * cost

        fits, beyond = 1, steps + 1  # the most steps that fit lie in [fits, beyond)
        while beyond - fits > 1:
            middle = (fits + beyond) // 2
            fits, beyond = (middle, beyond) if spent(middle) <= self.remaining else (fits, middle)
        return step + fits

    def scores_after(self, step: int, total: int, every: int, chosen: bool) -> bool:
        """Whether the model is scored after ``step`` of ``total``: every ``every`` steps as
        eval.select.every gives them; when the budget ``chosen`` the interval, after
        ``score_from`` and not when the end, which the final evaluation scores, is nearer
        than half of it (re-planning can move the end close to a scoring, as 290 of 296
        steps on tweets)."""
        if not chosen:
            return step % every == 0
        on_schedule = step > self.score_from and (step - self.score_from) % every == 0
        return on_schedule and total - step >= every / 2

    def scorings_between(self, step: int, total: int, every: int, chosen: bool) -> int:
        """The scorings held after ``step`` up to a plan's end at ``total``."""
        origin = self.score_from if chosen else 0
        start = max(step, origin)
        first = start + every - (start - origin) % every
        held = range(first, total + 1, every)
        return sum(self.scores_after(s, total, every, chosen) for s in held)


def wants_plan(plan: BudgetPlan) -> bool:
    """Whether the plan is made (again) now: the first time once the first steps are
    timed; again after a scoring, and whenever another tenth of the budget is spent (steps
    of rows of different lengths differ, so three steps can mislead: 147 planned from
    them, 129 fitted on Chinese reviews)."""
    if plan.planned_steps is None:
        return len(plan.step_seconds) >= CALIBRATION_STEPS
    scored = len(plan.scoring_seconds) > plan.scorings_planned
    return scored or plan.spent - plan.planned_at >= REPLAN_SHARE * plan.seconds


def choose_scoring_interval(
    plan: BudgetPlan, step: int, scoring_estimate: float, steps_per_epoch: int
) -> int:
    """Steps between scorings for a budgeted run that did not set eval.select.every, from
    the end of the first epoch on (``plan.score_from`` is set to it): at most
    SCORINGS_PER_BUDGET scorings, and together no more than SCORING_SHARE of the budget
    left, spread evenly; 0 when even one would cost more than that share, or the budget
    buys less than half an epoch after the first: the one or two scorings that fit there
    cannot stop the run (that takes BUDGET_PATIENCE without improvement) and come near the
    end, which the final evaluation scores anyway, so they only take steps from training
    (on 1,200 Chinese reviews, one at step 162 of 169 took 70 s, 24 steps' worth)."""
    plan.score_from = max(step, steps_per_epoch)
    affordable = math.floor(SCORING_SHARE * plan.remaining / max(scoring_estimate, 1e-6))
    scorings = min(SCORINGS_PER_BUDGET, affordable)
    steps = math.floor((plan.remaining - scorings * scoring_estimate) / plan.step_cost)
    after_first_epoch = step + steps - plan.score_from
    if after_first_epoch < steps_per_epoch * MIN_SECOND_EPOCH_SHARE:
        return 0
    scorings = min(scorings, after_first_epoch // 2)  # the last stretch ends the run
    if scorings < 1:
        return 0
    return after_first_epoch // (scorings + 1)


def describe(plan: BudgetPlan, steps: int) -> str:
    """One line for the end of a run: planned against used, steps and time."""
    planned = plan.planned_steps if plan.planned_steps is not None else steps
    why = f" ({plan.ended})" if plan.ended else ""
    return (
        f"budget {format_duration(plan.seconds)}: {steps} of {planned} planned steps{why}, "
        f"{format_duration(plan.spent)} of training"
    )
