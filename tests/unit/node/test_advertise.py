"""The node's fleet registration over a real (SQLite) store: heartbeats, changes, draining."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelport.clock import SystemClock
from modelport.controlplane.store import Database, NodeStore
from modelport.node import advertise
from modelport.node.advertise import Advertiser, Placement, common_ready, default_name

PLACEMENT = Placement("n1", "http://10.0.0.5:8000", None, "ae-dxb-1", None, 100)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[NodeStore]:
    with Database.open(Database.sqlite_url(tmp_path / "data")) as database:
        yield NodeStore(database)


def test_default_name_comes_from_the_advertised_host_and_port() -> None:
    assert default_name("http://10.0.0.5:8000") == "10.0.0.5-8000"
    assert default_name("https://node.example") == "node.example-443"
    assert default_name("http://[::1]:81") == "1-81"
    assert len(default_name("http://" + "a" * 63 + ".example.com:8000")) <= 64


def test_only_models_ready_on_every_answering_worker_are_advertised() -> None:
    own = {"a": [], "b": ["ae"], "c": []}
    assert common_ready(own, [{"a", "b"}, {"b", "a", "z"}]) == {"a": [], "b": ["ae"]}
    assert common_ready(own, []) == own


def test_heartbeats_follow_changes_then_drain_and_withdraw(
    store: NodeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(advertise, "LOOK_S", 0.02)
    asyncio.run(_scenario(store))


async def _scenario(store: NodeStore) -> None:
    ready: dict[str, list[str]] = {"a": []}

    async def models() -> dict[str, list[str]]:
        return dict(ready)

    advertiser = Advertiser(store, PLACEMENT, models, SystemClock(), drain_seconds=0.3)
    stop = asyncio.Event()
    task = asyncio.create_task(advertiser.run(stop))

    async def seen(check: object) -> None:
        for _ in range(200):
            record = store.get("n1")
            if record is not None and check(record):  # type: ignore[operator]
                return
            await asyncio.sleep(0.01)
        pytest.fail("the record never showed the change")

    await seen(lambda r: r.models == {"a": []} and not r.draining)
    ready["b"] = ["ae"]
    await seen(lambda r: r.models == {"a": [], "b": ["ae"]})
    stop.set()
    await seen(lambda r: r.draining)
    started = time.monotonic()
    await asyncio.wait_for(task, 5)
    assert time.monotonic() - started >= 0.2
    assert advertiser.withdrawn.is_set()
    assert store.get("n1") is None
