"""Commands that compose several steps over a finished run (kept out of the thin CLI)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from tunelab.config import load_config
from tunelab.data.prepare import load_examples, load_train_val
from tunelab.evaluate import evaluate_generation
from tunelab.models import load_for_inference
from tunelab.report import print_comparison, write_eval
from tunelab.run_dir import RunDir


def run_eval(
    run_root: Path,
    data: Path | None,
    checkpoint: str | None,
    compare_base: bool,
    name: str | None,
    overrides: list[str],
    console: Console,
) -> list[object]:
    """`tunelab eval`: score the run's model (and the base) on the same rows, write the files."""
    run = RunDir(run_root)
    config = load_config(run.config, overrides)
    if data is not None:
        examples = load_examples([data], config.data.format, config.data.sheet).examples
    else:
        examples = load_train_val(config.data)[1].examples
    label = name or (data.stem if data else "val") + (f"-{checkpoint}" if checkpoint else "")
    results = []
    variants = [("base", True)] if compare_base else []
    for variant, base_only in [*variants, ("fine-tuned", False)]:
        model, tokenizer, _ = load_for_inference(run_root, checkpoint, base_only=base_only)
        result = evaluate_generation(model, tokenizer, examples, config.eval, variant)
        folder = run.eval_dir(f"{label}-base" if base_only else label)
        for note in write_eval(folder, result, [] if base_only else run.read_metrics()):
            console.print(f"[yellow]{note}[/yellow]")
        results.append(result)
        del model
    print_comparison(console, results)
    console.print(f"written to {run.eval_dir(label)}")
    return results
