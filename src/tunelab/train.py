"""`tunelab train`: a run from config to evaluated adapter, composed of named steps.

run directory -> model files -> data -> model with adapter -> (base score) -> loop ->
adapter, eval loss and generation scores. The loop itself lives in loop.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console

from tunelab import kernels
from tunelab.baseline import classify_baseline, is_label_task, sft_baseline
from tunelab.config import RunConfig, dump_config
from tunelab.data.prepare import write_rejects
from tunelab.evaluate import EvalResult, evaluate_generation
from tunelab.launch import main_alone
from tunelab.loop import (
    Scorer,
    Session,
    build_accelerator,
    build_session,
    eval_loss,
    keep_if_best,
    log_metrics,
    restore_latest,
    run_loop,
)
from tunelab.models import (
    attach_lora,
    load_causal_lm,
    load_classifier,
    load_tokenizer,
    resolve_model,
    set_activation_checkpointing,
)
from tunelab.precision import base_dtype, cpu_training_kernels, resolve_precision
from tunelab.report import print_data_report, write_eval
from tunelab.run_dir import RunDir, write_json
from tunelab.tasks.classify import (
    HEAD_MODULES,
    ClassifierLoss,
    class_batcher,
    class_weights,
    evaluate_classifier,
    prepare_classify,
)
from tunelab.tasks.sft import CausalLMLoss, PreparedData, prepare_sft, sft_batcher


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
    best: dict[str, Any] | None = None
    is_main: bool = True
    evaluations: list[Any] = field(default_factory=list, repr=False)


def train(
    config: RunConfig,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
) -> TrainResult:
    """Fine-tune ``config.model`` on ``config.data`` with LoRA; everything lands in the run dir."""
    from accelerate.utils import set_seed

    console = console or Console()
    run = RunDir(config.run_dir)
    accelerator = build_accelerator(config.train)
    if accelerator.is_main_process:
        run.start(resume, overwrite)
    accelerator.wait_for_everyone()
    set_seed(config.train.seed)
    model_dir = resolve_model(config.model)
    tokenizer = load_tokenizer(model_dir, config.model.trust_remote_code)
    if config.task == "classify":
        return train_classifier(config, run, accelerator, model_dir, tokenizer, resume, console)
    data = prepare_sft(config.data, tokenizer)
    if accelerator.is_main_process:
        write_run_inputs(config, run, data, console)
    model = build_model(model_dir, config)
    batcher = sft_batcher(
        config.data,
        config.train.forward_tokens,
        tokenizer.pad_token_id,
        segmented=kernels.takes_sample_boundaries(model),
    )
    samples = (data.train.samples, data.val.samples)
    session = build_session(
        config, run, accelerator, CausalLMLoss(model), samples, batcher, console
    )
    session.scorer = generation_scorer(session, tokenizer, data) if config.eval.generate else None
    base = score_base(session, tokenizer, data) if config.eval.compare_base else None
    start = restore_latest(session) if resume else 0
    last = run_loop(session, start)
    classic = None
    if config.eval.generate and is_label_task(config.eval):
        classic = partial(sft_baseline, config.eval, data.train.examples, data.val.examples)
    return finish(session, tokenizer, last, base, classic)


def build_model(model_dir: Path, config: RunConfig) -> Any:
    """The base model with a fresh LoRA adapter (frozen base, trainable adapter)."""
    precision = resolve_precision(config.train.precision)
    model = load_causal_lm(model_dir, config.model, base_dtype(precision))
    if config.train.checkpoint_every:
        set_activation_checkpointing(model, config.train.checkpoint_every)
    model.config.use_cache = False
    model = attach_lora(model, config.lora)
    cpu_training_kernels(model, precision, config.train.forward_tokens)
    return model


def write_run_inputs(config: RunConfig, run: RunDir, data: PreparedData, console: Console) -> None:
    """config.yaml, data_report.json and rejects.jsonl, and the data report on screen."""
    run.config.write_text(dump_config(config), encoding="utf-8")
    write_json(run.data_report, data.report)
    write_rejects(run.rejects, data.rejects)
    print_data_report(console, data.report, data.rejects, run.rejects)


def generation_scorer(session: Session, tokenizer: Any, data: PreparedData) -> Scorer:
    """Scores a model by generating answers to the val rows (`eval.generate`)."""

    def score(model: Any, name: str) -> EvalResult:
        model.config.use_cache = True
        with session.accelerator.autocast():
            result = evaluate_generation(
                model, tokenizer, data.val.examples, session.config.eval, name
            )
        model.config.use_cache = False
        return result

    return score


def score_base(session: Session, tokenizer: Any, data: PreparedData) -> EvalResult | None:
    """The base model (adapter off) on the eval rows, before training."""
    if not (
        session.config.eval.generate and session.accelerator.is_main_process and data.val.examples
    ):
        return None
    model = session.model
    model.config.use_cache = True
    device = session.accelerator.device
    with model.disable_adapter(), session.accelerator.autocast(), main_alone(device):
        result = evaluate_generation(
            model, tokenizer, data.val.examples, session.config.eval, "base"
        )
    model.config.use_cache = False
    write_eval(session.run.eval_dir("base"), result)
    return result


def train_classifier(
    config: RunConfig,
    run: RunDir,
    accelerator: Any,
    model_dir: Path,
    tokenizer: Any,
    resume: bool,
    console: Console,
) -> TrainResult:
    """task classify: a class head plus LoRA, scored by accuracy / macro-F1 on val."""
    from accelerate.utils import set_seed

    data = prepare_classify(config.data, tokenizer)
    if accelerator.is_main_process:
        run.config.write_text(dump_config(config), encoding="utf-8")
        write_json(run.data_report, data.report)
        write_json(run.labels, {"labels": data.labels})
        write_rejects(run.rejects, data.rejects)
        print_data_report(console, data.report, data.rejects, run.rejects)
    set_seed(config.train.seed)  # the head starts from seeded random weights
    precision = resolve_precision(config.train.precision)
    pad_id = tokenizer.pad_token_id
    model = load_classifier(model_dir, config.model, data.labels, pad_id, base_dtype(precision))
    model = attach_lora(model, config.lora, "SEQ_CLS", HEAD_MODULES)
    cpu_training_kernels(model, precision, config.train.forward_tokens)
    batcher = class_batcher(
        pad_id, config.train.forward_tokens, segmented=kernels.takes_sample_boundaries(model)
    )
    weights = class_weights(config, data.labels, data.train)
    loss = ClassifierLoss(model, weights)
    samples = (data.train.samples, data.val.samples)
    session = build_session(config, run, accelerator, loss, samples, batcher, console)
    metric = config.eval.metric if config.eval.metric in ("accuracy", "macro_f1") else "macro_f1"

    def score(model: Any, name: str) -> EvalResult:
        return evaluate_classifier(model, data.val, data.labels, batcher, name, weights, metric)

    session.scorer = score
    start = restore_latest(session) if resume else 0
    last = run_loop(session, start)
    classic = partial(classify_baseline, metric, data.train.texts, data.val.texts, data.labels)
    return finish(session, tokenizer, last, None, classic)


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
    with main_alone(accelerator.device):
        session.model.save_pretrained(run.adapter)
        tuned = final_evaluation(session, steps)
        result.best = session.best or None
        for folder in (run.adapter, run.best):
            if folder.exists():
                tokenizer.save_pretrained(folder)
                if run.labels.exists():
                    shutil.copy(run.labels, folder / "labels.json")
        if session.val_samples:
            # a class head's evaluation gives the loss from its own passes over the rows
            known = tuned.loss if tuned is not None else None
            result.eval_loss = known if known is not None else eval_loss(session)
            if known is None or session.scored_at(steps) is None:  # else logged with the score
                log_metrics(session, {"step": steps, "eval_loss": result.eval_loss})
        if tuned is not None:
            write_eval(run.eval_dir("final"), tuned, run.read_metrics())
            classic = baseline() if baseline is not None else None
            if classic is not None:
                write_eval(run.eval_dir("baseline"), classic)
            result.evaluations = [r for r in (base, tuned, classic) if r is not None]
            result.metric = tuned.metric
            result.scores = {r.name: r.score for r in result.evaluations}
        saved = {f.name: getattr(result, f.name) for f in fields(result) if f.name != "evaluations"}
        write_json(run.root / "results.json", saved)
        return result


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
