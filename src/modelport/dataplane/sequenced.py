"""The Servable of a sequence model (Triton's ``sequence_batching``).

Built at load instead of ``ScheduledServable`` when the config has a
``sequence_batching`` section. Every request must name its sequence
(``sequence_id``, with ``sequence_start`` on the first and ``sequence_end``
on the last; ``codec/parameters.py`` checked the values); the
``SequenceScheduler`` runs it on its sequence's slot, in order, with the
control inputs and implicit state filled in.
"""

from __future__ import annotations

from typing import Protocol

from modelport.clock import Clock, SystemClock
from modelport.dataplane.codec.parameters import sequence_of
from modelport.dataplane.scheduling.sequencer import SequenceScheduler
from modelport.dataplane.servable import Outcome, respond, wanted_outputs
from modelport.errors import InvalidRequest, ModelportError
from modelport.types import Call, InferenceRequest, ModelSignature


class SequenceRouter(Protocol):
    """Which worker of a node holds a sequence, and the way to run a step there."""

    def mine(self, sequence_id: int | str) -> bool: ...

    async def execute(
        self,
        model: str,
        version: str,
        sequence_id: int | str,
        call: Call | None,
        request: InferenceRequest,
    ) -> Outcome: ...


class SequencedServable:
    """A sequence model version: each request rides its sequence's lane."""

    __slots__ = (
        "_batching",
        "_clock",
        "_every",
        "_outputs",
        "name",
        "router",
        "scheduler",
        "version",
    )

    def __init__(
        self,
        scheduler: SequenceScheduler,
        name: str,
        version: str,
        signature: ModelSignature,
        clock: Clock | None = None,
    ) -> None:
        """``signature`` is what clients see: no control or state tensors."""
        self.scheduler = scheduler
        self.name = name
        self.version = version
        self._outputs = {s.name: s for s in signature.outputs}
        self._every = tuple(self._outputs)
        self._batching = signature.max_batch_size > 0
        self._clock = (clock if clock is not None else SystemClock()).monotonic_ns
        self.router: SequenceRouter | None = None
        """In a node of several workers: where each sequence lives (None: here)."""

    async def execute(self, call: Call | None, request: InferenceRequest) -> Outcome:
        """Run the request as the next step of its sequence."""
        sequence = sequence_of(request.parameters)
        if sequence is None:
            raise InvalidRequest(
                f"model {self.name!r} is a sequence model: each request needs a "
                "'sequence_id' parameter (with 'sequence_start' on a sequence's first "
                "request and 'sequence_end' on its last)"
            )
        sid, start, end = sequence
        router = self.router
        if router is not None and not router.mine(sid):
            return await router.execute(self.name, self.version, sid, call, request)
        inputs = request.inputs
        rows = inputs[0].shape[0] if self._batching and inputs else 1
        wanted = wanted_outputs(request, self._every)
        ex = await self.scheduler.submit(
            sid, start, end, {t.name: t.data for t in inputs}, wanted, rows
        )
        finished = self._clock()
        response = respond(self.name, self.version, self._outputs, request, ex.outputs, wanted)
        return Outcome(
            response,
            ex.queue_ns,
            ex.infer_ns,
            ex.batch_rows,
            ex.input_ns,
            self._clock() - finished + ex.output_ns,
        )

    def refusal(self) -> ModelportError | None:
        """The queue-full error while the sequences' requests fill the queue."""
        scheduler = self.scheduler
        return scheduler.refusal() if scheduler.saturated() else None

    async def drain_and_close(self) -> None:
        await self.scheduler.drain_and_close()
