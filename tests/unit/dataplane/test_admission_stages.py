"""Admission's two phases: route and overload before the body, rate limits by origin after."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from modelport.dataplane.admission.ratelimit import Decision
from modelport.dataplane.admission.stages import Admission
from modelport.errors import NotFound, RateLimited, Unavailable
from modelport.observability.metrics import Metrics
from modelport.types import Call, Identity, InferenceRequest, Origin, Role


@dataclass
class Servable:
    refused: Unavailable | None = None

    def refusal(self) -> Unavailable | None:
        return self.refused


@dataclass
class Limit:
    rate: float = 1.0
    burst: int = 1


@dataclass
class Version:
    name: str = "m"
    servable: Servable = field(default_factory=Servable)
    rate_limit: Limit | None = None


class Table:
    def __init__(self, version: Version) -> None:
        self.version = version

    def acquire(self, name: str, version: str | None) -> Version:
        if name != "m":
            raise NotFound(f"unknown model {name!r}")
        return self.version


class Policies:
    """A Traffic with a policy for model m."""

    def get(self, name: str) -> object | None:
        return object() if name == "m" else None


class Limiter:
    def __init__(self, allowed: bool) -> None:
        self.allowed = allowed
        self.keys: list[str] = []

    async def acquire(self, key: str, rate: float, burst: int, cost: int = 1) -> Decision:
        self.keys.append(key)
        return Decision(self.allowed, 0.0 if self.allowed else 1.0, 0.0)


def _admission(
    version: Version, traffic: object | None = None, limiter: object = None
) -> Admission:
    return Admission(Table(version), Metrics(), traffic, limiter)  # type: ignore[arg-type]


FULL = Unavailable("queue full")


def test_before_the_body_a_known_version_with_room_is_taken() -> None:
    version = Version()
    assert _admission(version).before_body("m", "1") is version  # type: ignore[comparison-overlap]
    with pytest.raises(NotFound):
        _admission(version).before_body("other", None)


def test_before_the_body_a_full_version_refuses_the_request_going_to_it() -> None:
    version = Version(servable=Servable(FULL))
    with pytest.raises(Unavailable):
        _admission(version).before_body("m", None)
    with pytest.raises(Unavailable):
        _admission(version, Policies()).before_body("m", "1")
    # Without a version, a traffic policy may send it to another one.
    _admission(version, Policies()).before_body("m", None)


def test_rate_limits_skip_internal_origins_and_take_the_callers_bucket_first() -> None:
    limiter = Limiter(allowed=True)
    admission = _admission(Version(rate_limit=Limit()), limiter=limiter)
    who = Identity("key:1", "ci", Role.INVOKER, ("*",), rate=5.0, burst=5)
    request = InferenceRequest("m", None, [])
    for origin in (Origin.SHADOW, Origin.JOB):
        asyncio.run(
            admission.take_tokens(Call(origin, who), request, admission.table.acquire("m", None))
        )  # type: ignore[arg-type]
    assert limiter.keys == []
    # A composite's step: its model's bucket, not the caller's a second time.
    asyncio.run(
        admission.take_tokens(Call(Origin.STEP, who), request, admission.table.acquire("m", None))
    )  # type: ignore[arg-type]
    assert limiter.keys == ["model:m"]
    limiter.keys.clear()
    asyncio.run(
        admission.take_tokens(Call(Origin.GRPC, who), request, admission.table.acquire("m", None))
    )  # type: ignore[arg-type]
    assert limiter.keys == ["identity:key:1", "model:m"]


def test_a_refused_token_is_a_rate_limited_error() -> None:
    admission = _admission(Version(rate_limit=Limit()), limiter=Limiter(allowed=False))
    with pytest.raises(RateLimited):
        asyncio.run(
            admission.take_tokens(
                Call(Origin.REST),
                InferenceRequest("m", None, []),
                admission.table.acquire("m", None),  # type: ignore[arg-type]
            )
        )


def test_limits_says_whether_any_bucket_applies() -> None:
    """The pipeline asks first, so a request no limit applies to awaits nothing."""
    limited = Identity("key:1", "ci", Role.INVOKER, ("*",), rate=5.0, burst=5)
    free = Identity("key:2", "ci", Role.INVOKER, ("*",))
    request = InferenceRequest("m", None, [])
    plain = _admission(Version(), limiter=Limiter(allowed=True))
    model = plain.table.acquire("m", None)
    assert not plain.limits(Call(Origin.REST, free), request, model)  # type: ignore[arg-type]
    assert plain.limits(Call(Origin.REST, limited), request, model)  # type: ignore[arg-type]
    assert not plain.limits(Call(Origin.STEP, limited), request, model)  # type: ignore[arg-type]
    capped = _admission(Version(rate_limit=Limit()), limiter=Limiter(allowed=True))
    model = capped.table.acquire("m", None)
    assert capped.limits(Call(Origin.REST), request, model)  # type: ignore[arg-type]
    assert capped.limits(None, request, model)  # type: ignore[arg-type]
    assert not capped.limits(Call(Origin.SHADOW), request, model)  # type: ignore[arg-type]
    # No limiter at all: nothing to take.
    unlimited = _admission(Version(rate_limit=Limit()))
    assert not unlimited.limits(Call(Origin.REST), request, model)  # type: ignore[arg-type]
