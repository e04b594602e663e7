"""Do the original and the ONNX model answer the same?

Both models run on the same rows, in batches no larger than the model's
``max_batch_size`` (the server never sends more). Then, output by output:

- labels, integers, booleans and text must be equal, element by element;
- floating-point outputs must satisfy ``|onnx - original| <= atol + rtol * |original|``
  everywhere (NaN equals NaN). The defaults suit float32 arithmetic, where
  a converter may sum trees or reorder products differently; FP16 gets a
  looser default. ``--rtol`` / ``--atol`` replace them for every float output.

A failure names the output, the largest absolute difference and the row it
is in, so the user can look at that row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from modelport.errors import ModelportError, first_line
from modelport.optimize.convert.comparison import CheckResult, OutputCheck
from modelport.optimize.convert.errors import ConversionFailed
from modelport.types import Array, ModelSignature, TensorSpec

#: Float datatype → default (rtol, atol).
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "FP16": (1e-2, 1e-3),
    "FP32": (1e-4, 1e-5),
    "FP64": (1e-4, 1e-5),
}
FLOAT_TYPES = frozenset(DEFAULT_TOLERANCES)

Predict = Callable[[Mapping[str, Array], Sequence[str]], dict[str, Array]]


def tolerance_for(
    datatype: str, rtol: float | None, atol: float | None
) -> tuple[float, float] | None:
    """(rtol, atol) for a float output, with overrides; None for exactly compared types."""
    default = DEFAULT_TOLERANCES.get(datatype)
    if default is None:
        return None
    return (default[0] if rtol is None else rtol, default[1] if atol is None else atol)


def _as_bytes(array: Array) -> Array:
    """Text as bytes: the original answers bytes, ONNX Runtime answers str."""
    out = np.empty(array.shape, dtype=object)
    flat = out.reshape(-1)
    for i, value in enumerate(array.reshape(-1)):
        flat[i] = value if isinstance(value, bytes) else str(value).encode("utf-8")
    return out


def _row_of(index: int, shape: tuple[int, ...]) -> int:
    return int(np.unravel_index(index, shape)[0]) if shape else 0


def compare_output(
    spec: TensorSpec, expected: Array, actual: Array, rtol: float | None, atol: float | None
) -> OutputCheck:
    """Compare one output's arrays as the check's rules say (see the module docstring)."""
    tolerance = tolerance_for(spec.datatype, rtol, atol)

    def result(
        max_diff: float | None, row: int | None, differing: int, problem: str = ""
    ) -> OutputCheck:
        return OutputCheck(
            name=spec.name,
            datatype=spec.datatype,
            exact=tolerance is None,
            rtol=tolerance[0] if tolerance is not None else None,
            atol=tolerance[1] if tolerance is not None else None,
            max_abs_diff=max_diff,
            row=row,
            differing_rows=differing,
            problem=problem,
        )

    if expected.shape != actual.shape:
        return result(
            None,
            None,
            0,
            f"output {spec.name!r}: the ONNX model answers shape {list(actual.shape)}, "
            f"the original {list(expected.shape)}",
        )
    if expected.size == 0:
        return result(0.0, None, 0)
    total = expected.shape[0] if expected.ndim else 1
    diff: Array | None = None
    if spec.datatype == "BYTES":
        bad = _as_bytes(expected) != _as_bytes(actual)
    else:
        want = expected.astype(np.float64)
        got = actual.astype(np.float64)
        with np.errstate(invalid="ignore"):
            diff = np.abs(got - want)
        diff = np.where(np.isnan(want) & np.isnan(got), 0.0, diff)
        diff = np.where(np.isnan(diff), np.inf, diff)
        if tolerance is None:
            bad = diff != 0
        else:
            bad = diff > tolerance[1] + tolerance[0] * np.abs(np.nan_to_num(want))
    differing = int(np.count_nonzero(bad.reshape(total, -1).any(axis=1)))
    if tolerance is None:
        max_diff = float(diff.max()) if diff is not None else None
        if not differing:
            return result(max_diff, None, 0)
        first = int(np.argmax(bad.reshape(-1)))
        row = _row_of(first, expected.shape)
        was, now = expected.reshape(-1)[first], actual.reshape(-1)[first]
        shown = f", max abs diff {max_diff:.3g}" if max_diff is not None else ""
        return result(
            max_diff,
            row,
            differing,
            f"output {spec.name!r} must match exactly but differs in {differing} of {total} "
            f"rows; first at row {row}: original {was!r}, ONNX {now!r}{shown}",
        )
    assert diff is not None  # float outputs always have differences
    # The worst element among the failing ones when any fail, else overall.
    worst = int(np.argmax(np.where(bad, diff, -1.0) if differing else diff))
    max_diff = float(diff.reshape(-1)[worst])
    row = _row_of(worst, expected.shape)
    if not differing:
        return result(max_diff, row, 0)
    rtol_used, atol_used = tolerance
    return result(
        max_diff,
        row,
        differing,
        f"output {spec.name!r}: max abs diff {max_diff:.3g} at row {row} is outside "
        f"rtol {rtol_used:g} + atol {atol_used:g} ({differing} of {total} rows differ)",
    )


def answer(
    predict: Predict, inputs: Mapping[str, Array], outputs: Sequence[str], batch: int | None
) -> dict[str, Array]:
    """All outputs for all rows, computed ``batch`` rows at a time (None: in one call)."""
    rows = next(iter(inputs.values())).shape[0] if inputs else 0
    if batch is None or rows <= batch:
        return predict(inputs, outputs)
    parts: list[dict[str, Array]] = []
    for start in range(0, rows, batch):
        chunk = {name: array[start : start + batch] for name, array in inputs.items()}
        parts.append(predict(chunk, outputs))
    return {name: np.concatenate([p[name] for p in parts], axis=0) for name in outputs}


def check_answers(
    original: Predict,
    converted: Predict,
    signature: ModelSignature,
    inputs: Mapping[str, Array],
    rows: int,
    synthetic: bool,
    origin: str,
    rtol: float | None = None,
    atol: float | None = None,
) -> CheckResult:
    """Run both models on ``inputs`` and compare every output of ``signature``."""
    names = [s.name for s in signature.outputs]
    batch = signature.max_batch_size if signature.max_batch_size > 0 else None
    answers = []
    for side, predict in (("the original model", original), ("the ONNX model", converted)):
        try:
            answers.append(answer(predict, inputs, names, batch))
        except ModelportError as exc:
            raise ConversionFailed(f"{side} refused the sample rows: {exc.message}") from None
        except Exception as exc:  # a framework's own error type, whatever it is
            first = first_line(exc, empty="")
            raise ConversionFailed(
                f"{side} failed on the sample rows: {type(exc).__name__}: {first}"
            ) from None
    want, got = answers
    checks = tuple(
        compare_output(spec, np.asarray(want[spec.name]), np.asarray(got[spec.name]), rtol, atol)
        for spec in signature.outputs
    )
    return CheckResult(rows, synthetic, origin, checks)
