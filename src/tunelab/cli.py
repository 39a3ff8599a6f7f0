"""The `tunelab` command: parses arguments, calls one function per command, prints the result.

Heavy libraries (torch, transformers) are imported inside commands so `--help` is instant.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from tunelab.errors import Interrupted, TunelabError

app = typer.Typer(
    help="Fine-tune small open LLMs with LoRA: validated data in, an evaluated adapter out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Check data files and build data sets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
behavior_app = typer.Typer(
    help="Next-event prediction from activity logs: samples, baselines, dispatch simulation.",
    no_args_is_help=True,
)
app.add_typer(behavior_app, name="behavior")
console = Console()

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key: --set train.max_steps=10 (repeatable)."),
]


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="The run's YAML config.")],
    overrides: SetOption = None,
    model: Annotated[
        str | None, typer.Option(help="Model spec; same as --set model.name=...")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint.")] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Delete an existing run of the same name.")
    ] = False,
    nproc: Annotated[
        int, typer.Option(help="Data-parallel processes on this machine (accelerate launch).")
    ] = 1,
) -> None:
    """Fine-tune with LoRA as CONFIG says; the run directory holds everything it writes."""
    if nproc > 1:
        from tunelab.launch import relaunch, without_option

        sys.exit(relaunch(nproc, without_option(sys.argv[1:], "--nproc")))
    from tunelab.config import load_config
    from tunelab.report import print_comparison
    from tunelab.train import train as run_training

    _quiet_libraries()
    settings = load_config(
        config, [*(overrides or []), *([f"model.name={model}"] if model else [])]
    )
    result = run_training(settings, resume=resume, overwrite=overwrite, console=console)
    if not result.is_main:
        return
    if result.evaluations:
        print_comparison(console, result.evaluations)
    if result.best:
        best = result.best
        console.print(f"best {settings.eval.metric} {best['score']:.4f} at step {best['step']}")
    console.print(
        f"steps {result.steps}  final train loss {result.train_loss}  "
        f"eval loss {result.eval_loss}  "
        f"{result.tokens_per_s:,.0f} real tokens/s"
    )
    console.print(f"run directory: {result.run_dir}  (adapter: {result.run_dir}/adapter)")


@data_app.command("check")
def data_check(
    files: Annotated[list[Path], typer.Argument(help="Data files (.json, .jsonl, .csv, .xlsx).")],
    model: Annotated[
        str, typer.Option(help="Model whose tokenizer measures lengths.")
    ] = "smollm2-135m",
    max_length: Annotated[int, typer.Option(help="Length beyond which rows are cut.")] = 1024,
    format: Annotated[str, typer.Option(help="auto, alpaca, sharegpt or messages.")] = "auto",
    sheet: Annotated[str | None, typer.Option(help="Excel sheet (default: the first).")] = None,
    rejects: Annotated[
        Path | None, typer.Option(help="Write every rejected row here (JSONL).")
    ] = None,
) -> None:
    """Validate data files and report counts, rejects and token lengths, without training."""
    from tunelab.config import DataConfig, ModelConfig
    from tunelab.data.prepare import load_examples, write_rejects
    from tunelab.models import load_tokenizer, resolve_model
    from tunelab.report import print_data_report
    from tunelab.tasks.sft import encode_examples, split_summary

    _quiet_libraries()
    data = DataConfig(train=files, format=format, sheet=sheet, max_length=max_length)
    loaded = load_examples(data.train, data.format, data.sheet)
    tokenizer = load_tokenizer(resolve_model(ModelConfig(name=model)))
    encoded = encode_examples(tokenizer, loaded.examples, max_length)
    all_rejects = loaded.rejects + encoded.rejects
    report = {
        "max_length": max_length,
        "files": [vars(f) for f in loaded.files],
        "train": split_summary(encoded) | {"rejected": len(all_rejects)},
    }
    if rejects is not None:
        write_rejects(rejects, all_rejects)
    print_data_report(console, report, all_rejects, rejects)
    if all_rejects and rejects is None:
        console.print("  write them all with --rejects FILE")


@data_app.command("build")
def data_build(
    name: Annotated[str, typer.Argument(help="Data set to build: sentiment or xiehouyu.")],
    output: Annotated[Path, typer.Option(help="Folder for train.jsonl and test.jsonl.")],
    train_rows: Annotated[
        int, typer.Option(help="Training rows (balanced where labelled).")
    ] = 2000,
    test_rows: Annotated[int, typer.Option(help="Held-out rows.")] = 400,
    seed: Annotated[int, typer.Option(help="Seed of sampling and split.")] = 42,
) -> None:
    """Build a real instruction data set from an installed package, reproducibly."""
    from tunelab.data.corpora import build_corpus

    summary = build_corpus(name, output, train_rows, test_rows, seed)
    for key, value in summary.items():
        console.print(f"{key}: {value}")


RunArgument = Annotated[Path, typer.Argument(help="A run directory (runs/NAME).")]
CheckpointOption = Annotated[
    str | None, typer.Option(help="final (default), best, or a step number of a saved checkpoint.")
]


@app.command("eval")
def evaluate(
    run: RunArgument,
    data: Annotated[
        Path | None, typer.Option(help="Rows to score (default: the run's val split).")
    ] = None,
    checkpoint: CheckpointOption = None,
    compare_base: Annotated[
        bool, typer.Option(help="Score the base model on the same rows too.")
    ] = False,
    name: Annotated[str | None, typer.Option(help="Folder name under RUN/eval/.")] = None,
    overrides: SetOption = None,
) -> None:
    """Generate answers for held-out rows and score them; writes RUN/eval/NAME/."""
    from tunelab.commands import run_eval

    _quiet_libraries()
    run_eval(run, data, checkpoint, compare_base, name, overrides or [], console)


@app.command()
def predict(
    run: RunArgument,
    input: Annotated[
        Path, typer.Option("--input", help="Rows to answer (.jsonl, .json, .csv, .xlsx).")
    ],
    output: Annotated[Path, typer.Option("--output", help="Where to write (.jsonl, .csv, .xlsx).")],
    checkpoint: CheckpointOption = None,
    sheet: Annotated[str | None, typer.Option(help="Excel sheet to read.")] = None,
) -> None:
    """Answer every row of a file; the output keeps every input column plus `prediction`."""
    from tunelab.predict import predict_file

    _quiet_libraries()
    summary = predict_file(run, input, output, checkpoint, sheet, console)
    console.print("  ".join(f"{key}: {value}" for key, value in summary.items()))


@app.command()
def chat(
    run: RunArgument,
    base: Annotated[
        bool, typer.Option(help="Talk to the base model, without the adapter.")
    ] = False,
    checkpoint: CheckpointOption = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer.")] = 256,
) -> None:
    """Chat in the terminal with streamed answers (/reset, /system TEXT, /exit)."""
    from tunelab.chat import ChatSession, run_repl
    from tunelab.models import load_for_inference

    _quiet_libraries()
    model, tokenizer, config = load_for_inference(run, checkpoint, base_only=base)
    session = ChatSession(model, tokenizer, max_new_tokens, config.eval.thinking)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    run_repl(session, input, write)


@app.command()
def merge(
    run: RunArgument,
    output: Annotated[Path, typer.Option(help="Folder for the merged model.")],
    checkpoint: CheckpointOption = None,
) -> None:
    """Fold the adapter into the base: a model directory plain transformers loads."""
    from tunelab.models import merge_adapter

    _quiet_libraries()
    summary = merge_adapter(run, output, checkpoint)
    console.print(
        f"merged into {summary['output']}: logits match base + adapter within "
        f"{summary['max_logit_difference']:.1e}; chat template round trip checked"
    )


@data_app.command("sample")
def data_sample(
    file: Annotated[Path, typer.Argument(help="A table (.jsonl, .json, .csv, .xlsx).")],
    labels: Annotated[str, typer.Option(help='Quotas per label: "正常:15000,政治安全:6000".')],
    output: Annotated[Path, typer.Option(help="Where to write (.jsonl, .csv, .xlsx).")],
    label_column: Annotated[str, typer.Option(help="The label column.")] = "label",
    seed: Annotated[int, typer.Option(help="Seed of the draw.")] = 42,
    sheet: Annotated[str | None, typer.Option(help="Excel sheet to read.")] = None,
) -> None:
    """Draw a number of rows per label, at random with a seed."""
    from tunelab.data.readers import read_rows
    from tunelab.data.tables import parse_quotas, sample_per_label, write_records

    read = read_rows(file, sheet)
    rows = sample_per_label([r.data for r in read.rows], label_column, parse_quotas(labels), seed)
    write_records(output, rows)
    console.print(
        f"{len(rows)} rows written to {output} ({len(read.rejects)} unreadable rows skipped)"
    )


@data_app.command("split")
def data_split(
    file: Annotated[Path, typer.Argument(help="A table (.jsonl, .json, .csv, .xlsx).")],
    output: Annotated[Path, typer.Option(help="Folder for train / val / test files.")],
    val: Annotated[float, typer.Option(help="Share of rows for val.")] = 0.1,
    test: Annotated[float, typer.Option(help="Share of rows for test.")] = 0.1,
    label_column: Annotated[str, typer.Option(help="The label column (stratification).")] = "label",
    text_column: Annotated[str, typer.Option(help="The text column (duplicates).")] = "text",
    seed: Annotated[int, typer.Option(help="Seed of the split.")] = 42,
    sheet: Annotated[str | None, typer.Option(help="Excel sheet to read.")] = None,
) -> None:
    """Stratified train/val/test split; texts repeated across splits are removed and counted."""
    from tunelab.data.readers import read_rows
    from tunelab.data.tables import remove_cross_split_duplicates, stratified_split, write_records

    read = read_rows(file, sheet)
    parts = stratified_split([r.data for r in read.rows], label_column, val, test, seed)
    splits, report = remove_cross_split_duplicates(
        dict(zip(("train", "val", "test"), parts, strict=True)), text_column
    )
    suffix = file.suffix if file.suffix in (".jsonl", ".csv", ".xlsx") else ".jsonl"
    for name, rows in splits.items():
        write_records(output / f"{name}{suffix}", rows)
        removed = f"{report.exact[name]} exact + {report.normalised[name]} near duplicates"
        console.print(f"{name}: {len(rows)} rows ({removed} of earlier splits removed)")


@data_app.command("pull-mongo")
def data_pull_mongo(
    db: Annotated[str, typer.Option(help="Database name.")],
    collection: Annotated[str, typer.Option(help="Collection name.")],
    fields: Annotated[str, typer.Option(help="Fields to keep, comma-separated: text_cn,n_labels.")],
    labels: Annotated[str, typer.Option(help='Quotas per label: "A:100,B:50".')],
    output: Annotated[Path, typer.Option(help="Where to write (.jsonl, .csv, .xlsx).")],
    uri: Annotated[
        str | None, typer.Option(help="mongodb://host:port (credentials: in it or MONGODB_* env).")
    ] = None,
    label_field: Annotated[
        str | None, typer.Option(help="Field of the label (default: the last of --fields).")
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Seed of the order (and of the draw with --exact-seed).")
    ] = 42,
    exact_seed: Annotated[
        bool, typer.Option(help="Draw the _ids here with the seed: reproducible.")
    ] = False,
) -> None:
    """Sample documents per label from MongoDB ($match + $sample in the database) into a file."""
    from tunelab.data.mongo import connect, pull_per_label
    from tunelab.data.tables import parse_quotas, write_records

    names = [f.strip() for f in fields.split(",") if f.strip()]
    client = connect(uri)
    rows = pull_per_label(
        client,
        db,
        collection,
        names,
        label_field or names[-1],
        parse_quotas(labels),
        seed,
        exact_seed,
    )
    write_records(output, rows)
    console.print(f"{len(rows)} documents written to {output}")


@app.command()
def baseline(
    target: Annotated[Path, typer.Argument(help="A run directory or a config file.")],
) -> None:
    """TF-IDF + logistic regression on the same rows: the bar a label-task LLM must clear."""
    from tunelab.commands import run_baseline

    run_baseline(target, console)


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Folder to create the starter files in.")],
) -> None:
    """Write a commented starter config.yaml and a tiny sample data file."""
    from tunelab.starter import write_starter

    for path in write_starter(directory):
        console.print(f"wrote {path}")
    console.print(f"next: tunelab train {directory / 'config.yaml'}")


@app.command()
def sweep(
    config: Annotated[Path, typer.Argument(help="The run's YAML config.")],
    train_fraction: Annotated[
        str, typer.Option(help="Leading shares of the training rows, comma-separated.")
    ] = "0.25,0.5,1.0",
    overrides: SetOption = None,
    overwrite: Annotated[bool, typer.Option(help="Replace earlier runs of the sweep.")] = False,
) -> None:
    """Train and evaluate CONFIG on growing prefixes of its data; plot metric vs samples."""
    from tunelab.sweep import parse_fractions, run_sweep

    _quiet_libraries()
    try:
        fractions = parse_fractions(train_fraction)
    except ValueError as error:
        raise TunelabError(str(error)) from None
    run_sweep(config, fractions, overrides or [], overwrite, console)


@behavior_app.command("build")
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
    from tunelab.tasks.behavior.samples import BuildOptions
    from tunelab.tasks.behavior.workflow import build, load_log

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

    from tunelab.tasks.behavior.events import EventColumns

    if not text:
        return EventColumns()
    known = {f.name for f in fields(EventColumns)}
    pairs = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
    unknown = set(pairs) - known
    if unknown:
        raise TunelabError(f"--columns: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    return EventColumns(**pairs)


@behavior_app.command("eval")
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
    from tunelab.tasks.behavior.workflow import evaluate_run

    _quiet_libraries()
    evaluate_run(run_dir, split, constrain, max_rows, console, checkpoint)


@behavior_app.command("simulate")
def behavior_simulate(
    run_dir: Annotated[Path, typer.Argument(help="A finished run trained on built samples.")],
    logs: Annotated[
        list[Path] | None, typer.Option(help="Held-out event files (default: the test split).")
    ] = None,
    capacity: Annotated[str, typer.Option(help="K values: `1-8` or `1,2,4`.")] = "1-8",
    max_rows: Annotated[int | None, typer.Option(help="Replay only the first N events.")] = None,
) -> None:
    """Replay held-out events; policies keep at most K apps warm; hit rate against K."""
    from tunelab.tasks.behavior.workflow import simulate_run

    _quiet_libraries()
    simulate_run(run_dir, logs or [], _capacities(capacity), max_rows, console)


def _capacities(text: str) -> list[int]:
    try:
        if "-" in text:
            low, high = (int(x) for x in text.split("-"))
            return list(range(low, high + 1))
        return sorted({int(x) for x in text.split(",")})
    except ValueError:
        raise TunelabError(f"--capacity: expected `1-8` or `1,2,4`, got {text!r}") from None


@behavior_app.command("synth")
def behavior_synth(
    output: Annotated[Path, typer.Argument(help="The text log to write.")],
    days: int = 7,
    seed: int = 0,
) -> None:
    """Write a SYNTHETIC desktop log (for trying the format and the simulation, not claims)."""
    from tunelab.tasks.behavior.sources import synthetic_desktop_lines

    lines = synthetic_desktop_lines(days, seed)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines) + "\n", encoding="utf-8")
    console.print(f"{len(lines)} synthetic events ({days} days) written to {output}")


def _quiet_libraries() -> None:
    """Our own progress and messages replace the libraries' load bars and notices."""
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main() -> None:
    """Entry point: a TunelabError prints its message and exits with its code, no traceback."""
    try:
        app()
    except TunelabError as error:
        from rich.markup import escape

        # every worker of a data-parallel run stops after the same step; the main one says so
        if not isinstance(error, Interrupted) or os.environ.get("RANK", "0") == "0":
            console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        sys.exit(error.exit_code)
