"""Output writers and the checkpoint of a batch over files (``modelport batch``, batch jobs).

Every input row gives one output row, in input order, so outputs join to
inputs by position; a failed row keeps its place with empty outputs. The
checkpoint (``OUTPUT.progress``) is written after each chunk is flushed: it
holds the rows done, where the input stands and the output's byte length.
A resumed run truncates the output back to that length (dropping a chunk
half-written when the process died) and appends, so at most one chunk is
done twice and the file equals an uninterrupted run's.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelport.batchfiles.tensors import TensorSpec, UsageError

#: Failures kept in the checkpoint with their messages; the rest are counted.
KEPT_FAILURES = 100


@dataclass
class OutRow:
    """One output row: the input row's number and id, and its values (None: failed)."""

    row: int
    id: Any
    values: dict[str, Any] | None
    error: str | None = None


@dataclass
class Progress:
    """What ``OUTPUT.progress`` holds."""

    input: str
    model: str
    rows: int = 0
    offset: int = 0
    output_bytes: int = 0
    succeeded: int = 0
    failed: int = 0
    failures: list[tuple[int, str]] = field(default_factory=list)

    def fail(self, row: int, message: str) -> None:
        self.failed += 1
        if len(self.failures) < KEPT_FAILURES:
            self.failures.append((row, message))

    def save(self, path: Path) -> None:
        """Replace the checkpoint whole, so a crash leaves the old one or the new one."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Progress:
        data = json.loads(path.read_text())
        data["failures"] = [(int(r), str(m)) for r, m in data.get("failures", [])]
        return cls(**data)


def progress_path(output: Path) -> Path:
    return output.with_name(output.name + ".progress")


class Writer:
    """Writes output rows; ``position`` is the byte length a checkpoint may record."""

    @staticmethod
    def data_path(output: Path) -> Path:
        """The file whose byte length the checkpoint records."""
        return output

    def __init__(
        self, path: Path, outputs: list[TensorSpec], id_column: str | None, at: int
    ) -> None:
        self.outputs = outputs
        self.id_column = id_column
        # Locked before it is cut back, so a second run on the same output refuses
        # instead of interleaving its chunks with this one's.
        self.file = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+b")
        try:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.close()
            raise UsageError(f"another run is writing {path}") from None
        self.file.truncate(at)
        self.file.seek(at)
        self.started = at > 0

    def write(self, rows: list[OutRow]) -> None:
        raise NotImplementedError

    def ready(self) -> bool:
        """Whether everything written so far is in the file (nothing held back)."""
        return True

    def position(self) -> int:
        self.file.flush()
        return self.file.tell()

    def close(self) -> None:
        """Finish the file: the run is over."""
        self.file.close()

    def drop(self) -> None:
        """Stop without finishing: the run stopped, and its checkpoint is resumed from."""
        self.file.close()


class JsonlWriter(Writer):
    """One JSON object per line: the id column, then each output by name."""

    def write(self, rows: list[OutRow]) -> None:
        lines = []
        for out in rows:
            obj: dict[str, Any] = {}
            if self.id_column is not None:
                obj[self.id_column] = out.id
            for spec in self.outputs:
                obj[spec.name] = None if out.values is None else out.values.get(spec.name)
            lines.append(json.dumps(obj, separators=(",", ":")) + "\n")
        self.file.write("".join(lines).encode())


def csv_width(value: Any) -> int | None:
    """Columns an output value takes: None for a scalar (one column, named as the output)."""
    if isinstance(value, list):
        return len(np.ravel(np.array(value, dtype=object)))
    return None


def csv_columns(name: str, width: int | None) -> list[str]:
    """``name`` for a scalar, ``name_0..name_{k-1}`` for k values."""
    return [name] if width is None else [f"{name}_{i}" for i in range(width)]


class CsvWriter(Writer):
    """A header, then one line per row; a [N, k] output is k columns.

    The header needs each output's width. It comes from the first row that
    succeeded; rows failing before it are held back (``ready`` is False), so
    a checkpoint is never written while they are only in memory.
    """

    def __init__(
        self, path: Path, outputs: list[TensorSpec], id_column: str | None, at: int
    ) -> None:
        super().__init__(path, outputs, id_column, at)
        self.widths: dict[str, int | None] | None = None
        self.held: list[OutRow] = []

    def write(self, rows: list[OutRow]) -> None:
        if self.widths is None:
            first = next((r for r in rows if r.values is not None), None)
            if first is None:
                self.held.extend(rows)
                return
            assert first.values is not None
            self._header({s.name: csv_width(first.values[s.name]) for s in self.outputs})
            rows, self.held = [*self.held, *rows], []
        assert self.widths is not None
        for out in rows:
            cells = [] if self.id_column is None else [_cell(out.id)]
            for spec in self.outputs:
                width = self.widths[spec.name] or 1
                if out.values is None:
                    cells.extend([""] * width)
                    continue
                value = out.values[spec.name]
                flat = np.ravel(np.array(value, dtype=object)).tolist()
                cells.extend(_cell(v) for v in flat[:width])
                cells.extend([""] * (width - len(flat)))
            self._line(cells)

    def _line(self, cells: list[Any]) -> None:
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerow(cells)
        self.file.write(text.getvalue().encode())

    def ready(self) -> bool:
        return not self.held

    def _header(self, widths: dict[str, int | None]) -> None:
        self.widths = widths
        if not self.started:
            columns = [c for s in self.outputs for c in csv_columns(s.name, widths[s.name])]
            self._line([self.id_column, *columns] if self.id_column else columns)
            self.started = True

    def close(self) -> None:
        if self.held:  # no row succeeded: the widths the metadata gives
            self._header(
                {s.name: None if (s.row_size or 1) == 1 else s.row_size for s in self.outputs}
            )
            rows, self.held = self.held, []
            self.write(rows)
        super().close()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


WRITERS: dict[str, type[Writer]] = {"jsonl": JsonlWriter, "csv": CsvWriter}
