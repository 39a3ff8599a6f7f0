"""What a user reads: the data report, and the result of a run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tunelab.data.readers import Reject

SHOWN_REJECTS = 5


def print_data_report(
    console: Console, report: dict[str, Any], rejects: Sequence[Reject], rejects_path: Path | None
) -> None:
    """Kept / rejected / truncated per split, token-length percentiles, the first rejects."""
    table = Table(title=f"data (max_length {report['max_length']})", title_justify="left")
    for column in ("split", "kept", "rejected", "truncated", "p50", "p90", "p99", "max tokens"):
        table.add_column(column, justify="right" if column != "split" else "left")
    for split in ("train", "val"):
        if split not in report:
            continue
        summary = report[split]
        tokens = summary["tokens"]
        table.add_row(
            split,
            str(summary["kept"]),
            str(summary["rejected"]),
            str(summary["truncated"]),
            *(str(tokens.get(key, "-")) for key in ("p50", "p90", "p99", "max")),
        )
    console.print(table)
    for file in report.get("files", []):
        console.print(
            f"  {file['path']}: {file['format']} format, {file['rows']} rows read, "
            f"{file['rejected']} rejected by the format"
        )
    origin = report.get("val", {}).get("origin", {})
    if origin.get("from") == "split of train":
        console.print(
            f"  val: {report['val']['kept']} rows held out of train "
            f"(fraction {origin['fraction']}, seed {origin['seed']})"
        )
    if rejects:
        console.print(f"[yellow]{len(rejects)} row(s) rejected[/yellow]")
        for reject in rejects[:SHOWN_REJECTS]:
            console.print(f"  {reject}", markup=False)
        if rejects_path is not None:
            console.print(f"  all of them: {rejects_path}")


def print_scores(console: Console, metric: str, scores: dict[str, float], rows: int | None) -> None:
    """Base vs fine-tuned on the same rows, side by side."""
    table = Table(
        title=f"held-out {metric}" + (f" ({rows} rows)" if rows else ""), title_justify="left"
    )
    table.add_column("model")
    table.add_column(metric, justify="right")
    for name, score in scores.items():
        label = {"base": "base model (before)", "tuned": "fine-tuned (after)"}.get(name, name)
        table.add_row(label, f"{score:.3f}")
    console.print(table)
