"""Checks a decoded request against the model version's signature.

Runs before any queueing or compute, so a wrong request costs nothing but
this check and says exactly which input or output is wrong.

Two forms MLServer's pandas codec sends are made the served form here, once,
before batching concatenates requests:

- an input served as ``[N, 1]`` (a DataFrame column, or any rank-1 tensor
  served with Triton's non-empty dims) also takes ``[N]``; it is reshaped to
  ``[N, 1]`` (a view, no copy);
- in a request marked ``parameters: {"content_type": "pd"}``, a numeric
  column may come in another numeric type that widens to the served one
  (integers to floats, as pandas encodes an int column as INT64; narrower
  to wider); it is converted. Floats to integers are refused. Unmarked
  requests keep Triton's exact datatype check.
"""

from __future__ import annotations

import numpy as np

from modelport.dataplane.table import ModelVersion
from modelport.errors import InvalidRequest
from modelport.types import DTYPES, InferenceRequest, Tensor, TensorSpec

#: Datatypes whose arrays hold plain numbers (BF16's are bit patterns).
_NUMERIC = frozenset(DTYPES) - {"BYTES", "BF16", "BOOL"}


def check_request(model: ModelVersion, request: InferenceRequest) -> int:
    """Validate inputs and requested outputs; return the request's batch size.

    The batch size is the first dimension shared by every input when the
    model batches (max_batch_size > 0), and 1 otherwise.
    """
    label = f"model {model.name!r} version {model.version}"
    given = {t.name for t in request.inputs}
    for name in model.inputs:
        if name not in given and not _optional(model, name):
            raise InvalidRequest(f"{label}: missing input {name!r}")
    batching = model.signature.max_batch_size > 0
    frame = request.parameters.get("content_type") == "pd"
    batch: int | None = None
    for t in request.inputs:
        spec = model.inputs.get(t.name)
        if spec is None:
            raise InvalidRequest(
                f"{label}: unknown input {t.name!r}; expected {', '.join(model.inputs)}"
            )
        if len(t.shape) == 1 and len(spec.shape) == 2 and spec.shape[1] == 1:
            _as_column(t)
        if frame and t.datatype != spec.datatype:
            _convert_column(t, spec, label)
        if t.datatype != spec.datatype:
            raise InvalidRequest(
                f"{label}: input {t.name!r} has datatype {t.datatype}, expected {spec.datatype}"
            )
        if len(t.shape) != len(spec.shape) or any(
            want not in (-1, got) for want, got in zip(spec.shape, t.shape, strict=True)
        ):
            raise InvalidRequest(
                f"{label}: input {t.name!r} has shape {list(t.shape)}, expected "
                f"{list(spec.shape)} (-1 is any size)"
            )
        if batching:
            size = t.shape[0]
            if batch is None:
                batch = size
            elif size != batch:
                raise InvalidRequest(
                    f"{label}: inputs disagree on the batch size ({batch} and {size} "
                    f"for {t.name!r})"
                )
    if batching and batch is not None and batch > model.signature.max_batch_size:
        raise InvalidRequest(
            f"{label}: batch size {batch} exceeds max_batch_size {model.signature.max_batch_size}"
        )
    if request.outputs is not None:
        for out in request.outputs:
            if out.name not in model.outputs:
                raise InvalidRequest(
                    f"{label}: unknown requested output {out.name!r}; expected "
                    f"{', '.join(model.outputs)}"
                )
    return batch if batching and batch is not None else 1


def _optional(model: ModelVersion, name: str) -> bool:
    return any(i.name == name and i.optional for i in model.config.input)


def _as_column(t: Tensor) -> None:
    """``[N]`` as ``[N, 1]``: the same values, one per row."""
    t.shape = (t.shape[0], 1)
    t.data = t.data.reshape(t.shape)


def _convert_column(t: Tensor, spec: TensorSpec, label: str) -> None:
    """A numeric column of a pandas-codec request in the served numeric type, when it widens."""
    if t.datatype not in _NUMERIC or spec.datatype not in _NUMERIC:
        return
    have, want = DTYPES[t.datatype], DTYPES[spec.datatype]
    if not np.can_cast(have, want, casting="safe") and not (have.kind in "iu" and want.kind == "f"):
        raise InvalidRequest(
            f"{label}: input {t.name!r} has datatype {t.datatype}, expected {spec.datatype} "
            "(a conversion would lose values)"
        )
    t.data = t.data.astype(want)
    t.datatype = spec.datatype
