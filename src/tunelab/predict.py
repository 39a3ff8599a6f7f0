"""`tunelab predict`: answers for every row of a file, every input column kept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tunelab.data.encode import encode_prompt
from tunelab.data.formats import RowError, detect_prompt_format, prompt_of
from tunelab.data.readers import read_rows
from tunelab.data.tables import write_records
from tunelab.errors import TunelabError
from tunelab.evaluate import answer_format
from tunelab.generate import GenerationOptions, generate_texts
from tunelab.models import load_for_inference

WRITERS = (".jsonl", ".csv", ".xlsx")


def predict_file(
    run_root: Path,
    source: Path,
    output: Path,
    checkpoint: str | None = None,
    sheet: str | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Generate an answer per row of ``source`` into ``output`` (.jsonl, .csv or .xlsx).

    The output holds each input row's columns plus `prediction`; a row that has no usable
    prompt keeps its columns, gets an empty prediction and an `error`, and is counted.
    """
    if output.suffix.lower() not in WRITERS:
        raise TunelabError(f"{output}: write .jsonl, .csv or .xlsx")
    console = console or Console()
    read = read_rows(source, sheet)
    model, tokenizer, config = load_for_inference(run_root, checkpoint)
    if config.task == "classify":
        records = classify_records(model, tokenizer, config, read.rows, run_root)
        write_records(output, records)
        return _summary(records, read, output)
    format_name = detect_prompt_format(read.rows)
    if format_name is None:
        raise TunelabError(f"{source}: no prompts; expected instruction, conversations or messages")
    prompts: dict[int, list[int]] = {}
    records = [dict(row.data) for row in read.rows]
    for index, row in enumerate(read.rows):
        try:
            messages = prompt_of(row.data, format_name)
            prompts[index] = encode_prompt(tokenizer, messages, thinking=config.eval.thinking)
        except RowError as error:
            records[index]["error"] = f"{row.source}: {error.field or 'row'}: {error.reason}"
    options = GenerationOptions(
        config.eval.max_new_tokens,
        config.eval.batch_size,
        config.eval.temperature,
        config.eval.top_p,
        config.eval.seed,
        tuple(config.eval.stop),
    )
    answer = answer_format(config.eval)
    formats = [answer] * len(prompts) if config.eval.constrain and answer.defined else None
    with _bar(console, len(prompts)) as (progress, task):
        outputs = generate_texts(
            model,
            tokenizer,
            list(prompts.values()),
            options,
            formats,
            on_batch=lambda n: progress.advance(task, n),
        )
    for index, text in zip(prompts, outputs, strict=True):
        records[index]["prediction"] = text
    write_records(output, records)
    return _summary(records, read, output)


def classify_records(
    model: Any, tokenizer: Any, config: Any, rows: list[Any], run_root: Path
) -> list[dict[str, Any]]:
    """A label and one probability column per class for each row with a text (batched)."""
    from tunelab.tasks.classify import ClassSample, inference_batcher, predict_classes

    labels = json.loads((run_root / "labels.json").read_text(encoding="utf-8"))["labels"]
    column = config.data.text_column
    records = [dict(row.data) for row in rows]
    usable = [i for i, row in enumerate(rows) if str(row.data.get(column, "")).strip()]
    for index in set(range(len(rows))) - set(usable):
        records[index]["error"] = f"{rows[index].source}: {column}: missing or empty text"
    samples = []
    for index in usable:
        ids = tokenizer(str(rows[index].data[column]))["input_ids"][: config.data.max_length]
        samples.append(ClassSample(ids, 0, len(ids)))
    batcher = inference_batcher(model, tokenizer.pad_token_id, config.train.forward_tokens)
    probabilities = predict_classes(model, samples, batcher)
    for index, row_probabilities in zip(usable, probabilities.tolist(), strict=True):
        best = max(range(len(labels)), key=lambda i: row_probabilities[i])
        records[index]["prediction"] = labels[best]
        records[index].update(
            {f"p_{label}": round(p, 4) for label, p in zip(labels, row_probabilities, strict=True)}
        )
    return records


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
