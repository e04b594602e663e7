"""Roles declared on routes and rpcs: every one declares, and the guard goes by it.

The REST app is built as the server builds it (the data plane's routes, the
management API under /api/v1, /docs, /v2/logging, and the --metrics-port app) over a
context whose pipeline is missing: a request that reached a model-resolving
handler would fail with a 500, so a 403 or 404 here was decided before that.
"""

from __future__ import annotations

import asyncio
import io
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from modelport.controlplane.api import build_api, docs_routes
from modelport.dataplane.admission.audit import AuthAudit
from modelport.dataplane.admission.gate import Gate
from modelport.dataplane.admission.needs import Access, declared, needs
from modelport.dataplane.info import InfoService
from modelport.dataplane.transport.grpc.service import RPC_NAMES, InferenceService
from modelport.dataplane.transport.http import routes_logging
from modelport.dataplane.transport.http.app import build_app, build_metrics_app
from modelport.dataplane.transport.http.errors import http_status
from modelport.dataplane.transport.http.fastpath import InferenceFastPath
from modelport.dataplane.transport.http.guard import DeclaredRoutes, HttpGuard, route_access
from modelport.errors import Unauthenticated
from modelport.observability.logs import LogControl, LogSettings, ServerLogHandler
from modelport.observability.metrics import Metrics
from modelport.types import Identity, Role

CALLERS = {
    "nobody": Identity("key:n", "nobody", Role.NONE, ("*",)),
    "fraud-viewer": Identity("key:v", "viewer", Role.VIEWER, ("fraud-*",)),
    "admin": Identity("key:a", "admin", Role.ADMIN, ("*",)),
}


class Authenticator:
    async def authenticate(self, header: str | None, peer: str, certificate: Any = None) -> Any:
        token = (header or "").removeprefix("Bearer ")
        if token not in CALLERS:
            raise Unauthenticated("authentication required")
        return CALLERS[token]


class Services:
    """The management API's services; building the API only stores them."""

    def __getattr__(self, name: str) -> None:
        return None


def rest_app(guard: HttpGuard | None = None) -> InferenceFastPath:
    ctx: Any = SimpleNamespace(
        metrics=Metrics(),
        max_body_bytes=1 << 20,
        info=InfoService(None, None, "modelport", "0", ()),  # type: ignore[arg-type]
        jobs=None,
    )
    api = build_api(Services(), http_status)  # type: ignore[arg-type]
    logs = LogControl(ServerLogHandler(io.StringIO(), LogSettings()))
    app = build_app(ctx, api, [*docs_routes(), *routes_logging.routes(logs)], guard)
    assert isinstance(app, InferenceFastPath)
    return app


def guarded_app() -> InferenceFastPath:
    gate = Gate(Authenticator(), lambda model: None, AuthAudit(None))  # type: ignore[arg-type]
    return rest_app(HttpGuard(gate))


def call(app: Any, method: str, path: str, who: str | None = None) -> tuple[int, Any]:
    headers = {} if who is None else {"Authorization": f"Bearer {who}"}

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.request(method, path, headers=headers, json={})

    reply = asyncio.run(send())
    return reply.status_code, reply.json()


def test_every_route_of_the_rest_app_declares_a_role() -> None:
    walked = [(prefix, route) for prefix, route in rest_app().routes.walk()]
    metrics = build_metrics_app(Metrics())
    assert isinstance(metrics, Starlette)
    walked += [("", route) for route in metrics.routes]
    paths = {prefix + getattr(route, "path", "?") for prefix, route in walked}
    # The walk sees the mounted management API and FastAPI's own OpenAPI route too.
    assert {"/v2/models/{model}/infer", "/api/v1/models/{model}/traffic", "/docs"} <= paths
    assert "/api/v1/openapi.json" in paths
    undeclared = [prefix + repr(route) for prefix, route in walked if route_access(route) is None]
    assert undeclared == []


def test_every_rpc_of_the_grpc_service_declares_a_role() -> None:
    assert "ModelInfer" in RPC_NAMES and "ModelStreamInfer" in RPC_NAMES
    undeclared = [name for name in RPC_NAMES if declared(getattr(InferenceService, name)) is None]
    assert undeclared == []


def test_a_route_without_a_declared_role_stops_the_app_from_being_built() -> None:
    async def page(request: Request) -> Response:
        return Response()

    with pytest.raises(TypeError, match="/forgotten"):
        DeclaredRoutes([Route("/forgotten", page)])
    with pytest.raises(TypeError, match="/api/v1/forgotten"):
        DeclaredRoutes([], {"/api/v1": [Route("/forgotten", page)]})


def test_an_rpc_without_a_declared_role_stops_the_service_from_being_built() -> None:
    class Forgetful(InferenceService):
        async def ModelConfig(self, request: Any, context: Any) -> Any:  # type: ignore[override]
            return None

    with pytest.raises(TypeError, match="ModelConfig"):
        Forgetful(SimpleNamespace())  # type: ignore[arg-type]


def _declared(method: str, path: str) -> tuple[Role | None, str | None] | None:
    routes = rest_app().routes
    found = routes.match(
        {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}
    )
    if found is None:
        return None
    route, params = found
    access = route_access(route)
    assert access is not None
    return access.role, access.model_in(params)


@pytest.mark.parametrize(
    ("method", "path", "need", "model"),
    [
        ("GET", "/v2/health/live", None, None),
        ("GET", "/v2/health/ready", None, None),
        ("GET", "/v2", Role.VIEWER, None),
        ("GET", "/metrics", Role.VIEWER, None),
        ("POST", "/v2/models/fraud-1/infer", Role.INVOKER, "fraud-1"),
        ("POST", "/v2/models/fraud-1/versions/2/infer", Role.INVOKER, "fraud-1"),
        ("GET", "/v2/models/fraud-1/config", Role.VIEWER, "fraud-1"),
        ("GET", "/v2/models/stats", Role.VIEWER, None),
        # Only that exact path is the all-models statistics; below it is the model "stats".
        ("POST", "/v2/models/stats/infer", Role.INVOKER, "stats"),
        ("POST", "/v2/models/stats/versions/1/infer", Role.INVOKER, "stats"),
        ("GET", "/v2/models/stats/config", Role.VIEWER, "stats"),
        ("GET", "/v2/models/stats/versions/1", Role.VIEWER, "stats"),
        ("GET", "/v2/models/stats/stats", Role.VIEWER, "stats"),
        ("POST", "/v2/repository/index", Role.VIEWER, None),
        ("POST", "/v2/repository/models/fraud-1/load", Role.OPERATOR, "fraud-1"),
        ("POST", "/v2/repository/models/fraud-1/unload", Role.OPERATOR, "fraud-1"),
        ("POST", "/v1/models/fraud-1:predict", Role.INVOKER, "fraud-1"),
        ("GET", "/v1/models/fraud-1", Role.VIEWER, "fraud-1"),
        ("GET", "/api/v1/models", Role.VIEWER, None),
        ("GET", "/api/v1/models/fraud-1/traffic", Role.VIEWER, "fraud-1"),
        ("PUT", "/api/v1/models/fraud-1/traffic", Role.OPERATOR, "fraud-1"),
        ("DELETE", "/api/v1/models/fraud-1/traffic", Role.OPERATOR, "fraud-1"),
        ("POST", "/api/v1/models/fraud-1/canary/promote", Role.OPERATOR, "fraud-1"),
        ("POST", "/api/v1/models/fraud-1/versions/2/load", Role.OPERATOR, "fraud-1"),
        ("GET", "/api/v1/history", Role.VIEWER, None),
        ("GET", "/api/v1/openapi.json", Role.VIEWER, None),
        ("GET", "/docs", Role.VIEWER, None),
        ("GET", "/v2/logging", Role.VIEWER, None),
        ("POST", "/v2/logging", Role.OPERATOR, None),
    ],
)
def test_each_route_declares_its_role_and_model(
    method: str, path: str, need: Role | None, model: str | None
) -> None:
    assert _declared(method, path) == (need, model)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/anything/else"),
        ("POST", "/api/v1/keys"),
        ("POST", "/v2/models/../fraud/infer"),
        ("GET", "/v2/models/fraud-1/infer"),  # the path of a route, not its method
    ],
)
def test_a_path_no_route_serves_matches_nothing(method: str, path: str) -> None:
    assert _declared(method, path) is None


def test_the_fast_path_authorizes_infer_by_the_infer_routes_declaration() -> None:
    app = rest_app()
    found = app.routes.match(
        {"type": "http", "method": "POST", "path": "/v2/models/m/infer", "root_path": ""}
    )
    assert found is not None
    assert app.infer_access is route_access(found[0])
    assert app.infer_access == Access(Role.INVOKER, model="model")


@pytest.mark.parametrize("path", ["/nope", "/api/v1/nope", "/v2/models/a/b/infer"])
def test_a_path_no_route_serves_gets_one_answer_whoever_asks(path: str) -> None:
    app = guarded_app()
    status, body = call(app, "GET", path)
    assert status == 401
    assert "authentication required" in body["error"]
    answers = [call(app, "GET", path, who) for who in ("nobody", "fraud-viewer", "admin")]
    assert answers == [answers[0]] * len(answers)
    assert answers[0][0] == 404


def test_a_route_is_authorized_by_its_declaration_before_its_handler_runs() -> None:
    app = guarded_app()
    assert call(app, "GET", "/v2/health/live")[0] == 200  # declared open
    assert call(app, "GET", "/v2", "fraud-viewer")[0] == 200
    assert call(app, "GET", "/v2", "nobody")[0] == 403
    # Out of scope: refused before the (missing) pipeline could resolve the model.
    for method, path in [
        ("GET", "/v2/models/churn/config"),
        ("POST", "/v2/models/fraud-1/infer"),
        ("PUT", "/api/v1/models/fraud-1/traffic"),
        ("POST", "/v2/repository/models/fraud-1/load"),
    ]:
        status, body = call(app, method, path, "fraud-viewer")
        assert status == 403, (method, path, body)
        assert "permission denied" in body["error"]


def test_a_route_added_later_without_a_role_is_refused_to_everyone() -> None:
    app = guarded_app()
    reached: list[str] = []

    async def late(request: Request) -> Response:
        reached.append(request.url.path)
        return Response()

    router = app.routes.routes
    assert isinstance(router, list)
    router.insert(0, Route("/late", late))
    assert call(app, "GET", "/late", "admin")[0] == 403
    assert reached == []


def test_needs_records_the_declaration_on_the_endpoint() -> None:
    @needs(Role.OPERATOR, model="model")
    async def endpoint(request: Request) -> Response:
        return Response()

    assert declared(endpoint) == Access(Role.OPERATOR, "model")
    assert declared(lambda: None) is None
    route: BaseRoute = Route("/x/{model}", endpoint)
    assert route_access(route) == Access(Role.OPERATOR, "model")
    assert Access(Role.VIEWER, "model").model_in({}) is None
