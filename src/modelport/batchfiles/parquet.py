"""Parquet output of a batch over files (pyarrow, an optional dependency).

A parquet file's footer comes last, so one cut short by a crash cannot be
appended to. The chunks go to a spool beside it, ``OUTPUT.partial``: the
Arrow schema, then each chunk as an Arrow record batch message, each behind
its length. The spool can be cut back to a checkpoint and appended to like a
JSONL file; once the run ends it is copied into the parquet file a row group
at a time and removed. The spool is the file whose length a checkpoint
records (``data_path``).
"""

from __future__ import annotations

import importlib
import struct
from pathlib import Path
from typing import Any

from modelport.batchfiles.tensors import TensorSpec
from modelport.batchfiles.writer import OutRow, Writer

#: Rows per row group: a group's metadata is held until the footer is written,
#: so one group per small chunk would grow with the file.
ROW_GROUP_ROWS = 65_536

#: Arrow's type (a ``pyarrow`` factory name) for each tensor datatype.
ARROW_TYPES = {
    "BOOL": "bool_",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "string",
}


class ParquetWriter(Writer):
    """Spools chunks as Arrow record batches; ``close`` writes the parquet file."""

    def __init__(
        self, path: Path, outputs: list[TensorSpec], id_column: str | None, at: int
    ) -> None:
        self.pa: Any = importlib.import_module("pyarrow")
        self.pq: Any = importlib.import_module("pyarrow.parquet")
        self.path = path
        super().__init__(self.data_path(path), outputs, id_column, at)
        self.schema: Any = None
        if at:  # resuming: the schema is the spool's first message
            self.file.seek(0)
            self.schema = self.pa.ipc.read_schema(self.pa.py_buffer(self._frame()))
            self.file.seek(at)

    @staticmethod
    def data_path(output: Path) -> Path:
        return output.with_name(output.name + ".partial")

    def _type(self, spec: TensorSpec) -> Any:
        base = getattr(self.pa, ARROW_TYPES[spec.datatype])()
        scalar = (spec.row_size or 1) == 1 and len(spec.row_shape) <= 1
        return base if scalar else self.pa.list_(base)

    def _frame(self) -> bytes:
        (length,) = struct.unpack("<Q", self.file.read(8))
        data: bytes = self.file.read(length)
        return data

    def _put(self, data: bytes) -> None:
        self.file.write(struct.pack("<Q", len(data)) + data)

    def write(self, rows: list[OutRow]) -> None:
        pa = self.pa
        columns: dict[str, Any] = {}
        if self.id_column is not None:
            columns[self.id_column] = pa.array([r.id for r in rows])
        for spec in self.outputs:
            values = [None if r.values is None else r.values[spec.name] for r in rows]
            columns[spec.name] = pa.array(values, type=self._type(spec))
        table = pa.table(columns)
        if self.schema is None:
            schema = table.schema
            if self.id_column is not None and pa.types.is_null(schema.field(self.id_column).type):
                schema = schema.set(0, pa.field(self.id_column, pa.string()))
            self.schema = schema
            self._put(schema.serialize().to_pybytes())
        for batch in table.cast(self.schema).to_batches():
            self._put(batch.serialize().to_pybytes())

    def close(self) -> None:
        """Copy the spool into the parquet file, then remove it."""
        pa = self.pa
        end = self.position()
        if self.schema is None:  # no rows at all: an empty file with the outputs' columns
            self.schema = pa.schema([(s.name, self._type(s)) for s in self.outputs])
            self._put(self.schema.serialize().to_pybytes())
            end = self.position()
        self.file.seek(0)
        self._frame()
        with self.pq.ParquetWriter(str(self.path), self.schema) as parquet:
            group: list[Any] = []
            while self.file.tell() < end:
                group.append(pa.ipc.read_record_batch(pa.py_buffer(self._frame()), self.schema))
                if sum(b.num_rows for b in group) >= ROW_GROUP_ROWS:
                    parquet.write_table(pa.Table.from_batches(group, self.schema))
                    group = []
            if group:
                parquet.write_table(pa.Table.from_batches(group, self.schema))
        super().close()
        self.data_path(self.path).unlink()
