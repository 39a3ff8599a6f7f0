"""`tunelab train`: a run from config to evaluated adapter, the same composition for every
task kind (what differs by kind comes from ``tasks.registry.TASKS``).

precision -> run directory -> model files -> data -> model with adapter -> (base score) ->
loop -> adapter, eval loss and scores. The loop lives in loop.py, the ending in finish.py.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from tunelab.config import RunConfig
from tunelab.config_file import dump_config
from tunelab.cpu.allocator import allocator_in_use
from tunelab.cpu.attention import takes_sample_boundaries
from tunelab.cpu.training import prepare_for_cpu_training
from tunelab.data.prepare import write_rejects
from tunelab.errors import Interrupted
from tunelab.models.load import attach_lora, load_tokenizer, set_activation_checkpointing
from tunelab.models.resolve import resolve_model
from tunelab.precision import base_dtype, fallback_notice, resolve_precision
from tunelab.report import print_data_report, write_eval
from tunelab.run_dir import RunDir, write_json
from tunelab.scoring import EvalResult
from tunelab.tasks.base import Task, TaskData
from tunelab.tasks.registry import TASKS
from tunelab.train.finish import TrainResult, finish
from tunelab.train.launch import main_alone
from tunelab.train.loop import run_loop
from tunelab.train.saving import restore_latest
from tunelab.train.session import Session, build_accelerator, build_session


@dataclass
class BuiltRun:
    """A run ready for its first step: the session, and what its ending needs."""

    session: Session
    tokenizer: Any
    base: EvalResult | None
    baseline: Callable[[], Any] | None


def train(
    config: RunConfig,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
) -> TrainResult:
    """Fine-tune ``config.model`` on ``config.data`` with LoRA; everything lands in the run dir."""
    started = time.perf_counter()
    built = build_run(config, resume, overwrite, console or Console())
    session = built.session
    with recorded_status(session.run, session.accelerator.is_main_process):
        start = restore_latest(session) if resume and session.run.list_checkpoints() else 0
        loaded = time.perf_counter()
        last = run_loop(session, start)
        session.timing = {"load_s": loaded - started, "train_s": time.perf_counter() - loaded}
        return finish(built.session, built.tokenizer, last, built.base, built.baseline)


@contextmanager
def recorded_status(run: RunDir, is_main: bool) -> Iterator[None]:
    """run.json says whether the run is running, finished, interrupted or failed, so a
    reader (the studio, after a restart too) knows without the process that wrote it."""
    if not is_main:
        yield
        return
    run.update_record(status="running", pid=os.getpid(), error=None)
    try:
        yield
    except (Interrupted, KeyboardInterrupt) as error:
        run.update_record(status="interrupted", error=str(error) or "interrupted")
        raise
    except BaseException as error:
        run.update_record(status="failed", error=str(error) or type(error).__name__)
        raise
    run.update_record(status="finished", error=None)


def build_run(
    config: RunConfig, resume: bool = False, overwrite: bool = False, console: Console | None = None
) -> BuiltRun:
    """Everything a run needs before its first step, whatever its task kind."""
    from accelerate.utils import set_seed

    task = TASKS[config.task]
    console = console or Console()
    run = RunDir(config.run_dir)
    precision = resolve_precision(config.train.precision)
    accelerator = build_accelerator(precision)
    if accelerator.is_main_process:
        say_settings(console, config, precision, accelerator.num_processes)
        run.start(resume, overwrite)
        if resume and not run.list_checkpoints():
            console.print(f"nothing to resume in {run.root}: starting from step 0")
        run.update_record(
            precision=precision_record(config, precision), allocator=allocator_in_use()
        )
    accelerator.wait_for_everyone()
    set_seed(config.train.seed)
    model_dir = resolve_model(config.model)
    tokenizer = load_tokenizer(model_dir, config.model.trust_remote_code)
    data = task.prepare(config, tokenizer)
    if accelerator.is_main_process:
        write_run_inputs(config, run, data, console)
    set_seed(config.train.seed)  # the adapter (and a class head) start from seeded weights
    model = build_model(task, model_dir, config, precision, data.labels, tokenizer)
    batcher = task.batcher(config, tokenizer, takes_sample_boundaries(model))
    loss = task.loss(model, config, data)
    samples = (data.train.samples, data.val.samples)
    session = build_session(config, run, accelerator, loss, samples, batcher, console)
    session.tokenizer = tokenizer
    session.scorer = task.scorer(config, tokenizer, data, batcher, accelerator.autocast)
    base = None
    if config.eval.compare_base and task.has_base_model and accelerator.is_main_process:
        base = score_base(task, session, tokenizer, data)
    return BuiltRun(session, tokenizer, base, task.baseline(config, data))


def say_settings(console: Console, config: RunConfig, precision: str, processes: int) -> None:
    """What a user may not expect: a precision replaced, the batch shared by processes."""
    notice = fallback_notice(config.train.precision, precision)
    if notice:
        console.print(f"[yellow]warning: {notice}[/yellow]")
    if processes > 1:
        share = config.train.batch_size / processes
        console.print(
            f"train.batch_size {config.train.batch_size} is the batch of all {processes} "
            f"processes: about {share:g} samples per process per micro-batch"
        )


def precision_record(config: RunConfig, precision: str) -> dict[str, str]:
    """The precision asked for and the one it resolved to, on which device."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {"requested": config.train.precision, "resolved": precision, "device": device}


def build_model(
    task: Task,
    model_dir: Path,
    config: RunConfig,
    precision: str,
    labels: list[str] | None = None,
    tokenizer: Any = None,
) -> Any:
    """The task's base model with a fresh LoRA adapter (frozen base, trainable adapter), made
    ready for this device."""
    model = task.load_base(model_dir, config, labels or [], tokenizer, base_dtype(precision))
    if config.train.checkpoint_every:
        set_activation_checkpointing(model, config.train.checkpoint_every)
    model.config.use_cache = False
    model = attach_lora(model, config.lora, task.adapter_type, task.trained_modules)
    prepare_for_cpu_training(model, precision, config.train.forward_tokens)
    return model


def write_run_inputs(config: RunConfig, run: RunDir, data: TaskData, console: Console) -> None:
    """config.yaml, data_report.json, rejects.jsonl (and labels.json), and the data report on
    screen."""
    run.config.write_text(dump_config(config), encoding="utf-8")
    write_json(run.data_report, data.report)
    if data.labels:
        run.write_labels(data.labels)
    write_rejects(run.rejects, data.rejects)
    print_data_report(console, data.report, data.rejects, run.rejects)


def score_base(task: Task, session: Session, tokenizer: Any, data: TaskData) -> EvalResult | None:
    """The base model (adapter off) on the eval rows, before training."""
    model, accelerator = session.model, session.accelerator
    with model.disable_adapter(), accelerator.autocast(), main_alone(accelerator.device):
        result = task.score_base(model, tokenizer, session.config, data)
    if result is not None:
        write_eval(session.run.eval_dir("base"), result)
    return result
