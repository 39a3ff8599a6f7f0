"""What the studio shows of a run, read from its directory: the summary row, the curves, the
data report, evaluations, checkpoints and the dispatch simulation."""

from __future__ import annotations

import json
from contextlib import suppress
from pathlib import Path
from typing import Any

from tunelab.config_file import parse_yaml
from tunelab.run_dir import RunDir
from tunelab.studio.workspace import process_alive, read_json, run_status

SHOWN_REJECTS = 200
SHOWN_PREDICTIONS = 2000
LOG_TAIL_BYTES = 20_000


def run_config(run: RunDir) -> dict[str, Any]:
    """The resolved config the run wrote, else the config its launcher wrote."""
    for path in (run.config, run.launch_config):
        if path.is_file():
            try:
                value = parse_yaml(path.read_text(encoding="utf-8"))
            except (OSError, ValueError, UnicodeDecodeError):
                continue
            if isinstance(value, dict):
                return value
    return {}


def summary(run: RunDir) -> dict[str, Any]:
    """One row of the runs table (a local model named relative to the workspace)."""
    config = run_config(run)
    steps = [r for r in read_metrics(run) if "loss" in r]
    model = config.get("model")
    state = watched_state(run)
    results_speed = state.pop("results_tokens_per_s")
    row: dict[str, Any] = {
        "name": run.root.name,
        **state,
        "task": config.get("task", "sft"),
        "model": _shown_model(run, model.get("name") if isinstance(model, dict) else model),
        "step": steps[-1]["step"] if steps else 0,
        "planned_steps": config.get("train", {}).get("max_steps"),
        "tokens_per_s": results_speed or _last(steps, "tokens_per_s"),
    }
    if row["score"] is not None and row["baseline"] is not None:
        row["vs_baseline"] = round(row["score"] - row["baseline"], 4)
    return row


def watched_state(run: RunDir) -> dict[str, Any]:
    """What a followed run page redraws on: status, scores, evaluations, jobs (no curves)."""
    results = read_json(run.results)
    scores = results.get("scores") or {}
    return {
        **run_status(run),
        "metric": results.get("metric"),
        "score": scores.get("fine-tuned"),
        "baseline": scores.get("TF-IDF+LR"),
        "best": results.get("best"),
        "evaluations": evaluation_names(run),
        "jobs_running": running_jobs(run),
        "results_tokens_per_s": results.get("tokens_per_s"),
    }


def read_metrics(run: RunDir) -> list[dict[str, Any]]:
    """metrics.jsonl; a half-written last line is left for later."""
    return metrics_after(run, 0)[0]


def metrics_after(run: RunDir, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The metrics lines written from byte ``offset`` on, and the offset after the last whole
    line: a page that follows a run reads each line once."""
    if not run.metrics.is_file():
        return [], offset
    with run.metrics.open("rb") as handle:
        handle.seek(offset)
        text = handle.read()
    whole = text[: text.rfind(b"\n") + 1]  # the part after the last newline may be unfinished
    records = []
    for line in whole.decode("utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            records.append({})
    return records, offset + len(whole)


def detail(run: RunDir) -> dict[str, Any]:
    """Everything the run page shows at once (curves come by stream)."""
    return {
        **summary(run),
        "config": run_config(run),
        "data_report": read_json(run.data_report),
        "rejects": read_rejects(run),
        "evaluations": evaluation_names(run),
        "checkpoints": [p.name for p in run.list_checkpoints()],
        "has_best": (run.best / "adapter_config.json").is_file(),
        "has_adapter": (run.adapter / "adapter_config.json").is_file(),
        "results": read_json(run.results),
        "simulation": read_json(run.root / "eval" / "simulation" / "simulation.json"),
        "log": log_tail(run),
        "jobs": read_json(run.jobs_record),
    }


def running_jobs(run: RunDir) -> list[str]:
    """The studio's background jobs on this run (evaluate, merge) still running."""
    jobs = read_json(run.jobs_record)
    return sorted(job for job, record in jobs.items() if process_alive(record.get("pid")))


def read_rejects(run: RunDir) -> list[dict[str, Any]]:
    """The first rejected rows: file, line or row, field, reason."""
    return first_records(run.rejects, SHOWN_REJECTS)


def evaluation_names(run: RunDir) -> list[str]:
    """The evaluations the run holds (final, baseline, base, and any `tunelab eval --name`)."""
    folder = run.root / "eval"
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / "metrics.json").is_file())


def evaluation(run: RunDir, name: str) -> dict[str, Any]:
    """One evaluation's metrics and predictions, with the baseline's metrics beside it."""
    folder = run.eval_dir(name)
    return {
        "name": name,
        "metrics": read_json(folder / "metrics.json"),
        "baseline": read_json(run.eval_dir("baseline") / "metrics.json"),
        "predictions": read_predictions(folder / "predictions.jsonl"),
    }


def read_predictions(path: Path) -> list[dict[str, Any]]:
    """The first predictions of an evaluation, each with its status."""
    return first_records(path, SHOWN_PREDICTIONS)


def first_records(path: Path, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` JSON lines from the top of ``path`` (unreadable lines skipped)."""
    if not path.is_file():
        return []
    records: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if len(records) >= limit:
                break
            with suppress(ValueError):
                records.append(json.loads(line))
    return records


def log_tail(run: RunDir) -> str:
    """The end of what a launched process printed."""
    if not run.train_log.is_file():
        return ""
    with run.train_log.open("rb") as handle:
        handle.seek(max(0, run.train_log.stat().st_size - LOG_TAIL_BYTES))
        return handle.read().decode("utf-8", errors="replace")


def _shown_model(run: RunDir, name: Any) -> Any:
    """A model inside the workspace as the workspace-relative path the user typed."""
    workspace = run.root.parent.parent
    if isinstance(name, str) and Path(name).is_absolute():
        with suppress(ValueError):
            return Path(name).resolve().relative_to(workspace.resolve()).as_posix()
    return name


def _last(records: list[dict[str, Any]], key: str) -> Any:
    for record in reversed(records):
        if record.get(key) is not None:
            return record[key]
    return None
