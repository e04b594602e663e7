"""The HTTP/1.1 protocol under the app: JSON parse errors and the ASGI TLS extension.

When httptools cannot parse a request (a Content-Length that is not a
number, a broken request line) the ASGI app never sees it; uvicorn answers
in plain text. This subclass keeps the one error shape, ``{"error": ...}``.
It reaches uvicorn's protocol only through ``uvicorn_adapter.py``.

uvicorn does not implement the ASGI TLS extension, and mutual TLS needs it:
the client certificate is the caller's identity. So on a TLS connection
this subclass reads the verified peer certificate once, when the
connection is made (the handshake is complete by then), and puts it into
every request's scope: ``scope["extensions"]["tls"]`` as the extension
describes it (``client_cert_chain`` holds the peer's own certificate; the
ssl module of Python 3.11 cannot give the rest of the verified chain), and
the parsed :class:`ClientCertificate` under ``CLIENT_CERT_SCOPE_KEY`` for
the guard. A plain connection pays one ``is None`` test per request.

Behind the fleet's gateway every connection comes from the gateway, so the
peer address that brute-force blocking, rate limits and the audit log key
on would be the gateway's. A connection whose verified client certificate
names one of ``trusted_proxies`` (its common name or a subject alternative
name) is a trusted proxy's: the request's ``scope["client"]`` becomes the
rightmost ``X-Forwarded-For`` address, the one the proxy itself appended
(anything left of it the caller could have written). From any other
connection the header is ignored, as is a value that is not an IP address.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httptools

from modelport.dataplane.admission.certificates import (
    CLIENT_CERT_SCOPE_KEY,
    ClientCertificate,
    describe_der,
)
from modelport.dataplane.admission.proxies import is_trusted_proxy, rightmost_address
from modelport.dataplane.transport.http.body import check_declared, too_large
from modelport.dataplane.transport.http.direct import DirectCycle
from modelport.dataplane.transport.http.disconnect import CONNECTION_SCOPE_KEY, HangupWatch
from modelport.dataplane.transport.http.fastpath import InferenceFastPath, match_infer
from modelport.dataplane.transport.http.uvicorn_adapter import UvicornHttpProtocol
from modelport.errors import PayloadTooLarge

log = logging.getLogger("modelport.http")

#: TLS versions as the ASGI TLS extension numbers them.
_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def forwarded_for(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The caller a trusted proxy names (``proxies.rightmost_address``), from raw headers."""
    values = [v.decode("latin-1") for n, v in headers if n == b"x-forwarded-for"]
    return rightmost_address(values)


def tls_extension(ssl_object: Any) -> tuple[dict[str, Any], ClientCertificate | None]:
    """The ASGI TLS extension of a connection, and its verified client certificate."""
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    cert: ClientCertificate | None = None
    error: str | None = None
    if der:
        try:
            cert = describe_der(der)
        except ValueError as exc:
            error = f"client certificate does not parse: {exc}"
    extension = {
        "server_cert": None,
        "client_cert_chain": [cert.pem] if cert is not None else [],
        "client_cert_name": cert.subject if cert is not None else None,
        "client_cert_error": error,
        "tls_version": _TLS_VERSIONS.get(ssl_object.version()) if ssl_object else None,
        "cipher_suite": None,
    }
    return extension, cert


class _HeadTooLarge(Exception):
    """Raised inside a parser callback; the parser turns it into a parse error."""


#: What ``_declared_length`` answers when it refused the request (413).
_REFUSED = -1

#: Seconds between the checks of every connection's request deadlines.
SWEEP_INTERVAL_S = 0.5
#: Seconds a refused connection stays open once the client stops sending.
LINGER_S = 2.0


class JsonErrorHttpToolsProtocol(HangupWatch, UvicornHttpProtocol):
    """uvicorn's httptools protocol with JSON errors, the TLS extension, and limits.

    Limits that hold for every caller, before any application code runs: the
    request line and headers together may not exceed ``max_head_bytes``
    (431); they must arrive within ``head_timeout_s`` of the connection or of
    the request's first byte, and the whole request within ``head_timeout_s +
    body_timeout_s`` (408), so a client cannot hold a connection open by
    trickling a header or a body.

    The body limit, ``max_body_bytes``, holds for every route here, before any
    application reads a byte: a declared Content-Length over it is answered
    413 as soon as the head is parsed, and a body without one (chunked) is cut
    off with 413 once it grows past the limit. Either way the connection
    closes after the answer and the rest of the body is dropped unread, so a
    route that buffers its body (the management API, the repository routes)
    never holds more than the limit. Infer requests taken directly keep their
    own count of the same limit (``DirectCycle``).

    The limits cost the request path almost nothing: the head is measured once
    per request (and per network read while it is still arriving, so a huge
    head never accumulates), and deadlines are checked by one sweep over the
    server's connections twice a second rather than by a timer per request.

    Infer requests skip the ASGI cycle where they can (``direct.py``), only
    when the server's app is the :class:`InferenceFastPath` itself: under any
    middleware they go through the ASGI app so that the middleware sees them
    (``announce_direct_path`` says so at startup).
    """

    max_head_bytes: int = 32 * 1024
    head_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_body_bytes: int = 64 * 1024 * 1024
    trusted_proxies: frozenset[str] = frozenset()
    """Client-certificate identities whose X-Forwarded-For names the caller."""

    _tls: dict[str, Any] | None = None
    _proxied: bool = False
    """The connection is a trusted proxy's (see the module docstring)."""
    _client_cert: ClientCertificate | None = None
    _started: float = 0.0
    """When the request being received began (or the connection, before any)."""
    _head_read: int = 0
    _head_too_large: bool = False
    _body_read: int = 0
    """Body bytes of the request being received (ASGI cycles; direct ones count their own)."""
    _refused: bool = False
    _last_dropped: float = 0.0
    """When input of a refused request last arrived (it is dropped unread)."""
    _linger_ends: float = 0.0
    _infer_app: InferenceFastPath | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        app = self.served_app
        if isinstance(app, InferenceFastPath):
            self._infer_app = app
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self._tls, self._client_cert = tls_extension(ssl_object)
            self._proxied = is_trusted_proxy(self._client_cert, self.trusted_proxies)
        self._started = self.loop.time()
        self.sweep_while_connected(SWEEP_INTERVAL_S, _check_deadlines)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.hung_up()

    def data_received(self, data: bytes) -> None:
        if self._refused:  # the rest of a refused request: read and dropped
            self._last_dropped = self.loop.time()
            return
        super().data_received(data)
        scope = self.request_scope
        if scope is not None and "method" not in scope:  # the head is still arriving
            self._head_read += len(data)
            if self._head_read > self.max_head_bytes and not self.transport.is_closing():
                self._head_too_large = True
                self.send_400_response("")
        else:
            self._head_read = 0

    def on_headers_complete(self) -> None:
        # One sum per request, before the application sees it; a head arriving
        # over several reads is also cut off in data_received as it grows.
        # The request's state is read once here and handed on: each adapter read is a
        # property call, and this runs for every request.
        target = self.request_target
        headers = self.request_headers
        # Content-Length is found in the same pass that measures the head; the
        # first one counts (httptools refuses a request with two).
        size = len(target)
        declared: bytes | None = None
        for name, value in headers:
            size += len(name) + len(value) + 4
            if declared is None and name == b"content-length":
                declared = value
        if size > self.max_head_bytes:
            self._head_too_large = True
            raise _HeadTooLarge
        if self._refused:
            return
        if self._proxied:
            caller = forwarded_for(headers)
            scope = self.request_scope
            if caller is not None and scope is not None:
                scope["client"] = (caller, 0)
        length = self._declared_length(declared) if declared is not None else None
        if length == _REFUSED:
            return
        app = self._infer_app
        if app is None or not self._take_direct(app, target, length):
            super().on_headers_complete()

    def _take_direct(self, app: InferenceFastPath, target: bytes, length: int | None) -> bool:
        """Start an infer request as a DirectCycle, when it can be one (see direct.py)."""
        parser = self.request_parser
        if parser.get_method() != b"POST" or parser.should_upgrade() or self.mount_path:
            return False
        current = self.request_cycle
        if current is not None and not current.response_complete:
            return False  # pipelined behind an unfinished answer: uvicorn queues it
        url = httptools.parse_url(target)
        raw_path: bytes = url.path
        if b"%" in raw_path or not raw_path.isascii():
            return False
        path = raw_path.decode("ascii")
        route = match_infer(path)
        if route is None:
            return False
        http_version: str = parser.get_http_version()
        scope = self.request_scope
        assert scope is not None  # set by on_message_begin, before the headers
        scope["method"] = "POST"
        if http_version != "1.1":
            scope["http_version"] = http_version
        scope["path"] = path
        scope["raw_path"] = raw_path
        scope["query_string"] = url.query or b""
        cycle = DirectCycle(
            self,
            scope,
            keep_alive=http_version != "1.0" and parser.should_keep_alive(),
            expect_100=self.expects_continue,
            limit=app.infer.ctx.max_body_bytes,
            declared=length,
        )
        self.request_cycle = cycle
        self.start_request_task(app.serve_direct(cycle, *route))
        return True

    def _unsupported_upgrade_warning(self) -> None:
        """An upgrade request (WebSocket or other) was parsed as a plain request.

        The server is built with ``ws="none"``, so the request gets its usual
        HTTP answer (401, 403, 404 ...) and the connection closes after it: the
        parser reads nothing more on a connection that asked to switch
        protocols. No warning is logged (uvicorn would log one per request,
        which any client could use to flood the log).
        """
        cycle = self.request_cycle
        if cycle is not None:
            cycle.keep_alive = False

    def _declared_length(self, declared: bytes) -> int:
        """The declared Content-Length; ``_REFUSED`` when 413 was answered for it.

        No cycle is started for the request, so no application sees it. Behind
        an unfinished answer (pipelining) a 413 cannot be written in order:
        that answer finishes, then the connection closes, and this request is
        never answered; nothing more is read meanwhile.
        """
        try:
            length = check_declared(declared.decode("latin-1"), self.max_body_bytes)
        except PayloadTooLarge as exc:
            previous = self.request_cycle
            if previous is not None and not previous.response_complete:
                previous.keep_alive = False
                self._refused = True
            else:
                self._send_error(413, "Content Too Large", exc.message)
            return _REFUSED
        assert length is not None  # given a string, check_declared answers its number
        return length

    def on_body(self, body: bytes) -> None:
        cycle = self.request_cycle
        if isinstance(cycle, DirectCycle):
            cycle.add(body)
            return
        if self._refused:
            return
        self._body_read += len(body)
        if self._body_read > self.max_body_bytes:
            self._refuse_body()
        else:
            super().on_body(body)

    def _refuse_body(self) -> None:
        """The body grew past the limit: 413 when nothing was answered yet; no more reading.

        The application reading it is told the client left and its answer is
        dropped (``_linger``). A request queued behind another answer, or one
        whose answer is already under way, cannot be answered in order: the
        connection closes instead.
        """
        cycle = self.request_cycle
        assert cycle is not None  # a body arrives only after a head made one
        if self.is_queued(cycle):
            self.transport.close()
        elif not cycle.response_started:
            self._send_error(413, "Content Too Large", too_large(self.max_body_bytes).message)
        elif cycle.response_complete:
            self._linger()
        else:  # the answer is still being written: let it finish, then close
            cycle.keep_alive = False
            self._refused = True

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._started = self.loop.time()
        self._body_read = 0
        scope = self.request_scope
        assert scope is not None  # on_message_begin just made it
        scope[CONNECTION_SCOPE_KEY] = self
        if self._tls is not None:
            scope["extensions"] = {"tls": self._tls}
            if self._client_cert is not None:
                scope[CLIENT_CERT_SCOPE_KEY] = self._client_cert

    def check_deadlines(self, now: float) -> None:
        """Answer 408 when the head or the body is overdue (called by the sweep)."""
        if self._refused or self.transport.is_closing():
            return
        scope = self.request_scope
        waited = now - self._started
        if scope is None or "method" not in scope:
            if waited > self.head_timeout_s:
                self._timed_out("request head", self.head_timeout_s)
            return
        cycle = self.request_cycle
        receiving = cycle is not None and cycle.more_body and not cycle.response_started
        limit = self.head_timeout_s + self.body_timeout_s
        if receiving and waited > limit:
            self._timed_out("request body", limit)

    def _timed_out(self, what: str, seconds: float) -> None:
        cycle = self.request_cycle
        if cycle is None or not cycle.response_started:
            self._send_error(408, "Request Timeout", f"{what} not received within {seconds:g} s")
        else:
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        if self._head_too_large:
            self._send_error(
                431,
                "Request Header Fields Too Large",
                f"request line and headers exceed {self.max_head_bytes} bytes",
            )
            return
        self._send_error(400, "Bad Request", f"malformed HTTP request: {msg}")

    def _send_error(self, status: int, reason: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        head = [f"HTTP/1.1 {status} {reason}\r\n".encode("ascii")]
        for name, value in self.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(head))
        self._linger()

    def _linger(self) -> None:
        """Close so that the client reads the error before the connection goes.

        A client may still be sending the request we refused (a 100 kB header,
        a body). Closing a socket with unread input makes the kernel send a
        reset, and a reset can discard the answer before the client reads it.
        So the write side is shut (the client sees the end of the answer),
        further input is dropped unread, and the socket closes when the client
        closes, once it has sent nothing for ``LINGER_S``, or ``body_timeout_s``
        after the refusal, whichever comes first. A client that reads only once
        it has sent its whole body (most do) thus gets the 413 rather than a
        reset, and dropping costs bandwidth but no memory.
        """
        self._refused = True
        cycle = self.request_cycle
        if isinstance(cycle, DirectCycle):
            cycle.abandon()
        elif cycle is not None and not cycle.response_complete:
            # The application must not answer after us: its receive() reports
            # the client gone, and whatever it sends is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        transport = self.transport
        if transport.can_write_eof():
            transport.write_eof()
        self.keep_reading()  # dropping is reading: a paused socket would only fill up
        now = self.loop.time()
        self._last_dropped = now
        self._linger_ends = now + self.body_timeout_s
        self.loop.call_later(LINGER_S, self._end_linger)

    def _end_linger(self) -> None:
        if self.transport.is_closing():
            return
        now = self.loop.time()
        quiet_from = self._last_dropped + LINGER_S
        if now >= quiet_from or now >= self._linger_ends:
            self.transport.close()
        else:
            self.loop.call_later(min(quiet_from, self._linger_ends) - now, self._end_linger)


#: How deep ``announce_direct_path`` looks through ``app`` attributes for the fast path.
_MAX_WRAPPERS = 32


def announce_direct_path(app: object) -> bool:
    """Whether the protocol will take infer requests directly for ``app``; says why not.

    The direct path bypasses the ASGI app, so it is on only when ``app`` is
    the :class:`InferenceFastPath` itself (``connection_made``). When the fast
    path sits under middleware, found through the ``app`` attribute ASGI
    middleware conventionally keeps for what it wraps, infer requests go
    through the middleware instead, and one warning at startup names it, so
    the slower path is never taken silently. An app with no fast path in it
    (the metrics port) has no direct path to lose: nothing is logged.
    """
    if isinstance(app, InferenceFastPath):
        return True
    inner = getattr(app, "app", None)
    for _ in range(_MAX_WRAPPERS):
        if inner is None:
            break
        if isinstance(inner, InferenceFastPath):
            log.warning(
                "direct infer path off: middleware %s wraps the infer fast path, so every "
                "infer request goes through the ASGI app",
                type(app).__qualname__,
            )
            break
        inner = getattr(inner, "app", None)
    return False


def _check_deadlines(connection: object, now: float) -> None:
    """The deadline sweep's visit: one server's connections, twice a second."""
    if isinstance(connection, JsonErrorHttpToolsProtocol):
        connection.check_deadlines(now)


def limited_protocol(
    max_head_bytes: int,
    head_timeout_s: float,
    body_timeout_s: float,
    max_body_bytes: int = JsonErrorHttpToolsProtocol.max_body_bytes,
    trusted_proxies: frozenset[str] = frozenset(),
) -> type[JsonErrorHttpToolsProtocol]:
    """The protocol class with the server's limits (uvicorn builds one per connection)."""
    return type(
        "LimitedHttpToolsProtocol",
        (JsonErrorHttpToolsProtocol,),
        {
            "max_head_bytes": max_head_bytes,
            "head_timeout_s": head_timeout_s,
            "body_timeout_s": body_timeout_s,
            "max_body_bytes": max_body_bytes,
            "trusted_proxies": trusted_proxies,
        },
    )
