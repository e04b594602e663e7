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
from modelport.dataplane.info import Visible
from modelport.dataplane.transport.context import TransportContext
from modelport.dataplane.transport.http.body import read_body
from modelport.dataplane.transport.http.responses import json_response
from modelport.errors import InvalidRequest
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


def _visible(request: Request) -> Visible:
    """The caller's visibility test the guard left in the scope; None with auth off."""
    visible: Visible = request.scope.get(VISIBLE_SCOPE_KEY)
    return visible


def routes(ctx: TransportContext) -> list[Route]:
    @needs(Role.VIEWER, model="model")
    async def model_config(request: Request) -> Response:
        config = ctx.info.model_config(
            request.path_params["model"], request.path_params.get("version")
        )
        return json_response(config)

    # Also the statistics of every model (no model in the path), filtered by visibility.
    @needs(Role.VIEWER, model="model")
    async def stats(request: Request) -> Response:
        entries = await ctx.info.node_statistics(
            request.path_params.get("model"), request.path_params.get("version"), _visible(request)
        )
        return json_response({"model_stats": entries})

    @needs(Role.VIEWER)
    async def index(request: Request) -> Response:
        body = await _json_body(request)
        ready_only = body.get("ready", False)
        if not isinstance(ready_only, bool):
            raise InvalidRequest("'ready' must be true or false")
        entries = ctx.info.repository_index(ready_only, _visible(request))
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
