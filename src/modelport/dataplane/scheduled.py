"""The Servable every version is today: one runtime behind one Scheduler.

Built at load by the control plane; the pipeline sees only the ``Servable``
protocol. What a request needs beyond its arrays (the output specs, the
batch key, whether the model batches) is read from the signature and config
once, here, so ``execute`` does no lookups beyond a dictionary.
"""

from __future__ import annotations

from modelport.clock import Clock, SystemClock
from modelport.dataplane.codec.parameters import SEQUENCE_ID
from modelport.dataplane.scheduling.scheduler import Scheduler
from modelport.dataplane.servable import Outcome, respond, wanted_outputs
from modelport.errors import InvalidRequest, ModelportError, Unavailable
from modelport.types import Call, InferenceRequest, ModelSignature


class ScheduledServable:
    """A version served by queueing its requests on a ``Scheduler``."""

    __slots__ = (
        "_batch_key",
        "_batching",
        "_clock",
        "_every",
        "_outputs",
        "name",
        "scheduler",
        "version",
    )

    def __init__(
        self,
        scheduler: Scheduler,
        name: str,
        version: str,
        signature: ModelSignature,
        batch_key: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        """``batch_key`` names the request parameter whose value must match for
        requests to share a batch (``modelport.batch_key``); ``clock`` times
        building the response."""
        self.scheduler = scheduler
        self.name = name
        self.version = version
        self._outputs = {s.name: s for s in signature.outputs}
        self._every = tuple(self._outputs)
        self._batching = signature.max_batch_size > 0
        self._batch_key = batch_key
        self._clock = (clock if clock is not None else SystemClock()).monotonic_ns

    async def execute(self, call: Call | None, request: InferenceRequest) -> Outcome:
        """Queue the request's arrays and answer with its rows of the execution.

        The request was validated, so every input agrees on the batch size:
        the first input's first dimension when the model batches, 1 otherwise.
        The scheduler keeps the earliest of the Call's deadline and the
        request's ``timeout`` under the queue policy.
        """
        inputs = request.inputs
        rows = inputs[0].shape[0] if self._batching and inputs else 1
        wanted = wanted_outputs(request, self._every)
        params = request.parameters
        if params and SEQUENCE_ID in params:
            raise InvalidRequest(
                f"model {self.name!r} has no sequence_batching: it takes no "
                f"'sequence_id' (got {params[SEQUENCE_ID]!r}); send stateless requests"
            )
        key = self._batch_key
        group = params.get(key) if key else None
        ex = await self.scheduler.submit(
            {t.name: t.data for t in inputs},
            wanted,
            rows,
            request.priority,
            request.timeout_us,
            group,
            call.deadline_ns if call is not None else None,
        )
        clock = self._clock
        finished = clock()
        response = respond(self.name, self.version, self._outputs, request, ex.outputs, wanted)
        return Outcome(
            response,
            ex.queue_ns,
            ex.infer_ns,
            ex.batch_rows,
            ex.input_ns,
            clock() - finished + ex.output_ns,
        )

    def refusal(self) -> ModelportError | None:
        """The queue-full error when the version's only priority level is full."""
        scheduler = self.scheduler
        if not scheduler.saturated():
            return None
        refused: Unavailable = scheduler.refusal(0)
        return refused

    async def drain_and_close(self) -> None:
        await self.scheduler.drain_and_close()
