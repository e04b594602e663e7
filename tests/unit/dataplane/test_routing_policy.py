"""Traffic policies as the management API receives them: every refusal names its field."""

from __future__ import annotations

from typing import Any

import pytest

from modelport.dataplane.routing import Route, Shadow, TrafficPolicy
from modelport.errors import InvalidRequest


def _body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "routes": [{"version": "1", "weight": 90}, {"version": "2", "weight": 10}],
        "sticky_key": "x-user-id",
        "shadow": {"version": "3", "fraction": 0.25},
    }
    body.update(changes)
    return body


def test_from_body_parses_a_full_policy() -> None:
    policy = TrafficPolicy.from_body(_body())
    assert policy.routes == (Route("1", 90), Route("2", 10))
    assert policy.sticky_key == "x-user-id"
    assert policy.shadow == Shadow("3", 0.25)
    assert policy.versions() == {"1", "2", "3"}


def test_round_trip_is_canonical() -> None:
    body = _body(
        routes=[{"version": 10, "weight": 30}, {"version": "02", "weight": 70}],
        shadow={"version": 3, "fraction": 1},
    )
    policy = TrafficPolicy.from_body(body)
    canonical = policy.to_body()
    assert canonical == {
        "routes": [{"version": "2", "weight": 70}, {"version": "10", "weight": 30}],
        "sticky_key": "x-user-id",
        "shadow": {"version": "3", "fraction": 1.0},
    }
    assert TrafficPolicy.from_body(canonical) == policy


def test_optional_fields_may_be_absent_or_null() -> None:
    policy = TrafficPolicy.from_body({"routes": [{"version": "4", "weight": 100}]})
    assert policy == TrafficPolicy((Route("4", 100),))
    assert policy.to_body() == {
        "routes": [{"version": "4", "weight": 100}],
        "sticky_key": None,
        "shadow": None,
    }
    assert TrafficPolicy.from_body(_body(sticky_key=None, shadow=None)).shadow is None
    assert policy.versions() == {"4"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "policy: must be a JSON object"),
        ({}, "routes: required"),
        (_body(routes=[]), "routes: at least one route is required"),
        (_body(routes={"1": 100}), "routes: must be a list"),
        (_body(routes=[{"version": "1", "weight": 1}] * 101), "routes: at most 100 routes"),
        (_body(extra=1), "extra: unknown field; expected routes, sticky_key, shadow"),
        (_body(routes=["1"]), "routes[0]: must be an object with version and weight"),
        (
            _body(routes=[{"version": "1", "weight": 100, "w": 1}]),
            "routes[0].w: unknown field; expected version, weight",
        ),
        (_body(routes=[{"weight": 100}]), "routes[0].version: required"),
        (_body(routes=[{"version": "1"}]), "routes[0].weight: required"),
        (
            _body(routes=[{"version": "1", "weight": 90}, {"version": "2", "weight": 101}]),
            "routes[1].weight: must be an integer from 0 to 100",
        ),
        (
            _body(routes=[{"version": "1", "weight": 90}, {"version": "2", "weight": -1}]),
            "routes[1].weight: must be an integer from 0 to 100",
        ),
        (
            _body(routes=[{"version": "1", "weight": 90}, {"version": "2", "weight": 10.0}]),
            "routes[1].weight: must be an integer from 0 to 100",
        ),
        (
            _body(routes=[{"version": "1", "weight": 99}, {"version": "2", "weight": True}]),
            "routes[1].weight: must be an integer from 0 to 100",
        ),
        (
            _body(routes=[{"version": "1", "weight": 90}, {"version": "2", "weight": "10"}]),
            "routes[1].weight: must be an integer from 0 to 100",
        ),
        (
            _body(routes=[{"version": "1", "weight": 80}, {"version": "2", "weight": 10}]),
            "routes: weights sum to 90, must sum to 100",
        ),
        (
            _body(
                routes=[
                    {"version": "3", "weight": 50},
                    {"version": "1", "weight": 50},
                    {"version": 3, "weight": 0},
                ]
            ),
            "routes[2].version: '3' appears twice",
        ),
        (_body(routes=[{"version": "v1", "weight": 100}]), "routes[0].version: must be a"),
        (_body(routes=[{"version": "0", "weight": 100}]), "routes[0].version: must be a"),
        (_body(routes=[{"version": -2, "weight": 100}]), "routes[0].version: must be a"),
        (_body(routes=[{"version": True, "weight": 100}]), "routes[0].version: must be a"),
        (_body(routes=[{"version": 1.5, "weight": 100}]), "routes[0].version: must be a"),
        (_body(routes=[{"version": "", "weight": 100}]), "routes[0].version: must be a"),
        (_body(sticky_key=7), "sticky_key: must be a string or null"),
        (_body(sticky_key=""), "sticky_key: '' must be 1 to 128 letters"),
        (_body(sticky_key="user id"), "sticky_key: 'user id' must be 1 to 128 letters"),
        (_body(shadow=0.5), "shadow: must be an object with version and fraction"),
        (_body(shadow={"version": "3"}), "shadow.fraction: required"),
        (_body(shadow={"fraction": 0.5}), "shadow.version: required"),
        (
            _body(shadow={"version": "3", "fraction": 0.5, "mode": "x"}),
            "shadow.mode: unknown field; expected version, fraction",
        ),
        (_body(shadow={"version": "x", "fraction": 0.5}), "shadow.version: must be a"),
        (_body(shadow={"version": "3", "fraction": 0}), "shadow.fraction: must be > 0 and <= 1"),
        (_body(shadow={"version": "3", "fraction": 1.5}), "shadow.fraction: must be > 0 and <= 1"),
        (_body(shadow={"version": "3", "fraction": -0.1}), "shadow.fraction: must be > 0 and"),
        (_body(shadow={"version": "3", "fraction": "0.5"}), "shadow.fraction: must be > 0 and"),
        (_body(shadow={"version": "3", "fraction": True}), "shadow.fraction: must be > 0 and"),
        (
            _body(shadow={"version": "3", "fraction": float("nan")}),
            "shadow.fraction: must be > 0 and",
        ),
    ],
)
def test_bad_bodies_are_refused_naming_the_field(body: Any, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        TrafficPolicy.from_body(body)
    assert info.value.message.startswith(message), info.value.message


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(InvalidRequest, match=r"routes: weights sum to 50, must sum to 100"):
        TrafficPolicy((Route("1", 50),))
    with pytest.raises(InvalidRequest, match=r"routes\[0\]\.version: write '01' as '1'"):
        TrafficPolicy((Route("01", 100),))
    with pytest.raises(InvalidRequest, match=r"shadow\.version: must be a positive version"):
        TrafficPolicy((Route("1", 100),), shadow=Shadow("latest", 0.1))
    with pytest.raises(InvalidRequest, match=r"routes: at least one route is required"):
        TrafficPolicy(())


def test_zero_weight_routes_are_kept_but_receive_no_range() -> None:
    policy = TrafficPolicy.from_body(
        {"routes": [{"version": "2", "weight": 0}, {"version": "1", "weight": 100}]}
    )
    assert policy.routes == (Route("1", 100), Route("2", 0))
    assert policy.versions() == {"1", "2"}
    assert policy.bounds == ((10_000, "1"),)
