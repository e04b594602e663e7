"""Rows to OIP v2 tensors and back, for batches over files (``modelport batch``, batch jobs).

Each row is checked and converted on its own, so one bad row (a missing
field, a string where a number belongs, the wrong number of values) is
reported with its row number and left out of the request, and the rest of
its chunk is still sent. Requests and responses use the binary tensor
extension: a chunk of a few hundred rows of floats costs a copy, not a JSON
number per value.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: OIP datatype to numpy dtype (little-endian, as the binary extension sends it).
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("bool"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype("object"),
}

HEADER_LENGTH = "Inference-Header-Content-Length"


class RowError(ValueError):
    """A row that cannot become the model's inputs; its message names the field."""


class UsageError(ValueError):
    """The input as a whole does not fit the model (exit code 2)."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of the model's metadata."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def row_shape(self) -> tuple[int, ...]:
        """The shape of one row: the metadata's shape less the batch dimension."""
        return self.shape[1:]

    @property
    def row_size(self) -> int | None:
        """Values per row, or None when a dimension is dynamic."""
        if any(d < 0 for d in self.row_shape):
            return None
        return int(np.prod(self.row_shape, dtype=np.int64))


def specs(metadata: Sequence[Mapping[str, Any]]) -> list[TensorSpec]:
    """The ``inputs`` or ``outputs`` list of ``GET /v2/models/{m}``."""
    found = []
    for item in metadata:
        datatype = str(item["datatype"])
        if datatype not in DTYPES:
            raise UsageError(f"{item['name']}: datatype {datatype} is not supported by batch")
        found.append(TensorSpec(str(item["name"]), datatype, tuple(int(d) for d in item["shape"])))
    return found


def _scalar(value: Any, datatype: str, where: str) -> Any:
    """One value from JSON or a CSV cell, converted to the input's datatype."""
    if datatype == "BYTES":
        if isinstance(value, (dict, list)) or value is None:
            raise RowError(f"{where}: expected a string, got {json.dumps(value)[:40]}")
        return value if isinstance(value, str) else json.dumps(value)
    if isinstance(value, str):
        text = value.strip()
        if text == "":
            raise RowError(f"{where}: empty value")
        if datatype == "BOOL":
            if text.lower() in ("true", "1"):
                return True
            if text.lower() in ("false", "0"):
                return False
            raise RowError(f"{where}: expected true or false, got {value[:40]!r}")
        try:
            return float(text) if datatype.startswith("FP") else int(text)
        except ValueError:
            raise RowError(f"{where}: expected a number, got {value[:40]!r}") from None
    if isinstance(value, bool) and datatype != "BOOL":
        raise RowError(f"{where}: expected a number, got {json.dumps(value)}")
    if value is None or isinstance(value, (dict, str)):
        raise RowError(f"{where}: expected a number, got {json.dumps(value)[:40]}")
    if datatype == "BOOL" and not isinstance(value, bool):
        raise RowError(f"{where}: expected true or false, got {json.dumps(value)[:40]}")
    if datatype.startswith(("INT", "UINT")) and isinstance(value, float):
        if not value.is_integer():
            raise RowError(f"{where}: expected an integer, got {value}")
        return int(value)
    return value


def to_array(value: Any, spec: TensorSpec, where: str) -> np.ndarray[Any, Any]:
    """One row's value for ``spec``: a scalar or (nested) list, shaped to the row shape."""
    if value is None:
        raise RowError(f"{where}: missing value")
    dtype = DTYPES[spec.datatype]
    flat: list[Any] = []

    def walk(v: Any) -> None:
        if isinstance(v, list):
            for item in v:
                walk(item)
        else:
            flat.append(_scalar(v, spec.datatype, where))

    walk(value)
    try:
        array = np.array(flat, dtype=dtype)
    except (OverflowError, ValueError) as exc:
        raise RowError(f"{where}: {exc}") from None
    want = spec.row_size
    if want is None:
        if len(spec.row_shape) == 1:
            return array
        raise RowError(f"{where}: a dynamic row shape {list(spec.row_shape)} needs nested lists")
    if array.size != want:
        raise RowError(f"{where}: expected {want} values, got {array.size}")
    return array.reshape(spec.row_shape)


@dataclass(frozen=True)
class Layout:
    """How the fields of a row become the model's inputs.

    ``by_name``: every input is a field (JSONL keys, CSV columns, parquet
    columns). Otherwise the model has one input and a row's fields, in order,
    are its values (or the row is a JSON list).
    """

    inputs: tuple[TensorSpec, ...]
    by_name: bool

    @classmethod
    def for_fields(cls, inputs: Sequence[TensorSpec], fields: Sequence[str] | None) -> Layout:
        """The layout for a header (CSV, parquet) or, with ``fields`` None, per row (JSONL)."""
        names = [i.name for i in inputs]
        if fields is None:
            return cls(tuple(inputs), by_name=True)
        if set(names) <= set(fields):
            return cls(tuple(inputs), by_name=True)
        if len(inputs) == 1:
            size = inputs[0].row_size
            if size is not None and size != len(fields):
                raise UsageError(
                    f"the columns are neither the model's input names ({', '.join(names)}) nor "
                    f"the {size} values of its input {names[0]!r}: there are {len(fields)}"
                )
            return cls(tuple(inputs), by_name=False)
        missing = [n for n in names if n not in fields]
        raise UsageError(f"the columns lack the model's inputs: {', '.join(missing)}")

    def row(self, record: Any, row: int) -> dict[str, np.ndarray[Any, Any]]:
        """One input row's arrays by input name; RowError names what is wrong."""
        where = f"row {row}"
        if isinstance(record, list):
            if len(self.inputs) != 1:
                raise RowError(f"{where}: a list is only accepted by a model with one input")
            return {self.inputs[0].name: to_array(record, self.inputs[0], where)}
        if not isinstance(record, dict):
            raise RowError(f"{where}: expected an object or a list, got {type(record).__name__}")
        if self.by_name and all(i.name in record for i in self.inputs):
            return {i.name: to_array(record[i.name], i, f"{where} {i.name}") for i in self.inputs}
        only = self.inputs[0]
        if len(self.inputs) == 1 and (not self.by_name or only.name not in record):
            size = only.row_size
            if self.by_name and (not record or (size is not None and len(record) != size)):
                raise RowError(
                    f"{where}: missing field {only.name} (or its values as {size or 'the'} "
                    f"fields: got {len(record)})"
                )
            for key, value in record.items():  # a bad cell is named by its column
                if not isinstance(value, list):
                    _scalar(value, only.datatype, f"{where} {key}")
            return {only.name: to_array(list(record.values()), only, where)}
        missing = [i.name for i in self.inputs if i.name not in record]
        raise RowError(f"{where}: missing field {', '.join(missing)}")


def _bytes_payload(array: np.ndarray[Any, Any]) -> bytes:
    parts = []
    for item in array.reshape(-1):
        raw = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def encode_request(
    arrays: Mapping[str, np.ndarray[Any, Any]], inputs: Sequence[TensorSpec]
) -> tuple[bytes, int]:
    """The body of one binary inference request and its JSON header's length."""
    header: dict[str, Any] = {"inputs": [], "parameters": {"binary_data_output": True}}
    blobs = []
    for spec in inputs:
        array = arrays[spec.name]
        raw = (
            _bytes_payload(array)
            if spec.datatype == "BYTES"
            else np.ascontiguousarray(array).tobytes()
        )
        header["inputs"].append(
            {
                "name": spec.name,
                "datatype": spec.datatype,
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        blobs.append(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    return head + b"".join(blobs), len(head)


def _decode_bytes(raw: bytes) -> list[str]:
    values, at = [], 0
    while at < len(raw):
        (length,) = struct.unpack_from("<I", raw, at)
        values.append(raw[at + 4 : at + 4 + length].decode(errors="replace"))
        at += 4 + length
    return values


def decode_response(body: bytes, header_length: int | None) -> dict[str, np.ndarray[Any, Any]]:
    """The outputs of one inference response, binary or JSON, by name."""
    head = body if header_length is None else body[:header_length]
    payload = json.loads(head)
    at = len(head)
    outputs: dict[str, np.ndarray[Any, Any]] = {}
    for out in payload.get("outputs", []):
        shape = [int(d) for d in out["shape"]]
        datatype = out["datatype"]
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            raw = body[at : at + size]
            at += size
            if datatype == "BYTES":
                array = np.array(_decode_bytes(raw), dtype=object)
            else:
                array = np.frombuffer(raw, dtype=DTYPES[datatype])
        else:
            array = np.array(out.get("data", []), dtype=DTYPES.get(datatype, np.dtype("object")))
        outputs[out["name"]] = array.reshape(shape)
    return outputs


def row_value(array: np.ndarray[Any, Any], index: int) -> Any:
    """One output row as a JSON value: a scalar for one value per row, else a list."""
    item = array[index]
    if item.size == 1 and item.ndim <= 1:
        return item.reshape(-1)[0].item() if item.dtype != object else item.reshape(-1)[0]
    return item.tolist()
