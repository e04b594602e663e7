"""Comparing answers: labels exactly, floats within tolerance, failures named by output and row."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from modelport.optimize.convert.check import answer, check_answers, compare_output, tolerance_for
from modelport.optimize.convert.errors import ConversionFailed
from modelport.types import ModelSignature, TensorSpec

PROBS = TensorSpec("probabilities", "FP32", (-1, 2))
LABEL = TensorSpec("label", "INT64", (-1, 1))
TEXT = TensorSpec("label", "BYTES", (-1, 1))


def test_default_tolerances_by_type_and_overrides() -> None:
    assert tolerance_for("FP32", None, None) == (1e-4, 1e-5)
    assert tolerance_for("FP64", None, None) == (1e-4, 1e-5)
    assert tolerance_for("FP16", None, None) == (1e-2, 1e-3)
    assert tolerance_for("FP32", 0.5, None) == (0.5, 1e-5)
    assert tolerance_for("INT64", 0.5, 0.5) is None
    assert tolerance_for("BYTES", None, None) is None


def test_floats_within_tolerance_pass_and_report_the_largest_difference() -> None:
    want = np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32)
    got = want + np.array([[0.0, 1e-6], [2e-6, 0.0]], dtype=np.float32)
    check = compare_output(PROBS, want, got, None, None)
    assert check.ok
    assert check.row == 1
    assert check.max_abs_diff is not None and 1e-6 < check.max_abs_diff < 3e-6


def test_floats_outside_tolerance_name_the_output_the_difference_and_the_row() -> None:
    want = np.zeros((5, 2), dtype=np.float32)
    got = want.copy()
    got[3, 1] = 0.01
    got[1, 0] = 0.001
    check = compare_output(PROBS, want, got, None, None)
    assert not check.ok
    assert check.row == 3
    assert check.differing_rows == 2
    assert "'probabilities'" in check.problem
    assert "max abs diff 0.01 at row 3" in check.problem
    assert "2 of 5 rows" in check.problem


def test_relative_tolerance_scales_with_the_value() -> None:
    want = np.array([[1000.0, 1.0]], dtype=np.float32)
    got = np.array([[1000.05, 1.0]], dtype=np.float32)
    assert compare_output(PROBS, want, got, None, None).ok
    assert not compare_output(PROBS, want, got, 0.0, 1e-5).ok


def test_nan_matches_nan_only() -> None:
    want = np.array([[np.nan, 1.0]], dtype=np.float32)
    assert compare_output(PROBS, want, want.copy(), None, None).ok
    assert not compare_output(PROBS, want, np.array([[0.0, 1.0]], np.float32), None, None).ok


def test_labels_must_match_exactly_whatever_the_tolerance() -> None:
    want = np.array([[0], [1], [1]], dtype=np.int64)
    got = np.array([[0], [1], [0]], dtype=np.int64)
    check = compare_output(LABEL, want, got, 1.0, 1.0)
    assert check.exact
    assert not check.ok
    assert check.row == 2
    assert "must match exactly" in check.problem
    assert "first at row 2" in check.problem


def test_text_from_onnx_runtime_equals_the_same_bytes() -> None:
    want = np.array([[b"setosa"], [b"virginica"]], dtype=object)
    assert compare_output(
        TEXT, want, np.array([["setosa"], ["virginica"]], dtype=object), None, None
    ).ok
    check = compare_output(
        TEXT, want, np.array([["setosa"], ["versicolor"]], dtype=object), None, None
    )
    assert not check.ok
    assert check.row == 1
    assert check.max_abs_diff is None


def test_a_shape_difference_fails_with_both_shapes() -> None:
    check = compare_output(LABEL, np.zeros((3, 1)), np.zeros(3), None, None)
    assert not check.ok
    assert "[3]" in check.problem and "[3, 1]" in check.problem


def test_answers_are_computed_in_batches_no_larger_than_max_batch_size() -> None:
    seen: list[int] = []

    def predict(inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        seen.append(x.shape[0])
        return {"y": x * 2}

    out = answer(predict, {"x": np.arange(10).reshape(10, 1)}, ["y"], 4)
    assert seen == [4, 4, 2]
    assert out["y"].reshape(-1).tolist() == [2 * i for i in range(10)]


def test_check_answers_compares_every_output() -> None:
    spec = ModelSignature(
        inputs=(TensorSpec("x", "FP32", (-1, 1)),),
        outputs=(TensorSpec("y", "FP32", (-1, 1)), TensorSpec("n", "INT64", (-1, 1))),
        max_batch_size=8,
    )

    def original(inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        return {"y": x * 2, "n": (x > 0).astype(np.int64)}

    def converted(
        inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        x = inputs["x"]
        return {"y": x * 2 + 1e-7, "n": (x >= 0).astype(np.int64)}

    x = np.array([[-1.0], [0.0], [2.0]], dtype=np.float32)
    result = check_answers(original, converted, spec, {"x": x}, 3, False, "rows.npz")
    assert [o.name for o in result.failures()] == ["n"]
    assert result.failures()[0].row == 1


def test_a_model_that_fails_on_the_rows_is_named() -> None:
    spec = ModelSignature(
        inputs=(TensorSpec("x", "FP32", (-1, 1)),),
        outputs=(TensorSpec("y", "FP32", (-1, 1)),),
        max_batch_size=8,
    )

    def works(inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        return {"y": inputs["x"]}

    def breaks(inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        raise ValueError("negative values are not supported\ndetails")

    x = {"x": np.zeros((2, 1), dtype=np.float32)}
    expected = (
        r"the ONNX model failed on the sample rows: ValueError: negative values are not supported$"
    )
    with pytest.raises(ConversionFailed, match=expected):
        check_answers(works, breaks, spec, x, 2, True, "synthetic")
    with pytest.raises(ConversionFailed, match=r"^the original model failed"):
        check_answers(breaks, works, spec, x, 2, True, "synthetic")
