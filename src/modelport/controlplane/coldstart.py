"""Requests held while a version unloaded for idleness loads again (a cold start).

The first request for a cold version starts its load; every request that
arrives before it ends waits for that same load, so 32 callers at once cost
one load, not 32. Each caller waits no longer than its own deadline and the
server's ``cold_start_timeout``; the load itself runs on, so a caller that
gives up never wastes the work the others are waiting for. The callers held
per version are bounded (``HOLD_LIMIT``): past it a caller is refused at once
with a wait to retry after, rather than piling up behind a slow load.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from modelport.clock import Clock, SystemClock
from modelport.errors import (
    DeadlineExceeded,
    ModelNotReady,
    ModelportError,
    Unavailable,
    internal_error,
)

log = logging.getLogger("modelport.coldstart")

#: Callers held per version while it loads; the next one is refused (503, Retry-After).
#: Far above what one node answers in a second, far below what would exhaust its memory.
HOLD_LIMIT = 1024

K = TypeVar("K")

#: A load: None when the version is ready, else why it is not (the reason held callers get).
Load = Callable[[], Awaitable[str | None]]


class HoldQueueFull(Unavailable):
    """Raised when a cold version already has ``HOLD_LIMIT`` callers waiting for it.

    ``retry_after_s`` is the wait to suggest: by then the load has most likely ended.
    """


class ColdLoads(Generic[K]):
    """One load per key at a time, shared by every caller held for it."""

    def __init__(
        self,
        clock: Clock | None = None,
        timeout_s: float = 60.0,
        hold_limit: int = HOLD_LIMIT,
    ) -> None:
        if hold_limit < 1:
            raise ValueError(f"hold_limit must be at least 1, got {hold_limit}")
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.timeout_ns = int(timeout_s * 1e9)
        self.hold_limit = hold_limit
        self._loads: dict[K, asyncio.Task[str | None]] = {}
        self._held: dict[K, int] = {}

    def held(self, key: K) -> int:
        """Callers waiting for ``key`` now."""
        return self._held.get(key, 0)

    def loading(self, key: K) -> bool:
        return key in self._loads

    def cancel(self) -> None:
        """Stop every load in progress (server shutdown); their callers get Unavailable."""
        for task in self._loads.values():
            task.cancel()

    async def wait(self, key: K, label: str, load: Load, deadline_ns: int | None) -> None:
        """Start ``load`` unless one for ``key`` is running, and wait for it to end.

        Raises ModelNotReady with the load's reason when it fails (every caller
        held for that load gets the same reason), DeadlineExceeded when the
        caller's deadline passes first, Unavailable when ``cold_start_timeout``
        does, HoldQueueFull when too many callers wait already; an error the load
        raises on purpose (the memory budget's refusal) reaches every caller as it is.
        """
        held = self._held.get(key, 0)
        if held >= self.hold_limit:
            raise HoldQueueFull(
                f"{label} is loading and {held} requests already wait for it; retry shortly",
                min(self.timeout_ns / 1e9, 5.0),
                retriable=True,
            )
        now = self.clock.monotonic_ns()
        until = now + self.timeout_ns
        own = deadline_ns is not None and deadline_ns < until
        if own:
            assert deadline_ns is not None
            until = deadline_ns
            if until <= now:
                raise DeadlineExceeded(f"deadline passed before {label} could load")
        task = self._loads.get(key)
        if task is None:
            task = self._loads[key] = asyncio.create_task(self._run(load, label))
            task.add_done_callback(lambda done: self._forget(key, done))
        self._held[key] = held + 1
        try:
            ended = await self._until(task, until)
        finally:
            left = self._held[key] - 1
            if left:
                self._held[key] = left
            else:
                del self._held[key]
        if not ended:
            if own:
                raise DeadlineExceeded(f"deadline passed while {label} was loading (cold start)")
            raise Unavailable(
                f"{label} is still loading after {self.timeout_ns / 1e9:g} s "
                "(cold_start_timeout); retry shortly"
            )
        if task.cancelled():
            raise Unavailable(f"{label} did not load: the server is stopping")
        reason = task.result()
        if reason is not None:
            raise ModelNotReady(f"{label} failed to load: {reason}")

    async def _until(self, task: asyncio.Task[str | None], until_ns: int) -> bool:
        """Whether ``task`` ended before ``until_ns`` on the clock; never cancels it."""
        if task.done():
            return True
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        def settle(value: bool) -> None:
            if not waiter.done():
                waiter.set_result(value)

        def ended(_: asyncio.Task[str | None]) -> None:
            settle(True)

        task.add_done_callback(ended)
        timer = self.clock.call_at(until_ns, settle, False)
        try:
            return await waiter
        finally:
            timer.cancel()
            task.remove_done_callback(ended)

    def _forget(self, key: K, task: asyncio.Task[str | None]) -> None:
        if self._loads.get(key) is task:
            del self._loads[key]
        if not task.cancelled():
            task.exception()  # read, so a refusal no caller waited for is not logged as lost

    @staticmethod
    async def _run(load: Load, label: str) -> str | None:
        """The load, with a bug turned into a reason rather than lost in a task."""
        try:
            return await load()
        except ModelportError:
            raise  # a refusal meant for the callers as it is (the memory budget's Unavailable)
        except Exception as exc:
            log.exception("cold load failed", extra={"model": label})
            return internal_error(exc)
