"""Shadow traffic: copies of answered requests sent to a version under test.

The caller has its answer before the copy is even started, and nothing the
copy does reaches the caller: its errors are swallowed and counted, it runs
under a bounded timeout so a hung version cannot pile up work, and at most
``limit`` copies per model are in flight (beyond that the copy is skipped and
counted). Each copy is a task owned by the ``ShadowRunner``, which keeps a
reference until it ends and cancels the leftovers on ``close``.

Results are counted in ``modelport_shadow_requests_total{model, version,
result}`` with result agree, disagree, error or skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from modelport.dataplane.routing.compare import outputs_agree
from modelport.observability.metrics import Metrics
from modelport.types import InferenceRequest, InferenceResponse

log = logging.getLogger("modelport.routing")

#: The ``protocol`` label shadow calls carry in the request metrics.
SHADOW_PROTOCOL = "shadow"

AGREE, DISAGREE, ERROR, SKIPPED = "agree", "disagree", "error", "skipped"


class ShadowOutcomes(Protocol):
    """Where a shadow call's outcome lands besides the counter: the version's window."""

    def record(self, version: str, latency_ns: int, failed: bool) -> None: ...

    def compared(self, version: str, agreed: bool) -> None: ...


def shadow_copy(request: InferenceRequest, version: str) -> InferenceRequest:
    """The same inputs and requested outputs, addressed to ``version``.

    Input arrays are shared, not copied: nothing on the request path writes to
    them. The caller's deadline is not carried over; the runner's timeout is.
    """
    return InferenceRequest(
        request.model_name,
        version,
        list(request.inputs),
        outputs=list(request.outputs) if request.outputs is not None else None,
        id=request.id,
        parameters=dict(request.parameters),
        priority=request.priority,
        timeout_us=request.timeout_us,
    )


class ShadowRunner:
    """Owns every shadow task of the server; one per ``Traffic``.

    Touched only from the event loop.
    """

    def __init__(self, metrics: Metrics, limit: int = 64, timeout_s: float = 5.0) -> None:
        if limit < 1 or not timeout_s >= 0:
            raise ValueError("shadow limit must be >= 1 and timeout_s >= 0")
        self._metrics = metrics
        self.limit = limit
        self.timeout_s = timeout_s
        self._tasks: dict[str, set[asyncio.Task[None]]] = {}

    def in_flight(self, model: str) -> int:
        return len(self._tasks.get(model, ()))

    def submit(
        self,
        model: str,
        version: str,
        call: Callable[[], Awaitable[InferenceResponse]],
        primary: InferenceResponse,
        outcomes: ShadowOutcomes,
    ) -> None:
        """Start one shadow call in the background, or count it skipped."""
        tasks = self._tasks.setdefault(model, set())
        if len(tasks) >= self.limit:
            self._count(model, version, SKIPPED)
            return
        task = asyncio.get_running_loop().create_task(
            self._run(model, version, call, primary, outcomes),
            name=f"shadow {model}/{version}",
        )
        tasks.add(task)
        task.add_done_callback(lambda t: self._forget(model, t))

    def _forget(self, model: str, task: asyncio.Task[None]) -> None:
        tasks = self._tasks.get(model)
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                del self._tasks[model]

    async def _run(
        self,
        model: str,
        version: str,
        call: Callable[[], Awaitable[InferenceResponse]],
        primary: InferenceResponse,
        outcomes: ShadowOutcomes,
    ) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                answer = await call()
        except TimeoutError:
            # The call was cancelled inside the pipeline, which records only
            # ModelportErrors; a timed-out shadow is the version's failure.
            outcomes.record(version, int(self.timeout_s * 1e9), True)
            result = ERROR
        except Exception as exc:  # anything at all: the caller must never see it
            log.debug(
                "shadow request failed",
                extra={"model": model, "version": version, "error": str(exc)},
            )
            result = ERROR
        else:
            try:
                agreed = outputs_agree(primary.outputs, answer.outputs)
            except Exception:
                agreed = False
            outcomes.compared(version, agreed)
            result = AGREE if agreed else DISAGREE
        self._count(model, version, result)

    def _count(self, model: str, version: str, result: str) -> None:
        self._metrics.shadow_requests.labels(model, version, result).inc()

    async def wait(self) -> None:
        """Wait until the shadow calls in flight now have ended (each is time-bounded)."""
        running = [t for tasks in self._tasks.values() for t in tasks]
        if running:
            await asyncio.gather(*running, return_exceptions=True)

    async def close(self) -> None:
        """Cancel every shadow call still running and wait for them to end."""
        leftovers = [t for tasks in self._tasks.values() for t in tasks]
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.gather(*leftovers, return_exceptions=True)
