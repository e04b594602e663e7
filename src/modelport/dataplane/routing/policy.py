"""A model's traffic policy: weighted routes, a sticky key, an optional shadow.

The management API receives the policy as JSON; :meth:`TrafficPolicy.from_body`
is the one place that JSON is checked, so every refusal names the field path
the operator has to fix (``routes[1].weight: ...``). Whether the versions
exist is the control plane's question: a policy may name a version that is
still loading, and the data plane falls back to the default version until it
is ready.

Versions are held in their canonical form (``"2"``, never ``"02"`` or ``2``)
because that is how the model table names them.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelport.errors import InvalidRequest

#: Route weights are whole percentages.
TOTAL_WEIGHT = 100

#: Sticky-assignment resolution: each key falls into one of this many buckets,
#: and one percent of weight owns BUCKETS // TOTAL_WEIGHT of them.
BUCKETS = 10_000

#: More routes than this is a mistake, not a rollout (and keeps the body small).
MAX_ROUTES = 100

#: A sticky key must work as an HTTP header name, a gRPC metadata key and a
#: request parameter name alike.
_STICKY_KEY = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_VERSION = re.compile(r"[0-9]{1,18}")

_POLICY_KEYS = ("routes", "sticky_key", "shadow")
_ROUTE_KEYS = ("version", "weight")
_SHADOW_KEYS = ("version", "fraction")


@dataclass(frozen=True, slots=True)
class Route:
    """Send ``weight`` percent of unversioned requests to ``version``."""

    version: str
    weight: int


@dataclass(frozen=True, slots=True)
class Shadow:
    """Copy a ``fraction`` of answered requests to ``version``, answers compared."""

    version: str
    fraction: float


@dataclass(frozen=True)
class TrafficPolicy:
    """Where one model's requests without a version go.

    Constructing one validates it (``InvalidRequest`` naming the field), so a
    policy that exists is always servable.
    """

    routes: tuple[Route, ...]
    sticky_key: str | None = None
    """Header, gRPC metadata key or request parameter whose value pins a caller to
    one version; None means every request is drawn at random."""
    shadow: Shadow | None = None
    bounds: tuple[tuple[int, str], ...] = field(init=False, repr=False, compare=False)
    """(cumulative upper bucket, version) for routes with weight, by version number.

    Worked example: routes 2→10, 1→90 give ((9000, "1"), (10000, "2")): a key in
    bucket 8999 goes to "1", bucket 9000 to "2". Ordering by version number, not
    by the order given, keeps a key's bucket range stable while weights move.
    """

    def __post_init__(self) -> None:
        _check(self)
        ordered = sorted(self.routes, key=lambda r: int(r.version))
        bounds: list[tuple[int, str]] = []
        upper = 0
        for route in ordered:
            if route.weight > 0:
                upper += route.weight * (BUCKETS // TOTAL_WEIGHT)
                bounds.append((upper, route.version))
        object.__setattr__(self, "bounds", tuple(bounds))

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> TrafficPolicy:
        """Parse the management API's JSON; routes come back sorted by version number."""
        if not isinstance(body, Mapping):
            raise InvalidRequest("policy: must be a JSON object")
        _refuse_unknown(body, _POLICY_KEYS, "")
        if "routes" not in body:
            raise InvalidRequest("routes: required")
        raw_routes = body["routes"]
        if not isinstance(raw_routes, list):
            raise InvalidRequest("routes: must be a list of {version, weight} objects")
        if len(raw_routes) > MAX_ROUTES:
            raise InvalidRequest(f"routes: at most {MAX_ROUTES} routes, got {len(raw_routes)}")
        routes = tuple(_route(item, f"routes[{i}]") for i, item in enumerate(raw_routes))
        sticky = body.get("sticky_key")
        if sticky is not None and not isinstance(sticky, str):
            raise InvalidRequest("sticky_key: must be a string or null")
        raw_shadow = body.get("shadow")
        shadow = None if raw_shadow is None else _shadow(raw_shadow)
        policy = cls(routes, sticky, shadow)
        ordered = tuple(sorted(routes, key=lambda r: int(r.version)))
        return dataclasses.replace(policy, routes=ordered)

    def to_body(self) -> dict[str, Any]:
        """The canonical JSON form; ``from_body(p.to_body()) == p``."""
        return {
            "routes": [{"version": r.version, "weight": r.weight} for r in self.routes],
            "sticky_key": self.sticky_key,
            "shadow": (
                None
                if self.shadow is None
                else {"version": self.shadow.version, "fraction": self.shadow.fraction}
            ),
        }

    def versions(self) -> frozenset[str]:
        """Every version the policy sends requests to, shadow included."""
        found = {r.version for r in self.routes}
        if self.shadow is not None:
            found.add(self.shadow.version)
        return frozenset(found)


def _check(policy: TrafficPolicy) -> None:
    """Semantic checks, shared by from_body and direct construction."""
    if not isinstance(policy.routes, tuple) or not policy.routes:
        raise InvalidRequest("routes: at least one route is required")
    seen: set[str] = set()
    total = 0
    for i, route in enumerate(policy.routes):
        where = f"routes[{i}]"
        _check_version(route.version, f"{where}.version")
        if route.version in seen:
            raise InvalidRequest(f"{where}.version: {route.version!r} appears twice")
        seen.add(route.version)
        w = route.weight
        if isinstance(w, bool) or not isinstance(w, int) or not 0 <= w <= TOTAL_WEIGHT:
            raise InvalidRequest(
                f"{where}.weight: must be an integer from 0 to {TOTAL_WEIGHT}, got {w!r}"
            )
        total += w
    if total != TOTAL_WEIGHT:
        raise InvalidRequest(f"routes: weights sum to {total}, must sum to {TOTAL_WEIGHT}")
    key = policy.sticky_key
    if key is not None and (not isinstance(key, str) or not _STICKY_KEY.fullmatch(key)):
        raise InvalidRequest(
            f"sticky_key: {key!r} must be 1 to 128 letters, digits, '-', '_' or '.'"
        )
    shadow = policy.shadow
    if shadow is not None:
        _check_version(shadow.version, "shadow.version")
        f = shadow.fraction
        if (
            isinstance(f, bool)
            or not isinstance(f, int | float)
            or not math.isfinite(f)
            or not 0 < f <= 1
        ):
            raise InvalidRequest(f"shadow.fraction: must be > 0 and <= 1, got {f!r}")


def _check_version(version: object, where: str) -> None:
    if not isinstance(version, str) or not _VERSION.fullmatch(version) or int(version) == 0:
        raise InvalidRequest(f"{where}: must be a positive version number such as '2'")
    if version != str(int(version)):
        raise InvalidRequest(f"{where}: write {version!r} as '{int(version)}'")


def _refuse_unknown(obj: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    unknown = sorted(str(k) for k in obj if k not in known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise InvalidRequest(f"{prefix}{unknown[0]}: unknown field; expected {', '.join(known)}")


def _version(raw: object, where: str) -> str:
    """JSON version → canonical string; ints are accepted, leading zeros dropped."""
    if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0:
        return str(raw)
    if isinstance(raw, str) and _VERSION.fullmatch(raw) and int(raw) > 0:
        return str(int(raw))
    raise InvalidRequest(f"{where}: must be a positive version number such as '2', got {raw!r}")


def _route(raw: object, where: str) -> Route:
    if not isinstance(raw, Mapping):
        raise InvalidRequest(f"{where}: must be an object with version and weight")
    _refuse_unknown(raw, _ROUTE_KEYS, where)
    for key in _ROUTE_KEYS:
        if key not in raw:
            raise InvalidRequest(f"{where}.{key}: required")
    return Route(_version(raw["version"], f"{where}.version"), raw["weight"])


def _shadow(raw: object) -> Shadow:
    if not isinstance(raw, Mapping):
        raise InvalidRequest("shadow: must be an object with version and fraction, or null")
    _refuse_unknown(raw, _SHADOW_KEYS, "shadow")
    for key in _SHADOW_KEYS:
        if key not in raw:
            raise InvalidRequest(f"shadow.{key}: required")
    fraction = raw["fraction"]
    if isinstance(fraction, int) and not isinstance(fraction, bool):
        fraction = float(fraction)
    return Shadow(_version(raw["version"], "shadow.version"), fraction)
