"""Everything a run writes that it must be able to trust later: checkpoints (verified on
resume, the newest intact one taken), the final and best adapters, each written atomically,
never with non-finite weights, never into a disk without the room for it."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.run_dir import atomic_directory
from tunelab.train.checkpoint import (
    TrainingState,
    adapter_is_finite,
    checkpoint_problem,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from tunelab.train.pacing import keep_budget_plan
from tunelab.train.session import Session

MIB = 2**20


class Diverged(TunelabError):
    """Training produced non-finite numbers; the last saved state is intact."""

    exit_code = 1


class OutOfSpace(TunelabError):
    """A save did not fit on the disk; the last saved state is intact."""

    exit_code = 1


def save(session: Session, step: int, rng: dict[str, Any]) -> Path:
    """A checkpoint of the state after ``step`` completed steps, written by the main process
    with every process's ``rng``; every process must call it."""
    from accelerate.utils import gather_object

    every_rng = gather_object([rng])
    budget = session.budget.to_dict() if session.budget is not None else None
    state = TrainingState(
        step, session.scheduler.state_dict(), every_rng, session.best or None, budget
    )
    path = session.run.checkpoint(step)
    if session.accelerator.is_main_process:
        refuse_non_finite(session, step)
        with room_for(session, path, checkpoint_bytes(session)):
            path = save_checkpoint(
                session.run,
                session.model,
                session.optimizer,
                state,
                session.config.train.keep_checkpoints,
            )
    session.accelerator.wait_for_everyone()
    session.saved_step = step
    return path


def save_adapter(session: Session, target: Path, tokenizer: Any = None) -> None:
    """The adapter (with the tokenizer and label set when given) written atomically at
    ``target``: the final adapter or best/."""
    refuse_non_finite(session, None)
    with room_for(session, target, adapter_bytes(session)), atomic_directory(target) as staging:
        session.model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
            if session.run.labels.exists():
                shutil.copy(session.run.labels, staging / "labels.json")


def refuse_non_finite(session: Session, step: int | None) -> None:
    """Raise ``Diverged`` rather than write weights that are not finite numbers."""
    if adapter_is_finite(session.model):
        return
    found = session.run.list_checkpoints()
    last = f"the last checkpoint, {found[-1]}, is intact" if found else "no checkpoint was saved"
    when = f"at step {step}" if step is not None else "at the end"
    raise Diverged(
        f"training diverged: the adapter's weights are not finite {when}, so they were not "
        f"saved; {last}. {what_to_try(session)}"
    )


def what_to_try(session: Session) -> str:
    """Settings that tame a diverging run."""
    cfg = session.config.train
    return (
        f"Try a lower train.learning_rate (now {cfg.learning_rate:g}), gradient clipping "
        f"(train.max_grad_norm, now {cfg.max_grad_norm}) or precision fp32 (now "
        f"{cfg.precision})."
    )


class room_for:  # noqa: N801 - a context manager read as a phrase: `with room_for(...)`
    """Check the free space before a save of about ``needed`` bytes, and turn a disk that
    fills up during it into ``OutOfSpace`` (the staging folder is already removed)."""

    def __init__(self, session: Session, target: Path, needed: int) -> None:
        self.session, self.target, self.needed = session, target, needed

    def __enter__(self) -> None:
        free = shutil.disk_usage(_existing(self.target)).free
        if free < self.needed:
            raise self._error(free)

    def __exit__(self, kind: type | None, error: BaseException | None, trace: Any) -> bool:
        if error is not None and _is_disk_full(error):
            raise self._error(shutil.disk_usage(_existing(self.target)).free) from None
        return False

    def _error(self, free: int) -> OutOfSpace:
        found = self.session.run.list_checkpoints()
        last = f"{found[-1].name} is intact" if found else "no checkpoint was saved yet"
        return OutOfSpace(
            f"not enough disk space to save {self.target.name} in {self.target.parent}: "
            f"about {self.needed / MIB:.1f} MiB needed, {free / MIB:.1f} MiB free; {last}. "
            "Free some space, then continue with the same command and --resume."
        )


def checkpoint_bytes(session: Session) -> int:
    """About what the next checkpoint takes: the last one's size, else the trainable
    weights and the optimizer's state."""
    found = session.run.list_checkpoints()
    if found:
        return sum(p.stat().st_size for p in found[-1].rglob("*") if p.is_file())
    state = sum(
        value.numel() * value.element_size()
        for values in session.optimizer.state.values()
        for value in values.values()
        if hasattr(value, "numel")
    )
    return adapter_bytes(session) + state + MIB


def adapter_bytes(session: Session) -> int:
    """The trainable weights' size, with room for the configs beside them."""
    trainable = (p for p in session.model.parameters() if p.requires_grad)
    return sum(p.numel() * p.element_size() for p in trainable) + MIB


def restore_latest(session: Session) -> int:
    """Load the newest intact checkpoint into the session; returns the step it was taken at.

    Each checkpoint is verified against its manifest and loaded; one that fails is skipped,
    saying why, and the next older one is tried.
    """
    skipped = []
    for path in reversed(session.run.list_checkpoints()):
        problem = checkpoint_problem(path)
        state = None if problem else _try_load(session, path)
        if state is None:
            problem = problem or "it does not load"
        elif not adapter_is_finite(session.model):
            problem, state = "its adapter holds non-finite weights", None
        if state is not None:
            _announce(session, path, skipped)
            _restore_state(session, path, state)
            return state.step
        skipped.append(f"{path.name}: {problem}")
        _say(session, f"[yellow]skipping {path.name}: {problem}[/yellow]")
    reasons = "".join(f"\n  {line}" for line in skipped) or " (there is none)"
    raise TunelabError(
        f"{session.run.checkpoints}: no intact checkpoint to resume from{reasons}\n"
        "Start again with --overwrite."
    )


def _try_load(session: Session, path: Path) -> TrainingState | None:
    try:
        return load_checkpoint(path, session.model, session.optimizer)
    except Exception as error:  # a damaged file fails in many libraries' own ways
        _say(session, f"[yellow]{path.name} does not load: {_first_line(error)}[/yellow]")
        return None


def _restore_state(session: Session, path: Path, state: TrainingState) -> None:
    session.scheduler.load_state_dict(state.scheduler)
    rank, processes = session.accelerator.process_index, session.accelerator.num_processes
    if len(state.rng) != processes:
        _say(
            session,
            f"[yellow]{path.name} was saved by {len(state.rng)} process(es) and this run has "
            f"{processes}: samples fall to other processes, so the run goes on but does not "
            "repeat an uninterrupted one exactly[/yellow]",
        )
    restore_rng(state.rng[rank % len(state.rng)])
    session.best = state.best or {}
    keep_budget_plan(session, state.budget)
    session.resumed_from = session.saved_step = state.step
    if session.accelerator.is_main_process:
        dropped = session.run.truncate_metrics(state.step)
        if dropped:
            _say(session, f"{dropped} metrics line(s) after step {state.step} dropped")


def _announce(session: Session, path: Path, skipped: list[str]) -> None:
    if skipped:
        _say(session, f"resuming from {path.name}, the newest intact checkpoint")


def _say(session: Session, text: str) -> None:
    if session.accelerator.is_main_process:
        session.display.console.print(text)


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _is_disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    return "No space left on device" in str(error)  # safetensors' own error type


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
