"""Rules on tensors and request parameters: when an ensemble step runs, when a
cascade stage's answer stands.

Pure functions over the config's ``Rule`` (``config/model.py``), so the same
rule means the same thing in both places and is tested without a server.

A tensor rule judges each row on its own (the whole tensor is one row when
the model does not batch): ``max_at_least: 0.9`` holds for a row whose
largest value is 0.9 or more, ``all: true`` for a row with no zero in it. A
request "holds" when every row does. A parameter rule holds or not for the
whole request, so for every row alike; an absent parameter equals nothing.

Example: probabilities ``[[0.95, 0.05], [0.6, 0.4]]`` under ``max_at_least:
0.9`` give rows ``[True, False]``: the first row is sure, the request is not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from modelport.config.model import Rule
from modelport.errors import ConfigError, InferenceFailed
from modelport.types import Array

#: One boolean per row.
Rows = npt.NDArray[np.bool_]


def row_mask(
    rule: Rule,
    tensors: Mapping[str, Array],
    parameters: Mapping[str, Any],
    rows: int,
    batched: bool,
) -> Rows:
    """Whether ``rule`` holds, row by row (``rows`` of them).

    ``tensors`` holds the rule's output when it is a tensor rule (a missing
    one is the caller's bug: load checks make it impossible); ``batched``:
    the first dimension is the batch, else the tensor is one row.
    """
    name, operand = rule.test
    if rule.parameter is not None:
        if rule.parameter in parameters:
            verdict = parameter_holds(name, operand, parameters[rule.parameter])
        else:
            verdict = name == "not_equals"  # an absent parameter equals nothing
        return np.full(rows, verdict, dtype=np.bool_)
    assert rule.output is not None
    array = np.asarray(tensors[rule.output])
    flat = array.reshape(array.shape[0] if batched and array.ndim else 1, -1)
    if flat.shape[1] == 0:
        # An empty row has no largest value: no test holds on it.
        return np.zeros(flat.shape[0], dtype=np.bool_)
    return _tensor_holds(name, operand, flat)


def check_datatype(rule: Rule, datatype: str, source: str, field: str) -> None:
    """A comparison needs numbers: a max/min rule on a BYTES tensor is a ConfigError."""
    test, _ = rule.test
    if datatype == "BYTES" and test not in ("all", "any"):
        raise ConfigError(source, field, f"{test} compares numbers, but {rule.output!r} is BYTES")


def holds(
    rule: Rule,
    tensors: Mapping[str, Array],
    parameters: Mapping[str, Any],
    rows: int,
    batched: bool,
) -> bool:
    """Whether ``rule`` holds for the whole request: for every row."""
    return bool(row_mask(rule, tensors, parameters, rows, batched).all())


def parameter_holds(test: str, operand: Any, value: Any) -> bool:
    """A parameter test on a present parameter's value."""
    if test == "equals":
        return _same(value, operand)
    if test == "not_equals":
        return not _same(value, operand)
    if test == "one_of":
        return any(_same(value, choice) for choice in operand)
    raise AssertionError(f"not a parameter test: {test}")


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same kind: ``true`` is not ``1``, ``"1"`` is not ``1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    return bool(a == b)


def _tensor_holds(test: str, operand: Any, flat: Array) -> Rows:
    if test in ("all", "any"):
        true = flat.astype(np.bool_)
        values = true if operand else ~true
        reduced = values.all(axis=1) if test == "all" else values.any(axis=1)
        return np.asarray(reduced, dtype=np.bool_)
    if flat.dtype.kind not in "biuf":
        raise InferenceFailed(f"a {test} rule needs numbers; the tensor holds {flat.dtype}")
    extreme = flat.max(axis=1) if test.startswith("max") else flat.min(axis=1)
    mask = extreme >= operand if test.endswith("at_least") else extreme <= operand
    return np.asarray(mask, dtype=np.bool_)
