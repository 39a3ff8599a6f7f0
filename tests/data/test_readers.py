from pathlib import Path

import openpyxl
import pytest

from tunelab.data.readers import read_rows
from tunelab.errors import TunelabError


def test_jsonl_rejects_bad_lines_with_their_numbers_and_keeps_the_rest(write_jsonl) -> None:
    path = write_jsonl([{"a": 1}, '{"a": 2', "", "[1, 2]", {"a": 3}])
    result = read_rows(path)
    assert [row.data["a"] for row in result.rows] == [1, 3]
    assert [row.source.line for row in result.rows] == [1, 5]
    assert [str(r) for r in result.rejects] == [
        f"{path}:2: malformed JSON: Expecting ',' delimiter",
        f"{path}:4: expected a JSON object, got list",
    ]


def test_jsonl_rejects_a_line_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_bytes('{"a": "好"}\n'.encode() + '{"a": "坏"}\n'.encode("gbk") + b'{"a": 3}\n')
    result = read_rows(path)
    assert len(result.rows) == 2
    assert str(result.rejects[0]).startswith(f"{path}:2: not UTF-8 text")


def test_csv_that_is_not_utf8_names_the_line_and_suggests_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "gbk.csv"
    path.write_bytes(b"instruction,output\nhi,ok\n" + "问,答\n".encode("gbk"))
    with pytest.raises(TunelabError, match=r"gbk.csv:3: bytes that are not UTF-8.*GB18030"):
        read_rows(path)


def test_json_object_instead_of_array_is_a_file_error(tmp_path: Path) -> None:
    path = tmp_path / "obj.json"
    path.write_text('{"instruction": "x", "output": "y"}', encoding="utf-8")
    with pytest.raises(
        TunelabError, match=r"expected a JSON array of rows at the top level \(an object"
    ):
        read_rows(path)


def test_json_array_rows_keep_their_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    path.write_text('[\n  {"a": 1},\n  "text",\n  {"a": 2}\n]\n', encoding="utf-8")
    result = read_rows(path)
    assert [(r.data["a"], r.source.line) for r in result.rows] == [(1, 2), (2, 4)]
    assert str(result.rejects[0]) == f"{path}:3: expected a JSON object, got str"


def test_malformed_json_array_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[\n {"a": 1},\n {"a": }\n]', encoding="utf-8")
    with pytest.raises(
        TunelabError, match=r"bad.json:3: malformed JSON: Expecting value \(column 8\)"
    ):
        read_rows(path)


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.json", "empty.csv", "empty.xlsx"])
def test_empty_files_are_errors(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(TunelabError, match="the file is empty"):
        read_rows(path)


def test_blank_only_jsonl_and_unknown_extension(tmp_path: Path) -> None:
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n", encoding="utf-8")
    with pytest.raises(TunelabError, match="only blank lines"):
        read_rows(blank)
    other = tmp_path / "data.txt"
    other.write_text("x", encoding="utf-8")
    with pytest.raises(TunelabError, match="unsupported file type"):
        read_rows(other)


def test_csv_rows_are_numbered_by_physical_line(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text('instruction,output\n"two\nlines",a\nq,b\nx,y,extra\n', encoding="utf-8-sig")
    result = read_rows(path)
    assert [(r.data["output"], r.source.line) for r in result.rows] == [("a", 2), ("b", 4)]
    assert str(result.rejects[0]) == f"{path}:5: more cells than header columns"


def test_xlsx_reads_a_named_sheet_with_excel_row_numbers(tmp_path: Path) -> None:
    path = tmp_path / "book.xlsx"
    book = openpyxl.Workbook()
    book.active.title = "notes"
    sheet = book.create_sheet("data")
    sheet.append(["instruction", "output"])
    sheet.append(["1+1?", 2])
    sheet.append([None, None])
    sheet.append(["2+2?", 4])
    book.save(path)
    result = read_rows(path, sheet="data")
    assert [(r.data["output"], str(r.source)) for r in result.rows] == [
        (2, f"{path}[data]:row 2"),
        (4, f"{path}[data]:row 4"),
    ]
    with pytest.raises(
        TunelabError, match=r"no sheet 'missing'; the sheets are \['notes', 'data'\]"
    ):
        read_rows(path, sheet="missing")
