"""Open Inference Protocol v2 REST routes: health, metadata, readiness, infer."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelport.dataplane.admission.needs import needs
from modelport.dataplane.info import ModelMetadata
from modelport.dataplane.transport.context import TransportContext
from modelport.dataplane.transport.http.errors import http_status
from modelport.dataplane.transport.http.fastpath import InferRoute
from modelport.dataplane.transport.http.responses import (
    error_response,
    json_response,
)
from modelport.types import Role, TensorSpec


def _tensors(specs: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
    return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]


def metadata_json(meta: ModelMetadata) -> dict[str, Any]:
    """Model metadata in the Open Inference Protocol's JSON shape."""
    return {
        "name": meta.name,
        "versions": meta.versions,
        "platform": meta.platform,
        "inputs": _tensors(meta.inputs),
        "outputs": _tensors(meta.outputs),
    }


def _version(request: Request) -> str | None:
    v: str | None = request.path_params.get("version")
    return v


def routes(ctx: TransportContext, infer: InferRoute) -> list[Route]:
    @needs(Role.VIEWER)
    async def server_metadata(request: Request) -> Response:
        server = ctx.info.server_metadata()
        return json_response(
            {"name": server.name, "version": server.version, "extensions": list(server.extensions)}
        )

    @needs(None)
    async def live(request: Request) -> Response:
        return json_response({"live": True})

    @needs(None)
    async def ready(request: Request) -> Response:
        ok = ctx.table.is_ready()
        return json_response({"ready": ok}, 200 if ok else 503)

    @needs(Role.VIEWER, model="model")
    async def model_metadata(request: Request) -> Response:
        meta = ctx.info.model_metadata(request.path_params["model"], _version(request))
        return json_response(metadata_json(meta))

    @needs(Role.VIEWER, model="model")
    async def model_ready(request: Request) -> Response:
        state = ctx.info.model_ready(request.path_params["model"], _version(request))
        if state.error is not None:
            return error_response(state.error.message, http_status(state.error))
        return json_response({"name": state.name, "ready": True})

    return [
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2/models/{model}", model_metadata, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}", model_metadata, methods=["GET"]),
        Route("/v2/models/{model}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{model}/infer", infer, methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}/infer", infer, methods=["POST"]),
    ]
