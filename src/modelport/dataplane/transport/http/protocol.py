"""The HTTP/1.1 protocol under the app: JSON parse errors and the ASGI TLS extension.

When httptools cannot parse a request (a Content-Length that is not a
number, a broken request line) the ASGI app never sees it; uvicorn answers
in plain text. This subclass keeps the one error shape, ``{"error": ...}``.

uvicorn does not implement the ASGI TLS extension, and mutual TLS needs it:
the client certificate is the caller's identity. So on a TLS connection
this subclass reads the verified peer certificate once, when the
connection is made (the handshake is complete by then), and puts it into
every request's scope: ``scope["extensions"]["tls"]`` as the extension
describes it (``client_cert_chain`` holds the peer's own certificate; the
ssl module of Python 3.11 cannot give the rest of the verified chain), and
the parsed :class:`ClientCertificate` under ``CLIENT_CERT_SCOPE_KEY`` for
the guard. A plain connection pays one ``is None`` test per request.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from modelport.dataplane.admission.certificates import (
    CLIENT_CERT_SCOPE_KEY,
    ClientCertificate,
    describe_der,
)

#: TLS versions as the ASGI TLS extension numbers them.
_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


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


class JsonErrorHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with JSON errors, the TLS extension, and limits.

    Limits that hold for every caller, before any application code runs: the
    request line and headers together may not exceed ``max_head_bytes``
    (431), they must arrive within ``head_timeout_s`` of the connection or of
    the previous response (408, so a client cannot hold a connection open by
    trickling a header), and the body within ``body_timeout_s`` of the head.
    """

    max_head_bytes: int = 32 * 1024
    head_timeout_s: float = 10.0
    body_timeout_s: float = 60.0

    _tls: dict[str, Any] | None = None
    _client_cert: ClientCertificate | None = None
    _head_bytes: int = 0
    _head_too_large: bool = False
    _timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self._tls, self._client_cert = tls_extension(ssl_object)
        self._arm(self.head_timeout_s, "request head")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._timed_out, what, seconds)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self, what: str, seconds: float) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        cycle = getattr(self, "cycle", None)
        if cycle is None or not cycle.response_started:
            self._send_error(408, "Request Timeout", f"{what} not received within {seconds:g} s")
        else:
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._arm(self.head_timeout_s, "request head")
        if self._tls is not None:
            scope: dict[str, Any] = self.scope  # type: ignore[assignment]
            scope["extensions"] = {"tls": self._tls}
            if self._client_cert is not None:
                scope[CLIENT_CERT_SCOPE_KEY] = self._client_cert

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.max_head_bytes:
            self._head_too_large = True
            raise _HeadTooLarge

    def on_headers_complete(self) -> None:
        self._arm(self.body_timeout_s, "request body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            # The next request on this keep-alive connection, if any, starts now;
            # an idle connection is closed by uvicorn's keep-alive timeout first.
            self._disarm()

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
        self._disarm()
        body = json.dumps({"error": message}).encode()
        head = [f"HTTP/1.1 {status} {reason}\r\n".encode("ascii")]
        for name, value in self.server_state.default_headers:
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
        self.transport.close()


def limited_protocol(
    max_head_bytes: int, head_timeout_s: float, body_timeout_s: float
) -> type[JsonErrorHttpToolsProtocol]:
    """The protocol class with the server's limits (uvicorn builds one per connection)."""
    return type(
        "LimitedHttpToolsProtocol",
        (JsonErrorHttpToolsProtocol,),
        {
            "max_head_bytes": max_head_bytes,
            "head_timeout_s": head_timeout_s,
            "body_timeout_s": body_timeout_s,
        },
    )
