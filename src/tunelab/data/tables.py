"""Labelled tables: per-label sampling, stratified splits, duplicates across splits.

Everything is seeded: the same input and seed give the same rows.
"""

from __future__ import annotations

import csv
import json
import random
import re
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

Row = dict[str, Any]


def parse_quotas(text: str) -> dict[str, int]:
    """`"正常:15000,政治安全:6000"` -> {label: count}.

    >>> parse_quotas("正常:3, 违规:2")
    {'正常': 3, '违规': 2}
    """
    quotas: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        label, sep, count = part.rpartition(":")
        if not sep or not label or not count.strip().isdigit():
            raise TunelabError(f"--labels {part!r}: expected LABEL:COUNT, e.g. 正常:15000")
        quotas[label.strip()] = int(count)
    if not quotas:
        raise TunelabError("--labels: give at least one LABEL:COUNT")
    return quotas


def require_columns(rows: Sequence[Row], source: object, **columns: str) -> None:
    """Raise, naming the columns there are, when an option names a column no row has.

    ``columns``: option name (``label_column``) -> the column it names.
    """
    present = set().union(*(row.keys() for row in rows)) if rows else set()
    for option, name in columns.items():
        if name not in present:
            flag = "--" + option.replace("_", "-")
            raise TunelabError(
                f"{source}: no column {name!r} ({flag}); the columns are {sorted(present)}"
            )


def sample_per_label(
    rows: Sequence[Row],
    label_column: str,
    quotas: dict[str, int],
    seed: int,
    take_short: bool = False,
) -> list[Row]:
    """``quotas[label]`` rows of each label, drawn at random with ``seed``, in a seeded order.

    A label with fewer rows than its quota is an error, or with ``take_short`` gives all it
    has.
    """
    by_label: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_label[str(row.get(label_column))].append(row)
    rng = random.Random(seed)
    short = {
        label: len(by_label[label])
        for label, count in quotas.items()
        if len(by_label[label]) < count
    }
    if short and not take_short:
        details = ", ".join(f"{label}: {have} < {quotas[label]}" for label, have in short.items())
        raise TunelabError(
            f"not enough rows for the quotas ({details}); --take-short takes all there are"
        )
    counts = {label: min(count, len(by_label[label])) for label, count in quotas.items()}
    chosen = [row for label, count in counts.items() for row in rng.sample(by_label[label], count)]
    rng.shuffle(chosen)
    return chosen


def stratified_split(
    rows: Sequence[Row], label_column: str, val: float, test: float, seed: int
) -> tuple[list[Row], list[Row], list[Row]]:
    """train / val / test with each label's share kept in every part (scikit-learn)."""
    from sklearn.model_selection import train_test_split

    labels = [str(row.get(label_column)) for row in rows]
    rest, test_rows, rest_labels, _ = _split(list(rows), labels, test, seed, train_test_split)
    share = val / (1 - test) if test < 1 else 0
    train_rows, val_rows, _, _ = _split(rest, rest_labels, share, seed, train_test_split)
    return train_rows, val_rows, test_rows


def _split(
    rows: list[Row], labels: list[str], share: float, seed: int, splitter: Any
) -> tuple[Any, ...]:
    if share <= 0:
        return rows, [], labels, []
    try:
        return tuple(splitter(rows, labels, test_size=share, random_state=seed, stratify=labels))
    except ValueError as error:
        raise TunelabError(f"cannot split with every label in every part: {error}") from None


_PUNCT_OR_SPACE = re.compile(r"[\s\W_]+", re.UNICODE)


def duplicate_key(text: str) -> str:
    """Text compared without case, whitespace and punctuation (NFKC first).

    >>> duplicate_key("Hello,  World！") == duplicate_key("hello world")
    True
    """
    return _PUNCT_OR_SPACE.sub("", unicodedata.normalize("NFKC", text).lower())


@dataclass
class DedupReport:
    """How many rows each later split lost because an earlier split had them."""

    exact: dict[str, int]
    normalised: dict[str, int]


def remove_cross_split_duplicates(
    splits: dict[str, list[Row]], text_column: str
) -> tuple[dict[str, list[Row]], DedupReport]:
    """Drop from each split the texts already in an earlier one (train first).

    Counts exact copies and copies that differ only in whitespace / punctuation / case.
    """
    seen_exact: set[str] = set()
    seen_key: set[str] = set()
    kept: dict[str, list[Row]] = {}
    report = DedupReport({}, {})
    for name, rows in splits.items():
        kept[name], report.exact[name], report.normalised[name] = [], 0, 0
        for row in rows:
            text = str(row.get(text_column, ""))
            if text in seen_exact:
                report.exact[name] += 1
            elif duplicate_key(text) in seen_key:
                report.normalised[name] += 1
            else:
                kept[name].append(row)
        seen_exact.update(str(r.get(text_column, "")) for r in kept[name])
        seen_key.update(duplicate_key(str(r.get(text_column, ""))) for r in kept[name])
    return kept, report


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    """Rows to .jsonl, .csv (UTF-8 with BOM, for Excel) or .xlsx."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for record in records for key in record))
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
    elif suffix == ".csv":
        with path.open("w", encoding="utf-8-sig", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(_flat(r) for r in records)
    else:
        import openpyxl

        book = openpyxl.Workbook()
        sheet = book.active
        sheet.append(columns)
        for record in records:
            sheet.append([_flat(record).get(column) for column in columns])
        book.save(path)


def _flat(record: dict[str, Any]) -> dict[str, Any]:
    """Lists and objects become JSON text in a table cell."""
    return {
        k: json.dumps(v, ensure_ascii=False) if isinstance(v, list | dict) else v
        for k, v in record.items()
    }
