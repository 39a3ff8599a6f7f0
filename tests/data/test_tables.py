"""Per-label sampling, stratified splits and cross-split duplicates: reproducible from the seed."""

from __future__ import annotations

from collections import Counter

import pytest

from tunelab.data.tables import (
    parse_quotas,
    remove_cross_split_duplicates,
    sample_per_label,
    stratified_split,
)
from tunelab.errors import TunelabError


def rows(n: int = 300) -> list[dict]:
    labels = ["正常"] * 6 + ["政治安全"] * 3 + ["色情"]
    return [{"text": f"文本{i}", "label": labels[i % 10], "id": i} for i in range(n)]


def test_sampling_meets_quotas_and_repeats_with_the_seed() -> None:
    quotas = parse_quotas("正常:50,政治安全:20,色情:10")
    first = sample_per_label(rows(), "label", quotas, seed=123)
    assert Counter(r["label"] for r in first) == {"正常": 50, "政治安全": 20, "色情": 10}
    assert [r["id"] for r in first] == [
        r["id"] for r in sample_per_label(rows(), "label", quotas, seed=123)
    ]
    assert [r["id"] for r in first] != [
        r["id"] for r in sample_per_label(rows(), "label", quotas, seed=124)
    ]
    with pytest.raises(TunelabError, match=r"not enough rows for the quotas \(色情: 30 < 31\)"):
        sample_per_label(rows(), "label", {"色情": 31}, seed=1)
    with pytest.raises(TunelabError, match="expected LABEL:COUNT"):
        parse_quotas("正常=5")


def test_stratified_split_keeps_label_shares_and_is_seeded() -> None:
    train, val, test = stratified_split(rows(), "label", val=0.1, test=0.2, seed=7)
    assert (len(train), len(val), len(test)) == (210, 30, 60)
    for part, size in ((train, 210), (val, 30), (test, 60)):
        shares = Counter(r["label"] for r in part)
        assert shares["正常"] == size * 6 // 10 and shares["色情"] == size // 10
    again = stratified_split(rows(), "label", val=0.1, test=0.2, seed=7)
    assert [r["id"] for r in again[2]] == [r["id"] for r in test]
    assert not {r["id"] for r in train} & {r["id"] for r in test}


def test_duplicates_across_splits_are_removed_and_counted() -> None:
    splits = {
        "train": [{"text": "今天 天气很好！"}, {"text": "一样"}],
        "val": [{"text": "一样"}, {"text": "今天天气很好"}, {"text": "新的"}],
        "test": [{"text": "新的。"}, {"text": "另一个"}],
    }
    kept, report = remove_cross_split_duplicates(splits, "text")
    assert [r["text"] for r in kept["val"]] == ["新的"]
    assert [r["text"] for r in kept["test"]] == ["另一个"]
    assert report.exact == {"train": 0, "val": 1, "test": 0}
    assert report.normalised == {"train": 0, "val": 1, "test": 1}
