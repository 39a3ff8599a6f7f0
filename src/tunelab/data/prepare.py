"""Files -> validated Examples -> train/val split, with the counts of everything kept or not."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tunelab.config import DataConfig
from tunelab.data.formats import (
    FORMAT_FIELDS,
    FORMATS,
    Example,
    RowError,
    convert_row,
    detect_format,
)
from tunelab.data.readers import Reject, read_rows
from tunelab.errors import TunelabError

SHOWN_REJECTS = 10
T = TypeVar("T")


@dataclass
class FileReport:
    """What one file gave."""

    path: str
    format: str
    rows: int
    kept: int
    rejected: int


@dataclass
class LoadedSet:
    """Examples from one or more files, with the rows that were rejected and why."""

    examples: list[Example] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    files: list[FileReport] = field(default_factory=list)


def load_examples(
    paths: Sequence[Path], format_name: str = "auto", sheet: str | None = None
) -> LoadedSet:
    """Read and convert every file; the format is detected per file unless forced."""
    loaded = LoadedSet()
    for path in paths:
        read = read_rows(Path(path), sheet)
        chosen = format_name if format_name != "auto" else detect_format(read.rows)
        if chosen is None:
            raise TunelabError(
                _no_format_message(path, read.rows[0].data if read.rows else {}, read)
            )
        kept_before = len(loaded.examples)
        loaded.rejects.extend(read.rejects)
        for row in read.rows:
            try:
                loaded.examples.append(convert_row(row, chosen))
            except RowError as error:
                loaded.rejects.append(Reject(row.source, error.field, error.reason))
        kept = len(loaded.examples) - kept_before
        rows = len(read.rows) + len(read.rejects)
        loaded.files.append(FileReport(str(path), chosen, rows, kept, rows - kept))
    return loaded


def check_strict(rejects: Sequence[Reject], strict: bool) -> None:
    """With ``data.strict``, any rejected row stops the run, naming the first few."""
    if strict and rejects:
        raise TunelabError(
            f"data.strict is on and {len(rejects)} row(s) were rejected:\n"
            + describe_rejects(rejects)
        )


def describe_rejects(rejects: Sequence[Reject], limit: int = SHOWN_REJECTS) -> str:
    """The first rejects, one per line, and how many more there are."""
    lines = [f"  {reject}" for reject in rejects[:limit]]
    if len(rejects) > limit:
        lines.append(f"  ... and {len(rejects) - limit} more (all of them are in rejects.jsonl)")
    return "\n".join(lines)


def split_holdout(
    examples: Sequence[Example], fraction: float, seed: int, max_rows: int | None = None
) -> tuple[list[Example], list[Example]]:
    """A seeded random hold-out: (train, val). Needs at least two examples."""
    if len(examples) < 2:
        raise TunelabError(
            f"only {len(examples)} usable example(s); need at least 2 to hold one out"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    size = max(1, round(len(examples) * fraction))
    size = min(size, max_rows or size, len(examples) - 1)
    held = set(order[:size])
    train = [e for i, e in enumerate(examples) if i not in held]
    val = [e for i, e in enumerate(examples) if i in held]
    return train, val


def load_train_val(config: DataConfig) -> tuple[LoadedSet, LoadedSet, dict[str, Any]]:
    """The train and val sets a run uses, and how val was obtained (recorded in the report)."""
    train = load_examples(config.train, config.format, config.sheet)
    if config.val:
        val = load_examples(config.val, config.format, config.sheet)
        origin: dict[str, Any] = {"from": "files", "files": [str(p) for p in config.val]}
    else:
        train_examples, val_examples = split_holdout(
            train.examples, config.val_fraction, config.split_seed, config.val_max_rows
        )
        origin = {
            "from": "split of train",
            "seed": config.split_seed,
            "fraction": config.val_fraction,
            "max_rows": config.val_max_rows,
            "rows": [str(e.source) for e in val_examples],
        }
        train, val = LoadedSet(train_examples, train.rejects, train.files), LoadedSet(val_examples)
    used, share = leading_share(train.examples, config.train_fraction)
    if share:
        origin["train_fraction"] = share
    return LoadedSet(used, train.rejects, train.files), val, origin


def leading_share(rows: Sequence[T], fraction: float) -> tuple[list[T], dict[str, Any]]:
    """The first ``fraction`` of ``rows`` (at least one), in order, and what was left out.

    The second item is empty when every row is used; else it is what the report shows.
    """
    if fraction >= 1:
        return list(rows), {}
    used = max(1, math.ceil(len(rows) * fraction))
    share = {"fraction": fraction, "rows_used": used, "rows_left_out": len(rows) - used}
    return list(rows[:used]), share


def length_stats(lengths: Sequence[int]) -> dict[str, float]:
    """Percentiles of token lengths (nearest rank).

    >>> length_stats([1, 2, 3, 4, 100])
    {'count': 5, 'mean': 22.0, 'p50': 3, 'p90': 100, 'p99': 100, 'max': 100}
    """
    if not lengths:
        return {"count": 0}
    ordered = sorted(lengths)

    def rank(q: int) -> int:
        return ordered[max(0, math.ceil(len(ordered) * q / 100) - 1)]

    return {
        "count": len(ordered),
        "mean": round(sum(ordered) / len(ordered), 1),
        "p50": rank(50),
        "p90": rank(90),
        "p99": rank(99),
        "max": ordered[-1],
    }


def write_rejects(path: Path, rejects: Sequence[Reject]) -> None:
    """rejects.jsonl: one line per rejected row (the file exists, empty, when none were)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as handle:
            for reject in rejects:
                handle.write(json.dumps(reject.to_json(), ensure_ascii=False) + "\n")
    except OSError as error:
        raise TunelabError(f"{path}: cannot write the rejected rows: {error.strerror}") from None


def file_reports(loaded: LoadedSet) -> list[dict[str, Any]]:
    """Per-file counts as plain dicts."""
    return [asdict(report) for report in loaded.files]


def _no_format_message(path: Path, first: dict[str, Any], read: Any) -> str:
    where = str(read.rows[0].source).rsplit(":", 1)[0] if read.rows else str(path)
    if not read.rows and not read.rejects:
        return f"{path}: no rows; expected a header or records"
    if not read.rows:
        return (
            f"{path}: no row could be read ({len(read.rejects)} rejected); first: {read.rejects[0]}"
        )
    expected = "; ".join(f"{name}: {fields}" for name, fields in FORMAT_FIELDS.items())
    columns = ", ".join(map(str, first)) or "none"
    return (
        f"{where}: no known format matches the columns ({columns}); expected one of "
        f"{expected}. Set data.format to force one of {', '.join(FORMATS)}."
    )
