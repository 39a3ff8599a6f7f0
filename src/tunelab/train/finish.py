"""The end of a run: the adapter saved with its tokenizer, the final evaluation beside the
base model and the classic baseline, results.json."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from tunelab.baseline import write_beside
from tunelab.metrics import perplexity
from tunelab.report import write_eval
from tunelab.run_dir import write_json
from tunelab.scoring import EvalResult
from tunelab.train.advice import below_baseline_advice
from tunelab.train.budget import describe
from tunelab.train.launch import main_alone
from tunelab.train.loop import eval_loss, keep_if_best
from tunelab.train.saving import save_adapter
from tunelab.train.session import Session, log_metrics


@dataclass
class TrainResult:
    """What a finished run achieved, as printed at the end and saved in results.json."""

    run_dir: str
    steps: int
    train_loss: float | None
    eval_loss: float | None
    tokens_per_s: float
    eval_perplexity: float | None = None  # exp(eval loss): per answer token, or per label
    metric: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    best: dict[str, Any] | None = None
    timing: dict[str, float] = field(default_factory=dict)  # load_s, train_s, final_eval_s
    budget: str | None = None  # planned against used steps and time, for a budgeted run
    advice: str | None = None  # when the run ended below its classic baseline
    is_main: bool = True
    evaluations: list[Any] = field(default_factory=list, repr=False)


def finish(
    session: Session,
    tokenizer: Any,
    steps: int,
    base: EvalResult | None,
    baseline: Callable[[], Any] | None = None,
) -> TrainResult:
    """Save the adapter (with tokenizer and chat template), then measure the result with the
    session's scorer (its scoring of the last step, if there was one, is the result)."""
    run, accelerator = session.run, session.accelerator
    history = run.read_metrics()
    losses = [r["loss"] for r in history if "loss" in r]
    result = TrainResult(
        str(run.root),
        steps,
        losses[-1] if losses else None,
        None,
        session.display.tokens_per_second,
        best=session.best or None,
    )
    if not accelerator.is_main_process:
        result.is_main = False
        return result
    started = time.perf_counter()
    with main_alone(accelerator.device):
        save_adapter(session, run.adapter, tokenizer)
        tuned = final_evaluation(session, steps)
        result.best = session.best or None
        if session.val_samples:
            # a class head's evaluation gives the loss from its own passes over the rows
            known = tuned.loss if tuned is not None else None
            result.eval_loss = known if known is not None else eval_loss(session)
            result.eval_perplexity = round(perplexity(result.eval_loss), 4)
            if known is None or session.scored_at(steps) is None:  # else logged with the score
                record = {"eval_loss": result.eval_loss, "eval_perplexity": result.eval_perplexity}
                log_metrics(session, {"step": steps, **record})
        if tuned is not None:
            for note in write_eval(run.eval_dir("final"), tuned, run.read_metrics()):
                session.display.console.print(f"[yellow]{note}[/yellow]")
            classic = baseline() if baseline is not None else None
            shown = (base, tuned, *write_beside(run, "", tuned, classic))
            result.evaluations = [r for r in shown if r is not None]
            result.metric = tuned.metric
            result.scores = {r.name: r.score for r in result.evaluations}
            result.advice = _advice(session, tuned, classic, losses, tokenizer)
        timing = {**session.timing, "final_eval_s": time.perf_counter() - started}
        result.timing = {key: round(value, 1) for key, value in timing.items()}
        if session.budget is not None:
            result.budget = describe(session.budget, steps)
        saved = {f.name: getattr(result, f.name) for f in fields(result) if f.name != "evaluations"}
        write_json(run.results, saved)
        return result


def _advice(
    session: Session, tuned: EvalResult, classic: Any, losses: list[float], tokenizer: Any
) -> str | None:
    return below_baseline_advice(
        tuned,
        classic,
        losses,
        len(session.train_samples),
        tokenizer,
        session.config.eval.select.mode,
        session.config.eval.scoring.choices,  # a class head ignores them
        unframed_head=session.run.labels.exists() and session.config.data.text_template is None,
    )


def final_evaluation(session: Session, steps: int) -> EvalResult | None:
    """The scorer's result for the trained model: the last step's scoring if it was scored,
    else a new one, kept in best/ when it beats every scored step."""
    if session.scorer is None or not session.val_samples:
        return None
    scored = session.scored_at(steps)
    if scored is not None:
        return replace(scored, name="fine-tuned")
    tuned = session.scorer(session.model, "fine-tuned")
    if session.best:
        keep_if_best(session, steps, tuned.score)
    return tuned
