"""Triton's shared-memory extension over REST (docs/shared-memory.md).

System shared memory::

    GET  /v2/systemsharedmemory[/region/{name}]/status
    POST /v2/systemsharedmemory/region/{name}/register   {"key", "offset", "byte_size"}
    POST /v2/systemsharedmemory[/region/{name}]/unregister

Registering is part of inferring, so every route needs the invoker role;
each caller sees and acts on its own regions only (``sharedmemory.registry``).
The CUDA routes (``/v2/cudasharedmemory/...``) answer 400: not supported.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelport.config.server import MANAGEMENT_BODY_BYTES
from modelport.dataplane.admission.identity import IDENTITY_SCOPE_KEY
from modelport.dataplane.admission.needs import needs
from modelport.dataplane.codec.jsonbody import decode_json
from modelport.dataplane.sharedmemory import CUDA_UNSUPPORTED, Owner, owner_of
from modelport.dataplane.transport.context import TransportContext
from modelport.dataplane.transport.http.body import read_body
from modelport.dataplane.transport.http.responses import json_response
from modelport.errors import InvalidRequest, Unsupported
from modelport.types import Role

_REGISTER_FIELDS = frozenset({"key", "offset", "byte_size"})


async def _json_object(request: Request) -> dict[str, Any]:
    body = await read_body(request, MANAGEMENT_BODY_BYTES)
    if not body.strip():
        return {}
    value = decode_json(body)
    if not isinstance(value, dict):
        raise InvalidRequest("request body must be a JSON object")
    return value


def _owner(request: Request) -> Owner:
    return owner_of(request.scope.get(IDENTITY_SCOPE_KEY))


def _name(request: Request) -> str | None:
    name: str | None = request.path_params.get("name")
    return name


def routes(ctx: TransportContext) -> list[Route]:
    @needs(Role.INVOKER)
    async def status(request: Request) -> Response:
        regions = ctx.shared_memory.status(_owner(request), _name(request))
        return json_response([r._asdict() for r in regions])

    @needs(Role.INVOKER)
    async def register(request: Request) -> Response:
        body = await _json_object(request)
        unknown = sorted(set(body) - _REGISTER_FIELDS)
        if unknown:
            raise InvalidRequest(
                f"unknown field {unknown[0]!r}; a registration has key, offset and byte_size"
            )
        if "byte_size" not in body:
            raise InvalidRequest("'byte_size' is required")
        await ctx.register_region(
            _owner(request),
            request.path_params["name"],
            body.get("key"),
            body.get("offset", 0),
            body["byte_size"],
        )
        return json_response({})

    @needs(Role.INVOKER)
    async def unregister(request: Request) -> Response:
        await _json_object(request)
        await ctx.unregister_region(_owner(request), _name(request))
        return json_response({})

    @needs(Role.INVOKER)
    async def cuda(request: Request) -> Response:
        raise Unsupported(CUDA_UNSUPPORTED)

    system = "/v2/systemsharedmemory"
    out = [
        Route(f"{system}/status", status, methods=["GET"]),
        Route(f"{system}/region/{{name}}/status", status, methods=["GET"]),
        Route(f"{system}/region/{{name}}/register", register, methods=["POST"]),
        Route(f"{system}/unregister", unregister, methods=["POST"]),
        Route(f"{system}/region/{{name}}/unregister", unregister, methods=["POST"]),
    ]
    cudapath = "/v2/cudasharedmemory"
    out += [
        Route(f"{cudapath}/status", cuda, methods=["GET"]),
        Route(f"{cudapath}/region/{{name}}/status", cuda, methods=["GET"]),
        Route(f"{cudapath}/region/{{name}}/register", cuda, methods=["POST"]),
        Route(f"{cudapath}/unregister", cuda, methods=["POST"]),
        Route(f"{cudapath}/region/{{name}}/unregister", cuda, methods=["POST"]),
    ]
    return out
