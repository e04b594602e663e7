"""One canary controller per fleet: a PostgreSQL advisory lock on a dedicated connection.

Canaries step, promote and roll back from one place, or two nodes would
race each other's steps. Within a node the leader lease (a ``flock``) picks
one worker; across nodes that share a PostgreSQL store this lease picks one
node. The lock belongs to a session: it is held while the holder's
connection lives, and PostgreSQL releases it the moment that connection
ends, whether the holder stopped, crashed or lost the network. So the
holder checks its connection every ``check_s`` and steps down when it is
gone, and the others try every ``retry_s``: leadership moves within a
few seconds of a holder's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # psycopg comes with the postgres extra; only a PostgreSQL store needs it
    import psycopg

log = logging.getLogger("modelport.fleet")

#: The advisory lock's key: any 64-bit number other applications are unlikely to use.
CANARY_LOCK_KEY = 0x6D70_6361_6E61_7279  # "mpcanary"


class FleetLease:
    """The fleet-wide canary leadership, held by at most one process at a time."""

    def __init__(
        self, dsn: str, key: int = CANARY_LOCK_KEY, retry_s: float = 1.0, check_s: float = 1.0
    ) -> None:
        self._dsn = dsn
        self._key = key
        self.retry_s = retry_s
        self.check_s = check_s
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None

    @property
    def held(self) -> bool:
        return self._conn is not None

    async def lead(
        self, stop: asyncio.Event, work: Callable[[asyncio.Event], Coroutine[Any, Any, None]]
    ) -> None:
        """Until ``stop``: take the lease, run ``work`` while it is held, release it.

        ``work`` gets an event set when it must end: at ``stop``, or when the
        lease's connection is lost (another node may lead by then).
        """
        while not stop.is_set():
            if not await self._take(stop):
                return
            lost = asyncio.Event()
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._watch(stop, lost))
                    group.create_task(work(lost))
            finally:
                await self.release()

    async def _take(self, stop: asyncio.Event) -> bool:
        import psycopg

        while not stop.is_set():
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._dsn, autocommit=True, connect_timeout=10
                )
                row = await (
                    await conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,))
                ).fetchone()
                if row is not None and row[0] is True:
                    self._conn = conn
                    log.info("leading the fleet's canaries")
                    return True
                await conn.close()
            except (psycopg.Error, OSError) as exc:
                log.warning(
                    "cannot reach the store for the canary lease", extra={"error": str(exc)}
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.retry_s)
        return False

    async def _watch(self, stop: asyncio.Event, lost: asyncio.Event) -> None:
        """Set ``lost`` at ``stop`` or when the connection holding the lock fails."""
        import psycopg

        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.check_s)
            conn = self._conn
            if conn is None:
                break
            try:
                await conn.execute("SELECT 1")
            except (psycopg.Error, OSError):
                log.error("lost the canary lease's connection: no longer leading canaries")
                break
        lost.set()

    async def release(self) -> None:
        """Give the lease up (closing its connection releases the lock)."""
        import psycopg

        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()
