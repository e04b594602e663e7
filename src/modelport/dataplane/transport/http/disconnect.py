"""Dropping the work of an HTTP caller that hung up, without a task per request.

A client that closes its connection while its inference waits in the queue
should not get its rows computed. ASGI reports the hang-up as an
``http.disconnect`` message, but only to a coroutine that is awaiting
``receive()``, so the portable way costs a watcher task per request, and
creating, awaiting and cancelling it costs a small model a noticeable share
of the server's throughput (docs/performance.md).

modelport's own protocol class knows when a connection is lost, so it
offers itself in the scope under ``CONNECTION_SCOPE_KEY``; the request
registers its task there, and ``connection_lost`` cancels it. Apps served
some other way (a test client, another ASGI server) fall back to the
watcher task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

from starlette.types import Receive, Scope

from modelport.dataplane.transport.http.body import ClientDisconnected

#: Scope key under which the connection offers :class:`Hangup`.
CONNECTION_SCOPE_KEY = "modelport.connection"

T = TypeVar("T")


class Hangup(Protocol):
    """What a connection offers: whether it is gone, and whom to cancel when it goes."""

    lost: bool

    def hold(self, task: asyncio.Task[Any] | None) -> None: ...


class HangupWatch:
    """Mixin for the protocol class: cancels the registered task when the peer goes away."""

    lost: bool = False
    _holder: asyncio.Task[Any] | None = None

    def hold(self, task: asyncio.Task[Any] | None) -> None:
        self._holder = task

    def hung_up(self) -> None:
        """Call from ``connection_lost``."""
        self.lost = True
        holder, self._holder = self._holder, None
        if holder is not None and not holder.done():
            holder.cancel()


async def until_disconnect(
    scope: Scope, receive: Receive | None, work: Coroutine[Any, Any, T]
) -> T:
    """Await ``work``, cancelling it if the client disconnects first.

    The cancellation this causes ends here as ClientDisconnected; any other
    cancellation propagates. ``receive`` is needed only when the scope holds no
    connection (without either, a hang-up is not noticed).
    """
    current = asyncio.current_task()
    connection: Hangup | None = scope.get(CONNECTION_SCOPE_KEY)
    if connection is None or current is None:
        if receive is None:
            return await work
        return await _with_watcher(receive, work, current)
    if connection.lost:
        work.close()
        raise ClientDisconnected("the client closed the connection")
    connection.hold(current)
    try:
        return await work
    except asyncio.CancelledError:
        if connection.lost and current.uncancel() == 0:
            raise ClientDisconnected("the client closed the connection") from None
        raise
    finally:
        connection.hold(None)


async def _with_watcher(
    receive: Receive, work: Coroutine[Any, Any, T], current: asyncio.Task[Any] | None
) -> T:
    """The portable way: once the body is read, the next ASGI message is the disconnect."""
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        if current is not None:
            current.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone and current is not None and current.uncancel() == 0:
            raise ClientDisconnected("the client closed the connection") from None
        raise
    finally:
        watcher.cancel()
