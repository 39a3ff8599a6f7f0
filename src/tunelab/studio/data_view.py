"""The studio's data page: a file's detected format, its first rows as conversations or as
text / label, its rejects with reasons, and a token-length histogram for a chosen model —
all by the same readers and converters `tunelab train` uses."""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from tunelab.data.formats import FORMAT_FIELDS, RowError, convert_row, detect_format
from tunelab.data.readers import RawRow, Reject, read_rows

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".xlsx")
SHOWN_ROWS = 20
SHOWN_REJECTS = 100
MEASURED_ROWS = 2000
HISTOGRAM_BINS = 20


def preview(path: Path, shown_as: str, model: str | None = None) -> dict[str, Any]:
    """What the page shows of ``path`` (named ``shown_as``); token lengths when ``model``."""
    read = read_rows(path)
    rejects = list(read.rejects)
    format_name = detect_format(read.rows)
    conversations, kept = [], 0
    for row in read.rows:
        example = _converted(row, format_name, rejects)
        if example is None:
            continue
        kept += 1
        if len(conversations) < SHOWN_ROWS:
            conversations.append({"source": _shown(row, shown_as), "messages": example.messages})
    result: dict[str, Any] = {
        "file": shown_as,
        "rows": len(read.rows),
        "format": format_name or "table",
        "format_fields": FORMAT_FIELDS.get(format_name or "", ""),
        "columns": _columns(read.rows),
        "kept": kept if format_name else len(read.rows),
        "rejected": len(rejects),
        "rejects": [_reject_row(r, shown_as) for r in rejects[:SHOWN_REJECTS]],
        "conversations": conversations,
        "table": [r.data for r in read.rows[:SHOWN_ROWS]] if not format_name else [],
    }
    if model:
        texts = [_row_text(r.data, format_name) for r in read.rows[:MEASURED_ROWS]]
        result["lengths"] = token_histogram(model, texts)
    return result


def token_histogram(model: str, texts: list[str]) -> dict[str, Any]:
    """Token counts of ``texts`` by ``model``'s tokenizer, binned."""
    import numpy as np

    tokenizer = _tokenizer(model)
    lengths = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
    if not lengths:
        return {"model": model, "counts": [], "edges": [], "measured": 0}
    counts, edges = np.histogram(lengths, bins=HISTOGRAM_BINS)
    return {
        "model": model,
        "measured": len(lengths),
        "counts": counts.tolist(),
        "edges": [round(float(e), 1) for e in edges],
        "p50": int(np.percentile(lengths, 50)),
        "p90": int(np.percentile(lengths, 90)),
        "max": max(lengths),
    }


@lru_cache(maxsize=4)
def _tokenizer(model: str) -> Any:
    from tunelab.config import ModelConfig
    from tunelab.models.load import load_tokenizer
    from tunelab.models.resolve import resolve_model

    return load_tokenizer(resolve_model(ModelConfig(name=model)), False)


def _converted(row: RawRow, format_name: str | None, rejects: list[Reject]) -> Any:
    if format_name is None:
        return None
    try:
        return convert_row(row, format_name)
    except RowError as error:
        rejects.append(Reject(row.source, error.field, error.reason))
        return None


def _columns(rows: list[RawRow]) -> list[str]:
    names: dict[str, None] = {}
    for row in rows[:SHOWN_ROWS]:
        names.update(dict.fromkeys(row.data))
    return list(names)


def _row_text(data: dict[str, Any], format_name: str | None) -> str:
    """The row's words, as the tokenizer will see most of them."""
    if format_name in ("messages", "sharegpt"):
        turns = data.get("messages") or data.get("conversations") or []
        return "\n".join(str(t.get("content") or t.get("value") or "") for t in turns if t)
    return "\n".join(str(v) for v in data.values() if isinstance(v, str | int | float))


def _shown(row: RawRow, shown_as: str) -> str:
    """Where the row is, with the file named as the page named it (no machine paths)."""
    return str(replace(row.source, file=shown_as))


def _reject_row(reject: Reject, shown_as: str) -> dict[str, Any]:
    return {**reject.to_json(), "file": shown_as}
