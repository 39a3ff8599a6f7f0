"""`tunelab eval` and `tunelab baseline`: a finished run (and its base model, and the classic
baseline) scored on the same rows, the files written into the run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from tunelab.baseline import write_beside
from tunelab.config_file import load_config, plain_config
from tunelab.errors import TunelabError
from tunelab.report import print_comparison, write_eval
from tunelab.run_dir import RunDir
from tunelab.tasks.registry import TASKS
from tunelab.use.open import open_run


def run_eval(
    run_root: Path,
    data: Path | None,
    checkpoint: str | None,
    compare_base: bool,
    name: str | None,
    overrides: list[str],
    console: Console,
) -> list[Any]:
    """Score the run's model (and the base) on the same rows; write RUN/eval/NAME/.

    A merged (or any) model directory is scored too, on ``data``, with the default
    settings (and ``overrides``); its report goes to MODEL/eval/NAME/.
    """
    run = RunDir(run_root)
    if run.config.is_file():
        config = load_config(run.config, overrides)
    elif data is not None and (run.root / "config.json").is_file():
        config = plain_config(str(run.root), overrides)
    else:
        raise TunelabError(
            f"{run_root}: not a run directory (no config.yaml); a merged or other model "
            "directory is scored on --data FILE"
        )
    task = TASKS[config.task]
    label = name or (data.stem if data else "val") + (f"-{checkpoint}" if checkpoint else "")
    variants = [("base", True)] if compare_base and task.has_base_model else []
    if compare_base and not task.has_base_model:
        console.print("[yellow]a class head has no base model to compare with[/yellow]")
    results, rows = [], None
    for variant, base_only in [*variants, ("fine-tuned", False)]:
        opened = open_run(run_root, checkpoint, base_only, overrides=overrides)
        if rows is None:
            rows = task.eval_rows(config, opened.tokenizer, opened.labels, data)
        result = task.score(opened, rows, variant)
        folder = run.eval_dir(f"{label}-base" if base_only else label)
        for note in write_eval(folder, result, [] if base_only else run.read_metrics()):
            console.print(f"[yellow]{note}[/yellow]")
        results.append(result)
        del opened
    classic = task.classic(config, data) if config.data.train else None
    results += write_beside(run, f"{label}-", results[-1], classic)
    print_comparison(console, results)
    if rows is not None and rows.skipped:
        console.print(f"{rows.skipped} rows skipped (no text, no label or an unknown label)")
    console.print(f"written to {run.eval_dir(label)}")
    return results


def run_baseline(target: Path, console: Console) -> Any:
    """`tunelab baseline`: the classic model on a run's (or a config's) data."""
    is_run = target.is_dir()
    config = load_config(target / "config.yaml" if is_run else target)
    result = TASKS[config.task].classic(config)
    if result is None:
        raise TunelabError(
            "the classic baseline is for label tasks: set eval.metric to accuracy or macro_f1, "
            "or eval.choices"
        )
    if is_run:
        write_eval(RunDir(target).eval_dir("baseline"), result)
    print_comparison(console, [result])
    console.print(f"trained in {result.seconds} s on {config.data.train[0].name}")
    return result
