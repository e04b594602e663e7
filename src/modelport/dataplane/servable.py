"""The seam between the pipeline and whatever serves a model version.

The pipeline admits, routes, validates and consults the cache; then it hands
the request to the version's ``Servable`` and gets back an ``Outcome``. It
never learns how the answer was computed: today every version is a runtime
behind a ``Scheduler`` (``scheduled.py``); an ensemble, a version in worker
processes on another node, or a model that loads on first use implement the
same two methods.

An ensemble's steps are requests too. It runs each through a ``StepRunner``,
which the pipeline implements: a step is routed, validated and executed like
any call, so the ensemble needs no import of the pipeline and the layers stay
in order (pipeline → servable, never back).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from modelport.errors import ModelportError
from modelport.types import (
    DTYPES,
    Array,
    Call,
    InferenceRequest,
    InferenceResponse,
    Tensor,
    TensorSpec,
)


@dataclass(slots=True)
class Outcome:
    """One request's answer from a Servable, with the timings observers need.

    Durations are in nanoseconds of the monotonic clock. A servable that does
    not queue or batch reports ``queue_ns=0`` and ``batch_size`` equal to the
    request's own rows.

    One is built per request, so it is not frozen (a frozen dataclass sets each
    field through ``object.__setattr__``); nothing changes it once built.
    """

    response: InferenceResponse
    queue_ns: int
    """Time spent waiting for an instance (statistics' queue, the queue histogram)."""
    compute_ns: int
    """Time the runtime computed the execution this request rode in."""
    batch_size: int
    """Rows of that execution: this request's and those batched with it."""
    input_ns: int = 0
    """Preparing the execution's inputs (concatenating a batch)."""
    output_ns: int = 0
    """Splitting the execution's outputs and building this response."""


class Servable(Protocol):
    """Something that can serve one loaded model version.

    ``execute`` is called with a request the pipeline already validated
    against the version's signature; it raises a ModelportError subclass when
    it cannot answer (``Unavailable`` when full or unloading, ``DeadlineExceeded``,
    ``InferenceFailed``).
    """

    async def execute(self, call: Call | None, request: InferenceRequest) -> Outcome:
        """Compute the answer to ``request``."""
        ...

    def refusal(self) -> ModelportError | None:
        """The error any new request would get right now, or None.

        Lets a transport refuse under overload before it reads and decodes a
        body; None whenever a request might still be taken.
        """
        ...

    async def drain_and_close(self) -> None:
        """Refuse new work, let what was taken finish, then release resources."""
        ...


#: The protocol label (metrics, logs) of a step a composite servable runs.
STEP_PROTOCOL = "step"


class StepRunner(Protocol):
    """How a composite servable (an ensemble, a cascade) runs one of its steps.

    A step is served like a request for ``model`` (``version`` None: the
    version routing picks): routed, validated, answered from the cache or
    executed, and observed, under the composite's ``call``. The pipeline
    implements it, and hands itself to servables that need it, so a step
    cannot skip the stages a direct request goes through.

    ``parameters`` are the step request's parameters: a composite passes them
    only to a step that needs the caller's (a sequence model's step gets the
    request's ``sequence_id`` and flags) and calls without them otherwise, so
    a plain step costs nothing more.
    """

    async def run_step(
        self,
        call: Call | None,
        model: str,
        version: str | None,
        inputs: Mapping[str, Array],
        parameters: Mapping[str, Any] | None = None,
    ) -> dict[str, Array]:
        """The step's outputs by name; raises what serving ``model`` would raise."""
        ...


def respond(
    name: str,
    version: str,
    outputs: Mapping[str, TensorSpec],
    request: InferenceRequest,
    arrays: Mapping[str, Array],
    wanted: tuple[str, ...],
) -> InferenceResponse:
    """The response carrying ``wanted`` from ``arrays``, each in its declared datatype.

    A runtime may compute in a wider type than the config declares (float64
    for FP32); the cast happens here once, whether the arrays came from an
    execution or from the response cache.
    """
    tensors = []
    for out in wanted:
        array = arrays[out]
        datatype = outputs[out].datatype
        want = DTYPES[datatype]
        if datatype != "BYTES" and array.dtype != want:
            array = array.astype(want)
        tensors.append(Tensor(out, datatype, array.shape, array))
    return InferenceResponse(name, version, tensors, id=request.id)


def wanted_outputs(request: InferenceRequest, every: tuple[str, ...]) -> tuple[str, ...]:
    """The outputs a request asked for, in its order; ``every`` when it named none."""
    if request.outputs is None:
        return every
    return tuple(o.name for o in request.outputs)
