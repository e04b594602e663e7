"""The parquet output of ``modelport batch`` (pyarrow, an optional dependency).

Each chunk becomes a row group. Parquet's footer is written last, so a file
cut short by a crash cannot be appended to: a parquet output is not
resumable, and a run that stopped is done again from the start.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from modelport.cli.batch_output import OutRow, Writer
from modelport.cli.batch_tensors import TensorSpec

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
    """One row group per chunk; columns typed from the model's metadata."""

    resumable = False

    def __init__(
        self, path: Path, outputs: list[TensorSpec], id_column: str | None, at: int
    ) -> None:
        self.pa: Any = importlib.import_module("pyarrow")
        self.pq: Any = importlib.import_module("pyarrow.parquet")
        self.path = path
        self.outputs = outputs
        self.id_column = id_column
        self.writer: Any = None
        self.schema: Any = None

    def _type(self, spec: TensorSpec) -> Any:
        base = getattr(self.pa, ARROW_TYPES[spec.datatype])()
        return (
            base
            if (spec.row_size or 1) == 1 and len(spec.row_shape) <= 1
            else (self.pa.list_(base))
        )

    def write(self, rows: list[OutRow]) -> None:
        pa = self.pa
        columns: dict[str, Any] = {}
        if self.id_column is not None:
            columns[self.id_column] = pa.array([r.id for r in rows])
        for spec in self.outputs:
            values = [None if r.values is None else r.values[spec.name] for r in rows]
            columns[spec.name] = pa.array(values, type=self._type(spec))
        table = pa.table(columns)
        if self.writer is None:
            schema = table.schema
            if self.id_column is not None and pa.types.is_null(schema.field(self.id_column).type):
                schema = schema.set(0, pa.field(self.id_column, pa.string()))
            self.schema = schema
            self.writer = self.pq.ParquetWriter(str(self.path), schema)
        self.writer.write_table(table.cast(self.schema))

    def position(self) -> int:
        return 0

    def close(self) -> None:
        if self.writer is None:
            self.writer = self.pq.ParquetWriter(
                str(self.path), self.pa.schema([(s.name, self._type(s)) for s in self.outputs])
            )
        self.writer.close()
