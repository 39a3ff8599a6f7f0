"""Hostile files through every reader and format (property-based, fixed seed, bounded):
never a traceback, and every row of a file is either kept or rejected, never lost."""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path
from typing import Any

import openpyxl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunelab.data.prepare import load_examples
from tunelab.errors import TunelabError
from tunelab.tasks.sft.data import encode_examples

FUZZ = settings(
    max_examples=60,
    derandomize=True,  # the same examples on every run and machine
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
KEYS = ["instruction", "input", "output", "system", "history", "conversations", "messages"]
TURN_KEYS = ["from", "value", "role", "content", "type", "text"]
# the lines that made readers and converters throw, one of each
HOSTILE_LINES = [
    "[" * 5000 + "]" * 5000,  # nesting deeper than the recursion limit
    '{"instruction": "q", "output": ' + "9" * 5000 + "}",  # an integer of 5,000 digits
    '{"instruction": "\\ud800x", "output": "a"}',  # a lone surrogate
    '{"conversations": [{"from": ["human"], "value": "q"}, {"from": "gpt", "value": "a"}]}',
    '{"instruction": "q", "output": "a", "history": 5}',
    '{"messages": [{"role": {"x": 1}, "content": "q"}]}',
    '{"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}, '
    '{"role": "assistant", "content": "\\udfff"}]}',
    "[]",
    "",
    "\x00\x01\x02",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(TURN_KEYS) | st.text(max_size=4), inner, max_size=3),
    ),
    max_leaves=8,
)
rows = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), values, max_size=5)
good_rows = st.builds(
    lambda q, a: {"instruction": q, "output": a},
    st.text(min_size=1, max_size=12),
    st.text(min_size=1, max_size=12),
)
any_row = st.one_of(good_rows, rows)
lines = st.one_of(
    any_row.map(lambda r: json.dumps(r, ensure_ascii=False)),
    st.sampled_from(HOSTILE_LINES),
    st.text(max_size=30).filter(lambda t: "\n" not in t and "\r" not in t),
)


def load_and_encode(path: Path, tokenizer: Any) -> tuple[int, int] | None:
    """(kept, rejected) over the file, through every stage a run uses; None for an error the
    user is told about (a problem of the whole file)."""
    try:
        loaded = load_examples([path])
        encoded = encode_examples(tokenizer, loaded.examples, 64)
    except TunelabError:
        return None
    (report,) = loaded.files
    assert report.kept + report.rejected == report.rows
    assert len(loaded.examples) + len(loaded.rejects) == report.rows
    assert len(encoded.samples) + len(encoded.rejects) == len(loaded.examples)
    return report.kept, report.rejected


def in_folder(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix="fuzz-")) / name


@FUZZ
@given(st.lists(lines, min_size=1, max_size=12))
def test_jsonl_lines(qwen3_tok: Any, file_lines: list[str]) -> None:
    path = in_folder("rows.jsonl")
    path.write_text("\n".join(file_lines) + "\n", encoding="utf-8", errors="surrogatepass")
    counted = load_and_encode(path, qwen3_tok)
    physical = path.read_bytes().splitlines()
    if counted is not None:
        assert sum(counted) == sum(1 for line in physical if line.strip())


@FUZZ
@given(st.lists(any_row, min_size=0, max_size=8), st.sampled_from(["whole", "cut", "twice"]))
def test_json_arrays(qwen3_tok: Any, records: list[dict], shape: str) -> None:
    text = json.dumps(records, ensure_ascii=False)
    text = {"whole": text, "cut": text[: len(text) // 2], "twice": text + text}[shape]
    path = in_folder("rows.json")
    path.write_text(text, encoding="utf-8")
    counted = load_and_encode(path, qwen3_tok)
    if shape != "whole" and len(text) > 2:
        assert counted is None  # a cut file or a second array is an error, never ignored
    elif counted is not None:
        assert sum(counted) == len(records)


cells = st.one_of(st.text(max_size=15), st.sampled_from(['"', '""x', "a\nb", "x" * 200_000]))


@FUZZ
@given(
    st.lists(st.sampled_from(["instruction", "output", "input", "", "instruction"]), min_size=1),
    st.lists(st.lists(cells, max_size=6), max_size=8),
    st.booleans(),
)
def test_csv_tables(qwen3_tok: Any, header: list[str], body: list[list[str]], cut: bool) -> None:
    path = in_folder("rows.csv")
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(body)
        if cut:
            handle.write('x,"an opening quote that never closes\n')
    counted = load_and_encode(path, qwen3_tok)
    if cut:
        assert counted is None  # everything after the quote would vanish: an error instead
    elif counted is not None:
        assert sum(counted) == sum(1 for row in body if any(row))


xlsx_cells = st.one_of(
    st.none(), st.integers(-100, 100), st.text(max_size=10), st.just("=1+1"), st.just("=A1&B1")
)


@FUZZ
@given(
    st.lists(st.sampled_from(["instruction", "output", None, "output"]), min_size=1, max_size=4),
    st.lists(st.lists(xlsx_cells, max_size=4), max_size=6),
)
def test_excel_sheets(qwen3_tok: Any, header: list[str | None], body: list[list[Any]]) -> None:
    from openpyxl.utils.exceptions import IllegalCharacterError

    path = in_folder("rows.xlsx")
    book = openpyxl.Workbook()
    sheet = book.active
    try:
        sheet.append(header)
        for row in body:
            sheet.append(row)
    except IllegalCharacterError:
        return  # openpyxl will not write it; nothing to read
    book.save(path)
    counted = load_and_encode(path, qwen3_tok)
    if counted is not None:
        assert sum(counted) == sum(1 for row in body if any(c is not None for c in row))


def test_the_hostile_lines_are_rejected_one_by_one(write_jsonl, qwen3_tok) -> None:
    good = json.dumps({"instruction": "q", "output": "a"})
    path = in_folder("hostile.jsonl")
    path.write_text("\n".join([good, *HOSTILE_LINES]) + "\n", encoding="utf-8")
    loaded = load_examples([path])
    reasons = [r.reason for r in loaded.rejects]
    assert len(loaded.examples) == 1 and len(reasons) == len(HOSTILE_LINES) - 1  # one is blank
    assert any("nested too deeply" in r for r in reasons)
    assert any("lone surrogate" in r for r in reasons)
    assert any("expected a list of [question, answer] pairs" in r for r in reasons)
