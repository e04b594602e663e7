"""Which role each REST route needs, and on which model: the one table.

Decided from the method and the raw path, before any routing, so every
request (known route or not) is authenticated in one place. The model is the
path segment the routers would take as the model name; a path that is not a
route needs at least the viewer role and gets the routers' 404 afterwards,
and one whose model segment is a trick (``..``, an encoded slash) names a
"model" no scope matches, so it is refused before it is routed.

Examples::

    GET  /v2/health/ready                       open
    POST /v2/models/fraud-1/infer               invoker on fraud-1
    POST /v2/repository/models/fraud-1/load     operator on fraud-1
    GET  /api/v1/models/fraud-1/traffic         viewer on fraud-1
    PUT  /api/v1/models/fraud-1/traffic         operator on fraud-1
    GET  /metrics                               viewer
    GET  /v2/models/stats                       viewer (statistics of the models it may see)
    POST /v2/models/stats/infer                 invoker on stats (a model named "stats")

Triton's all-models statistics route is exactly ``/v2/models/stats``; every
longer path under it is the routers' ``/v2/models/{model}/...`` with the
model ``stats``, and needs the usual role on that model.
"""

from __future__ import annotations

from modelport.types import Role

#: Paths anyone may call: liveness and readiness probes.
OPEN = frozenset({"/v2/health/live", "/v2/health/ready"})

#: Triton's statistics of every model: the listing is filtered by what the caller may see.
ALL_STATISTICS = "/v2/models/stats"

_READS = frozenset({"GET", "HEAD", "OPTIONS"})


def required(method: str, path: str) -> tuple[Role | None, str | None]:
    """(role needed or None when open, model named or None) for one request."""
    if path in OPEN:
        return None, None
    if path == ALL_STATISTICS:
        return Role.VIEWER, None
    parts = path.split("/")
    # parts[0] is "" (the path starts with "/").
    if len(parts) >= 4 and parts[1] == "v2" and parts[2] == "models":
        model = parts[3]
        if parts[-1] == "infer" and method == "POST":
            return Role.INVOKER, model
        return Role.VIEWER, model
    if len(parts) >= 5 and parts[1:4] == ["v2", "repository", "models"]:
        return Role.OPERATOR, parts[4]
    if len(parts) >= 4 and parts[1] == "v1" and parts[2] == "models":
        model, _, verb = parts[3].partition(":")
        return (Role.INVOKER if verb else Role.VIEWER), model
    if len(parts) >= 3 and parts[1] == "api" and parts[2] == "v1":
        return _management(method, parts[3:])
    return Role.VIEWER, None


def _management(method: str, rest: list[str]) -> tuple[Role, str | None]:
    """/api/v1: reads need viewer, changes operator, keys admin."""
    if rest and rest[0] == "keys":
        return Role.ADMIN, None
    model = rest[1] if len(rest) >= 2 and rest[0] == "models" else None
    return (Role.VIEWER if method in _READS else Role.OPERATOR), model
