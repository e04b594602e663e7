"""Decoupled models: one request answered by a stream of responses.

A decoupled version (Triton's ``model_transaction_policy: {decoupled: true}``)
is served by :class:`StreamingServable`. It goes through the pipeline like
any version (admission, routing, rate limits, validation, observers: one
request in the statistics however many responses it gets), but its
responses cannot all come back as the one value ``execute`` returns. The
transport that can carry a stream (gRPC's ModelStreamInfer, REST's
generate routes) opens a :class:`StreamTarget` around its call to the
pipeline (:func:`streaming`); the servable claims it and sends each response
there as it is computed, then returns an empty response that ends the
stream. A call without a target (ModelInfer, ``/infer``, an ensemble step)
is refused, as Triton refuses it: those answer exactly one response.

The target travels in a context variable rather than through the pipeline's
arguments, so ordinary requests pay nothing for streams: they never read it.

A stream holds one instance from its first response to its last (no
batching): at most ``instances`` streams run at once and the others wait
for an instance, within their deadline. A stream whose caller goes away is
cancelled; the runtime then stops the model's generator.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

from modelport.clock import Clock, SystemClock
from modelport.dataplane.codec.parameters import SEQUENCE_ID
from modelport.dataplane.servable import Outcome, respond, wanted_outputs
from modelport.errors import (
    DeadlineExceeded,
    InvalidRequest,
    ModelportError,
    Unavailable,
    Unsupported,
)
from modelport.types import Array, Call, InferenceRequest, InferenceResponse, ModelSignature


class ResponseSink(Protocol):
    """Where a transport sends one stream's responses, in order, as they come."""

    async def send(self, response: InferenceResponse) -> None:
        """Deliver one response; raising stops the stream (the error is the request's)."""
        ...


class StreamTarget:
    """One request's way back to its caller when the version it reaches streams.

    ``model`` is the model the caller named: a composite servable's step for
    another model does not take its caller's stream.
    """

    __slots__ = ("claimed", "model", "responses", "sink")

    def __init__(self, model: str, sink: ResponseSink | None = None) -> None:
        self.model = model
        self.sink = sink
        """Set by the transport once it can encode responses (it may need the decoded request)."""
        self.claimed = False
        """Whether a streaming servable answered through this target."""
        self.responses = 0
        """Responses sent so far."""


_TARGET: ContextVar[StreamTarget | None] = ContextVar("modelport_stream_target", default=None)


@contextmanager
def streaming(target: StreamTarget) -> Iterator[StreamTarget]:
    """Offer ``target`` to a streaming servable reached inside this block (this task)."""
    token = _TARGET.set(target)
    try:
        yield target
    finally:
        _TARGET.reset(token)


def _claim(model: str) -> StreamTarget | None:
    target = _TARGET.get()
    if target is None or target.claimed or target.model != model or target.sink is None:
        return None
    target.claimed = True
    return target


class ResponseStream(Protocol):
    """One request's responses from a runtime, holding one instance until it ends."""

    async def next(self) -> dict[str, Array] | None:
        """The next response's outputs; None when there are no more."""
        ...

    def close(self) -> None:
        """Stop computing responses; the instance is freed once the model has stopped."""
        ...


class StreamingRuntime(Protocol):
    """A runtime whose model yields its responses (``runtime/python.py``)."""

    @property
    def instances(self) -> int: ...

    def stream(
        self, inputs: Mapping[str, Array], outputs: Sequence[str], freed: Callable[[], None]
    ) -> ResponseStream:
        """Start a stream on an idle instance; ``freed`` is called (from any thread)
        when the instance is idle again."""
        ...

    def unload(self) -> None: ...


def refuse_unary(model: str) -> Unsupported:
    """The error a decoupled model gives a call that can carry only one response."""
    return Unsupported(
        f"model {model!r} is decoupled (model_transaction_policy.decoupled): it answers "
        "with a stream of responses, which ModelInfer and /infer cannot carry; use gRPC "
        f"ModelStreamInfer or POST /v2/models/{model}/generate_stream"
    )


class StreamingServable:
    """A decoupled version: each request streams its responses through its target."""

    def __init__(
        self,
        runtime: StreamingRuntime,
        name: str,
        version: str,
        signature: ModelSignature,
        clock: Clock | None = None,
    ) -> None:
        self.runtime = runtime
        self.name = name
        self.version = version
        self._outputs = {s.name: s for s in signature.outputs}
        self._every = tuple(self._outputs)
        self._batching = signature.max_batch_size > 0
        self._clock = (clock if clock is not None else SystemClock()).monotonic_ns
        self._instances = asyncio.Semaphore(runtime.instances)
        self._running = 0
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()

    async def execute(self, call: Call | None, request: InferenceRequest) -> Outcome:
        """Stream the request's responses to its target; the returned response is empty.

        Time waiting for an instance is the queue time; the whole stream,
        from the instance taken to the last response sent, is the compute time.
        """
        target = _claim(self.name)
        if target is None:
            raise refuse_unary(self.name)
        params = request.parameters
        if params and SEQUENCE_ID in params:
            raise InvalidRequest(
                f"model {self.name!r} has no sequence_batching: it takes no 'sequence_id'"
            )
        refused = self.refusal()
        if refused is not None:
            raise refused
        sink = target.sink
        assert sink is not None  # _claim checked
        arrived = self._clock()
        await self._take_instance(call, request, arrived)
        started = self._clock()
        wanted = wanted_outputs(request, self._every)
        inputs = request.inputs
        loop = asyncio.get_running_loop()
        self._running += 1
        self._idle.clear()
        try:
            stream = self.runtime.stream(
                {t.name: t.data for t in inputs}, wanted, lambda: _call_soon(loop, self._freed)
            )
        except BaseException:
            self._freed()
            raise
        try:
            while (arrays := await stream.next()) is not None:
                await sink.send(
                    respond(self.name, self.version, self._outputs, request, arrays, wanted)
                )
                target.responses += 1
        finally:
            stream.close()
        rows = inputs[0].shape[0] if self._batching and inputs else 1
        end = InferenceResponse(self.name, self.version, [], id=request.id)
        return Outcome(end, started - arrived, self._clock() - started, rows)

    async def _take_instance(self, call: Call | None, request: InferenceRequest, now: int) -> None:
        """Wait for an instance, until the earlier of the call's deadline and ``timeout``."""
        deadline = call.deadline_ns if call is not None else None
        if request.timeout_us:
            own = now + request.timeout_us * 1000
            deadline = own if deadline is None else min(deadline, own)
        if deadline is None:
            await self._instances.acquire()
            return
        try:
            async with asyncio.timeout(max(0.0, (deadline - now) / 1e9)):
                await self._instances.acquire()
        except TimeoutError:
            raise DeadlineExceeded(
                f"model {self.name!r}: no instance free before the request's deadline"
            ) from None

    def _freed(self) -> None:
        self._running -= 1
        self._instances.release()
        if self._running == 0:
            self._idle.set()

    def refusal(self) -> ModelportError | None:
        """Unavailable once the version is unloading; streams otherwise wait their turn."""
        if self._closing:
            return Unavailable(f"model {self.name!r} version {self.version} is unloading")
        return None

    async def drain_and_close(self) -> None:
        """Refuse new streams, let running ones finish, then unload the runtime."""
        self._closing = True
        await self._idle.wait()
        self.runtime.unload()


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """Run ``callback`` on ``loop`` from a runtime's thread; nothing once the loop is gone."""
    # A closed loop (shutdown) raises RuntimeError: nobody waits for the instance then.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback)
