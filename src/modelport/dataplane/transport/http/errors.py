"""The HTTP status of every modelport error: the one table for REST."""

from __future__ import annotations

from modelport.errors import (
    ConfigError,
    Conflict,
    DeadlineExceeded,
    InferenceFailed,
    InvalidRequest,
    ModelLoadError,
    ModelNotReady,
    ModelportError,
    NotFound,
    PayloadTooLarge,
    Unavailable,
)

#: Most specific class first: the first match wins.
STATUS: tuple[tuple[type[ModelportError], int], ...] = (
    (PayloadTooLarge, 413),
    (InvalidRequest, 400),
    (NotFound, 404),
    (Conflict, 409),
    (ModelNotReady, 503),
    (Unavailable, 503),
    (DeadlineExceeded, 504),
    (ModelLoadError, 400),
    (ConfigError, 400),
    (InferenceFailed, 500),
)


def http_status(exc: ModelportError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500
