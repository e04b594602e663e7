"""The REST application: routes of every protocol, and the one error mapping.

Every error leaves as ``{"error": "..."}`` with the status from
``errors.STATUS``, including the framework's own 404 and 405, so clients
never see a different error shape.
"""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from modelport.dataplane.admission.identity import VISIBLE_SCOPE_KEY
from modelport.dataplane.admission.needs import needs
from modelport.dataplane.transport.context import TransportContext
from modelport.dataplane.transport.http import (
    routes_generate,
    routes_shm,
    routes_triton,
    routes_v1,
    routes_v2,
)
from modelport.dataplane.transport.http.errors import error_headers, http_status
from modelport.dataplane.transport.http.fastpath import InferenceFastPath, InferRoute
from modelport.dataplane.transport.http.guard import (
    DeclaredRoutes,
    Guarded,
    HttpGuard,
    mounted_scope,
)
from modelport.dataplane.transport.http.responses import error_response
from modelport.errors import ModelportError, internal_error
from modelport.observability.metrics import CONTENT_TYPE, Metrics
from modelport.types import Role

log = logging.getLogger("modelport.http")


async def _modelport_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ModelportError)
    status = http_status(exc)
    log.debug(
        "request refused",
        extra={"path": request.url.path, "status": status, "error": exc.message},
    )
    return error_response(exc.message, status, error_headers(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no route for {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return error_response(message, exc.status_code)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error", extra={"path": request.url.path})
    return error_response(internal_error(exc), 500)


def metrics_routes(metrics: Metrics) -> list[Route]:
    @needs(Role.VIEWER)
    async def render(request: Request) -> Response:
        # A caller sees the series of the models it may see, and the server-wide ones.
        return Response(
            await metrics.exposition(request.scope.get(VISIBLE_SCOPE_KEY)),
            media_type=CONTENT_TYPE,
        )

    return [Route("/metrics", render, methods=["GET"])]


def build_metrics_app(metrics: Metrics, guard: HttpGuard | None = None) -> ASGIApp:
    """The app on --metrics-port: /metrics only; behind ``guard`` unless it is None
    (authentication off, or the port opened for a trusted scraper)."""
    app = Starlette(
        routes=metrics_routes(metrics),
        exception_handlers={HTTPException: _http_error, Exception: _unexpected},
    )
    return app if guard is None else Guarded(app, DeclaredRoutes(app.routes), guard)


MANAGEMENT_PREFIX = "/api/v1"


class _Prefixed:
    """Every path under ``prefix`` goes to ``app``, whatever characters it holds.

    A router mount would not match paths containing characters its pattern
    excludes (a newline, say), and such requests would get the data plane's
    404 instead of the management API's error shape. The guard finds the
    route a request reaches with the same ``mounted_scope``.
    """

    def __init__(self, prefix: str, app: ASGIApp, rest: ASGIApp) -> None:
        self.prefix = prefix
        self.app = app
        self.rest = rest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        inner = mounted_scope(self.prefix, scope)
        if inner is not None:
            await self.app(inner, receive, send)
            return
        await self.rest(scope, receive, send)


def build_app(
    ctx: TransportContext,
    management: Starlette | None = None,
    extra_routes: list[BaseRoute] | None = None,
    guard: HttpGuard | None = None,
) -> ASGIApp:
    """The REST app: OIP v2, Triton's extensions (shared memory included),
    KServe v1, /metrics, and the management API (built by the control plane)
    under /api/v1; every path behind ``guard`` when authentication is on.

    Every route, the management API's included, must declare the role it
    needs (``admission/needs.py``): building fails on one that does not.
    """
    infer = InferRoute(ctx)
    router = Starlette(
        routes=[
            *routes_triton.routes(ctx),
            *routes_shm.routes(ctx),
            *routes_v2.routes(ctx, infer),
            *routes_generate.routes(ctx),
            *routes_v1.routes(ctx),
            *metrics_routes(ctx.metrics),
            *(extra_routes or []),
        ],
        exception_handlers={
            ModelportError: _modelport_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )
    front: ASGIApp = router
    mounts: dict[str, list[BaseRoute]] = {}
    if management is not None:
        front = _Prefixed(MANAGEMENT_PREFIX, management, router)
        mounts[MANAGEMENT_PREFIX] = management.routes
    return InferenceFastPath(infer, front, DeclaredRoutes(router.routes, mounts), guard)
