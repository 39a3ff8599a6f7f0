"""`tunelab data ...`: check data files, build real data sets, sample, split, pull from MongoDB."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunelab.cli.common import console, prepare

app = typer.Typer(help="Check data files and build data sets.", no_args_is_help=True)


@app.command("check")
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
    prepare()
    from tunelab.config import DataConfig, ModelConfig
    from tunelab.config_file import validate_options
    from tunelab.data.prepare import load_examples, write_rejects
    from tunelab.models.load import load_tokenizer
    from tunelab.models.resolve import resolve_model
    from tunelab.report import print_data_report
    from tunelab.tasks.sft.data import encode_examples, split_summary

    options = {"train": files, "format": format, "sheet": sheet, "max_length": max_length}
    data = validate_options(DataConfig, options)
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


@app.command("build")
def data_build(
    name: Annotated[
        str,
        typer.Argument(
            help="Data set to build: sentiment (Chinese reviews, 2 labels), xiehouyu, "
            "multitask, food-reviews (English, great/other) or tweets (English, 3 clients)."
        ),
    ],
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


@app.command("sample")
def data_sample(
    file: Annotated[Path, typer.Argument(help="A table (.jsonl, .json, .csv, .xlsx).")],
    labels: Annotated[str, typer.Option(help='Quotas per label: "正常:15000,政治安全:6000".')],
    output: Annotated[Path, typer.Option(help="Where to write (.jsonl, .csv, .xlsx).")],
    label_column: Annotated[str, typer.Option(help="The label column.")] = "label",
    seed: Annotated[int, typer.Option(help="Seed of the draw.")] = 42,
    sheet: Annotated[str | None, typer.Option(help="Excel sheet to read.")] = None,
    take_short: Annotated[
        bool, typer.Option(help="Take all rows of a label that has fewer than its quota.")
    ] = False,
) -> None:
    """Draw a number of rows per label, at random with a seed."""
    from tunelab.data.readers import read_rows
    from tunelab.data.tables import (
        parse_quotas,
        require_columns,
        sample_per_label,
        write_records,
    )

    read = read_rows(file, sheet)
    records = [r.data for r in read.rows]
    require_columns(records, file, label_column=label_column)
    quotas = parse_quotas(labels)
    rows = sample_per_label(records, label_column, quotas, seed, take_short)
    write_records(output, rows)
    console.print(
        f"{len(rows)} rows written to {output} ({len(read.rejects)} unreadable rows skipped)"
    )


@app.command("split")
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
    from tunelab.data.tables import (
        remove_cross_split_duplicates,
        require_columns,
        stratified_split,
        write_records,
    )

    read = read_rows(file, sheet)
    records = [r.data for r in read.rows]
    require_columns(records, file, label_column=label_column, text_column=text_column)
    parts = stratified_split(records, label_column, val, test, seed)
    splits, report = remove_cross_split_duplicates(
        dict(zip(("train", "val", "test"), parts, strict=True)), text_column
    )
    suffix = file.suffix if file.suffix in (".jsonl", ".csv", ".xlsx") else ".jsonl"
    for name, rows in splits.items():
        write_records(output / f"{name}{suffix}", rows)
        removed = f"{report.exact[name]} exact + {report.normalised[name]} near duplicates"
        console.print(
            f"{name}: {len(rows)} rows written to {output / f'{name}{suffix}'} "
            f"({removed} of earlier splits removed)"
        )


@app.command("pull-mongo")
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
