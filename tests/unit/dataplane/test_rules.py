"""Rules: the pure row-by-row judgement shared by ensemble conditions and cascades."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from modelport.config.model import Rule
from modelport.dataplane.rules import check_datatype, holds, row_mask
from modelport.errors import ConfigError

PROBS = np.array([[0.95, 0.05], [0.6, 0.4], [0.1, 0.9]], dtype=np.float32)


def rule(**fields: Any) -> Rule:
    return Rule.model_validate(fields)


@pytest.mark.parametrize(
    ("test", "bound", "rows"),
    [
        ("max_at_least", 0.9, [True, False, True]),
        ("max_at_most", 0.6, [False, True, False]),
        ("min_at_least", 0.4, [False, True, False]),
        ("min_at_most", 0.05, [True, False, False]),
    ],
)
def test_max_and_min_are_judged_per_row(test: str, bound: float, rows: list[bool]) -> None:
    got = row_mask(rule(output="p", **{test: bound}), {"p": PROBS}, {}, 3, batched=True)
    assert got.tolist() == rows


def test_all_and_any_test_truth_per_row() -> None:
    flags = np.array([[True, True], [True, False], [False, False]])
    tensors = {"f": flags}
    assert row_mask(rule(output="f", all=True), tensors, {}, 3, True).tolist() == [
        True,
        False,
        False,
    ]
    assert row_mask(rule(output="f", any=True), tensors, {}, 3, True).tolist() == [
        True,
        True,
        False,
    ]
    assert row_mask(rule(output="f", all=False), tensors, {}, 3, True).tolist() == [
        False,
        False,
        True,
    ]


def test_a_request_holds_only_when_every_row_does() -> None:
    sure = rule(output="p", max_at_least=0.9)
    assert not holds(sure, {"p": PROBS}, {}, 3, True)
    assert holds(sure, {"p": PROBS[[0, 2]]}, {}, 2, True)


def test_an_unbatched_tensor_is_one_row() -> None:
    got = row_mask(rule(output="p", max_at_least=0.9), {"p": PROBS}, {}, 1, batched=False)
    assert got.tolist() == [True]


def test_parameter_rules_hold_for_every_row_alike() -> None:
    full = rule(parameter="mode", equals="full")
    assert row_mask(full, {}, {"mode": "full"}, 2, True).tolist() == [True, True]
    assert row_mask(full, {}, {"mode": "fast"}, 2, True).tolist() == [False, False]
    assert row_mask(full, {}, {}, 2, True).tolist() == [False, False]
    # An absent parameter equals nothing, so "not_equals" holds for it.
    assert holds(rule(parameter="mode", not_equals="full"), {}, {}, 1, True)
    assert holds(rule(parameter="tier", one_of=["gold", 3]), {}, {"tier": 3}, 1, True)


def test_parameter_values_compare_by_kind() -> None:
    assert not holds(rule(parameter="x", equals=True), {}, {"x": 1}, 1, False)
    assert not holds(rule(parameter="x", equals=1), {}, {"x": "1"}, 1, False)
    assert holds(rule(parameter="x", equals=True), {}, {"x": True}, 1, False)
    assert holds(rule(parameter="x", equals=2), {}, {"x": 2.0}, 1, False)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"output": "p"}, "exactly one test"),
        ({"output": "p", "max_at_least": 0.5, "any": True}, "exactly one test"),
        ({"output": "p", "parameter": "m", "equals": 1}, "exactly one of output or parameter"),
        ({"output": "p", "equals": "x"}, "equals is not a test on an output"),
        ({"parameter": "m", "max_at_least": 1}, "max_at_least is not a test on a parameter"),
    ],
)
def test_malformed_rules_are_refused(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        rule(**fields)


def test_a_comparison_on_bytes_is_a_config_error_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"m/config.yaml.*modelport.steps.a.when.*BYTES"):
        check_datatype(
            rule(output="t", max_at_least=1), "BYTES", "m/config.yaml", "modelport.steps.a.when"
        )
    check_datatype(rule(output="t", any=True), "BYTES", "m/config.yaml", "f")
