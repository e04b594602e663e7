"""Open Inference Protocol v2 REST routes: health, metadata, readiness, infer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelport.dataplane.codec.json_v2 import decode_request, encode_response
from modelport.dataplane.table import ModelVersion
from modelport.dataplane.transport.context import EXTENSIONS, TransportContext
from modelport.dataplane.transport.http.body import read_body
from modelport.dataplane.transport.http.errors import http_status
from modelport.dataplane.transport.http.responses import (
    JSON,
    body_response,
    error_response,
    json_response,
)
from modelport.errors import InvalidRequest, ModelportError

HEADER_LENGTH = "inference-header-content-length"
T = TypeVar("T")


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


def header_length(request: Request) -> int | None:
    raw = request.headers.get(HEADER_LENGTH)
    if raw is None:
        return None
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit()):
        raise InvalidRequest(
            f"Inference-Header-Content-Length {raw!r} is not a non-negative integer"
        )
    return int(raw)


async def infer_until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client disconnects first.

    Once the body is read, the next ASGI message is the disconnect; a watcher
    owned by this call waits for it and cancels the request, so queued work
    for a client that left is dropped instead of computed.
    """
    current = asyncio.current_task()

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        if current is not None:
            current.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await work
    finally:
        watcher.cancel()


def routes(ctx: TransportContext) -> list[Route]:
    async def server_metadata(request: Request) -> Response:
        return json_response(
            {"name": ctx.server_name, "version": ctx.server_version, "extensions": list(EXTENSIONS)}
        )

    async def live(request: Request) -> Response:
        return json_response({"live": True})

    async def ready(request: Request) -> Response:
        ok = ctx.table.is_ready()
        return json_response({"ready": ok}, 200 if ok else 503)

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

    async def model_ready(request: Request) -> Response:
        name = request.path_params["model"]
        try:
            ctx.pipeline.resolve(name, _version(request))
        except ModelportError as exc:
            return error_response(exc.message, http_status(exc))
        return json_response({"name": name, "ready": True})

    async def infer(request: Request) -> Response:
        name = request.path_params["model"]
        version = _version(request)
        ctx.pipeline.resolve(name, version)  # unknown models fail before the body is read
        body = await read_body(request, ctx.max_body_bytes)
        req = decode_request(body, header_length(request), name, version, ctx.max_elements)
        resp = await infer_until_disconnect(request, ctx.pipeline.infer(req, "http"))
        payload, hlen = encode_response(req, resp)
        if hlen is None:
            return body_response(request, payload, JSON)
        return body_response(
            request,
            payload,
            "application/octet-stream",
            {"Inference-Header-Content-Length": str(hlen)},
        )

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
