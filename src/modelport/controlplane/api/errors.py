"""Management API errors in the data plane's shape, plus a machine-readable code.

FastAPI's own ``{"detail": ...}`` bodies and 422 status never leave the API:
validation failures are 400s that name the field, like everything else.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from modelport.controlplane.store.records import RevisionConflict
from modelport.errors import ModelportError, internal_error

log = logging.getLogger("modelport.api")

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")

#: Codes for the framework's own errors (routing, methods, preconditions).
HTTP_CODES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    415: "unsupported_media_type",
    428: "precondition_required",
}


def error_code(exc: ModelportError) -> str:
    """``RevisionConflict`` → ``revision_conflict``: stable as long as the class is."""
    return _CAMEL.sub("_", type(exc).__name__).lower()


def error_body(message: str, code: str, **extra: Any) -> dict[str, Any]:
    return {"error": message, "code": code, **extra}


def install_error_handlers(app: FastAPI, status_of: Callable[[ModelportError], int]) -> None:
    async def modelport_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ModelportError)
        extra: dict[str, Any] = {}
        if isinstance(exc, RevisionConflict) and exc.current is not None:
            extra["current"] = {"revision": exc.current.revision, "body": exc.current.body}
        return JSONResponse(
            error_body(exc.message, error_code(exc), **extra), status_code=status_of(exc)
        )

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        first: dict[str, Any] = dict(errors[0]) if errors else {"msg": "invalid request"}
        if first.get("type") == "json_invalid":
            # loc holds the character offset; say what is wrong and where.
            error = first.get("ctx", {}).get("error", "invalid")
            offset = first.get("loc", ("body", "?"))[-1]
            message = f"body: not valid JSON ({error} at character {offset})"
        else:
            where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
            what = str(first.get("msg", "invalid")).removeprefix("Value error, ")
            message = f"{where}: {what}"
        return JSONResponse(error_body(message, "invalid_request"), status_code=400)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        code = HTTP_CODES.get(exc.status_code, "error")
        if exc.status_code == 404 and exc.detail == "Not Found":
            message = f"no route for {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return JSONResponse(
            error_body(message, code), status_code=exc.status_code, headers=exc.headers
        )

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", extra={"path": request.url.path})
        return JSONResponse(error_body(internal_error(exc), "internal"), status_code=500)

    app.add_exception_handler(ModelportError, modelport_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
