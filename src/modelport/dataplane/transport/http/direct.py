"""The infer route answered by the HTTP protocol itself, without an ASGI cycle.

For a small model the ASGI request cycle costs about as much as decoding,
scheduling and computing together: a cycle object and an event per request,
``receive`` and ``send`` as message dicts, header checks, and two socket
writes per answer (the head, then the body). So when a connection's next
request is ``POST /v2/models/{m}[/versions/{v}]/infer``, the protocol gives
it a :class:`DirectCycle` instead: the body is collected as it arrives, within
the size limit; one task runs the same route code the ASGI app runs
(``InferenceFastPath.serve_direct``); and the answer leaves in one write.

The cycle keeps the attribute names uvicorn's protocol reads of a request
cycle (``uvicorn_adapter.RequestCycle``: ``more_body``, ``response_started``,
``response_complete``, ``disconnected``, ``keep_alive``, ``message_event``),
so connection loss, graceful shutdown, pipelining and the deadline sweep
treat it like any other request. A request the protocol cannot take this way (pipelined behind an
unfinished answer, an upgrade, a percent-escaped path) goes through the ASGI
app instead and gets the same answer.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from modelport.dataplane.transport.http.body import (
    ClientDisconnected,
    check_declared,
    decode_content,
    too_large,
)

if TYPE_CHECKING:
    from modelport.dataplane.transport.http.uvicorn_adapter import UvicornHttpProtocol

#: An answer: status, headers (content-length aside), body.
Reply = tuple[int, list[tuple[bytes, bytes]], bytes]

_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode("ascii") for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class DirectCycle:
    """One infer request taken by the protocol: its body as it arrives, and its one answer."""

    def __init__(
        self,
        protocol: UvicornHttpProtocol,
        scope: dict[str, Any],
        keep_alive: bool,
        expect_100: bool,
        limit: int,
        declared: int | None = None,
    ) -> None:
        """``declared``: the Content-Length the protocol already parsed and checked."""
        self.protocol = protocol
        self.declared = declared
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_100 = expect_100
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.over_limit = False
        self.more_body = True
        self.response_started = False
        self.response_complete = False
        self.disconnected = False
        self._waiter: asyncio.Future[None] | None = None

    @property
    def message_event(self) -> DirectCycle:
        """uvicorn calls ``cycle.message_event.set()`` on news: the body ended, the peer left."""
        return self

    def set(self) -> None:
        """Wake the task if it waits for the rest of the body."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def abandon(self) -> None:
        """The protocol has answered for this request (408, 400): read and write nothing more."""
        self.response_complete = True
        self.chunks = []
        self.set()

    def add(self, data: bytes) -> None:
        """Body bytes from the parser; past the limit they are dropped, and the task told."""
        if self.response_complete or self.over_limit:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.over_limit = True
            self.chunks = []
            self.set()
            return
        self.chunks.append(data)

    async def read_body(self, declared: str | None, content_encoding: str) -> bytes:
        """The whole body, decoded; refuses a declared or actual size over the limit."""
        # The protocol parsed the header already; only a length over this
        # route's limit needs the refusal (with the header's own spelling).
        known = self.declared
        if known is None or known > self.limit:
            check_declared(declared, self.limit)
        if self.expect_100 and self.more_body and not self.protocol.transport.is_closing():
            self.expect_100 = False
            self.protocol.transport.write(_CONTINUE)
        while self.more_body and not (
            self.over_limit or self.disconnected or self.response_complete
        ):
            self._waiter = self.protocol.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self.disconnected or self.response_complete:
            raise ClientDisconnected("the client closed the connection before sending the body")
        if self.over_limit:
            raise too_large(self.limit)
        chunks, self.chunks = self.chunks, []
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return decode_content(body, content_encoding, self.limit)

    async def send(self, reply: Reply) -> None:
        """Write the answer, head and body together, then let the connection go on."""
        protocol = self.protocol
        # Awaiting only when paused: an await that need not suspend still costs a
        # coroutine per answer.
        if not self.disconnected and protocol.write_paused:
            await protocol.drain_writes()
        transport = protocol.transport
        if self.disconnected or self.response_complete or transport.is_closing():
            return
        status, headers, payload = reply
        self.response_started = True
        out = [_STATUS_LINES[status]]
        for name, value in protocol.default_headers:
            out += (name, b": ", value, b"\r\n")
        for name, value in headers:
            out += (name, b": ", value, b"\r\n")
        out.append(b"content-length: %d\r\n" % len(payload))
        if not self.keep_alive:
            out.append(b"connection: close\r\n")
        out += (b"\r\n", payload)
        transport.write(b"".join(out))
        self.response_complete = True
        if not self.keep_alive:
            transport.close()
        protocol.on_response_complete()
