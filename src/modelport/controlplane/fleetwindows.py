"""Judging a canary on the whole fleet's requests, not only the leading node's.

The node that leads the fleet's canaries (``fleetlease.py``) sees only the
requests sent to it. So every node writes its window of each version a
running canary is judged on into the store (``WindowStore``) every
``WRITE_S``, tagged with the step it counted for (the step's start time as
stored), and the leader adds to its own window the other nodes' snapshots
that are fresh (at most ``MAX_AGE_S`` old) and of the step being judged.
Counts and latency histograms add up (``routing/window.merged``), so error
rates and the p99 are the fleet's.

A snapshot the leader cannot read (another release's, a damaged row) is
skipped with a log line; a store that is down leaves the leader judging on
its own window until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from modelport.controlplane.canary import ACTIVE
from modelport.controlplane.canary_spec import Canary
from modelport.controlplane.canary_step import comparison_version
from modelport.controlplane.store import CanaryStore
from modelport.controlplane.store.windows import WindowStore
from modelport.dataplane.routing.window import LATENCY_BOUNDS_MS, WindowSnapshot, merged
from modelport.errors import ModelportError

log = logging.getLogger("modelport.fleet")

#: Seconds between a node's writes of its windows.
WRITE_S = 1.0
#: Oldest snapshot of another node the leader counts, in seconds.
MAX_AGE_S = 3.0
#: A node's rows older than this are purged by it, in seconds.
PURGE_AFTER_S = 60.0

Window = Callable[[str, str], Awaitable[WindowSnapshot]]


def to_body(snapshot: WindowSnapshot, step_started_at: float) -> dict[str, Any]:
    body = dataclasses.asdict(snapshot)
    body["latency"] = list(snapshot.latency)
    body["step_started_at"] = step_started_at
    return body


def from_body(body: dict[str, Any]) -> WindowSnapshot:
    """The snapshot a node wrote; ValueError when it is not one this code can add up."""
    counts = [body.get(k) for k in ("requests", "errors", "shadow_compared", "shadow_agreed")]
    latency = body.get("latency")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
        raise ValueError("counts must be non-negative integers")
    if (
        not isinstance(latency, list)
        or len(latency) != len(LATENCY_BOUNDS_MS)
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in latency)
    ):
        raise ValueError("the latency histogram does not match this release's buckets")
    requests, errors, compared, agreed = (int(n) for n in counts)  # type: ignore[arg-type]
    return WindowSnapshot(
        requests=requests,
        errors=errors,
        error_rate=None,
        p99_ms=None,
        shadow_compared=compared,
        shadow_agreed=agreed,
        agreement=None,
        latency=tuple(latency),
    )


class FleetWindows:
    """This node's windows out to the store, and the fleet's windows in for the judge."""

    def __init__(
        self,
        windows: WindowStore,
        canaries: CanaryStore,
        node: str,
        local: Window,
        wall: Callable[[], float],
    ) -> None:
        self._windows = windows
        self._canaries = canaries
        self._node = node
        self._local = local
        self._wall = wall

    async def window(self, model: str, version: str) -> WindowSnapshot:
        """The version's window over the fleet: this node's and the others' fresh ones."""
        own = await self._local(model, version)
        try:
            others = await asyncio.to_thread(self._others, model, version)
        except ModelportError as exc:
            log.error(
                "cannot read the other nodes' canary windows; judging on this node's",
                extra={"model": model, "error": exc.message},
            )
            return own
        return merged([own, *others])

    def _others(self, model: str, version: str) -> list[WindowSnapshot]:
        stored = self._canaries.get(model)
        if stored is None:
            return []
        step = Canary.from_stored(stored).progress.step_started_at
        found: list[WindowSnapshot] = []
        since = self._wall() - MAX_AGE_S
        for body in self._windows.others(model, version, self._node, since):
            if body.get("step_started_at") != step:
                continue  # counted for another step
            try:
                found.append(from_body(body))
            except ValueError as exc:
                log.warning("skipping a node's canary window of %r: %s", model, exc)
        return found

    async def run(self, stop: asyncio.Event) -> None:
        """Write this node's windows every ``WRITE_S`` until ``stop``."""
        last_purge = self._wall()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), WRITE_S)
            try:
                await self._write()
                now = self._wall()
                if now - last_purge > PURGE_AFTER_S:
                    await asyncio.to_thread(self._windows.purge, self._node, now - PURGE_AFTER_S)
                    last_purge = now
            except ModelportError as exc:
                log.error("cannot write this node's canary windows", extra={"error": exc.message})
            except Exception:
                log.exception("writing this node's canary windows failed")

    async def _write(self) -> None:
        stored = await asyncio.to_thread(self._canaries.list_all, ACTIVE)
        for row in stored:
            canary = Canary.from_stored(row)
            spec, progress = canary.spec, canary.progress
            for version in sorted({spec.version, comparison_version(spec, progress)}):
                snapshot = await self._local(row.model, version)
                body = to_body(snapshot, progress.step_started_at)
                await asyncio.to_thread(
                    self._windows.put, self._node, row.model, version, body, self._wall()
                )
