"""Fleet-wide changes: a traffic policy or canary changed on one node holds on every node.

Within a node, workers tell one another through the node's bus
(``node/link.py``). Across nodes sharing a PostgreSQL state store, the same
"what changed" message goes out as a PostgreSQL ``NOTIFY`` on
:data:`CHANNEL`, sent in its own transaction after the change is stored;
every process of every node ``LISTEN``s on a dedicated connection and
applies the change to itself as a worker of its own node would (reading
the rest from the store), so the whole fleet follows within a round trip.

The payload names the operation, the model and the origin node; a node
skips its own (its workers heard it on the bus already). A payload that is
not one of ours is logged and dropped. A notification sent while a
listener was disconnected is lost, so a listener that reconnects reads
every stored policy and canary again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text

from modelport.controlplane.announce import Announce
from modelport.controlplane.store import checks
from modelport.controlplane.store.connect import parse_url
from modelport.controlplane.store.database import Database
from modelport.errors import InvalidRequest, ModelportError

log = logging.getLogger("modelport.fleet")

#: The PostgreSQL channel of fleet-wide changes.
CHANNEL = "modelport_changes"
#: The operations that hold fleet-wide; the others (repository loads) are a node's own.
FLEET_OPS = frozenset({"traffic", "canary"})
#: Seconds between attempts to reconnect a lost listener.
RECONNECT_S = 1.0

Apply = Callable[[str, str], Awaitable[None]]
"""Apply one change here: (operation, model)."""
Resync = Callable[[], Awaitable[None]]
"""Read every stored policy and canary again (after a gap in listening)."""


def is_postgres(url: str | None) -> bool:
    return url is not None and parse_url(url).drivername.startswith("postgresql")


def libpq_url(url: str) -> str:
    """The state URL as psycopg takes it (no SQLAlchemy driver suffix)."""
    return parse_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def encode(op: str, model: str, origin: str) -> str:
    return json.dumps({"op": op, "model": model, "origin": origin}, separators=(",", ":"))


def decode(payload: str) -> tuple[str, str, str]:
    """(op, model, origin) of a payload; InvalidRequest for anything else."""
    try:
        found: Any = json.loads(payload)
    except ValueError:
        raise InvalidRequest("not JSON") from None
    if not isinstance(found, dict):
        raise InvalidRequest("not a JSON object")
    op, model, origin = found.get("op"), found.get("model"), found.get("origin")
    if op not in FLEET_OPS:
        raise InvalidRequest(f"unknown operation {op!r}")
    if not isinstance(origin, str) or not origin:
        raise InvalidRequest("no origin")
    return str(op), checks.check_model(model), origin


class FleetSync:
    """This process's part in the fleet's change channel: telling and listening."""

    def __init__(
        self, database: Database, url: str, origin: str, apply: Apply, resync: Resync
    ) -> None:
        self._database = database
        self.dsn = libpq_url(url)
        """The store as psycopg takes it, for the canary lease's connection too."""
        self.origin = origin
        self._apply = apply
        self._resync = resync
        self.listening = asyncio.Event()
        """Set while the listener is connected (tests and start-up wait on it)."""

    def announce(self, local: Announce) -> Announce:
        """``local`` (the node's own announce), then the fleet told of fleet-wide changes."""

        async def both(op: str, body: dict[str, Any]) -> None:
            await local(op, body)
            model = body.get("model")
            if op in FLEET_OPS and isinstance(model, str):
                await self.notify(op, model)

        return both

    async def notify(self, op: str, model: str) -> None:
        """Tell the other nodes; a store that is down costs a log line, not the change."""
        try:
            await asyncio.to_thread(self._notify, encode(op, model, self.origin))
        except ModelportError as exc:
            log.error(
                "could not tell the fleet of a change",
                extra={"op": op, "model": model, "error": exc.message},
            )

    def _notify(self, payload: str) -> None:
        with self._database.transaction(write=True) as conn:
            conn.execute(text("SELECT pg_notify(:channel, :payload)"), {
                "channel": CHANNEL,
                "payload": payload,
            })  # fmt: skip

    async def run(self, stop: asyncio.Event) -> None:
        """Listen until ``stop``, reconnecting after a lost connection."""
        import psycopg  # the postgres extra: only a PostgreSQL store runs this

        gap = False
        while not stop.is_set():
            try:
                await self._listen(stop, gap)
            except (psycopg.Error, OSError) as exc:
                self.listening.clear()
                if not gap:
                    log.error("lost the fleet's change channel; reconnecting", extra={
                        "error": str(exc),
                    })  # fmt: skip
                gap = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), RECONNECT_S)

    async def _listen(self, stop: asyncio.Event, gap: bool) -> None:
        import psycopg

        async with await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, connect_timeout=10
        ) as conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            self.listening.set()
            if gap:
                log.info("listening to the fleet's change channel again; reading the store")
                try:
                    await self._resync()
                except Exception:
                    log.exception("could not read the store again after a gap in listening")
            while not stop.is_set():
                async for note in conn.notifies(timeout=0.5):
                    await self._heard(note.payload)
                    if stop.is_set():
                        break
        self.listening.clear()

    async def _heard(self, payload: str) -> None:
        try:
            op, model, origin = decode(payload)
        except InvalidRequest as exc:
            log.warning("ignoring a message on the fleet's change channel: %s", exc.message)
            return
        if origin == self.origin:
            return
        try:
            await self._apply(op, model)
        except Exception:
            log.exception("could not follow a change made on another node", extra={
                "op": op, "model": model, "origin": origin,
            })  # fmt: skip
