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
    PermissionDenied,
    RateLimited,
    ResidencyRefused,
    Unauthenticated,
    Unavailable,
)

#: The challenge sent with every 401 (RFC 6750).
CHALLENGE = b'Bearer realm="modelport"'

#: Most specific class first: the first match wins.
STATUS: tuple[tuple[type[ModelportError], int], ...] = (
    (PayloadTooLarge, 413),
    (InvalidRequest, 400),
    (Unauthenticated, 401),
    (PermissionDenied, 403),
    (NotFound, 404),
    (Conflict, 409),
    (ModelNotReady, 503),
    (RateLimited, 429),
    (ResidencyRefused, 451),
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


def retry_after(exc: ModelportError) -> str | None:
    """The ``Retry-After`` value of a rate-limit refusal, or of an Unavailable that knows
    when to come back; else None."""
    return exc.retry_after_header if isinstance(exc, RateLimited | Unavailable) else None


#: Marks a refusal made before any of the request's work began: safe to send elsewhere.
RETRIABLE = (b"modelport-retriable", b"true")


def error_headers(exc: ModelportError) -> list[tuple[bytes, bytes]]:
    """Headers an error response carries besides its type: Retry-After, WWW-Authenticate,
    modelport-retriable."""
    if isinstance(exc, Unauthenticated):
        return [(b"www-authenticate", CHALLENGE)]
    wait = retry_after(exc)
    headers = [] if wait is None else [(b"retry-after", wait.encode())]
    if isinstance(exc, Unavailable) and exc.retriable:
        headers.append(RETRIABLE)
    return headers
