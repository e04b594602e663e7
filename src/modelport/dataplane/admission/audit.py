"""Audit records of authentication failures and denials, off the event loop.

Requests must not wait for the database, and an attacker must not be able to
turn a flood of bad requests into a flood of rows. So events go through a
bounded queue to one writer coroutine (owned by the server's task group),
which writes them with ``asyncio.to_thread``; and repeated events of one kind
from one source are sampled: the first in each one-second window is
written, the rest are counted and the count (``suppressed``) rides on the
next record written for that source. A full queue drops events and counts
them the same way (``dropped``), so the log always says that something was
left out.

Ids, names and reasons are stored as JSON data, never formatted into text,
so newlines or control characters in them cannot forge log lines or records.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from modelport.types import Identity, Role

log = logging.getLogger("modelport.auth")

AUTH_FAILURE = "auth.failure"
AUTH_DENIED = "auth.denied"
AUTH_BLOCKED = "auth.blocked"

#: The ``model`` column of records that concern no model.
SERVER_WIDE = "*"

#: The ``actor`` of records about callers that did not authenticate.
ANONYMOUS = "anonymous"

#: Events waiting for the writer at most.
QUEUE_SIZE = 1000

#: Sources whose sampling window is remembered at most.
MAX_SOURCES = 10_000

#: Writes one record: (model, action, actor, detail). Blocking; run in a thread.
Sink = Callable[[str, str, str, dict[str, Any]], None]


@dataclass(slots=True)
class AuditEvent:
    model: str
    action: str
    actor: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Window:
    start: float
    suppressed: int = 0


class AuthAudit:
    """Sampled, queued audit of authentication events; :meth:`run` writes them."""

    def __init__(
        self,
        sink: Sink | None,
        *,
        window_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink = sink
        self._window_s = window_s
        self._clock = clock
        self._queue: asyncio.Queue[AuditEvent] = asyncio.Queue(QUEUE_SIZE)
        self._windows: dict[tuple[str, str], _Window] = {}
        self._dropped = 0

    # -------------------------------------------------- producers (event loop)

    def failure(self, peer: str, reason: str) -> None:
        self._offer(
            (AUTH_FAILURE, peer),
            AuditEvent(SERVER_WIDE, AUTH_FAILURE, ANONYMOUS, {"peer": peer, "reason": reason}),
        )

    def blocked(self, peer: str, seconds: float) -> None:
        event = AuditEvent(
            SERVER_WIDE, AUTH_BLOCKED, ANONYMOUS, {"peer": peer, "seconds": round(seconds, 3)}
        )
        self._offer((AUTH_BLOCKED, peer), event)

    def denied(self, identity: Identity, need: Role, model: str | None, peer: str) -> None:
        detail = {"identity": identity.id, "role": need.label, "peer": peer}
        if model is not None:
            detail["requested_model"] = model
        # The model column holds only names that passed the store's checks;
        # the name as sent stays in the detail, as data.
        event = AuditEvent(SERVER_WIDE, AUTH_DENIED, identity.actor, detail)
        self._offer((AUTH_DENIED, identity.id), event)

    def offer(self, event: AuditEvent, source: str) -> None:
        """Queue any other event (residency refusals, security events), sampled per
        ``source`` like the rest; ``event.model`` must be a served name or SERVER_WIDE."""
        self._offer((event.action, source), event)

    def _offer(self, source: tuple[str, str], event: AuditEvent) -> None:
        now = self._clock()
        window = self._windows.get(source)
        if window is not None and now - window.start < self._window_s:
            window.suppressed += 1
            return
        if window is not None and window.suppressed:
            event.detail["suppressed"] = window.suppressed
        if window is None and len(self._windows) >= MAX_SOURCES:
            self._windows = {
                s: w for s, w in self._windows.items() if now - w.start < self._window_s
            }
            if len(self._windows) >= MAX_SOURCES:
                del self._windows[next(iter(self._windows))]
        self._windows[source] = _Window(now)
        if self._dropped:
            event.detail["dropped"] = self._dropped
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._dropped += 1
            return
        self._dropped = 0
        log.info(
            "audit",
            extra={"action": event.action, "actor": event.actor, "detail": event.detail},
        )

    def pending(self) -> list[AuditEvent]:
        """Events queued and not yet written (for tests and shutdown)."""
        items: list[AuditEvent] = []
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        return items

    # -------------------------------------------------- the writer

    async def run(self, stop: asyncio.Event) -> None:
        """Write queued events until ``stop`` is set, then write what is left."""
        while not stop.is_set():
            getter = asyncio.ensure_future(self._queue.get())
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if getter in done:
                await self._write(getter.result())
            else:
                getter.cancel()
        for event in self.pending():
            await self._write(event)

    async def _write(self, event: AuditEvent) -> None:
        if self._sink is None:
            return
        try:
            await asyncio.to_thread(
                self._sink, event.model, event.action, event.actor, event.detail
            )
        except Exception:
            # The audit store being down must not take authentication with it.
            log.exception("cannot write an audit record", extra={"action": event.action})
