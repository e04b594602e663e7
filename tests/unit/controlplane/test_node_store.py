"""The fleet's node registrations on both backends (SQLite file, real PostgreSQL)."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from modelport.controlplane.store import Database, NodeRecord, NodeStore
from modelport.errors import Conflict, InvalidRequest

NOW = 1_800_000_000.0


def _record(name: str = "node-a", **changes: object) -> NodeRecord:
    base = NodeRecord(
        name=name,
        http_url="http://10.0.0.5:8100",
        grpc_address="10.0.0.5:8101",
        region="ae-dxb-1",
        group="blue",
        weight=100,
        models={"resnet": ["ae"], "echo": []},
        draining=False,
        heartbeat=NOW,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def database(url: str) -> Iterator[Database]:
    with Database.open(url) as opened:
        yield opened


@pytest.fixture
def nodes(database: Database) -> NodeStore:
    return NodeStore(database)


def _raw(url: str) -> sa.Engine:
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))


def test_a_registered_node_reads_back_as_written(nodes: NodeStore) -> None:
    record = _record()
    nodes.upsert(record)
    assert nodes.live(NOW, 5.0) == [record]


def test_upsert_replaces_the_record_of_the_same_name(nodes: NodeStore) -> None:
    nodes.upsert(_record())
    later = _record(models={"echo": []}, draining=True, heartbeat=NOW + 1, weight=7)
    nodes.upsert(later)
    assert nodes.live(NOW + 1, 5.0) == [later]


def test_a_node_whose_heartbeat_is_stale_is_not_live(nodes: NodeStore) -> None:
    nodes.upsert(_record("fresh", heartbeat=NOW - 2))
    nodes.upsert(_record("stale", heartbeat=NOW - 10))
    assert [record.name for record in nodes.live(NOW, 3.0)] == ["fresh"]
    assert [record.name for record in nodes.live(NOW, 20.0)] == ["fresh", "stale"]


def test_a_removed_node_is_gone_and_removing_twice_is_harmless(nodes: NodeStore) -> None:
    nodes.upsert(_record("a"))
    nodes.upsert(_record("b"))
    nodes.remove("a")
    nodes.remove("a")
    assert [record.name for record in nodes.live(NOW, 5.0)] == ["b"]


def test_a_live_nodes_name_is_refused_to_a_node_at_another_address(nodes: NodeStore) -> None:
    first = _record("n1")
    nodes.upsert(first)
    twin = _record("n1", http_url="http://10.0.0.9:8100", heartbeat=NOW + 3)
    with pytest.raises(
        Conflict, match=re.escape("'n1' is taken by the live node at http://10.0.0.5:8100")
    ):
        nodes.upsert(twin)
    assert nodes.live(NOW + 3, 5.0) == [first]
    # Once the first node's record went stale, the name is free again.
    late = dataclasses.replace(twin, heartbeat=NOW + 11)
    nodes.upsert(late)
    assert nodes.live(NOW + 11, 5.0) == [late]


def test_a_stopping_node_removes_only_its_own_record(nodes: NodeStore) -> None:
    nodes.upsert(_record("n1", http_url="http://10.0.0.9:8100"))
    nodes.remove("n1", "http://10.0.0.5:8100")  # the name's previous holder, stopping late
    assert [r.http_url for r in nodes.live(NOW, 5.0)] == ["http://10.0.0.9:8100"]
    nodes.remove("n1", "http://10.0.0.9:8100")
    assert nodes.live(NOW, 5.0) == []


def test_optional_fields_may_be_absent(nodes: NodeStore) -> None:
    record = _record(grpc_address=None, region=None, group=None, models={})
    nodes.upsert(record)
    assert nodes.live(NOW, 1.0) == [record]


def test_a_trailing_slash_on_the_url_is_dropped(nodes: NodeStore) -> None:
    nodes.upsert(_record(http_url="https://node-a.example:8443/"))
    (stored,) = nodes.live(NOW, 1.0)
    assert stored.http_url == "https://node-a.example:8443"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "bad name"),
        ("name", ""),
        ("http_url", "ftp://10.0.0.5"),
        ("http_url", "http://10.0.0.5:8100/v2"),
        ("http_url", "http://user:pw@10.0.0.5"),
        ("http_url", "http://"),
        ("http_url", "http://bad_host!:80"),
        ("grpc_address", "10.0.0.5"),
        ("grpc_address", "10.0.0.5:70000"),
        ("grpc_address", "[not-v6]:8001"),
        ("region", "Dubai"),
        ("group", "a/b"),
        ("weight", -1),
        ("weight", 10_001),
        ("weight", True),
        ("models", {"resnet": ["Earth"]}),
        ("models", {"": []}),
        ("models", {"resnet": "ae"}),
        ("draining", "yes"),
        ("heartbeat", float("nan")),
    ],
)
def test_a_bad_record_is_refused_before_it_is_written(
    nodes: NodeStore, field: str, value: object
) -> None:
    with pytest.raises(InvalidRequest):
        nodes.upsert(dataclasses.replace(_record("victim"), **{field: value}))
    assert nodes.live(NOW, 5.0) == []


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("http_url", "javascript:alert(1)"),
        ("region", "Not A Region"),
        ("models", {"resnet": [7]}),
        ("weight", 99_999),
    ],
)
def test_a_garbage_row_is_skipped_with_a_log_line(
    url: str, nodes: NodeStore, caplog: pytest.LogCaptureFixture, column: str, value: object
) -> None:
    nodes.upsert(_record("good"))
    nodes.upsert(_record("tampered"))
    engine = _raw(url)
    try:
        with engine.begin() as conn:
            table = sa.Table("nodes", sa.MetaData(), autoload_with=conn)
            conn.execute(table.update().where(table.c.name == "tampered").values({column: value}))
    finally:
        engine.dispose()
    with caplog.at_level(logging.WARNING, logger="modelport.fleet"):
        live = nodes.live(NOW, 5.0)
    assert [record.name for record in live] == ["good"]
    assert "tampered" in caplog.text
    assert nodes.get("tampered") is None


def test_two_stores_on_one_database_see_each_others_nodes(url: str) -> None:
    with Database.open(url) as first, Database.open(url) as second:
        NodeStore(first).upsert(_record("a"))
        NodeStore(second).upsert(_record("b"))
        assert [record.name for record in NodeStore(first).live(NOW, 5.0)] == ["a", "b"]
