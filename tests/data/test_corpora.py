"""Data sets built from installed packages: reproducible, balanced where promised, no row
both in train and test."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tunelab.data.corpora import build_corpus
from tunelab.errors import TunelabError


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize(
    ("name", "labels"),
    [("food-reviews", {"great", "other"}), ("tweets", {"Web", "Android", "iPhone"})],
)
def test_english_label_sets_build_reproducibly_without_overlap(
    name: str, labels: set[str], tmp_path: Path
) -> None:
    first = build_corpus(name, tmp_path / "a", train_rows=300, test_rows=90, seed=3)
    build_corpus(name, tmp_path / "b", train_rows=300, test_rows=90, seed=3)
    train, test = rows(tmp_path / "a" / "train.jsonl"), rows(tmp_path / "a" / "test.jsonl")
    assert train == rows(tmp_path / "b" / "train.jsonl")  # the same seed, the same rows
    assert (len(train), len(test)) == (300, 90) and first["train rows"] == 300
    assert {r["output"] for r in train} == labels
    assert not {r["input"] for r in train} & {r["input"] for r in test}
    if name == "tweets":  # balanced per client
        assert set(Counter(r["output"] for r in train).values()) == {100}


def test_asking_for_more_rows_than_exist_says_how_many_there_are(tmp_path: Path) -> None:
    with pytest.raises(TunelabError, match="food-reviews: only"):
        build_corpus("food-reviews", tmp_path, train_rows=10_000, test_rows=10, seed=1)
