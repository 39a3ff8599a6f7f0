"""`tunelab predict`: a prediction for every row of a file, every input column kept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tunelab.data.readers import read_rows
from tunelab.data.tables import write_records
from tunelab.errors import TunelabError
from tunelab.use.open import open_run

WRITERS = (".jsonl", ".csv", ".xlsx")


def predict_file(
    run_root: Path,
    source: Path,
    output: Path,
    checkpoint: str | None = None,
    sheet: str | None = None,
    console: Console | None = None,
    text_column: str | None = None,
) -> dict[str, Any]:
    """Predict for every row of ``source`` into ``output`` (.jsonl, .csv or .xlsx): an answer,
    or a label with its probabilities for a class-head run.

    The output holds each input row's columns plus `prediction`; a row that has no usable
    prompt keeps its columns, gets an empty prediction and an `error`, and is counted. A
    class head reads ``text_column`` (default: the column it was trained on). When no row
    could be predicted, the output is still written and the call fails, saying why.
    """
    if output.suffix.lower() not in WRITERS:
        raise TunelabError(f"{output}: write .jsonl, .csv or .xlsx")
    console = console or Console()
    read = read_rows(source, sheet)
    overrides = [f"data.text_column={json.dumps(text_column)}"] if text_column else []
    opened = open_run(run_root, checkpoint, overrides=overrides)
    with _bar(console, len(read.rows)) as (progress, task):
        try:
            records = opened.task.predict(opened, read.rows, lambda n: progress.advance(task, n))
        except TunelabError as error:
            raise TunelabError(f"{source}: {error}") from None
    write_records(output, records)
    summary = _summary(records, read, output)
    if records and not summary["predicted"]:
        first = next((r["error"] for r in records if "error" in r), "no prompt")
        raise TunelabError(
            f"{source}: no row could be predicted ({len(records)} rows; first: {first}); "
            f"the rows are in {output} with an `error` column"
            + ("; name the text column with --text-column" if opened.labels else "")
        )
    return summary


def _summary(records: list[dict[str, Any]], read: Any, output: Path) -> dict[str, Any]:
    predicted = sum("prediction" in r and "error" not in r for r in records)
    return {
        "rows": len(records) + len(read.rejects),
        "predicted": predicted,
        "without prompt": len(records) - predicted,
        "unreadable": len(read.rejects),
        "output": str(output),
    }


class _bar:  # noqa: N801 - a context manager read as a phrase: `with _bar(...)`
    def __init__(self, console: Console, total: int) -> None:
        self.progress = Progress(
            TextColumn("[bold]predict"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not console.is_terminal,
        )
        self.total = total

    def __enter__(self) -> tuple[Progress, Any]:
        self.progress.start()
        return self.progress, self.progress.add_task("predict", total=self.total)

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()
