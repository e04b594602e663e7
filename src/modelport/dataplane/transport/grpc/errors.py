"""The gRPC status code of every modelport error: the one table for gRPC."""

from __future__ import annotations

import grpc

from modelport.errors import (
    ConfigError,
    Conflict,
    DeadlineExceeded,
    FailedPrecondition,
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

#: Most specific class first: the first match wins.
STATUS: tuple[tuple[type[ModelportError], grpc.StatusCode], ...] = (
    (PayloadTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (Conflict, grpc.StatusCode.ABORTED),
    (ModelNotReady, grpc.StatusCode.UNAVAILABLE),
    (RateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ResidencyRefused, grpc.StatusCode.FAILED_PRECONDITION),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (ModelLoadError, grpc.StatusCode.INVALID_ARGUMENT),
    (ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (InferenceFailed, grpc.StatusCode.INTERNAL),
)


def grpc_status(exc: ModelportError) -> grpc.StatusCode:
    for cls, code in STATUS:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def trailing_metadata(exc: ModelportError) -> tuple[tuple[str, str], ...]:
    """Trailing metadata for an error: ``retry-after`` (seconds) on a rate-limit refusal,
    the same value HTTP sends; ``modelport-retriable`` as HTTP's header of that name."""
    wait = exc.retry_after_header if isinstance(exc, RateLimited | Unavailable) else None
    found: tuple[tuple[str, str], ...] = () if wait is None else (("retry-after", wait),)
    if isinstance(exc, Unavailable) and exc.retriable:
        found += (("modelport-retriable", "true"),)
    return found
