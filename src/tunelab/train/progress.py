"""Live training progress: a rich bar on a terminal, plain lines in a log."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PLAIN_LINES = 20  # lines a non-terminal run prints over its whole length


class TrainDisplay:
    """Shows step/total, loss, learning rate, real tokens/s and the time left."""

    def __init__(self, console: Console, total_steps: int, enabled: bool = True) -> None:
        self.console = console
        self.total = total_steps
        self.enabled = enabled
        self.progress: Progress | None = None
        self.task_id: Any = None
        self.tokens = 0
        self.seconds = 0.0
        self.every = max(1, total_steps // PLAIN_LINES)
        self.started = time.perf_counter()

    def start(self, step: int) -> None:
        """Begin showing progress from ``step`` (non-zero on resume)."""
        if not self.enabled or not self.console.is_terminal:
            return
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "epoch {task.fields[epoch]}  loss {task.fields[loss]}  lr {task.fields[lr]}  "
                "{task.fields[speed]} tok/s"
            ),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task_id = self.progress.add_task(
            "train", total=self.total, completed=step, epoch="-", loss="-", lr="-", speed="-"
        )
        self.progress.start()

    def update(self, step: int, record: dict[str, float], epoch: float = 0.0) -> None:
        """Show the step just finished (``epoch``: epochs completed)."""
        if not self.enabled:
            return
        self.tokens += int(record["real_tokens"])
        self.seconds += record["seconds"]
        fields = {
            "epoch": f"{epoch:.2f}",
            "loss": f"{record['loss']:.4f}",
            "lr": f"{record['lr']:.2e}",
            "speed": f"{self.tokens / max(self.seconds, 1e-9):,.0f}",
        }
        if self.progress is not None:
            self.progress.update(self.task_id, completed=step, **fields)
        elif step % self.every == 0 or step == self.total:
            elapsed = time.perf_counter() - self.started
            self.console.print(
                f"step {step}/{self.total}  epoch {fields['epoch']}  loss {fields['loss']}  "
                f"lr {fields['lr']}  {fields['speed']} tok/s  {elapsed:,.0f} s"
            )

    def set_total(self, total_steps: int) -> None:
        """A new plan's end (a budgeted run plans once its first steps are timed)."""
        self.total = total_steps
        self.every = max(1, total_steps // PLAIN_LINES)
        if self.progress is not None:
            self.progress.update(self.task_id, total=total_steps)

    def stop(self) -> None:
        """Leave the final state of the bar on screen."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    @property
    def tokens_per_second(self) -> float:
        """Real (non-padding) tokens per second over the steps shown."""
        return self.tokens / self.seconds if self.seconds else 0.0
