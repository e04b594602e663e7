"""Triton's logging extension over REST: ``GET /v2/logging`` and ``POST /v2/logging``.

GET answers the current settings in Triton's shape (``log_file`` is always
"": the log goes to stderr); POST changes the settings it names and answers
them all. Reading needs the viewer role, changing the operator role. The
settings themselves, every check of a change and its audit record live in
``observability/logs.py`` (:class:`LogControl`), which gRPC's ``LogSettings``
shares.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelport.config.server import MANAGEMENT_BODY_BYTES
from modelport.dataplane.admission.identity import IDENTITY_SCOPE_KEY
from modelport.dataplane.admission.needs import needs
from modelport.dataplane.codec.jsonbody import decode_json
from modelport.dataplane.transport.http.body import read_body
from modelport.dataplane.transport.http.responses import json_response
from modelport.errors import InvalidRequest
from modelport.observability.logs import LogControl
from modelport.types import Role


def routes(control: LogControl) -> list[Route]:
    """The logging extension's routes over ``control``, which records each change."""

    @needs(Role.VIEWER)
    async def read(request: Request) -> Response:
        return json_response(control.triton_settings())

    @needs(Role.OPERATOR)
    async def change(request: Request) -> Response:
        body = await read_body(request, MANAGEMENT_BODY_BYTES)
        value = decode_json(body) if body.strip() else {}
        if not isinstance(value, dict):
            raise InvalidRequest("request body must be a JSON object of log settings")
        identity = request.scope.get(IDENTITY_SCOPE_KEY)
        actor = None if identity is None else str(identity.actor)
        return json_response(await control.change(value, actor))

    return [
        Route("/v2/logging", read, methods=["GET"]),
        Route("/v2/logging", change, methods=["POST"]),
    ]
