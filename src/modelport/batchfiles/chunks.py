"""One chunk's rows made ready for one inference request, whoever sends it.

Each row becomes its arrays on its own, so a bad row fails alone with its
number; rows shaped unlike the chunk's first fail too (one request carries
one tensor per input). What is left is sent as one request, and its answer
fills the good rows' values in order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modelport.batchfiles.reader import Chunk
from modelport.batchfiles.tensors import Layout, RowError
from modelport.batchfiles.writer import OutRow

Arrays = dict[str, np.ndarray[Any, Any]]


def prepare(chunk: Chunk, layout: Layout) -> tuple[list[OutRow], list[tuple[OutRow, Arrays]]]:
    """Every row of the chunk as an output row, and the good ones with their arrays."""
    rows: list[OutRow] = []
    good: list[tuple[OutRow, Arrays]] = []
    for record in chunk.records:
        out = OutRow(record.row, record.id, None, record.error)
        rows.append(out)
        if record.error is None:
            try:
                good.append((out, layout.row(record.fields, record.row)))
            except RowError as exc:
                out.error = str(exc)
    return rows, one_shape(good)


def stacked(good: list[tuple[OutRow, Arrays]], layout: Layout) -> Arrays:
    """The good rows' arrays as one tensor per input, a row per row."""
    return {
        spec.name: np.stack([arrays[spec.name] for _, arrays in good]) for spec in layout.inputs
    }


def one_shape(good: list[tuple[OutRow, Arrays]]) -> list[tuple[OutRow, Arrays]]:
    """The rows shaped as the chunk's first (one request is one tensor per input)."""
    if not good:
        return good
    first = good[0][1]
    kept = []
    for out, arrays in good:
        odd = [n for n in first if arrays[n].shape != first[n].shape]
        if odd:
            out.error = (
                f"row {out.row} {odd[0]}: shape {list(arrays[odd[0]].shape)} differs from "
                f"row {good[0][0].row}'s {list(first[odd[0]].shape)}"
            )
        else:
            kept.append((out, arrays))
    return kept
