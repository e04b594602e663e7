"""ParquetWriter: a run cut short resumes from its checkpoint and gives the file an
uninterrupted run gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelport.batchfiles.parquet import ParquetWriter
from modelport.batchfiles.tensors import TensorSpec
from modelport.batchfiles.writer import OutRow

pq = pytest.importorskip("pyarrow.parquet")

OUTPUTS = [TensorSpec("sum", "FP32", (-1, 2)), TensorSpec("label", "BYTES", (-1, 1))]


def _rows(first: int, count: int) -> list[OutRow]:
    rows = []
    for n in range(first, first + count):
        values = None if n == 3 else {"sum": [float(n), float(-n)], "label": f"c{n}"}
        rows.append(OutRow(n + 1, f"r{n}", values, None if values else "bad row"))
    return rows


def _read(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
    return rows


def test_resumed_run_writes_what_an_uninterrupted_one_does(tmp_path: Path) -> None:
    whole = tmp_path / "whole.parquet"
    writer = ParquetWriter(whole, OUTPUTS, "id", 0)
    for first in (0, 4, 8):
        writer.write(_rows(first, 4))
    writer.close()

    cut = tmp_path / "cut.parquet"
    first_run = ParquetWriter(cut, OUTPUTS, "id", 0)
    first_run.write(_rows(0, 4))
    checkpoint = first_run.position()
    first_run.write(_rows(4, 4))  # written, but the checkpoint never recorded it
    first_run.drop()
    assert not cut.exists() and ParquetWriter.data_path(cut).exists()

    second_run = ParquetWriter(cut, OUTPUTS, "id", checkpoint)
    second_run.write(_rows(4, 4))
    second_run.write(_rows(8, 4))
    second_run.close()

    assert not ParquetWriter.data_path(cut).exists()
    assert _read(cut) == _read(whole)
    got = _read(cut)
    assert [r["id"] for r in got] == [f"r{n}" for n in range(12)]
    assert got[3]["sum"] is None and got[5]["sum"] == [5.0, -5.0] and got[5]["label"] == "c5"


def test_no_rows_gives_an_empty_file_with_the_outputs(tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    ParquetWriter(path, OUTPUTS, None, 0).close()
    assert pq.read_table(path).column_names == ["sum", "label"]
    assert _read(path) == []
