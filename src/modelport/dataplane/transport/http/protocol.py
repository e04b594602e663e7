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


class JsonErrorHttpToolsProtocol(HttpToolsProtocol):
    _tls: dict[str, Any] | None = None
    _client_cert: ClientCertificate | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self._tls, self._client_cert = tls_extension(ssl_object)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._tls is not None:
            scope: dict[str, Any] = self.scope  # type: ignore[assignment]
            scope["extensions"] = {"tls": self._tls}
            if self._client_cert is not None:
                scope[CLIENT_CERT_SCOPE_KEY] = self._client_cert

    def send_400_response(self, msg: str) -> None:
        body = json.dumps({"error": f"malformed HTTP request: {msg}"}).encode()
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
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
