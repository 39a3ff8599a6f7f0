"""Train/val sets from files: the leading share of train that a sweep varies."""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.config import DataConfig
from tunelab.data.prepare import leading_share, load_train_val


def test_leading_share_keeps_the_first_rows_in_order_and_says_what_it_left_out() -> None:
    assert leading_share(list("abcdefg"), 0.5) == (
        list("abcd"),
        {"fraction": 0.5, "rows_used": 4, "rows_left_out": 3},
    )
    assert leading_share(list("abc"), 0.01) == (
        ["a"],
        {"fraction": 0.01, "rows_used": 1, "rows_left_out": 2},
    )
    assert leading_share(list("abc"), 1.0) == (list("abc"), {})


def test_train_fraction_trains_on_the_first_rows_and_leaves_val_alone(tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(10)]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    val = tmp_path / "val.jsonl"
    val.write_text(json.dumps({"instruction": "v", "output": "w"}) + "\n", encoding="utf-8")
    used, held, origin = load_train_val(DataConfig(train=[train], val=[val], train_fraction=0.3))
    assert [e.source.line for e in used.examples] == [1, 2, 3]
    assert len(held.examples) == 1
    assert origin["train_fraction"] == {"fraction": 0.3, "rows_used": 3, "rows_left_out": 7}
