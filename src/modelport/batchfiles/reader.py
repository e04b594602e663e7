"""Input readers of a batch over files (``modelport batch``, batch jobs), a chunk at a time.

A reader never holds more than one chunk of rows. Text inputs are read as
bytes so the position after each chunk is an exact byte offset: a resumed
run seeks there instead of reading the rows already done again. Row numbers
are 1-based: the line for JSONL (blank lines are skipped but keep their
number), the record after the header for CSV, the row for parquet.
"""

from __future__ import annotations

import csv
import importlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from modelport.batchfiles.tensors import UsageError

PARQUET_HINT = "parquet needs pyarrow: pip install pyarrow"
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}


def file_format(path: Path, what: str) -> str:
    """``jsonl``, ``csv`` or ``parquet`` from the extension; anything else is a usage error."""
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise UsageError(f"{what} {path}: the extension must be .jsonl, .csv or .parquet")
    if kind == "parquet":
        try:
            importlib.import_module("pyarrow")
        except ImportError:
            raise UsageError(PARQUET_HINT) from None
    return kind


@dataclass
class Record:
    """One input row: its number, its id (``--id-column``) and its fields or what is wrong."""

    row: int
    id: Any = None
    fields: Any = None
    error: str | None = None


@dataclass
class Chunk:
    """Consecutive rows, and where the input stands once they are done."""

    records: list[Record]
    rows_after: int
    offset_after: int


@dataclass
class Reader:
    """A chunked reader. ``fields``: the header (CSV, parquet), None for JSONL."""

    path: Path
    kind: str
    chunk_rows: int
    id_column: str | None
    fields: list[str] | None = None
    size: int = 0
    """Total for the progress bar: bytes for text inputs, rows for parquet."""
    _start: tuple[int, int] = field(default=(0, 0))
    _header: list[str] = field(default_factory=list)

    def open(self, rows_done: int = 0, offset: int = 0) -> None:
        """Read the header and remember where the run (re)starts."""
        if self.kind == "parquet":
            pq = importlib.import_module("pyarrow.parquet")
            meta = pq.ParquetFile(self.path)
            self.fields = list(meta.schema_arrow.names)
            self.size = meta.metadata.num_rows
            self._start = (rows_done, rows_done)
        else:
            self.size = self.path.stat().st_size
            if self.kind == "csv":
                with self.path.open("rb") as f:
                    lines = _Lines(f)
                    header = next(csv.reader(lines), None)
                    if header is None:
                        raise UsageError(f"input {self.path}: no header row")
                    self.fields = header
                    self._header = list(header)
                    offset = max(offset, lines.offset)
            self._start = (rows_done, offset)
        if self.id_column is not None and self.fields is not None:
            if self.id_column not in self.fields:
                raise UsageError(f"--id-column {self.id_column!r} is not a column of the input")
            self.fields = [f for f in self.fields if f != self.id_column]

    def chunks(self) -> Iterator[Chunk]:
        """Chunks of up to ``chunk_rows`` rows from where ``open`` left the input."""
        if self.kind == "parquet":
            yield from self._parquet()
            return
        rows, offset = self._start
        with self.path.open("rb") as f:
            f.seek(offset)
            lines = _Lines(f, offset)
            source = self._jsonl(lines, rows) if self.kind == "jsonl" else self._csv(lines, rows)
            batch: list[Record] = []
            for record in source:
                batch.append(record)
                rows = record.row
                if len(batch) >= self.chunk_rows:
                    yield Chunk(batch, rows, lines.offset)
                    batch = []
            if batch or lines.offset != offset:
                yield Chunk(batch, lines.number_after(rows), lines.offset)

    def _split_id(self, record: Record, values: Any) -> Record:
        if self.id_column is None:
            record.fields = values
        elif isinstance(values, dict) and self.id_column in values:
            record.id = values.pop(self.id_column)
            record.fields = values
        else:
            record.error = f"row {record.row}: missing id column {self.id_column}"
        return record

    def _jsonl(self, lines: _Lines, rows: int) -> Iterator[Record]:
        for line in lines:
            rows += 1
            lines.rows = rows
            if not line.strip():
                continue
            record = Record(rows)
            try:
                values = json.loads(line)
            except ValueError as exc:
                record.error = f"row {rows}: not JSON ({exc})"
                yield record
                continue
            yield self._split_id(record, values)

    def _csv(self, lines: _Lines, rows: int) -> Iterator[Record]:
        original = self._header
        try:
            for values in csv.reader(lines):
                rows += 1
                lines.rows = rows
                record = Record(rows)
                if len(values) != len(original):
                    record.error = f"row {rows}: {len(values)} values for {len(original)} columns"
                    yield record
                    continue
                yield self._split_id(record, dict(zip(original, values, strict=True)))
        except csv.Error as exc:
            raise UsageError(f"input {self.path}: row {rows + 1}: {exc}") from None

    def _parquet(self) -> Iterator[Chunk]:
        pq = importlib.import_module("pyarrow.parquet")
        rows, _ = self._start
        seen = 0
        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=self.chunk_rows):
            if seen + batch.num_rows <= rows:
                seen += batch.num_rows
                continue
            part = batch.slice(max(rows - seen, 0))
            seen = rows
            out = []
            for values in part.to_pylist():
                rows += 1
                out.append(self._split_id(Record(rows), values))
                if len(out) >= self.chunk_rows:
                    seen += len(out)
                    yield Chunk(out, rows, rows)
                    out = []
            if out:
                seen += len(out)
                yield Chunk(out, rows, rows)


class _Lines:
    """Decoded lines of a binary file, counting the bytes handed out so far."""

    def __init__(self, f: BinaryIO, offset: int = 0) -> None:
        self.f = f
        self.offset = offset
        self.rows = 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        raw = self.f.readline()
        if not raw:
            raise StopIteration
        first = self.offset == 0
        self.offset += len(raw)
        if first and raw.startswith(b"\xef\xbb\xbf"):  # a byte order mark, as spreadsheets write
            raw = raw[3:]
        return raw.decode("utf-8", errors="replace")

    def number_after(self, rows: int) -> int:
        return max(rows, self.rows)
