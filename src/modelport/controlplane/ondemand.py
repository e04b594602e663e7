"""Models on demand: versions nobody asks for are unloaded, and load again on use.

The request path only notes when each version last took a request
(``ModelVersion.last_used_ns``, the start time the pipeline reads anyway).
This module reads those notes on the server's clock, once per check, and
unloads the versions idle past their ``idle_unload_s`` (or the server's
``--idle-unload``). The registry marks them ``unloaded: idle`` and loads one
again when a request for it arrives (``Registry.acquire_loading``).

Never unloaded for idleness: a model with ``keep_loaded``, a version a
traffic policy or canary pins, and a version with requests queued or
computing (a long computation is no idleness).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from modelport.clock import Clock, SystemClock
from modelport.controlplane.registry import Registry
from modelport.dataplane.table import ModelVersion

log = logging.getLogger("modelport.ondemand")

#: The longest wait between two checks, so a version loaded after a check with a
#: short idle time is looked at soon enough.
MAX_CHECK_INTERVAL_S = 1.0
#: The shortest wait between two checks, so a due unload that was refused
#: (a request in flight) is not retried in a busy loop.
MIN_CHECK_INTERVAL_S = 0.05

#: Called after each idle unload: the model, the version and the idle seconds.
UnloadRecorder = Callable[[str, str, float], Awaitable[None]]


def idle_limit_s(model: ModelVersion, server_default_s: float | None) -> float | None:
    """Seconds without a request after which ``model`` is unloaded; None: never.

    The model's ``idle_unload_s`` wins over the server's; ``keep_loaded`` means never.
    Autoscaling down to ``min_instances: 0`` unloads after ``downscale_delay_s`` idle,
    unless the model sets its own ``idle_unload_s``.
    """
    options = model.config.modelport
    if options.keep_loaded:
        return None
    if options.idle_unload_s is not None:
        return options.idle_unload_s
    scaling = options.autoscaling
    if scaling is not None and scaling.min_instances == 0:
        return scaling.downscale_delay_s
    return server_default_s


def busy(model: ModelVersion) -> bool:
    """Whether the version has requests queued or computing, or sequences open.

    Read from its scheduler, when the servable has one; a version without
    one (a composite) is judged by its last use alone, as its steps are
    versions of their own.
    """
    scheduler: Any = getattr(model.servable, "scheduler", None)
    if scheduler is None:
        return False
    hook = getattr(scheduler, "busy", None)
    if hook is not None:
        return bool(hook() if callable(hook) else hook)
    # A batch computed inline runs on the event loop, where no check can see it
    # half done; ``in_flight`` counts those on instance threads.
    computing = getattr(scheduler, "in_flight", 0)
    queued = getattr(scheduler, "queued", 0)
    active = getattr(scheduler, "active", 0)  # sequences seated (sequence batching)
    backlog = getattr(scheduler, "backlog", 0)
    return bool(computing or queued or active or backlog)


def idle_due(
    model: ModelVersion,
    now_ns: int,
    server_default_s: float | None,
    pinned: bool,
    is_busy: bool,
) -> bool:
    """Whether ``model`` should be unloaded for idleness now."""
    limit = idle_limit_s(model, server_default_s)
    if limit is None or pinned or is_busy:
        return False
    return now_ns - model.last_used_ns >= int(limit * 1e9)


class IdleTable(Protocol):
    """What the check needs of the registry (a fake in unit tests)."""

    def ready(self) -> list[ModelVersion]: ...

    def pins(self, name: str) -> frozenset[int]: ...

    async def unload_idle(self, name: str, version: str, seen_ns: int) -> bool: ...


class IdleUnloader:
    """Finds idle versions and has the registry unload them."""

    def __init__(
        self,
        registry: IdleTable | Registry,
        server_default_s: float | None,
        clock: Clock | None = None,
        on_unload: UnloadRecorder | None = None,
    ) -> None:
        """``on_unload`` records each unload (the audit log); its failure is logged only."""
        self.registry = registry
        self.server_default_s = server_default_s
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.on_unload = on_unload

    async def check(self) -> tuple[list[tuple[str, str]], float | None]:
        """Unload every version due now; what was unloaded, and seconds to the next due.

        The wait is None when no loaded version can go idle (none has a limit).
        """
        now = self.clock.monotonic_ns()
        unloaded: list[tuple[str, str]] = []
        next_due: float | None = None
        for model in self.registry.ready():
            limit = idle_limit_s(model, self.server_default_s)
            if limit is None:
                continue
            pinned = int(model.version) in self.registry.pins(model.name)
            seen = model.last_used_ns
            due = idle_due(model, now, self.server_default_s, pinned, busy(model))
            if due and await self.registry.unload_idle(model.name, model.version, seen):
                unloaded.append((model.name, model.version))
                await self._record(model.name, model.version, (now - seen) / 1e9)
                continue
            left = max(0.0, limit - (now - seen) / 1e9)
            next_due = left if next_due is None else min(next_due, left)
        return unloaded, next_due

    async def run(self, stop: asyncio.Event) -> None:
        """Check until ``stop`` is set, sooner when a version is due; a failing check
        is logged, never fatal. The waits are timers on the server's clock."""
        wait = MAX_CHECK_INTERVAL_S
        while not stop.is_set():
            await self._sleep(wait, stop)
            if stop.is_set():
                return
            try:
                _, due = await self.check()
            except Exception:
                log.exception("idle check failed")
                due = None
            wait = MAX_CHECK_INTERVAL_S if due is None else due
            wait = min(MAX_CHECK_INTERVAL_S, max(MIN_CHECK_INTERVAL_S, wait))

    async def _sleep(self, seconds: float, stop: asyncio.Event) -> None:
        """Wait ``seconds`` on the clock, or until ``stop`` is set."""
        woken = asyncio.Event()
        timer = self.clock.call_later(int(seconds * 1e9), woken.set)
        waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(woken.wait())}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            for task in waits:
                task.cancel()

    async def _record(self, name: str, version: str, idle_s: float) -> None:
        if self.on_unload is None:
            return
        try:
            await self.on_unload(name, version, idle_s)
        except Exception:
            log.exception("idle unload not recorded", extra={"model": name})
