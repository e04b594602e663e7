"""Following nodes: readiness answers, self-registrations (good and garbage), status counts."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from modelport.gateway.fleet import parse_fleet
from modelport.gateway.follow import Follower, ready_models, view_of_record
from modelport.gateway.status import residency_refusals

FLEET = parse_fleet(
    {"regions": ["ae-dxb", "eu-west"], "groups": {"main": {}, "gpu": {}}},
    "fleet.yaml",
    Path("/"),
)


@dataclass
class Record:
    name: str = "n1"
    http_url: str = "http://10.0.0.9:8100"
    grpc_address: str | None = "10.0.0.9:8101"
    region: str | None = "ae-dxb"
    group: str | None = "gpu"
    weight: int = 2
    models: dict[str, list[str]] = field(default_factory=lambda: {"digits": ["ae"]})
    draining: bool = False
    heartbeat: float = 0.0


def test_ready_models_keeps_only_ready_entries() -> None:
    index = [
        {"name": "a", "version": "1", "state": "READY"},
        {"name": "b", "state": "UNAVAILABLE"},
        {"state": "READY"},
        "junk",
    ]
    assert ready_models(index) == {"a": ()}
    assert ready_models({"error": "x"}) == {}


def test_a_registration_becomes_a_view() -> None:
    view = view_of_record(FLEET, Record())
    assert view.http == ("10.0.0.9", 8100)
    assert view.grpc == ("10.0.0.9", 8101)
    assert (view.group, view.weight, view.region) == ("gpu", 2, "ae-dxb")
    assert view.models == {"digits": ("ae",)}
    assert view_of_record(FLEET, Record(group=None)).group == "main"


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        (Record(http_url="ftp://x:1"), "http_url"),
        (Record(http_url="http://host-without-port"), "http_url"),
        (Record(grpc_address="nowhere"), "nowhere"),
        (Record(group="other"), "group 'other'"),
        (Record(weight=0), "weight"),
        (Record(models=None), "malformed"),  # type: ignore[arg-type]
    ],
)
def test_garbage_registrations_are_refused_with_the_reason(record: Record, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        view_of_record(FLEET, record)


def test_the_follower_ignores_garbage_once_and_keeps_the_good(
    caplog: pytest.LogCaptureFixture,
) -> None:
    records = [Record(), Record(name="bad", weight=-1)]
    follower = Follower(FLEET, store_reader=lambda: records)

    async def twice() -> list[list[str]]:
        try:
            return [[v.name for v in await follower.poll()] for _ in range(2)]
        finally:
            await follower.close()

    with caplog.at_level(logging.WARNING, logger="modelport.gateway"):
        assert asyncio.run(twice()) == [["n1"], ["n1"]]
    ignored = [r.getMessage() for r in caplog.records if "ignoring node" in r.getMessage()]
    assert ignored == ["ignoring node bad: weight -1 is not positive"]


def test_a_store_outage_keeps_the_last_known_nodes() -> None:
    calls = [0]

    def reader() -> list[Record]:
        calls[0] += 1
        if calls[0] > 1:
            raise ConnectionError("database away")
        return [Record()]

    follower = Follower(FLEET, store_reader=reader)

    async def twice() -> list[list[str]]:
        try:
            return [[v.name for v in await follower.poll()] for _ in range(2)]
        finally:
            await follower.close()

    assert asyncio.run(twice()) == [["n1"], ["n1"]]


def test_refusals_count_only_restricted_clusters() -> None:
    stats = {
        "stats": [
            {"name": "cluster.model~d~http.upstream_cx_none_healthy", "value": 5},
            {"name": "cluster.model~d~http~in~ae-dxb.upstream_cx_none_healthy", "value": 2},
            {"name": "cluster.none~http.upstream_cx_none_healthy", "value": 3},
            {"name": "cluster.none~grpc.upstream_rq_total", "value": 9},
        ]
    }
    assert residency_refusals(stats) == 5
    assert residency_refusals([]) == 0


def test_polls_carry_the_node_key_and_read_readiness() -> None:
    fleet = parse_fleet(
        {
            "regions": ["eu"],
            "nodes": [
                {"name": "up", "http": "10.0.0.1:8000", "region": "eu"},
                {"name": "locked", "http": "10.0.0.2:8000", "region": "eu"},
                {"name": "down", "http": "10.0.0.3:8000", "region": "eu"},
            ],
        },
        "fleet.yaml",
        Path("/"),
    )
    seen: list[tuple[str, str | None]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers.get("authorization")))
        host = request.url.host
        if host == "10.0.0.3":
            raise httpx.ConnectError("refused")
        if host == "10.0.0.2":
            return httpx.Response(401, json={"error": "unauthenticated"})
        return httpx.Response(200, json=[{"name": "digits", "state": "READY"}])

    follower = Follower(fleet, token="k-123", transport=httpx.MockTransport(answer))

    async def once() -> list[tuple[str, bool, list[str]]]:
        try:
            return [(v.name, v.reachable, sorted(v.models)) for v in await follower.poll()]
        finally:
            await follower.close()

    assert asyncio.run(once()) == [
        ("up", True, ["digits"]),
        ("locked", True, []),
        ("down", False, []),
    ]
    assert set(seen) == {("/v2/repository/index", "Bearer k-123")}
