"""Triton's HTTP extensions: model repository, model configuration, statistics."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelport.config.server import MANAGEMENT_BODY_BYTES
from modelport.dataplane.admission.identity import IDENTITY_SCOPE_KEY, VISIBLE_SCOPE_KEY
from modelport.dataplane.admission.needs import needs
from modelport.dataplane.codec.jsonbody import decode_json
from modelport.dataplane.codec.repository import load_config_parameter
from modelport.dataplane.transport.context import TransportContext
from modelport.dataplane.transport.http.body import read_body
from modelport.dataplane.transport.http.responses import json_response
from modelport.errors import InvalidRequest, NotFound
from modelport.types import Role


async def _json_body(request: Request) -> dict[str, Any]:
    body = await read_body(request, MANAGEMENT_BODY_BYTES)
    if not body.strip():
        return {}
    value = decode_json(body)
    if not isinstance(value, dict):
        raise InvalidRequest("request body must be a JSON object")
    return value


def _actor(request: Request) -> str | None:
    identity = request.scope.get(IDENTITY_SCOPE_KEY)
    return None if identity is None else str(identity.actor)


def routes(ctx: TransportContext) -> list[Route]:
    @needs(Role.VIEWER, model="model")
    async def model_config(request: Request) -> Response:
        model = ctx.pipeline.resolve(
            request.path_params["model"], request.path_params.get("version")
        )
        return json_response(model.config.to_json())

    # Also the statistics of every model (no model in the path), filtered by visibility.
    @needs(Role.VIEWER, model="model")
    async def stats(request: Request) -> Response:
        name: str | None = request.path_params.get("model")
        version: str | None = request.path_params.get("version")
        models = ctx.table.ready()
        if name is not None:
            ctx.table.versions(name)  # NotFound for an unknown model
            models = [m for m in models if m.name == name]
            if version is not None:
                models = [m for m in models if m.version == version]
                if not models:
                    raise NotFound(f"model {name!r} version {version!r} is not loaded")
        visible = request.scope.get(VISIBLE_SCOPE_KEY)
        if visible is not None:
            models = [m for m in models if visible(m.name)]
        models.sort(key=lambda m: (m.name, int(m.version)))
        return json_response({"model_stats": [m.stats.to_json(m.name, m.version) for m in models]})

    @needs(Role.VIEWER)
    async def index(request: Request) -> Response:
        body = await _json_body(request)
        ready_only = body.get("ready", False)
        if not isinstance(ready_only, bool):
            raise InvalidRequest("'ready' must be true or false")
        entries = ctx.repository.index(ready_only)
        visible = request.scope.get(VISIBLE_SCOPE_KEY)
        if visible is not None:
            entries = [e for e in entries if visible(e.name)]
        out = []
        for e in entries:
            item: dict[str, Any] = {"name": e.name, "version": e.version, "state": e.state}
            if e.reason:
                item["reason"] = e.reason
            out.append(item)
        return json_response(out)

    @needs(Role.OPERATOR, model="model")
    async def load(request: Request) -> Response:
        body = await _json_body(request)
        config = load_config_parameter(body.get("parameters"))
        await ctx.repository.load(request.path_params["model"], config, _actor(request))
        return json_response({})

    @needs(Role.OPERATOR, model="model")
    async def unload(request: Request) -> Response:
        await _json_body(request)
        await ctx.repository.unload(request.path_params["model"], _actor(request))
        return json_response({})

    return [
        Route("/v2/models/stats", stats, methods=["GET"]),
        Route("/v2/models/{model}/stats", stats, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/stats", stats, methods=["GET"]),
        Route("/v2/models/{model}/config", model_config, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/config", model_config, methods=["GET"]),
        Route("/v2/repository/index", index, methods=["POST"]),
        Route("/v2/repository/models/{model}/load", load, methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", unload, methods=["POST"]),
    ]
