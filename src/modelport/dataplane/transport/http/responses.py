"""Building responses: JSON through msgspec, compressed when the client asks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from modelport.dataplane.codec.json_v2 import encode_json
from modelport.dataplane.transport.http.body import compress

JSON = "application/json"


def json_response(value: Any, status: int = 200) -> Response:
    return Response(encode_json(value), status_code=status, media_type=JSON)


def error_response(
    message: str, status: int, headers: Sequence[tuple[bytes, bytes]] = ()
) -> Response:
    """``{"error": message}``, with extra headers as ASGI pairs (``errors.error_headers``)."""
    extra = {name.decode("latin-1"): value.decode("latin-1") for name, value in headers}
    return Response(
        encode_json({"error": message}), status_code=status, media_type=JSON, headers=extra
    )


def body_response(
    request: Request, body: bytes, media_type: str, headers: dict[str, str] | None = None
) -> Response:
    """A response body, compressed when the request's Accept-Encoding allows."""
    extra = dict(headers or {})
    accept = request.headers.get("accept-encoding")
    if accept:
        body, encoding = compress(body, accept)
        if encoding is not None:
            extra["Content-Encoding"] = encoding
            extra["Vary"] = "Accept-Encoding"
    return Response(body, media_type=media_type, headers=extra)
