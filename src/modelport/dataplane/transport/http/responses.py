"""Building responses: JSON through msgspec, compressed when the client asks."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from modelport.dataplane.codec.json_v2 import encode_json
from modelport.dataplane.transport.http.body import compress

JSON = "application/json"


def json_response(value: Any, status: int = 200) -> Response:
    return Response(encode_json(value), status_code=status, media_type=JSON)


def error_response(message: str, status: int, retry_after: str | None = None) -> Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else None
    return Response(
        encode_json({"error": message}), status_code=status, media_type=JSON, headers=headers
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
