"""Do a shadow version's outputs agree with the primary's?

Integer, boolean and BYTES outputs must be identical. Floating-point outputs
agree within ``RTOL``/``ATOL`` (numpy.allclose: ``|a - b| <= ATOL + RTOL·|b|``,
NaN equal to NaN): a retrained or re-exported model, another ONNX Runtime
execution provider or a different batch size changes the last bits of a
float, and that is not the disagreement a canary is looking for. A wrong
class, a changed shape or a missing output is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from modelport.types import Array, Tensor

#: Relative tolerance for floating-point outputs: 0.1 % of the primary's value.
RTOL = 1e-3
#: Absolute tolerance, for values near zero where a relative one means nothing.
ATOL = 1e-5

_FLOATS = frozenset({"FP16", "FP32", "FP64", "BF16"})


def outputs_agree(primary: Sequence[Tensor], shadow: Sequence[Tensor]) -> bool:
    """True when both answers have the same outputs, shapes and (close) values."""
    theirs = {t.name: t for t in shadow}
    if len(theirs) != len(primary):
        return False
    for mine in primary:
        other = theirs.get(mine.name)
        if other is None or not _tensor_agrees(mine, other):
            return False
    return True


def _tensor_agrees(a: Tensor, b: Tensor) -> bool:
    if a.data.shape != b.data.shape:
        return False
    if a.datatype in _FLOATS or b.datatype in _FLOATS:
        if a.datatype == "BYTES" or b.datatype == "BYTES":
            return False
        return bool(np.allclose(_as_float(b), _as_float(a), rtol=RTOL, atol=ATOL, equal_nan=True))
    return bool(np.array_equal(a.data, b.data))


def _as_float(t: Tensor) -> Array:
    if t.datatype == "BF16":  # raw 16-bit patterns: the high half of a float32
        return (t.data.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return t.data.astype(np.float64)
