"""The Call: what a transport hands everything below it about one call."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

import pytest

from modelport.types import Call, Identity, Origin, Role


def test_a_call_knows_only_its_origin_unless_told_more() -> None:
    call = Call(Origin.GRPC)

    assert call.identity is None
    assert call.deadline_ns is None
    assert call.remaining_ns(now_ns=123) is None
    assert dict(call.headers) == {}
    assert call.request_id is None
    assert call.peer is None
    assert dict(call.trace) == {}


def test_a_call_carries_what_the_transport_gave_it() -> None:
    who = Identity(id="key:1", name="ci", role=Role.INVOKER, models=("mlp*",))
    headers = MappingProxyType({"x-request-id": "r-1", "traceparent": "00-ab-cd-01"})

    call = Call(
        Origin.REST,
        identity=who,
        deadline_ns=5_000,
        headers=headers,
        request_id="r-1",
        peer="10.0.0.7:53110",
        trace={"traceparent": "00-ab-cd-01"},
    )

    assert call.identity is who
    assert call.headers["x-request-id"] == "r-1"
    assert call.peer == "10.0.0.7:53110"
    assert call.trace["traceparent"] == "00-ab-cd-01"


def test_time_left_counts_down_to_the_deadline_and_past_it() -> None:
    call = Call(Origin.REST, deadline_ns=5_000)

    assert call.remaining_ns(now_ns=1_000) == 4_000
    assert call.remaining_ns(now_ns=5_000) == 0
    assert call.remaining_ns(now_ns=6_000) == -1_000


def test_a_call_cannot_be_changed_once_built() -> None:
    call = Call(Origin.REST)

    with pytest.raises(dataclasses.FrozenInstanceError):
        call.peer = "10.0.0.8:1"  # type: ignore[misc]
    with pytest.raises(TypeError):
        call.headers["x-extra"] = "1"  # type: ignore[index]
    with pytest.raises(TypeError):
        call.trace["traceparent"] = "1"  # type: ignore[index]


def test_a_shadow_copy_is_told_apart_by_its_origin() -> None:
    original = Call(Origin.REST, request_id="r-1")
    shadow = dataclasses.replace(original, origin=Origin.SHADOW)

    assert shadow.origin.internal
    assert shadow.request_id == "r-1"
    assert not Origin.REST.internal
    assert not Origin.GRPC.internal
