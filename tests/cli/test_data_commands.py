"""`tunelab data sample / split` on a table whose columns are not the defaults."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def tunelab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunelab", *args], capture_output=True, text=True, timeout=300
    )


def safety_table(path: Path) -> Path:
    labels = ["正常"] * 12 + ["违规"] * 6
    rows = [{"text_cn": f"第{i}条内容", "n_labels": label} for i, label in enumerate(labels)]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    return path


def test_a_missing_column_is_an_error_naming_the_columns(tmp_path: Path) -> None:
    table = safety_table(tmp_path / "posts.jsonl")
    split = tunelab("data", "split", str(table), "--output", str(tmp_path / "s"))
    assert split.returncode == 2, split.stdout
    said = " ".join(split.stdout.split())
    assert "no column 'label' (--label-column); the columns are ['n_labels', 'text_cn']" in said
    nolabel = tunelab(
        "data", "split", str(table), "--output", str(tmp_path / "s"), "--label-column", "n_labels"
    )
    assert "no column 'text' (--text-column)" in " ".join(nolabel.stdout.split())
    assert not (tmp_path / "s").exists()
    sample = tunelab(
        "data", "sample", str(table), "--labels", "正常:2", "--output", str(tmp_path / "x.jsonl")
    )
    assert sample.returncode == 2 and "no column 'label' (--label-column)" in " ".join(
        sample.stdout.split()
    )


def test_split_says_what_it_wrote_and_sample_can_take_what_there_is(tmp_path: Path) -> None:
    table = safety_table(tmp_path / "posts.jsonl")
    split = tunelab(
        "data",
        "split",
        str(table),
        "--output",
        str(tmp_path / "s"),
        "--label-column",
        "n_labels",
        "--text-column",
        "text_cn",
        "--val",
        "0.2",
        "--test",
        "0.2",
    )
    assert split.returncode == 0, split.stdout + split.stderr
    for name in ("train", "val", "test"):
        assert f"written to {tmp_path / 's' / f'{name}.jsonl'}" in " ".join(split.stdout.split())
    sample = ["data", "sample", str(table), "--labels", "正常:3,违规:10", "--label-column"]
    sample += ["n_labels", "--output", str(tmp_path / "x.jsonl")]
    short = tunelab(*sample)
    assert short.returncode == 2 and "--take-short" in short.stdout
    taken = tunelab(*sample, "--take-short")
    assert taken.returncode == 0, taken.stdout
    assert len((tmp_path / "x.jsonl").read_text().splitlines()) == 3 + 6
