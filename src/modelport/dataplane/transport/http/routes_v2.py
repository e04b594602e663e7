"""Open Inference Protocol v2 REST routes: health, metadata, readiness, infer."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelport.dataplane.admission.needs import needs
from modelport.dataplane.table import ModelVersion
from modelport.dataplane.transport.context import EXTENSIONS, TransportContext
from modelport.dataplane.transport.http.errors import http_status
from modelport.dataplane.transport.http.fastpath import InferRoute
from modelport.dataplane.transport.http.responses import (
    error_response,
    json_response,
)
from modelport.errors import ModelportError
from modelport.types import Role


def tensor_metadata(model: ModelVersion) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}
            for s in model.signature.inputs
        ],
        "outputs": [
            {"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}
            for s in model.signature.outputs
        ],
    }


def _version(request: Request) -> str | None:
    v: str | None = request.path_params.get("version")
    return v


def routes(ctx: TransportContext, infer: InferRoute) -> list[Route]:
    @needs(Role.VIEWER)
    async def server_metadata(request: Request) -> Response:
        return json_response(
            {"name": ctx.server_name, "version": ctx.server_version, "extensions": list(EXTENSIONS)}
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
        name = request.path_params["model"]
        version = _version(request)
        model = ctx.pipeline.resolve(name, version)
        versions = [version] if version is not None else ctx.table.versions(name)
        return json_response(
            {
                "name": model.name,
                "versions": versions,
                "platform": model.platform,
                **tensor_metadata(model),
            }
        )

    @needs(Role.VIEWER, model="model")
    async def model_ready(request: Request) -> Response:
        name = request.path_params["model"]
        try:
            ctx.pipeline.resolve(name, _version(request))
        except ModelportError as exc:
            return error_response(exc.message, http_status(exc))
        return json_response({"name": name, "ready": True})

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
