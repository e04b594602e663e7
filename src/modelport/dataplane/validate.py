"""Checks a decoded request against the model version's signature.

Runs before any queueing or compute, so a wrong request costs nothing but
this check and says exactly which input or output is wrong.
"""

from __future__ import annotations

from modelport.dataplane.table import ModelVersion
from modelport.errors import InvalidRequest
from modelport.types import InferenceRequest


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
    batch: int | None = None
    for t in request.inputs:
        spec = model.inputs.get(t.name)
        if spec is None:
            raise InvalidRequest(
                f"{label}: unknown input {t.name!r}; expected {', '.join(model.inputs)}"
            )
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
