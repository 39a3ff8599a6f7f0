"""`tunelab sweep`: the same config trained on growing prefixes of its training data.

Each fraction is a full run of its own (`<name>-f<fraction>`); the sweep collects the number
of training samples and the headline metric of each (with the baseline where the task has
one) into sweep.json / sweep.csv and a plot of the metric against the training samples.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tunelab.config_file import load_config
from tunelab.run_dir import write_json


def parse_fractions(text: str) -> list[float]:
    """`0.25,0.5,1.0` -> [0.25, 0.5, 1.0], each in (0, 1]."""
    values = [float(part) for part in text.split(",") if part.strip()]
    if not values or any(not 0 < v <= 1 for v in values):
        raise ValueError(f"expected fractions in (0, 1] separated by commas, got {text!r}")
    return sorted(set(values))


def run_sweep(
    config_path: Path,
    fractions: Sequence[float],
    overrides: Sequence[str],
    overwrite: bool,
    console: Console,
) -> list[dict[str, Any]]:
    """Train and evaluate once per fraction; write and print the sweep."""
    from tunelab.train.run import train

    base = load_config(config_path, list(overrides))
    name = base.name or config_path.stem
    points = []
    for fraction in fractions:
        settings = load_config(
            config_path, [*overrides, f"data.train_fraction={fraction}", f"name={name}-f{fraction}"]
        )
        console.rule(f"train_fraction {fraction}")
        result = train(settings, overwrite=overwrite, console=console)
        report = json.loads((Path(result.run_dir) / "data_report.json").read_text("utf-8"))
        points.append(
            {
                "fraction": fraction,
                "train_samples": report["train"]["kept"],
                "steps": result.steps,
                "metric": result.metric,
                **{f"score:{k}": v for k, v in result.scores.items()},
                "run_dir": result.run_dir,
            }
        )
    folder = base.output_dir / f"{name}-sweep"
    write_sweep(folder, points)
    _print(console, points)
    console.print(f"written to {folder} (sweep.json, sweep.csv, sweep.png)")
    return points


def write_sweep(folder: Path, points: list[dict[str, Any]]) -> None:
    """sweep.json, sweep.csv and sweep.png."""
    write_json(folder / "sweep.json", points)
    columns = list(dict.fromkeys(k for p in points for k in p))
    with (folder / "sweep.csv").open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        writer.writerows(points)
    _plot(folder / "sweep.png", points)


def _plot(path: Path, points: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.5, 4))
    series = [k for k in dict.fromkeys(k for p in points for k in p) if k.startswith("score:")]
    for key in series:
        shown = [(p["train_samples"], p[key]) for p in points if key in p]
        axes.plot([s[0] for s in shown], [s[1] for s in shown], marker="o", label=key[6:])
    axes.set_xlabel("training samples")
    axes.set_ylabel(points[0]["metric"] if points else "metric")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _print(console: Console, points: list[dict[str, Any]]) -> None:
    table = Table(title="data-size sweep", title_justify="left")
    series = [k for k in dict.fromkeys(k for p in points for k in p) if k.startswith("score:")]
    for column in ("fraction", "train samples", "steps", *(s[6:] for s in series)):
        table.add_column(column, justify="right")
    for p in points:
        values = [f"{p[s]:.4f}" if s in p else "-" for s in series]
        table.add_row(str(p["fraction"]), str(p["train_samples"]), str(p["steps"]), *values)
    console.print(table)
