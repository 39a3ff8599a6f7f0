"""Files -> raw rows, each with the place it came from (file, line or sheet and row)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

CSV_CELL_LIMIT = 64 * 2**20  # the csv module's default of 128 KiB rejects long documents


@dataclass(frozen=True)
class Source:
    """Where a row came from: a line of a text file or a row of a sheet (both 1-based)."""

    file: str
    line: int | None = None
    row: int | None = None
    sheet: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}[{self.sheet}]" if self.sheet else self.file
        if self.line is not None:
            return f"{where}:{self.line}"
        return f"{where}:row {self.row}" if self.row is not None else where


@dataclass
class RawRow:
    """One record as read, before any format is applied."""

    data: dict[str, Any]
    source: Source


@dataclass
class Reject:
    """A row that could not be used, and why."""

    source: Source
    field: str | None
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.field + ': ' if self.field else ''}{self.reason}"

    def to_json(self) -> dict[str, Any]:
        """The reject as one line of rejects.jsonl."""
        return {
            "file": self.source.file,
            "sheet": self.source.sheet,
            "line": self.source.line,
            "row": self.source.row,
            "field": self.field,
            "reason": self.reason,
        }


@dataclass
class ReadResult:
    """Rows read from one file, and the rows that could not even be parsed."""

    rows: list[RawRow] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


def read_rows(path: Path, sheet: str | None = None) -> ReadResult:
    """Read a .json (array), .jsonl, .csv or .xlsx file into rows.

    Raises:
        TunelabError: for problems of the whole file (missing, empty, wrong top-level shape,
            unknown extension, not UTF-8 where the format needs it as a whole).
    """
    path = Path(path)
    if not path.is_file():
        raise TunelabError(f"{path}: data file not found")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise TunelabError(f"{path}: unsupported file type; expected one of {', '.join(READERS)}")
    if path.stat().st_size == 0:
        raise TunelabError(f"{path}: the file is empty; expected rows of data")
    if reader is read_xlsx:
        return read_xlsx(path, sheet)
    return reader(path)


def read_jsonl(path: Path) -> ReadResult:
    """One JSON object per line; a bad line is rejected with its number, the rest are kept."""
    result = ReadResult()
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            source = Source(str(path), line=number)
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                result.rejects.append(Reject(source, None, f"not UTF-8 text ({error.reason})"))
                continue
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except (ValueError, RecursionError) as error:
                result.rejects.append(Reject(source, None, f"malformed JSON: {_json_error(error)}"))
                continue
            if not isinstance(value, dict):
                kind = type(value).__name__
                result.rejects.append(Reject(source, None, f"expected a JSON object, got {kind}"))
                continue
            result.rows.append(RawRow(value, source))
    if not result.rows and not result.rejects:
        raise TunelabError(f"{path}: no rows; the file holds only blank lines")
    return result


def read_json(path: Path) -> ReadResult:
    """A JSON array of objects; each element keeps the line it starts on."""
    text = _decode_whole(path)
    decoder = json.JSONDecoder()
    position = _skip_space(text, 0)
    if position >= len(text):
        raise TunelabError(f"{path}: the file is empty; expected a JSON array of rows")
    if text[position] != "[":
        hint = " (an object, not an array)" if text[position] == "{" else ""
        raise TunelabError(
            f"{path}: expected a JSON array of rows at the top level{hint}; "
            "for one object per line use a .jsonl file"
        )
    result = ReadResult()
    position = _skip_space(text, position + 1)
    while position < len(text) and text[position] != "]":
        line = text.count("\n", 0, position) + 1
        try:
            value, position = decoder.raw_decode(text, position)
        except (ValueError, RecursionError) as error:
            where = getattr(error, "lineno", line)
            column = f" (column {error.colno})" if hasattr(error, "colno") else ""
            raise TunelabError(
                f"{path}:{where}: malformed JSON: {_json_error(error)}{column}"
            ) from None
        source = Source(str(path), line=line)
        if isinstance(value, dict):
            result.rows.append(RawRow(value, source))
        else:
            kind = type(value).__name__
            result.rejects.append(Reject(source, None, f"expected a JSON object, got {kind}"))
        position = _skip_space(text, position)
        if position < len(text) and text[position] == ",":
            position = _skip_space(text, position + 1)
    if position >= len(text):
        raise TunelabError(f"{path}: the array is not closed with ']'; the file may be cut short")
    rest = _skip_space(text, position + 1)
    if rest < len(text):
        line = text.count("\n", 0, rest) + 1
        raise TunelabError(
            f"{path}:{line}: more data after the array (only one top-level array is read); "
            "join the arrays into one, or use a .jsonl file"
        )
    return result


def read_csv(path: Path) -> ReadResult:
    """A header row, then one row per record; numbers are physical line numbers."""
    text = _decode_whole(path)
    csv.field_size_limit(CSV_CELL_LIMIT)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    result = ReadResult()
    try:
        header = next(reader, None)
        if not header or not any(cell.strip() for cell in header):
            raise TunelabError(f"{path}: no header row; expected column names on the first line")
        names = column_names(header)
        start = reader.line_num + 1
        for cells in reader:
            source = Source(str(path), line=start)
            start = reader.line_num + 1
            if len(cells) > len(names):
                result.rejects.append(Reject(source, None, "more cells than header columns"))
            elif any(cells):
                record = dict(zip(names, cells, strict=False))
                result.rows.append(RawRow(_drop_blank_cells(record), source))
    except csv.Error as error:
        raise TunelabError(
            f"{path}:{reader.line_num}: not valid CSV ({error}); an opening quote without its "
            "closing quote swallows every row after it"
        ) from None
    return result


def read_xlsx(path: Path, sheet: str | None = None) -> ReadResult:
    """The first (or the named) sheet; its first row names the columns."""
    import openpyxl

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as error:  # openpyxl raises many types for a broken file
        raise TunelabError(f"{path}: cannot read as an Excel workbook: {error}") from None
    if sheet is not None and sheet not in book.sheetnames:
        raise TunelabError(f"{path}: no sheet {sheet!r}; the sheets are {book.sheetnames}")
    worksheet = book[sheet] if sheet else book.worksheets[0]
    rows = worksheet.iter_rows(values_only=True)
    header = next(rows, None)
    if not header or all(cell is None for cell in header):
        raise TunelabError(f"{path}[{worksheet.title}]: the sheet is empty; expected a header row")
    names = column_names([str(cell) if cell is not None else "" for cell in header])
    result = ReadResult()
    formulas = _formula_rows(path, worksheet.title)
    try:
        for number, values in enumerate(rows, start=2):
            formula = next(formulas, None)
            if all(value is None for value in values) and not _has_formula(formula):
                continue
            source = Source(str(path), row=number, sheet=worksheet.title)
            missing = _uncached_formula(names, values, formula)
            if missing:
                result.rejects.append(Reject(source, missing, UNCACHED_FORMULA))
                continue
            record = dict(zip(names, values, strict=False))
            result.rows.append(RawRow(_drop_blank_cells(record), source))
    except Exception as error:  # openpyxl and the XML parser raise many types for bad cells
        raise TunelabError(f"{path}: cannot read the sheet {worksheet.title!r}: {error}") from None
    finally:
        book.close()
    return result


UNCACHED_FORMULA = (
    "a formula with no saved value; open and save the file in Excel or LibreOffice first"
)


def column_names(header: list[str]) -> list[str]:
    """Header cells as unique, non-empty names: a blank one is `column N`, a repeated one
    gets `.2`, `.3`, so no cell's value is dropped under it.

    >>> column_names(["text", "", "text", " label "])
    ['text', 'column 2', 'text.2', 'label']
    """
    names: list[str] = []
    for index, cell in enumerate(header, start=1):
        name = cell.strip() or f"column {index}"
        base, count = name, 1
        while name in names:
            count += 1
            name = f"{base}.{count}"
        names.append(name)
    return names


def _formula_rows(path: Path, title: str) -> Any:
    """The sheet's rows as written (formulas as text), after the header."""
    import openpyxl

    book = openpyxl.load_workbook(path, read_only=True, data_only=False)
    rows = book[title].iter_rows(values_only=True)
    next(rows, None)
    return rows


def _has_formula(row: Any) -> bool:
    return bool(row) and any(isinstance(v, str) and v.startswith("=") for v in row)


def _uncached_formula(names: list[str], values: Any, formula: Any) -> str | None:
    """The column of a formula cell whose value was never saved (openpyxl reads None)."""
    if not formula:
        return None
    for name, value, written in zip(names, values, formula, strict=False):
        if value is None and isinstance(written, str) and written.startswith("="):
            return name
    return None


READERS: dict[str, Callable[..., ReadResult]] = {
    ".jsonl": read_jsonl,
    ".json": read_json,
    ".csv": read_csv,
    ".xlsx": read_xlsx,
}


def _decode_whole(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        hint = ""
        try:
            data.decode("gb18030")
            hint = " It decodes as GB18030/GBK: re-save it as UTF-8."
        except UnicodeDecodeError:
            pass
        raise TunelabError(
            f"{path}:{line}: bytes that are not UTF-8 ({error.reason}).{hint}"
        ) from None


def _json_error(error: BaseException) -> str:
    if isinstance(error, RecursionError):
        return "nested too deeply"
    return getattr(error, "msg", None) or str(error).split(";")[0]


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _drop_blank_cells(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if not (v is None or (isinstance(v, str) and not v))}
