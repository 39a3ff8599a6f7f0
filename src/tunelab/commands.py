"""Commands that compose several steps over a finished run (kept out of the thin CLI)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from tunelab.config import RunConfig, load_config
from tunelab.data.prepare import load_examples, load_train_val, split_holdout
from tunelab.errors import TunelabError
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
    if config.task == "classify":
        return [run_classifier_eval(run, config, data, checkpoint, name, console)]
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
    from tunelab.baseline import is_label_task

    if is_label_task(config.eval):
        results.append(baseline_for(config, data))
    print_comparison(console, results)
    console.print(f"written to {run.eval_dir(label)}")
    return results


def run_classifier_eval(
    run: RunDir,
    config: RunConfig,
    data: Path | None,
    checkpoint: str | None,
    name: str | None,
    console: Console,
) -> object:
    """`tunelab eval` of a class head: accuracy, P/R/F1, confusion matrix on a table."""
    from tunelab.tasks.classify import (
        encode_texts,
        evaluate_classifier,
        inference_batcher,
        read_labelled,
        resolve_labels,
    )

    model, tokenizer, _ = load_for_inference(run.root, checkpoint)
    labels = json.loads(run.labels.read_text(encoding="utf-8"))["labels"]
    paths = [data] if data is not None else (config.data.val or config.data.train)
    texts, rejects = read_labelled(paths, config.data)
    if data is None and not config.data.val:
        _, texts = split_holdout(
            texts, config.data.val_fraction, config.data.split_seed, config.data.val_max_rows
        )
    texts, unknown = resolve_labels(texts, labels)
    split = encode_texts(tokenizer, texts, labels, config.data.max_length)
    batcher = inference_batcher(model, tokenizer.pad_token_id, config.train.forward_tokens)
    result = evaluate_classifier(model, split, labels, batcher, "fine-tuned")
    label = name or (data.stem if data else "val") + (f"-{checkpoint}" if checkpoint else "")
    for note in write_eval(run.eval_dir(label), result, run.read_metrics()):
        console.print(f"[yellow]{note}[/yellow]")
    print_comparison(console, [result, baseline_for(config, data)])
    if rejects or unknown:
        console.print(
            f"{len(rejects) + len(unknown)} rows skipped (no text, no label or an unknown label)"
        )
    console.print(f"written to {run.eval_dir(label)}")
    return result


def baseline_for(config: RunConfig, eval_rows: Path | None = None) -> Any:
    """TF-IDF + logistic regression on the config's training rows, scored on its eval rows
    (or on ``eval_rows``)."""
    from tunelab.baseline import classify_baseline, is_label_task, sft_baseline

    if config.task == "classify":
        from tunelab.tasks.classify import read_splits

        splits = read_splits(config.data, [eval_rows] if eval_rows else None)
        return classify_baseline(config.eval.metric, splits.train, splits.val, splits.labels)
    if not is_label_task(config.eval):
        raise TunelabError(
            "the classic baseline is for label tasks: set eval.metric to accuracy or macro_f1, "
            "or eval.choices"
        )
    train, val, _ = load_train_val(config.data)
    rows = load_examples([eval_rows], config.data.format).examples if eval_rows else val.examples
    return sft_baseline(config.eval, train.examples, rows)


def run_baseline(target: Path, console: Console) -> Any:
    """`tunelab baseline`: the classic model on a run's (or a config's) data."""
    is_run = target.is_dir()
    config = load_config(target / "config.yaml" if is_run else target)
    result = baseline_for(config)
    if is_run:
        write_eval(RunDir(target).eval_dir("baseline"), result)
    print_comparison(console, [result])
    console.print(f"trained in {result.seconds} s on {config.data.train[0].name}")
    return result
