"""Corpus inputs: JSONL, CSV or Parquet, read in windows of rows that any worker can read on its own.

A first pass (:func:`plan_windows`) counts the rows and records where each window starts (a byte offset in a
text file, a row index in Parquet), so a window can be read alone: by the local job after a resume, or by a
Ray actor on another machine. A row that cannot be embedded (an empty line, a missing field, a value that is
not text) is a :class:`BadRow` naming its line; a file that cannot be read at all is a :class:`CorpusError`.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, get_args

Format = Literal["jsonl", "csv", "parquet"]
FORMATS: tuple[str, ...] = get_args(Format)
SUFFIXES: dict[str, Format] = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv",
                               ".parquet": "parquet", ".pq": "parquet"}

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # passages longer than csv's 128 KiB default are still rows


class CorpusError(ValueError):
    """The job cannot run as given (an unreadable file, a missing column, a bad row without ``--on-error
    skip``, an output from another job): one line that names the file and, where there is one, the row."""


@dataclass(frozen=True)
class Source:
    """What to read: the file, its format and the fields holding the text and (optionally) the id."""

    path: Path
    format: Format
    text_field: str = "text"
    id_field: str | None = None


@dataclass(frozen=True)
class Window:
    """Rows ``start_row .. start_row + rows - 1`` (0-based records, a CSV header not counted)."""

    index: int
    start_row: int
    rows: int
    offset: int = 0  # byte offset of the first record (JSONL / CSV)
    line: int = 1  # 1-based line of the first record (JSONL / CSV), for messages


@dataclass(frozen=True)
class Record:
    row: int
    id: str | int  # the id field's value as text, or the row number without --id-field
    text: str


@dataclass(frozen=True)
class BadRow:
    row: int
    message: str  # "<file> line 7: no field 'text'"


def detect_format(path: Path, given: str | None = None) -> Format:
    if given is not None:
        if given not in FORMATS:
            raise CorpusError(f"unknown input format {given!r}; expected one of {list(FORMATS)}")
        return given  # type: ignore[return-value]
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise CorpusError(f"cannot tell the format of {path} from its suffix; pass --input-format "
                          f"({', '.join(FORMATS)})")
    return fmt


def _open(path: Path) -> IO[bytes]:
    try:
        return path.open("rb")
    except OSError as exc:
        raise CorpusError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None


# ---------------------------------------------------------------------------------------------------- planning


def plan_windows(source: Source, window_rows: int) -> list[Window]:
    """One pass over the input: the windows of ``window_rows`` rows it splits into (the last may be shorter).
    Checks what can be checked for the whole file: it opens, a CSV header or Parquet schema has the fields."""
    if window_rows < 1:
        raise CorpusError(f"window must be at least 1 row, got {window_rows}")
    if source.format == "parquet":
        pf = _parquet(source)
        total = pf.metadata.num_rows
        return [Window(i, s, min(window_rows, total - s)) for i, s in enumerate(range(0, total, window_rows))]
    starts: list[tuple[int, int]] = []  # (offset, line) of every window's first record
    rows = 0
    with _open(source.path) as f:
        if source.format == "jsonl":
            offset = 0
            for line_no, line in enumerate(f, start=1):
                if rows % window_rows == 0:
                    starts.append((offset, line_no))
                rows += 1
                offset += len(line)
        else:
            lines = _Lines(f)
            reader = csv.reader(lines)
            _csv_header(reader, source)
            while True:
                at = (lines.offset, lines.line + 1)
                if next(reader, None) is None:
                    break
                if rows % window_rows == 0:
                    starts.append(at)
                rows += 1
    return [Window(i, i * window_rows, min(window_rows, rows - i * window_rows), off, line)
            for i, (off, line) in enumerate(starts)]


class _Lines:
    """Decoded lines of a binary file, keeping the byte offset and line number of what was consumed (``csv``
    pulls one physical line at a time, so after a record ``offset`` is where the next one starts)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.offset = f.tell()
        self.line = 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        raw = self._f.readline()
        if not raw:
            raise StopIteration
        self.offset += len(raw)
        self.line += 1
        return raw.decode("utf-8", errors="replace")


def _csv_header(reader: Iterator[list[str]], source: Source) -> list[str]:
    header = next(reader, None)
    if not header:
        raise CorpusError(f"{source.path}: no CSV header row")
    for field in (source.text_field, source.id_field):
        if field is not None and field not in header:
            raise CorpusError(f"{source.path}: no column {field!r} (columns: {', '.join(header)})")
    return header


def _parquet(source: Source) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not source.path.is_file():
        raise CorpusError(f"cannot read {source.path}: no such file")
    try:
        pf = pq.ParquetFile(source.path)
    except (OSError, pa.ArrowException) as exc:
        raise CorpusError(f"cannot read {source.path} as Parquet: {' '.join(str(exc).split())}") from None
    names = pf.schema_arrow.names
    for field in (source.text_field, source.id_field):
        if field is not None and field not in names:
            raise CorpusError(f"{source.path}: no column {field!r} (columns: {', '.join(names)})")
    return pf


# ---------------------------------------------------------------------------------------------------- reading


def read_window(source: Source, window: Window) -> tuple[list[Record], list[BadRow]]:
    """The window's rows that can be embedded, and those that cannot (in row order)."""
    if source.format == "parquet":
        return _read_parquet(source, window)
    good: list[Record] = []
    bad: list[BadRow] = []
    name = source.path.name
    with _open(source.path) as f:
        if source.format == "jsonl":
            f.seek(window.offset)
            for k in range(window.rows):
                row, line = window.start_row + k, window.line + k
                item = _jsonl_row(f.readline(), source, row)
                if isinstance(item, str):
                    bad.append(BadRow(row, f"{name} line {line}: {item}"))
                else:
                    good.append(item)
        else:
            lines = _Lines(f)
            header = _csv_header(csv.reader(lines), source)
            f.seek(window.offset)
            lines = _Lines(f)
            reader = csv.reader(lines)
            for k in range(window.rows):
                row, line = window.start_row + k, window.line + lines.line
                values = next(reader, None)
                item = _csv_row(values, header, source, row)
                if isinstance(item, str):
                    bad.append(BadRow(row, f"{name} line {line}: {item}"))
                else:
                    good.append(item)
    return good, bad


def _jsonl_row(raw: bytes, source: Source, row: int) -> Record | str:
    if not raw.strip():
        return "empty line"
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return "not valid JSON"
    if not isinstance(obj, dict):
        return f"not a JSON object ({type(obj).__name__})"
    return _record(obj, source, row)


def _csv_row(values: list[str] | None, header: list[str], source: Source, row: int) -> Record | str:
    if not values:
        return "empty line"
    return _record(dict(zip(header, values, strict=False)), source, row)


def _record(obj: dict[str, object], source: Source, row: int) -> Record | str:
    text = obj.get(source.text_field)
    if text is None:
        return f"no field {source.text_field!r}" if source.text_field not in obj else f"{source.text_field!r} is null"
    if not isinstance(text, str):
        return f"{source.text_field!r} is not text ({type(text).__name__})"
    if not text:  # as the server refuses it: an empty string has no tokens to embed but [CLS] [SEP]
        return f"{source.text_field!r} is an empty string"
    if source.id_field is None:
        return Record(row, row, text)
    ident = obj.get(source.id_field)
    if ident is None:
        return f"no id field {source.id_field!r}" if source.id_field not in obj else f"{source.id_field!r} is null"
    if isinstance(ident, bool) or not isinstance(ident, str | int):
        return f"id {source.id_field!r} is not a string or an integer ({type(ident).__name__})"
    return Record(row, str(ident), text)


def _read_parquet(source: Source, window: Window) -> tuple[list[Record], list[BadRow]]:
    pf = _parquet(source)
    meta = pf.metadata
    groups: list[int] = []
    first = None
    seen = 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if seen + n > window.start_row and seen < window.start_row + window.rows:
            groups.append(g)
            first = seen if first is None else first
        seen += n
    columns = [c for c in (source.text_field, source.id_field) if c is not None]
    table = pf.read_row_groups(groups, columns=columns)
    table = table.slice(window.start_row - (first or 0), window.rows)
    texts = table.column(source.text_field).to_pylist()
    ids = table.column(source.id_field).to_pylist() if source.id_field else [None] * len(texts)
    good: list[Record] = []
    bad: list[BadRow] = []
    for k, (text, ident) in enumerate(zip(texts, ids, strict=True)):
        row = window.start_row + k
        obj = {source.text_field: text} if source.id_field is None else {source.text_field: text,
                                                                         source.id_field: ident}
        item = _record(obj, source, row)
        if isinstance(item, str):
            bad.append(BadRow(row, f"{source.path.name} row {row}: {item}"))
        else:
            good.append(item)
    return good, bad
