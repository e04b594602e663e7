"""Named column tensors → the pandas DataFrame a model was fitted on.

A model that takes a DataFrame (a scikit-learn pipeline fitted on one, an
MLflow model with a column signature) is served with one input per column,
as MLServer's pandas codec sends them: each input is named after its column
and holds one value per row, shape ``[N, 1]`` (``[N]`` is accepted too and
made ``[N, 1]`` by the request check). The scheduler concatenates requests
per input along the first dimension, so each column arrives here as one
array holding every row of the batch.

Each column is turned into the dtype the model was fitted with:

- numbers keep their numpy dtype, cast to the column's dtype when the model
  declares one (an MLflow ``long`` column is int64 whatever the wire type);
- BOOL stays bool;
- BYTES is decoded from UTF-8 to Python ``str`` once per column, as an
  ``object`` column (what scikit-learn's encoders were fitted on); the
  decode runs as one numpy ufunc over the column, with a per-element pass
  only to name the element that is not UTF-8.

Worked example: columns ``age`` (FP64) and ``city`` (BYTES) with
``{"age": [[31.0], [45.0]], "city": [[b"Oslo"], [b"Lima"]]}`` become the
DataFrame ``age=[31.0, 45.0] (float64), city=["Oslo", "Lima"] (object)``.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelport.config.model import ModelConfig
from modelport.errors import InvalidRequest, ModelLoadError
from modelport.types import CONFIG_TYPES, DTYPES, Array, TensorSpec

#: Column datatypes a DataFrame column can be served as.
COLUMN_TYPES = frozenset(
    {"BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
    | {"FP16", "FP32", "FP64", "BYTES"}
)

#: The type a column is served as when neither config.yaml nor the model tells it.
DEFAULT_COLUMN_TYPE = "FP64"

#: ``bytes.decode`` as a ufunc over object arrays: one C loop per column.
_DECODE = np.frompyfunc(bytes.decode, 1, 1)


@dataclass(frozen=True, slots=True)
class Column:
    """One served column: its input name, DataFrame label, wire type and model dtype.

    ``dtype`` is what the model takes (None: the wire type's own dtype);
    BYTES columns are always ``object`` columns of ``str``.
    """

    name: str
    label: Hashable
    datatype: str
    dtype: np.dtype[Any] | None = None

    @property
    def spec(self) -> TensorSpec:
        """The column as one batched input: one value per row."""
        return TensorSpec(self.name, self.datatype, (-1, 1))


def decode_text(name: str, values: Array) -> Array:
    """A 1-D object array of UTF-8 ``bytes`` as an object array of ``str``.

    Elements that are already ``str`` are kept; anything else is refused
    with the element's index.
    """
    try:
        decoded: Array = np.asarray(_DECODE(values), dtype=object)
    except (UnicodeDecodeError, TypeError):
        return _decode_slowly(name, values)
    return decoded


def _decode_slowly(name: str, values: Array) -> Array:
    """The element-by-element decode, run only to find (or tolerate) odd elements."""
    out = np.empty(values.shape[0], dtype=object)
    for i, value in enumerate(values):
        if isinstance(value, str):
            out[i] = value
            continue
        if not isinstance(value, bytes | bytearray | memoryview):
            raise InvalidRequest(f"input {name!r}: element {i} is not text")
        try:
            out[i] = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest(
                f"input {name!r}: BYTES element {i} is not valid UTF-8; the model's string "
                "columns hold text"
            ) from None
    return out


class Columns:
    """Builds the model's DataFrame from one array per named column."""

    def __init__(self, columns: Sequence[Column]) -> None:
        if not columns:
            raise ValueError("a DataFrame model has at least one column")
        self.columns = tuple(columns)
        self.specs = tuple(c.spec for c in self.columns)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def values(self, column: Column, array: Array, rows: int | None) -> Array:
        """One column's values as a 1-D array of the model's dtype."""
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        elif array.ndim != 1:
            raise InvalidRequest(
                f"input {column.name!r} has shape {list(array.shape)}; a column takes one "
                "value per row (shape [rows] or [rows, 1])"
            )
        if rows is not None and array.shape[0] != rows:
            raise InvalidRequest(
                f"input {column.name!r} has {array.shape[0]} rows, but the other columns "
                f"have {rows}"
            )
        if column.datatype == "BYTES":
            return decode_text(column.name, array)
        if array.dtype.kind == "O":
            raise InvalidRequest(f"input {column.name!r} holds text, but the column is numeric")
        target = column.dtype if column.dtype is not None else DTYPES[column.datatype]
        return array.astype(target, copy=False)

    def frame(self, inputs: Mapping[str, Array]) -> Any:
        """The batch as a DataFrame, columns in the model's order."""
        import pandas as pd

        data: dict[Hashable, Any] = {}
        rows: int | None = None
        for column in self.columns:
            array = inputs.get(column.name)
            if array is None:
                raise InvalidRequest(f"missing input {column.name!r} (a column of the model)")
            values = self.values(column, array, rows)
            rows = int(values.shape[0])
            # Numbers go in as arrays (no Series per column: the cheap path). Text
            # goes in as an object Series, not pandas' inferred str dtype.
            if column.datatype == "BYTES":
                data[column.label] = pd.Series(values, dtype=object, copy=False)
            else:
                data[column.label] = values
        return pd.DataFrame(data, copy=False)

    def zeros(self) -> Any:
        """A one-row DataFrame of zeros and empty strings, to probe a model's output width."""
        sample: dict[str, Array] = {}
        for column in self.columns:
            if column.datatype == "BYTES":
                sample[column.name] = np.array([b""], dtype=object)
            else:
                sample[column.name] = np.zeros(1, dtype=DTYPES[column.datatype])
        return self.frame(sample)


def column_datatypes(
    names: Sequence[str],
    inferred: Mapping[str, str],
    config: ModelConfig,
    path: Path,
    log: logging.Logger,
) -> dict[str, str]:
    """Each column's served datatype: as config lists it, else as the model tells, else FP64.

    A config that lists inputs must list every column (Triton's config lists
    every input); columns whose type nobody tells are logged with the lines
    that declare them.
    """
    declared = {t.name: t for t in config.input}
    missing = [n for n in names if n not in declared]
    if declared and missing:
        raise ModelLoadError(
            f"config lists {len(declared)} of the model's {len(names)} columns; list every "
            f"column as an input (missing: {', '.join(missing)}), or none to have them "
            "inferred from the model"
        )
    unknown = [n for n in names if n not in declared and n not in inferred]
    if unknown:
        log.warning(
            f"{path}: the model does not tell the type of column(s) {', '.join(unknown)}; "
            f"they are served as {DEFAULT_COLUMN_TYPE}. To serve another type, list every "
            'column in the model\'s config, e.g. config.pbtxt: input [ { name: "COLUMN" '
            "data_type: TYPE_STRING dims: [ 1 ] }, ... ] or config.yaml: input: "
            "[{name: COLUMN, data_type: TYPE_STRING, dims: [1]}, ...]",
            extra={"model": config.name, "columns": unknown},
        )
    types: dict[str, str] = {}
    for n in names:
        if n not in declared:
            types[n] = inferred.get(n, DEFAULT_COLUMN_TYPE)
            continue
        datatype = CONFIG_TYPES[declared[n].data_type]
        if datatype not in COLUMN_TYPES:
            raise ModelLoadError(
                f"input {n!r} is {declared[n].data_type}, which a DataFrame column cannot be"
            )
        dims = declared[n].dims
        if dims not in ([1], [-1, 1]):
            raise ModelLoadError(
                f"input {n!r} is a column of the model's DataFrame: dims must be [1] "
                f"(one value per row; [-1, 1] when max_batch_size is 0), got {dims}"
            )
        types[n] = datatype
    return types
