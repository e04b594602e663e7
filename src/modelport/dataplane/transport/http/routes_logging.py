"""Triton's logging extension over REST: ``GET /v2/logging`` and ``POST /v2/logging``.

GET answers the current settings in Triton's shape (``log_file`` is always
"": the log goes to stderr); POST changes the settings it names and answers
them all. Reading needs the viewer role, changing the operator role. The
settings themselves, and every check of a change, live in
``observability/logs.py`` (:class:`LogControl`), so a gRPC ``LogSettings``
would share them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

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

#: Records a change that took effect: (who asked, or None with authentication
#: off; the settings changed, as the caller gave them).
OnChange = Callable[[str | None, dict[str, Any]], Awaitable[None]]


def routes(control: LogControl, on_change: OnChange | None = None) -> list[Route]:
    """The logging extension's routes over ``control``; ``on_change`` audits changes."""

    @needs(Role.VIEWER)
    async def read(request: Request) -> Response:
        return json_response(control.triton_settings())

    @needs(Role.OPERATOR)
    async def change(request: Request) -> Response:
        body = await read_body(request, MANAGEMENT_BODY_BYTES)
        value = decode_json(body) if body.strip() else {}
        if not isinstance(value, dict):
            raise InvalidRequest("request body must be a JSON object of log settings")
        changed = control.update(value)
        if changed and on_change is not None:
            identity = request.scope.get(IDENTITY_SCOPE_KEY)
            await on_change(None if identity is None else str(identity.actor), changed)
        return json_response(control.triton_settings())

    return [
        Route("/v2/logging", read, methods=["GET"]),
        Route("/v2/logging", change, methods=["POST"]),
    ]
