"""The one exception tree of modelport.

Core errors carry no transport status: each transport owns a table that maps
these classes to HTTP status codes or gRPC codes, once
(``dataplane/transport/http/errors.py`` and ``dataplane/transport/grpc/errors.py``).

::

    ModelportError
    ├── InvalidRequest          the caller sent something wrong (400 / INVALID_ARGUMENT)
    │   ├── PayloadTooLarge     the body or message is over the size limit (413)
    │   └── Unsupported         a valid feature that modelport does not serve (400)
    ├── Unauthenticated         no credentials, or credentials that do not verify
    │                           (401 / UNAUTHENTICATED)
    ├── PermissionDenied        a known caller without the right (403 / PERMISSION_DENIED)
    ├── NotFound                no such model, version or route (404 / NOT_FOUND)
    ├── Conflict                a write lost to another one (409 / ABORTED)
    │   └── FailedPrecondition  refused until the state it depends on is changed first
    │                           (409 / FAILED_PRECONDITION)
    ├── ModelNotReady           the model exists but cannot serve now (503 / UNAVAILABLE)
    │   └── NotLoaded           it will serve once loaded (the model table loads it on use)
    ├── Unavailable             the server sheds load or is shutting down (503 / UNAVAILABLE)
    ├── RateLimited             the caller is over a rate limit (429 / RESOURCE_EXHAUSTED)
    ├── ResidencyRefused        the data may not be processed in this node's region
    │                           (451 / FAILED_PRECONDITION)
    ├── DeadlineExceeded        the request's deadline passed (504 / DEADLINE_EXCEEDED)
    ├── InferenceFailed         the runtime raised while computing (500 / INTERNAL)
    ├── ModelLoadError          a version could not be loaded (reason kept on the model)
    ├── ConfigError             a config file or field is invalid (names both)
    └── ListenFailed            a configured port cannot be listened on (at start only)
"""

from __future__ import annotations

import math


class ModelportError(Exception):
    """Base of every error modelport raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(ModelportError):
    """Raised when a request is malformed or disagrees with the model's signature."""


class PayloadTooLarge(InvalidRequest):
    """Raised when a request body or message exceeds the configured size limit."""


class Unsupported(InvalidRequest):
    """Raised when a request asks for a protocol feature modelport does not serve."""


class Unauthenticated(ModelportError):
    """Raised when a request carries no credentials, or ones that do not verify.

    The message never says which part failed beyond what the caller already
    sent (a missing header, a malformed token): telling a guesser that a key
    id exists would help them.
    """


class PermissionDenied(ModelportError):
    """Raised when an authenticated caller lacks the role, model scope or tenant.

    The message is the same whether or not the model exists, so a denial
    never discloses which models a server holds.
    """


class NotFound(ModelportError):
    """Raised when a model, a version of it, or a route does not exist."""


class Conflict(ModelportError):
    """Raised when a write was based on state that another writer has changed since.

    The caller should read the current state again and decide; retrying the
    same write blindly would overwrite a change it never saw.
    """


class FailedPrecondition(Conflict):
    """Raised when a change is refused because of state the caller must change first.

    Unlike a lost write, retrying does not help: something else (a traffic
    policy, a canary) relies on what the change would remove, and the message
    names it.
    """


class ModelNotReady(ModelportError):
    """Raised when a model exists but none of the requested versions is ready."""


class NotLoaded(ModelNotReady):
    """Raised by ``ModelTable.acquire`` for a version that serves once loaded.

    The pipeline then awaits ``ModelTable.acquire_loading``; any other caller
    (metadata, readiness) sees a model that is not ready yet.
    """


class Unavailable(ModelportError):
    """Raised when the server cannot take the request now (queue full, shutting down).

    ``retry_after_s``, when the server knows it (a cold model's load under way),
    is passed on as rate-limit refusals pass theirs. ``retriable``: refused
    before any of the request's work began (overload seen before the body, a
    node leaving its fleet, a full cold-start hold queue), so a gateway may
    send the same request to another node; transports say so to the caller.
    """

    def __init__(
        self, message: str, retry_after_s: float | None = None, *, retriable: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.retriable = retriable

    @property
    def retry_after_header(self) -> str | None:
        """Whole seconds, rounded up and at least 1; None when no wait is known."""
        wait = self.retry_after_s
        return None if wait is None else str(max(1, math.ceil(wait)))


class RateLimited(ModelportError):
    """Raised when a request is over a rate limit; ``retry_after_s`` says when to come back.

    Transports pass the wait on (HTTP ``Retry-After``, gRPC ``retry-after``
    trailing metadata) so well-behaved clients back off instead of hammering.
    """

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    @property
    def retry_after_header(self) -> str:
        """The wait in whole seconds, rounded up and at least 1, as both transports send it.

        Rounding up keeps a client that obeys it from arriving just before its token does.
        """
        return str(max(1, math.ceil(self.retry_after_s)))


class ResidencyRefused(ModelportError):
    """Raised when a request's data residency does not allow this node's region.

    A legal refusal, not a fault: the same request sent to a node in an allowed
    region succeeds, so the message names the residency and this node's region.
    """


class DeadlineExceeded(ModelportError):
    """Raised when a request's deadline passes before it is computed."""


class InferenceFailed(ModelportError):
    """Raised when a runtime fails on inputs that passed validation."""


class ModelLoadError(ModelportError):
    """Raised when a model version cannot be loaded; the reason is shown to users."""


class ConfigError(ModelportError):
    """Raised when a configuration file or value is invalid.

    The message always names the file (or source) and the field.
    """

    def __init__(self, source: str, field: str, problem: str) -> None:
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {problem}")
        self.source = source
        self.field = field
        self.problem = problem


class ListenFailed(ModelportError):
    """Raised at start when a port cannot be bound (taken, or the address is not local).

    The message names the address and the transport, so the one line the
    command prints says which setting to change.
    """


def internal_error(exc: BaseException) -> str:
    """What a client is told about a bug: the exception's type, never its text."""
    return f"internal error: {type(exc).__name__}"


def first_line(
    source: BaseException | str, *, limit: int | None = None, empty: str | None = None
) -> str:
    """The first line of an exception's message (or of a text), for one-line reasons.

    Framework errors often carry a stack of C++ frames or a whole report after
    their first line; a model's status, a log field or an error answer wants
    only the line that says what went wrong. ``limit`` cuts the line at that
    many characters, for messages that may quote a caller's data at length.
    An empty message gives ``empty``, or by default the exception's type name
    (an empty text gives ``""``), so a reason is never blank by accident.
    """
    text = str(source).strip()
    if not text:
        if empty is not None:
            return empty
        return type(source).__name__ if isinstance(source, BaseException) else ""
    line = text.splitlines()[0]
    return line[:limit] if limit is not None else line
