"""train.budget: durations, the schedule over a plan, planning from timed steps, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from conftest import alpaca_rows
from train.test_train import tiny_config
from tunelab.config import TrainConfig
from tunelab.config_file import validate_config
from tunelab.durations import format_duration, parse_duration
from tunelab.train.advice import below_baseline_advice, loss_still_falling
from tunelab.train.budget import BudgetPlan, choose_scoring_interval, wants_plan
from tunelab.train.run import train
from tunelab.train.session import Plan, build_scheduler, schedule_factor


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("10m", 600), ("2h", 7200), ("1h30m", 5400), ("1.5m", 90), ("45", 45)],
)
def test_durations_read_as_people_write_them(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "10 min", "0s", "-5m", "m"])
def test_a_bad_budget_is_refused_when_the_config_is_read(text: str) -> None:
    with pytest.raises(ValidationError, match="expected a duration"):
        TrainConfig(budget=text)


def test_a_bare_number_in_yaml_is_seconds() -> None:
    assert TrainConfig(budget=90).budget_seconds == 90
    assert format_duration(592) == "9m52s" and format_duration(3720) == "1h02m"


@pytest.mark.parametrize(("kind", "hf_kind"), [("cosine", "cosine"), ("linear", "linear")])
def test_the_schedule_is_transformers_own_over_a_fixed_plan(kind: str, hf_kind: str) -> None:
    from transformers import get_scheduler

    plan = Plan(micro_per_epoch=10, grad_accum=1, total_steps=37, warmup_ratio=0.1)
    mine, theirs = (torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5) for _ in range(2))
    ours = build_scheduler(mine, kind, plan)
    reference = get_scheduler(hf_kind, theirs, num_warmup_steps=4, num_training_steps=37)
    for _ in range(40):
        assert ours.get_last_lr() == reference.get_last_lr()  # exactly: the same formulas
        ours.step()
        reference.step()


def test_the_schedule_follows_a_new_plan() -> None:
    plan = Plan(micro_per_epoch=10, grad_accum=1, total_steps=10**9, warmup_ratio=0.05)
    assert schedule_factor("cosine", 3, plan) < 1e-6  # unplanned: timing steps barely move
    plan.total_steps = 100
    assert schedule_factor("cosine", 3, plan) == 3 / 5
    assert schedule_factor("cosine", 100, plan) == 0.0
    assert schedule_factor("constant", 50, plan) == 1.0


def test_a_longer_plan_lowers_the_peak_learning_rate_to_a_fifth_at_most() -> None:
    plan = Plan(10, 1, total_steps=100, warmup_ratio=0.0, full_rate_steps=160)
    assert schedule_factor("constant", 50, plan) == 1.0  # within 160 steps: the peak as given
    plan.total_steps = 320  # a budget planned twice the steps: half the peak, all along
    assert schedule_factor("constant", 50, plan) == 0.5
    assert schedule_factor("cosine", 0, plan) == 0.5
    plan.total_steps = 5000
    assert schedule_factor("constant", 50, plan) == 0.2
    plan.full_rate_steps = None
    assert schedule_factor("constant", 50, plan) == 1.0


def test_the_plan_fills_what_is_left_with_steps_and_their_share_of_scorings() -> None:
    plan = BudgetPlan(seconds=100, spent=10, step_seconds=[0.5, 0.5, 0.5])
    assert plan.steps_that_fit(step=4, scoring_every=None) == 4 + 180
    # before a scoring was timed, its estimate counts: 5 s every 10 steps adds 0.5 s a step
    assert plan.steps_that_fit(step=4, scoring_every=10, scoring_estimate=5.0) == 4 + 90
    plan.scoring_seconds = [2.5]  # then what it measured
    assert plan.steps_that_fit(step=4, scoring_every=10, scoring_estimate=5.0) == 4 + 120
    plan.spent = 120
    assert plan.spent_out and plan.steps_that_fit(step=4, scoring_every=10) == 5


def test_the_plan_is_made_again_after_a_scoring_and_each_tenth_of_the_budget() -> None:
    plan = BudgetPlan(seconds=600, spent=12, step_seconds=[4.0, 4.0])
    assert not wants_plan(plan)  # two steps timed: too few
    plan.step_seconds.append(4.0)
    assert wants_plan(plan)
    plan.planned_steps, plan.planned_at, plan.spent = 150, 12, 71
    assert not wants_plan(plan)
    plan.spent = 72  # a tenth of the budget since the plan
    assert wants_plan(plan)
    plan.planned_at, plan.scoring_seconds = 72, [30.0]  # a scoring since
    assert wants_plan(plan)


def test_only_the_scorings_after_score_from_are_paid_for() -> None:
    plan = BudgetPlan(seconds=100, spent=10, step_seconds=[0.5] * 3, score_from=50)
    total = plan.steps_that_fit(step=4, scoring_every=10, scoring_estimate=5.0)
    assert total == 4 + 120  # scorings at 60 ... 110 (120 is 4 steps before the end): 60 s + 30 s
    assert plan.scorings_between(4, total, 10, chosen=True) == 6
    plan.score_from = 500  # the plan ends before any scoring would come
    assert plan.steps_that_fit(step=4, scoring_every=10, scoring_estimate=5.0) == 4 + 180


def test_the_plan_pays_for_the_scorings_it_holds_and_no_others() -> None:
    plan = BudgetPlan(seconds=100, step_seconds=[1.0] * 3)
    # 90 steps and one 10 s scoring at 40 fill 100 s: the one due at 80 comes 10 steps
    # before the end, nearer than half the interval, and is left to the final evaluation
    assert plan.steps_that_fit(step=0, scoring_every=40, scoring_estimate=10.0) == 90
    assert [s for s in range(1, 91) if plan.scores_after(s, 90, 40, chosen=True)] == [40]
    # eval.select.every as given scores at 80 too: 80 steps and two scorings
    assert plan.steps_that_fit(0, 40, 10.0, chosen=False) == 80
    assert plan.scorings_between(0, 80, 40, chosen=False) == 2


def test_scorings_along_the_way_take_at_most_their_share_of_the_budget() -> None:
    plan = BudgetPlan(seconds=600, spent=20, step_seconds=[5.0] * 3)
    # 580 s left: 15 % is 87 s; scorings of 40 s: two fit, spread over 3 stretches
    assert choose_scoring_interval(plan, 4, 40.0, steps_per_epoch=0) == (580 - 80) // 5 // 3
    assert plan.score_from == 4
    assert choose_scoring_interval(plan, 4, 1.0, steps_per_epoch=0) == (580 - 5) // 5 // 6
    assert choose_scoring_interval(plan, 4, 100.0, steps_per_epoch=0) == 0  # none affordable


def test_a_budget_scores_after_the_first_epoch_only() -> None:
    plan = BudgetPlan(seconds=600, spent=20, step_seconds=[5.0] * 3)
    # 100 steps fit beside two scorings; the first epoch ends at step 60: 44 steps after it
    assert choose_scoring_interval(plan, 4, 40.0, steps_per_epoch=60) == 44 // 3
    assert plan.score_from == 60
    # a budget that ends within the first epoch is all training
    assert choose_scoring_interval(plan, 4, 40.0, steps_per_epoch=200) == 0


def test_a_budget_does_not_score_less_than_half_an_epoch_after_the_first() -> None:
    plan = BudgetPlan(seconds=600, spent=20, step_seconds=[5.0] * 3)
    # 100 steps fit beside two scorings: 36 after an epoch of 68 are more than half one
    assert choose_scoring_interval(plan, 4, 40.0, steps_per_epoch=68) == 36 // 3
    # 34 after an epoch of 70 are less: the scorings that fit there cannot stop the run, and
    # the final evaluation scores the end anyway
    assert choose_scoring_interval(plan, 4, 40.0, steps_per_epoch=70) == 0


def test_a_budget_leaves_a_scoring_near_the_plans_end_to_the_final_evaluation() -> None:
    from types import SimpleNamespace

    from tunelab.train.pacing import scoring_due

    def session(total: int, every: int | None = None) -> Any:
        budget = BudgetPlan(seconds=600, every=12, score_from=150)
        config = SimpleNamespace(eval=SimpleNamespace(select=SimpleNamespace(every=every)))
        return SimpleNamespace(
            budget=budget, config=config, plan=SimpleNamespace(total_steps=total)
        )

    assert [s for s in range(140, 200) if scoring_due(session(200), s)] == [
        162,
        174,
        186,
    ]  # 198 would be 2 steps before the end
    assert [s for s in range(140, 170) if scoring_due(session(167), s)] == []  # 162: 5 before
    # an interval the user set is kept as given
    assert [s for s in range(150, 170) if scoring_due(session(169, every=12), s)] == [156, 168]


def budget_config(qwen3_dir: Path, data: Path, out: Path, budget: str, **train: object) -> dict:
    config = tiny_config(qwen3_dir, data, out, max_steps=None, budget=budget, save_every=2, **train)
    config["train"]["keep_checkpoints"] = 100
    return config


def test_a_budgeted_run_plans_its_steps_and_ends_its_schedule_there(
    qwen3_dir: Path, write_jsonl, tmp_path: Path
) -> None:
    data = write_jsonl(alpaca_rows(40))
    config = validate_config(budget_config(qwen3_dir, data, tmp_path / "runs", "4s"), "test")
    result = train(config)
    run = tmp_path / "runs" / "run"
    saved = json.loads((run / "results.json").read_text())
    state = json.loads(
        (sorted((run / "checkpoints").iterdir())[-1] / "trainer_state.json").read_text()
    )
    budget = state["budget"]
    steps = [r for r in map(json.loads, (run / "metrics.jsonl").open()) if "loss" in r]

    assert budget["seconds"] == 4 and budget["planned_steps"] >= 4  # timed 3 steps, then planned
    assert saved["budget"].startswith(f"budget 4s: {result.steps} of {budget['planned_steps']}")
    assert set(saved["timing"]) == {"load_s", "train_s", "final_eval_s"}
    assert any("eval_exact_match" in r for r in map(json.loads, (run / "metrics.jsonl").open()))
    assert (run / "best").is_dir()  # it scored along the way and kept the best
    scored = [
        r["step"]
        for r in map(json.loads, (run / "metrics.jsonl").open())
        if "eval_exact_match" in r
    ]
    assert min(scored) > 40 // 4  # after the first epoch (40 rows, 4 a step) only
    if not budget["ended"]:  # it ran its plan to the end: the cosine reached zero there
        assert result.steps == budget["planned_steps"] == steps[-1]["step"]
        assert steps[-1]["lr"] == 0.0
    else:
        assert result.steps < budget["planned_steps"]


def test_a_resumed_budgeted_run_keeps_its_plan_and_a_larger_budget_extends_it(
    qwen3_dir: Path, write_jsonl, tmp_path: Path
) -> None:
    data = write_jsonl(alpaca_rows(40))
    raw = budget_config(qwen3_dir, data, tmp_path / "runs", "3s")
    train(validate_config(raw, "test"))
    run = tmp_path / "runs" / "run"
    checkpoints = sorted((run / "checkpoints").iterdir())
    for newer in checkpoints[len(checkpoints) // 2 :]:
        shutil.rmtree(newer)  # as if killed half way
    middle = json.loads((checkpoints[len(checkpoints) // 2 - 1] / "trainer_state.json").read_text())
    assert middle["budget"]["planned_steps"] is not None

    resumed = train(validate_config(raw, "test"), resume=True)
    after = [r for r in map(json.loads, (run / "metrics.jsonl").open()) if "loss" in r]
    first_resumed = next(r for r in after if r["step"] == middle["step"] + 1)
    # the plan goes on: had it been made again, the first steps would be timing steps at lr ~0
    assert first_resumed["lr"] > 1e-4
    state = json.loads(
        (sorted((run / "checkpoints").iterdir())[-1] / "trainer_state.json").read_text()
    )
    assert state["budget"]["spent"] >= middle["budget"]["spent"]  # the time spent carries over

    raw["train"]["budget"] = "6s"
    extended = train(validate_config(raw, "test"), resume=True)
    assert extended.steps > resumed.steps


def test_advice_below_the_baseline_names_what_the_run_saw(smollm_tokenizer) -> None:
    from tunelab.scoring import EvalResult

    rows = [{"input": "这家店的菜很好吃，服务也很周到"}] * 5
    tuned = EvalResult("fine-tuned", "macro_f1", 0.70, {}, rows)
    classic = EvalResult("tf-idf", "macro_f1", 0.78, {}, rows)
    falling = [2.0 - 0.01 * i for i in range(100)]
    advice = below_baseline_advice(tuned, classic, falling, 640, smollm_tokenizer)
    assert advice is not None and "0.0800 macro_f1" in advice
    assert "still falling" in advice and "640" in advice and "Chinese" in advice
    flat = [1.0] * 100
    assert loss_still_falling(falling) and not loss_still_falling(flat)
    english = [{"input": "a fine film with a weak ending"}] * 5
    quiet = below_baseline_advice(
        EvalResult("fine-tuned", "macro_f1", 0.7, {}, english), classic, flat, 5000, None
    )
    assert quiet is not None and "still falling" not in quiet and "Chinese" not in quiet
    ahead = EvalResult("fine-tuned", "macro_f1", 0.80, {}, rows)
    assert below_baseline_advice(ahead, classic, falling, 640, smollm_tokenizer) is None


def test_advice_names_answer_words_the_model_cannot_read(smollm_tokenizer) -> None:
    from tunelab.scoring import EvalResult

    rows = [{"input": "a fine film with a weak ending"}] * 5
    tuned = EvalResult("fine-tuned", "macro_f1", 0.62, {}, rows)
    classic = EvalResult("tf-idf", "macro_f1", 0.79, {}, rows)
    flat = [1.0] * 100
    advice = below_baseline_advice(
        tuned, classic, flat, 5000, smollm_tokenizer, answers=["正面", "负面"]
    )
    assert advice is not None and "正面 / 负面 cost 2.0 tokens per character" in advice
    english = below_baseline_advice(
        tuned, classic, flat, 5000, smollm_tokenizer, answers=["positive", "negative"]
    )
    assert english is not None and "words this model knows" not in english


def test_advice_offers_a_frame_to_a_class_head_that_read_its_texts_bare(smollm_tokenizer) -> None:
    from tunelab.scoring import EvalResult

    rows = [{"input": "a fine film with a weak ending"}] * 5
    tuned = EvalResult("fine-tuned", "macro_f1", 0.70, {}, rows)
    classic = EvalResult("tf-idf", "macro_f1", 0.78, {}, rows)
    flat = [1.0] * 100
    bare = below_baseline_advice(tuned, classic, flat, 5000, None, unframed_head=True)
    assert bare is not None and "data.text_template" in bare
    framed = below_baseline_advice(tuned, classic, flat, 5000, None, unframed_head=False)
    assert framed is not None and "data.text_template" not in framed
