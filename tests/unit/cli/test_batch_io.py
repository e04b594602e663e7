"""``modelport batch``: readers, rows to tensors, writers and checkpoint, without a server."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from modelport.cli.batch_io import Reader, file_format
from modelport.cli.batch_output import CsvWriter, JsonlWriter, OutRow, Progress
from modelport.cli.batch_tensors import (
    Layout,
    RowError,
    TensorSpec,
    UsageError,
    decode_response,
    encode_request,
    row_value,
)

VECTOR = TensorSpec("input", "FP32", (-1, 3))
COLUMNS = [TensorSpec("age", "FP64", (-1, 1)), TensorSpec("city", "BYTES", (-1, 1))]
OUTPUTS = [TensorSpec("label", "INT64", (-1, 1)), TensorSpec("p", "FP32", (-1, 2))]


def chunks(path: Path, kind: str, rows: int = 2, **kw: object) -> list[list[tuple[int, object]]]:
    reader = Reader(path, kind, rows, kw.pop("id_column", None))  # type: ignore[arg-type]
    reader.open(**kw)  # type: ignore[arg-type]
    return [[(r.row, r.error or r.fields) for r in c.records] for c in reader.chunks()]


def test_jsonl_chunks_number_rows_by_line_and_keep_bad_lines_as_errors(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"input": [1, 2, 3]}\n{oops\n\n[4, 5, 6]\n')
    got = chunks(path, "jsonl")
    assert got[0][0] == (1, {"input": [1, 2, 3]})
    assert got[0][1][0] == 2 and "row 2: not JSON" in str(got[0][1][1])
    assert got[1] == [(4, [4, 5, 6])]


def test_a_resumed_reader_starts_at_the_checkpointed_offset(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("a,b\n1,2\n3,4\n5,6\n")
    reader = Reader(path, "csv", 1, None)
    reader.open()
    first = next(reader.chunks())
    again = Reader(path, "csv", 10, None)
    again.open(first.rows_after, first.offset_after)
    assert [(r.row, r.fields) for c in again.chunks() for r in c.records] == [
        (2, {"a": "3", "b": "4"}),
        (3, {"a": "5", "b": "6"}),
    ]


def test_csv_id_column_is_carried_and_not_a_field(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text('id,a,b\nx,1,2\ny,"3",4,9\n')
    reader = Reader(path, "csv", 10, "id")
    reader.open()
    records = next(reader.chunks()).records
    assert reader.fields == ["a", "b"]
    assert (records[0].id, records[0].fields) == ("x", {"a": "1", "b": "2"})
    assert records[1].error == "row 2: 4 values for 3 columns"


def test_unknown_extension_and_missing_pyarrow_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"\.jsonl, \.csv or \.parquet"):
        file_format(tmp_path / "x.txt", "--input")
    if importlib.util.find_spec("pyarrow") is None:
        with pytest.raises(UsageError, match="parquet needs pyarrow: pip install pyarrow"):
            file_format(tmp_path / "x.parquet", "--input")


def test_parquet_without_pyarrow_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow raises ImportError
    with pytest.raises(UsageError, match=r"^parquet needs pyarrow: pip install pyarrow$"):
        file_format(tmp_path / "x.parquet", "--output")


def test_csv_byte_order_mark_is_not_part_of_the_first_column(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b"\xef\xbb\xbfa,b\n1,2\n")
    assert chunks(path, "csv") == [[(1, {"a": "1", "b": "2"})]]


def test_one_input_takes_a_list_an_object_by_name_or_its_columns_in_order() -> None:
    layout = Layout.for_fields([VECTOR], None)
    for record in ([1, 2, 3], {"input": [1, 2, 3]}, {"x": 1, "y": 2, "z": "3"}):
        np.testing.assert_array_equal(layout.row(record, 1)["input"], [1, 2, 3])
    with pytest.raises(RowError, match="row 4: missing field input"):
        layout.row({}, 4)
    with pytest.raises(RowError, match="row 5 input: expected 3 values, got 2"):
        layout.row({"input": [1, 2]}, 5)
    with pytest.raises(RowError, match="expected a number, got 'a'"):
        layout.row(["a", 2, 3], 6)
    columns = Layout.for_fields([VECTOR], ["x", "y", "z"])
    with pytest.raises(RowError, match=r"^row 7 y: expected a number, got 'dark'$"):
        columns.row({"x": "1", "y": "dark", "z": "3"}, 7)


def test_columns_models_take_one_field_per_input() -> None:
    layout = Layout.for_fields(COLUMNS, ["age", "city"])
    arrays = layout.row({"age": "31.5", "city": "Lima"}, 1)
    assert arrays["age"].tolist() == [31.5] and arrays["city"].tolist() == ["Lima"]
    with pytest.raises(RowError, match="row 2: missing field city"):
        layout.row({"age": 3}, 2)
    with pytest.raises(UsageError, match="lack the model's inputs: city"):
        Layout.for_fields(COLUMNS, ["age"])


def test_binary_request_and_response_round_trip() -> None:
    arrays = {"age": np.array([[1.0], [2.0]]), "city": np.array([["a"], ["bé"]], dtype=object)}
    body, head = encode_request(arrays, COLUMNS)
    header = json.loads(body[:head])
    assert [i["parameters"]["binary_data_size"] for i in header["inputs"]] == [16, 4 + 1 + 4 + 3]
    answer = {
        "outputs": [
            {
                "name": "p",
                "datatype": "FP32",
                "shape": [2, 2],
                "parameters": {"binary_data_size": 16},
            },
            {"name": "label", "datatype": "INT64", "shape": [2, 1], "data": [0, 1]},
        ]
    }
    raw = json.dumps(answer).encode()
    outputs = decode_response(raw + np.arange(4, dtype="<f4").tobytes(), len(raw))
    assert row_value(outputs["label"], 1) == 1
    assert row_value(outputs["p"], 1) == [2.0, 3.0]


def test_jsonl_writer_truncates_to_the_checkpointed_length(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    writer = JsonlWriter(path, OUTPUTS, "id", 0)
    writer.write([OutRow(1, "a", {"label": 1, "p": [0.5, 0.5]}), OutRow(2, "b", None, "bad")])
    at = writer.position()
    writer.write([OutRow(3, "c", {"label": 0, "p": [1.0, 0.0]})])
    writer.close()
    writer = JsonlWriter(path, OUTPUTS, "id", at)
    writer.close()
    assert path.read_text().splitlines() == [
        '{"id":"a","label":1,"p":[0.5,0.5]}',
        '{"id":"b","label":null,"p":null}',
    ]


def test_csv_writer_spreads_vectors_over_columns_and_holds_failures_until_the_header(
    tmp_path: Path,
) -> None:
    path = tmp_path / "out.csv"
    writer = CsvWriter(path, OUTPUTS, None, 0)
    writer.write([OutRow(1, None, None, "bad")])
    assert not writer.ready()
    writer.write([OutRow(2, None, {"label": 1, "p": [0.25, 0.75]})])
    assert writer.ready()
    writer.close()
    assert path.read_text().splitlines() == ["label,p_0,p_1", ",,", "1,0.25,0.75"]


def test_checkpoint_round_trips_and_keeps_a_bounded_failure_list(tmp_path: Path) -> None:
    progress = Progress("in.jsonl", "m", rows=3, offset=40, output_bytes=90, succeeded=2)
    for row in range(200):
        progress.fail(row, "bad")
    progress.save(tmp_path / "p")
    loaded = Progress.load(tmp_path / "p")
    assert loaded.failed == 200 and len(loaded.failures) == 100
    assert (loaded.rows, loaded.offset, loaded.output_bytes) == (3, 40, 90)


def test_parquet_output_resumes_from_its_spool(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    from modelport.batchfiles.parquet import ParquetWriter

    path = tmp_path / "out.parquet"
    writer = ParquetWriter(path, OUTPUTS, "id", 0)
    writer.write([OutRow(1, 7, {"label": 1, "p": [0.5, 0.5]}), OutRow(2, 8, None, "bad")])
    at = writer.position()
    writer.write([OutRow(3, 9, {"label": 0, "p": [1.0, 0.0]})])  # lost: past the checkpoint
    writer.drop()
    writer = ParquetWriter(path, OUTPUTS, "id", at)
    writer.write([OutRow(3, 9, {"label": 0, "p": [1.0, 0.0]})])
    writer.close()
    assert pq.read_table(path).to_pylist() == [
        {"id": 7, "label": 1, "p": [0.5, 0.5]},
        {"id": 8, "label": None, "p": None},
        {"id": 9, "label": 0, "p": [1.0, 0.0]},
    ]
    assert not ParquetWriter.data_path(path).exists()


def test_parquet_output_of_one_uninterrupted_run(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    from modelport.batchfiles.parquet import ParquetWriter

    path = tmp_path / "out.parquet"
    writer = ParquetWriter(path, OUTPUTS, None, 0)
    writer.write([OutRow(1, None, {"label": 1, "p": [0.5, 0.5]})])
    writer.close()
    assert pq.read_table(path).to_pylist() == [{"label": 1, "p": [0.5, 0.5]}]


def test_a_second_writer_of_the_same_output_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    first = JsonlWriter(path, OUTPUTS, None, 0)
    first.write([OutRow(1, None, {"label": 1, "p": [0.5, 0.5]})])
    at = first.position()
    with pytest.raises(UsageError, match="another run is writing"):
        JsonlWriter(path, OUTPUTS, None, 0)
    assert path.stat().st_size == at  # not cut back by the refused writer
    first.close()
