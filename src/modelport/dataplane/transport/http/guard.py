"""Authentication at the front of the REST app, for every path.

:class:`HttpGuard` reads the ``Authorization`` header and the peer address,
asks ``access.required`` what the route needs, and calls the shared Gate.
Refusals leave in the usual ``{"error": ...}`` shape; a 401 carries
``WWW-Authenticate: Bearer`` as RFC 6750 asks. The caller's Identity is put
in the ASGI scope under ``IDENTITY_SCOPE_KEY`` for the routes below
(inference requests, the management API's actor).
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from modelport.dataplane.admission.certificates import CLIENT_CERT_SCOPE_KEY
from modelport.dataplane.admission.gate import Gate
from modelport.dataplane.admission.identity import IDENTITY_SCOPE_KEY, VISIBLE_SCOPE_KEY
from modelport.dataplane.codec.json_v2 import encode_json
from modelport.dataplane.transport.http.access import required
from modelport.dataplane.transport.http.errors import error_headers, http_status
from modelport.errors import InvalidRequest, ModelportError

log = logging.getLogger("modelport.http")


def _authorization(scope: Scope) -> str | None:
    """The one Authorization value, or None; InvalidRequest when there are several.

    Proxies and the server could disagree on which of two values counts, so
    neither the first nor the last is taken: the request is refused.
    """
    found: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            if found is not None:
                raise InvalidRequest("send one Authorization header, not several")
            found = value
    return None if found is None else found.decode("latin-1")


def peer_of(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


async def send_error(send: Send, exc: ModelportError) -> None:
    """Answer with the error's status and headers and ``{"error": message}``."""
    body = encode_json({"error": exc.message})
    headers = [
        (b"content-type", b"application/json"),
        *error_headers(exc),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": http_status(exc), "headers": headers})
    await send({"type": "http.response.body", "body": body})


class HttpGuard:
    """The REST side of the Gate."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    async def admit(self, scope: Scope, send: Send) -> bool:
        """Whether the request may go on; when not, the refusal has been sent."""
        refused = await self.refusal(scope)
        if refused is None:
            return True
        log.debug(
            "request refused",
            extra={"path": scope["path"], "status": http_status(refused), "error": refused.message},
        )
        await send_error(send, refused)
        return False

    async def refusal(self, scope: Scope) -> ModelportError | None:
        """None when the request may go on (its Identity now in the scope), else why not.

        The caller answers (and logs) the refusal."""
        need, model = required(scope["method"], scope["path"])
        if need is None:
            return None
        try:
            identity = await self.gate.admit(
                _authorization(scope),
                peer_of(scope),
                need,
                model,
                scope.get(CLIENT_CERT_SCOPE_KEY),
            )
        except ModelportError as exc:
            return exc
        scope[IDENTITY_SCOPE_KEY] = identity
        scope[VISIBLE_SCOPE_KEY] = self.gate.visible(identity)
        return None


class Guarded:
    """Any ASGI app behind an HttpGuard (the --metrics-port app)."""

    def __init__(self, app: ASGIApp, guard: HttpGuard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not await self.guard.admit(scope, send):
            return
        await self.app(scope, receive, send)
