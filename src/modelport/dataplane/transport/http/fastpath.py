"""The inference route as a bare ASGI app, in front of the Starlette router.

``POST /v2/models/{m}[/versions/{v}]/infer`` is almost all of a busy
server's traffic, and for a small model the web framework's routing,
request objects and exception middleware cost more than the model. This
callable recognises that one route with string operations, reads the body,
runs codec → pipeline → codec, and writes the response itself; every other
request goes on to the Starlette app unchanged. Behaviour (limits, errors,
compression, disconnect handling) is the same as the framework route's.

It is also the outermost app, so authentication happens here for every
path (``guard.HttpGuard``): the infer route by the role :class:`InferRoute`
declares, every other path by the route it matches in ``routes``. With
authentication off there is no guard and the cost is one ``is None`` check.

modelport's own HTTP protocol goes one step further and hands most infer
requests to :meth:`InferenceFastPath.serve_direct` without an ASGI cycle at
all (``direct.py``); the route code, :meth:`InferRoute.respond`, is the same.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from modelport.dataplane.admission.identity import IDENTITY_SCOPE_KEY
from modelport.dataplane.admission.needs import Access, declared, needs
from modelport.dataplane.codec.json_v2 import decode_request, encode_json, encode_response
from modelport.dataplane.sharedmemory import Session, owner_of
from modelport.dataplane.transport.context import TransportContext
from modelport.dataplane.transport.http.body import ClientDisconnected, compress, receive_body
from modelport.dataplane.transport.http.direct import DirectCycle, Reply
from modelport.dataplane.transport.http.disconnect import until_disconnect
from modelport.dataplane.transport.http.errors import error_headers, http_status
from modelport.dataplane.transport.http.guard import DeclaredRoutes, HttpGuard
from modelport.dataplane.transport.http.headers import TIMEOUT_HEADER, HeaderView, deadline_ns
from modelport.dataplane.transport.trace import NO_TRACE, trace_context
from modelport.errors import InvalidRequest, ModelportError, internal_error
from modelport.types import Call, Origin, Role

log = logging.getLogger("modelport.http")

_PREFIX = "/v2/models/"
_SUFFIX = "/infer"
_JSON = [(b"content-type", b"application/json")]
_BINARY = b"application/octet-stream"


def match_infer(path: str) -> tuple[str, str | None] | None:
    """(model, version) when ``path`` is the infer route, else None."""
    if not (path.startswith(_PREFIX) and path.endswith(_SUFFIX)):
        return None
    parts = path[len(_PREFIX) : -len(_SUFFIX)].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
        return parts[0], parts[2]
    return None


def inference_header_length(raw: bytes | None) -> int | None:
    """The ``Inference-Header-Content-Length`` header, checked."""
    if raw is None:
        return None
    text = raw.strip()
    if not text.isdigit():
        shown = raw.decode("latin-1")
        raise InvalidRequest(
            f"Inference-Header-Content-Length {shown!r} is not a non-negative integer"
        )
    return int(text)


class InferenceFastPath:
    """ASGI app: the infer route handled directly, everything else to ``app``.

    ``routes`` are the routes ``app`` serves, each declaring its role; the
    infer route is authorized by the role :class:`InferRoute` declares.
    """

    def __init__(
        self,
        infer: InferRoute,
        app: ASGIApp,
        routes: DeclaredRoutes,
        guard: HttpGuard | None = None,
    ) -> None:
        self.infer = infer
        self.app = app
        self.routes = routes
        self.guard = guard
        access = declared(infer)
        if access is None:
            raise TypeError("the infer route declares no role")
        self.infer_access: Access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guard = self.guard
        if scope["type"] == "http":
            route = match_infer(scope["path"]) if scope["method"] == "POST" else None
            if route is not None:
                if guard is not None:
                    refused = await guard.refusal_for(scope, self.infer_access, _params(*route))
                    if refused is not None:
                        await guard.refuse(scope, send, refused)
                        return
                await self.infer.handle(scope, receive, send, *route)
                return
            if guard is not None and not await guard.admit(scope, send, self.routes):
                return
        await self.app(scope, receive, send)

    async def serve_direct(self, cycle: DirectCycle, name: str, version: str | None) -> None:
        """An infer request the protocol took itself (``direct.py``): same checks, one write."""
        scope = cycle.scope
        reply: Reply | None
        try:
            guard = self.guard
            refused = (
                await guard.refusal_for(scope, self.infer_access, _params(name, version))
                if guard is not None
                else None
            )
            if refused is not None:
                reply = error_reply(refused, scope["path"])
            else:
                reply = await self.infer.respond(scope, name, version, cycle.read_body)
        except Exception as exc:  # the same answer the router gives an unexpected error
            log.exception("unexpected error", extra={"path": scope["path"]})
            reply = 500, list(_JSON), encode_json({"error": internal_error(exc)})
        if reply is not None:
            await cycle.send(reply)


def _params(name: str, version: str | None) -> dict[str, str | None]:
    """The infer route's path parameters, as the router would give them."""
    return {"model": name, "version": version}


#: Reads the request body: (declared Content-Length, Content-Encoding) -> the decoded body.
BodyReader = Callable[[str | None, str], Awaitable[bytes]]

#: Answers an infer request that asked ``Prefer: respond-async`` (``routes_v2.AsyncInfer``):
#: (scope, headers, model, version, body reader) -> the reply, None if the client left.
Deferred = Callable[
    [Scope, dict[bytes, bytes], str, str | None, BodyReader], Awaitable[Reply | None]
]


def wants_async(prefer: bytes) -> bool:
    """Whether a ``Prefer`` header value asks for ``respond-async`` (RFC 7240).

    ``Prefer: respond-async, wait=5`` and ``Prefer: Respond-Async`` both do;
    preference names are case-insensitive and may carry parameters.
    """
    for part in prefer.split(b","):
        token = part.split(b";", 1)[0].split(b"=", 1)[0].strip().lower()
        if token == b"respond-async":
            return True
    return False


def error_reply(exc: ModelportError, path: str) -> Reply:
    """The ``{"error": ...}`` answer for a refusal, with its status and headers."""
    status = http_status(exc)
    log.debug("request refused", extra={"path": path, "status": status, "error": exc.message})
    return status, [*_JSON, *error_headers(exc)], encode_json({"error": exc.message})


@needs(Role.INVOKER, model="model")
class InferRoute:
    """The infer endpoint as an ASGI app (also mounted in the router for 405s).

    :meth:`respond` is the route itself, shared with the protocol's direct
    path (``direct.py``): only how the body is read and the answer written differ.
    """

    def __init__(self, ctx: TransportContext) -> None:
        self.ctx = ctx
        self.deferred: Deferred | None = None
        """Where ``Prefer: respond-async`` requests go; set by ``routes_v2`` when the
        server has a job queue. The header costs other requests one lookup."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = scope.get("path_params", {})
        await self.handle(scope, receive, send, params["model"], params.get("version"))

    async def handle(
        self, scope: Scope, receive: Receive, send: Send, name: str, version: str | None
    ) -> None:
        limit = self.ctx.max_body_bytes

        def read(declared: str | None, encoding: str) -> Awaitable[bytes]:
            return receive_body(receive, declared, encoding, limit)

        reply = await self.respond(scope, name, version, read, receive)
        if reply is not None:
            status, headers, payload = reply
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [*headers, (b"content-length", str(len(payload)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": payload})

    async def respond(
        self,
        scope: Scope,
        name: str,
        version: str | None,
        read_body: BodyReader,
        receive: Receive | None = None,
    ) -> Reply | None:
        """The answer to one infer request; None when the client went away first.

        ``receive`` is only needed where the connection does not offer itself in
        the scope (see ``disconnect.until_disconnect``).
        """
        headers: dict[bytes, bytes] = dict(scope["headers"])
        prefer = headers.get(b"prefer")
        if prefer is not None and self.deferred is not None and wants_async(prefer):
            return await self.deferred(scope, headers, name, version, read_body)
        shm: Session | None = None
        try:
            ctx = self.ctx
            pipeline = ctx.pipeline
            # The deadline runs from arrival, before the body is read.
            timeout = headers.get(TIMEOUT_HEADER)
            deadline = (
                deadline_ns(timeout, pipeline.clock.monotonic_ns()) if timeout is not None else None
            )
            # Admission's first phase (the guard authenticated and authorized):
            # residency, unknown models and a full queue are refused before the body is read.
            identity = scope.get(IDENTITY_SCOPE_KEY)
            view = HeaderView(headers)
            admitted = pipeline.admission.before_body(name, version, identity, view.get, "http")
            length = headers.get(b"content-length")
            body = await read_body(
                length.decode("latin-1") if length is not None else None,
                headers.get(b"content-encoding", b"").decode("latin-1"),
            )
            # The caller's shared-memory regions, held from here until the answer is made.
            shm = Session(lambda: ctx.shared_memory, owner_of(identity), ctx.max_body_bytes)
            request = decode_request(
                body,
                inference_header_length(headers.get(b"inference-header-content-length")),
                name,
                version,
                ctx.max_elements,
                shm,
            )
            call = Call(
                Origin.REST,
                identity,
                deadline,
                view,
                request.id,
                scope.get("client"),
                trace_context(view.get) if b"traceparent" in headers else NO_TRACE,
            )
            response = await until_disconnect(
                scope, receive, pipeline.infer(request, "http", view.get, call, admitted)
            )
            payload, hlen = encode_response(request, response, shm)
        except ModelportError as exc:
            return error_reply(exc, scope["path"])
        except ClientDisconnected:
            return None
        finally:
            if shm is not None:
                shm.close()
        extra: list[tuple[bytes, bytes]]
        if hlen is None:
            extra = list(_JSON)
        else:
            extra = [
                (b"content-type", _BINARY),
                (b"inference-header-content-length", str(hlen).encode()),
            ]
        accept = headers.get(b"accept-encoding")
        if accept:
            payload, encoding = compress(payload, accept.decode("latin-1"))
            if encoding is not None:
                extra.append((b"content-encoding", encoding.encode()))
                extra.append((b"vary", b"Accept-Encoding"))
        return 200, extra, payload
