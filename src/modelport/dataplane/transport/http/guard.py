"""Authentication and authorization in front of the REST app, for every path.

A request is matched first, by the routers' own routes (:class:`DeclaredRoutes`),
to find the route it will reach and the role that route declares
(``admission/needs.py``). Then :class:`HttpGuard`:

- a route declared open (the health probes) goes on, whoever asks;
- any other request is authenticated, whatever its path: without credentials
  it is a 401 even where no route matches;
- a matched route is authorized with the role it declares, on the model its
  path parameter names, before the model is resolved;
- a request no route matches goes on to the router, which answers it (404,
  405) the same way whoever asks; it reaches no handler.

Refusals leave in the usual ``{"error": ...}`` shape; a 401 carries
``WWW-Authenticate: Bearer`` as RFC 6750 asks. The caller's Identity is put
in the ASGI scope under ``IDENTITY_SCOPE_KEY`` for the routes below
(inference requests, the management API's actor).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from modelport.dataplane.admission.certificates import CLIENT_CERT_SCOPE_KEY
from modelport.dataplane.admission.gate import Gate
from modelport.dataplane.admission.identity import IDENTITY_SCOPE_KEY, VISIBLE_SCOPE_KEY
from modelport.dataplane.admission.needs import Access, declared
from modelport.dataplane.codec.json_v2 import encode_json
from modelport.dataplane.transport.http.errors import error_headers, http_status
from modelport.errors import InvalidRequest, ModelportError, PermissionDenied

log = logging.getLogger("modelport.http")

_NO_PARAMS: Mapping[str, Any] = {}


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


def mounted_scope(prefix: str, scope: Scope) -> Scope | None:
    """The scope an app mounted at ``prefix`` sees for this request; None when not under it.

    Every path under the prefix goes to the mounted app, whatever characters
    it holds (a router mount would pass over paths its pattern excludes).
    """
    path: str = scope.get("path", "")
    if scope["type"] != "http" or not (path == prefix or path.startswith(prefix + "/")):
        return None
    return {**scope, "root_path": scope.get("root_path", "") + prefix}


def route_access(route: BaseRoute) -> Access | None:
    """What a route's endpoint declares it needs; None when nothing (then nobody may call it)."""
    return declared(getattr(route, "endpoint", None))


class DeclaredRoutes:
    """The routes of one REST app, in the order its routers try them, each with its role.

    ``routes`` and each of ``mounts`` (prefix -> routes of the app mounted
    there) are the routers' own lists, read on every request, so this never
    drifts from what the routers serve. Building it fails on a route that
    declares no role, and a route added later without one is refused.
    """

    def __init__(
        self,
        routes: Sequence[BaseRoute],
        mounts: Mapping[str, Sequence[BaseRoute]] | None = None,
    ) -> None:
        self.routes = routes
        self.mounts = dict(mounts or {})
        missing = [_describe(prefix, r) for prefix, r in self.walk() if route_access(r) is None]
        if missing:
            raise TypeError(f"routes without a declared role: {', '.join(missing)}")

    def walk(self) -> Iterator[tuple[str, BaseRoute]]:
        """Every route with the prefix it is mounted under ("" for the app's own)."""
        for prefix, routes in self.mounts.items():
            for route in routes:
                yield prefix, route
        for route in self.routes:
            yield "", route

    def match(self, scope: Scope) -> tuple[BaseRoute, Mapping[str, Any]] | None:
        """The route this request will reach and its path parameters; None when none matches.

        The first full match, as the routers take it; a route matching the
        path but not the method only ever answers 405, so it is no match here.
        """
        routes: Sequence[BaseRoute] = self.routes
        for prefix, mounted in self.mounts.items():
            inner = mounted_scope(prefix, scope)
            if inner is not None:
                scope, routes = inner, mounted
                break
        for route in routes:
            found, child = route.matches(scope)
            if found is Match.FULL:
                params: Mapping[str, Any] = child.get("path_params", _NO_PARAMS)
                return route, params
        return None


def _describe(prefix: str, route: BaseRoute) -> str:
    path = getattr(route, "path", None)
    return f"{prefix}{path}" if path is not None else repr(route)


class HttpGuard:
    """The REST side of the Gate: authenticate every request, authorize the matched route."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    async def admit(self, scope: Scope, send: Send, routes: DeclaredRoutes) -> bool:
        """Whether the request may go on to ``routes``; when not, the refusal has been sent."""
        refused = await self.refusal(scope, routes)
        if refused is None:
            return True
        await self.refuse(scope, send, refused)
        return False

    async def refuse(self, scope: Scope, send: Send, refused: ModelportError) -> None:
        """Send (and log) a refusal."""
        log.debug(
            "request refused",
            extra={"path": scope["path"], "status": http_status(refused), "error": refused.message},
        )
        await send_error(send, refused)

    async def refusal(self, scope: Scope, routes: DeclaredRoutes) -> ModelportError | None:
        """None when the request may go on to the route it matches in ``routes``, else why not."""
        found = routes.match(scope)
        if found is None:
            return await self.refusal_for(scope, None)
        route, params = found
        access = route_access(route)
        if access is None:
            refused = await self.refusal_for(scope, None)
            return refused or PermissionDenied("permission denied: this route declares no role")
        return await self.refusal_for(scope, access, params)

    async def refusal_for(
        self, scope: Scope, access: Access | None, params: Mapping[str, Any] = _NO_PARAMS
    ) -> ModelportError | None:
        """None when the request may go on (its Identity now in the scope), else why not.

        ``access`` is what the route it reaches declares, ``params`` that
        route's path parameters; None when it reaches no route, and then the
        caller is only authenticated. The caller answers (and logs) the refusal.
        """
        if access is not None and access.role is None:
            return None
        try:
            peer = peer_of(scope)
            identity = await self.gate.authenticate(
                _authorization(scope), peer, scope.get(CLIENT_CERT_SCOPE_KEY)
            )
            if access is not None and access.role is not None:
                self.gate.check(identity, peer, access.role, access.model_in(params))
        except ModelportError as exc:
            return exc
        scope[IDENTITY_SCOPE_KEY] = identity
        scope[VISIBLE_SCOPE_KEY] = self.gate.visible(identity)
        return None


class Guarded:
    """Any Starlette app behind an HttpGuard (the --metrics-port app)."""

    def __init__(self, app: ASGIApp, routes: DeclaredRoutes, guard: HttpGuard) -> None:
        self.app = app
        self.routes = routes
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not await self.guard.admit(scope, send, self.routes):
            return
        await self.app(scope, receive, send)
