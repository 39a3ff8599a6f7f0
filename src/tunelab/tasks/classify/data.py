"""Classification tables: rows with a text and a label read, labels resolved, texts encoded
(cut to max_length, counted), split into train and val."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config import TEXT_SLOT, DataConfig
from tunelab.data.prepare import (
    check_strict,
    describe_rejects,
    leading_share,
    length_stats,
    split_holdout,
)
from tunelab.data.readers import RawRow, Reject, Source, read_rows
from tunelab.errors import TunelabError


@dataclass
class LabelledText:
    """One row of a classification table."""

    text: str
    label: str
    source: Source
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ClassSample:
    """A tokenised text and its class id."""

    input_ids: list[int]
    label_id: int
    full_length: int


@dataclass
class ClassSet:
    """One split: the texts kept, their encodings, and the rows rejected."""

    texts: list[LabelledText] = field(default_factory=list)
    samples: list[ClassSample] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


def read_labelled(
    paths: Sequence[Path], data: DataConfig
) -> tuple[list[LabelledText], list[Reject]]:
    """Rows with a text and a label column; a row missing either is rejected with its place."""
    texts: list[LabelledText] = []
    rejects: list[Reject] = []
    for path in paths:
        read = read_rows(Path(path), data.sheet)
        rejects += read.rejects
        _require_columns(path, read.rows, data)
        for row in read.rows:
            item = _labelled(row, data)
            if isinstance(item, Reject):
                rejects.append(item)
            else:
                texts.append(item)
    return texts, rejects


def label_names(texts: Sequence[LabelledText], configured: Sequence[str]) -> list[str]:
    """The label set, in order: as configured, or sorted from the training rows.

    Numeric labels given as ids of a configured list are mapped to names by position.
    """
    if configured:
        return list(configured)
    return sorted(
        {t.label for t in texts}, key=lambda name: (not name.isdigit(), _as_number(name), name)
    )


def resolve_labels(
    texts: list[LabelledText], labels: Sequence[str]
) -> tuple[list[LabelledText], list[Reject]]:
    """Map ids to names and reject labels outside the set."""
    kept, rejects = [], []
    for text in texts:
        name = text.label
        if name not in labels and name.isdigit() and int(name) < len(labels):
            name = labels[int(name)]
        if name not in labels:
            rejects.append(
                Reject(
                    text.source,
                    "label",
                    f"unknown label {text.label!r}; expected one of {list(labels)}",
                )
            )
            continue
        text.label = name
        kept.append(text)
    return kept, rejects


def encode_texts(
    tokenizer: Any, texts: Sequence[LabelledText], labels: Sequence[str], data: DataConfig
) -> ClassSet:
    """Tokenise each text (framed, cut to max_length, counted) with its class id."""
    index = {name: i for i, name in enumerate(labels)}
    result = ClassSet()
    for text in texts:
        result.texts.append(text)
        result.samples.append(encode_text(tokenizer, text.text, index[text.label], data))
    return result


def encode_text(tokenizer: Any, text: str, label_id: int, data: DataConfig) -> ClassSample:
    """One text as training encodes it: framed by ``data.text_template``, cut to
    ``data.max_length``, its full length kept. A framed text too long loses the end of its own
    text, never the template's tail: the last tokens, which the head reads, stay the same."""
    if data.text_template is None:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        return ClassSample(ids[: data.max_length], label_id, len(ids))
    head, tail = data.text_template.split(TEXT_SLOT)
    ids = tokenizer(head + text + tail, add_special_tokens=True)["input_ids"]
    if len(ids) <= data.max_length:
        return ClassSample(ids, label_id, len(ids))
    tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    head_ids = tokenizer(head + text, add_special_tokens=True)["input_ids"]
    kept = head_ids[: max(data.max_length - len(tail_ids), 0)] + tail_ids
    return ClassSample(kept[: data.max_length], label_id, len(ids))


def read_eval_texts(
    data: DataConfig, labels: Sequence[str], path: Path | None
) -> tuple[list[LabelledText], int]:
    """The texts to score a finished run on, and how many rows were skipped: the table at
    ``path``, else the run's val files, else the same seeded hold-out of train as training."""
    paths = [path] if path is not None else (data.val or data.train)
    texts, rejects = read_labelled(paths, data)
    if path is None and not data.val:
        _, texts = split_holdout(texts, data.val_fraction, data.split_seed, data.val_max_rows)
    texts, unknown = resolve_labels(texts, labels)
    return texts, len(rejects) + len(unknown)


@dataclass
class PreparedClasses:
    """A classification run's data: splits, the label set and the report."""

    train: ClassSet
    val: ClassSet
    labels: list[str]
    report: dict[str, Any]

    @property
    def rejects(self) -> list[Reject]:
        """Every rejected row."""
        return self.train.rejects + self.val.rejects


@dataclass
class LabelledSplits:
    """Train and val texts with resolved labels, before any tokenizer sees them."""

    train: list[LabelledText]
    val: list[LabelledText]
    labels: list[str]
    train_rejects: list[Reject]
    val_rejects: list[Reject]
    origin: dict[str, Any]


def read_splits(data: DataConfig, val_files: Sequence[Path] | None = None) -> LabelledSplits:
    """Read and label-check the train table and the val table (`val_files`, else `data.val`,
    else a seeded split of train)."""
    train_texts, train_rejects = read_labelled(data.train, data)
    labels = label_names(train_texts, data.labels)
    train_texts, unknown = resolve_labels(train_texts, labels)
    train_rejects += unknown
    val_files = list(val_files or data.val)
    if val_files:
        val_texts, val_rejects = read_labelled(val_files, data)
        val_texts, unknown = resolve_labels(val_texts, labels)
        val_rejects += unknown
        origin: dict[str, Any] = {"from": "files", "files": [str(p) for p in val_files]}
    else:
        train_texts, val_texts = split_holdout(
            train_texts, data.val_fraction, data.split_seed, data.val_max_rows
        )
        val_rejects = []
        origin = {"from": "split of train", "seed": data.split_seed, "fraction": data.val_fraction}
    # after the labels and the split, so every share of a sweep has the same head and val rows
    train_texts, share = leading_share(train_texts, data.train_fraction)
    if share:
        origin["train_fraction"] = share
    return LabelledSplits(train_texts, val_texts, labels, train_rejects, val_rejects, origin)


def prepare_classify(data: DataConfig, tokenizer: Any) -> PreparedClasses:
    """Read, validate, split and encode a classification table."""
    splits = read_splits(data)
    train_texts, val_texts, labels = splits.train, splits.val, splits.labels
    train_rejects, val_rejects, origin = splits.train_rejects, splits.val_rejects, splits.origin
    check_strict(train_rejects + val_rejects, data.strict)
    if len(labels) < 2:
        raise TunelabError(f"classification needs at least 2 labels; found {labels}")
    train = encode_texts(tokenizer, train_texts, labels, data)
    val = encode_texts(tokenizer, val_texts, labels, data)
    train.rejects, val.rejects = train_rejects, val_rejects
    if not train.samples:
        raise TunelabError(f"no usable training rows:\n{describe_rejects(train_rejects)}")
    report = {
        "max_length": data.max_length,
        "labels": labels,
        "train": _split_summary(train, labels),
        "val": {**_split_summary(val, labels), "origin": origin},
    }
    return PreparedClasses(train, val, labels, report)


def _labelled(row: RawRow, data: DataConfig) -> LabelledText | Reject:
    text, label = row.data.get(data.text_column), row.data.get(data.label_column)
    if text is None or not str(text).strip():
        return Reject(row.source, data.text_column, "missing or empty text")
    if label is None or not str(label).strip():
        return Reject(row.source, data.label_column, "missing label")
    if isinstance(label, float) and label.is_integer():
        label = int(label)
    extra = {k: v for k, v in row.data.items() if k not in (data.text_column, data.label_column)}
    return LabelledText(str(text), str(label).strip(), row.source, extra)


def _require_columns(path: Path, rows: Sequence[RawRow], data: DataConfig) -> None:
    if not rows:
        return
    columns = set().union(*(row.data for row in rows[:50]))
    missing = [c for c in (data.text_column, data.label_column) if c not in columns]
    if missing:
        where = str(rows[0].source).rsplit(":", 1)[0]
        raise TunelabError(
            f"{where}: no column {missing[0]!r}; the columns are {sorted(columns)}. "
            "Set data.text_column / data.label_column."
        )


def _split_summary(split: ClassSet, labels: Sequence[str]) -> dict[str, Any]:
    counts = Counter(s.label_id for s in split.samples)
    return {
        "kept": len(split.samples),
        "rejected": len(split.rejects),
        "truncated": sum(s.full_length > len(s.input_ids) for s in split.samples),
        "tokens": length_stats([s.full_length for s in split.samples]),
        "per_label": {name: counts.get(i, 0) for i, name in enumerate(labels)},
    }


def _as_number(name: str) -> int:
    return int(name) if name.isdigit() else 0
