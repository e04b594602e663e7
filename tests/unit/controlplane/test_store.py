"""The state store on both backends: an SQLite file and a real PostgreSQL server.

The ``url`` and ``store`` fixtures (conftest.py) run each test on both; the
PostgreSQL runs are skipped when its server is down.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from modelport.controlplane.store import (
    Database,
    Event,
    RevisionConflict,
    StoredCanary,
    StoredPolicy,
)
from modelport.controlplane.store import policies as policies_module
from modelport.controlplane.store.migrate import alembic_config, head_revision
from modelport.controlplane.store.tables import VERSION_TABLE, metadata
from modelport.dataplane.transport.grpc.errors import grpc_status
from modelport.dataplane.transport.http.errors import http_status
from modelport.errors import ConfigError, Conflict, InvalidRequest
from tests.unit.controlplane.stores import Stores

POLICY = {"routes": [{"version": "1", "weight": 90}, {"version": "2", "weight": 10}]}


# ---------------------------------------------------------------- helpers


def _raw(url: str) -> sa.Engine:
    """An engine on the store's database that bypasses the store (to inspect or tamper)."""
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))


def _is_aware_utc(moment: datetime) -> bool:
    return moment.tzinfo is not None and moment.utcoffset() == timedelta(0)


# ---------------------------------------------------------------- schema


def test_open_creates_the_schema_the_queries_expect(url: str) -> None:
    Database.open(url).close()
    engine = _raw(url)
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            assert {"traffic_policies", "canaries", "events", VERSION_TABLE} <= tables
            context = MigrationContext.configure(
                conn, opts={"version_table": VERSION_TABLE, "compare_type": True}
            )
            assert context.get_current_heads() == (head_revision(),)
            # The migrations and tables.py describe the same schema.
            assert compare_metadata(context, metadata) == []
    finally:
        engine.dispose()


def test_the_sqlite_directory_is_created(tmp_path: Path) -> None:
    data_dir = tmp_path / "not" / "yet" / "there"
    with Database.open(Database.sqlite_url(data_dir)):
        pass
    assert (data_dir / "state.db").is_file()


def test_reopening_keeps_everything(url: str) -> None:
    with Stores.open(url) as first:
        policy = first.policies.put("m", POLICY, expected_revision=None, actor="local")
        canary = first.canaries.put(
            "m",
            {"step": 1},
            "running",
            expected_revision=None,
            actor="local",
            action="canary.start",
        )
        loaded = first.audit.record("m", "version.load", actor="local", detail={"version": "2"})
    with Stores.open(url) as second:
        assert second.policies.get("m") == policy
        assert second.canaries.get("m") == canary
        assert second.audit.history("m")[0] == loaded
        assert len(second.audit.history("m")) == 3


def test_an_older_database_is_upgraded_on_open(url: str) -> None:
    Database.open(url).close()
    engine = _raw(url)
    try:
        with engine.begin() as conn:
            config = alembic_config()
            config.attributes["connection"] = conn
            command.downgrade(config, "base")
        assert "traffic_policies" not in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
    with Stores.open(url) as store:
        assert store.policies.put("m", POLICY, expected_revision=None, actor="a").revision == 1


def test_a_newer_unknown_schema_revision_is_refused(url: str) -> None:
    Database.open(url).close()
    engine = _raw(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = '0999_future'"))
    finally:
        engine.dispose()
    with pytest.raises(ConfigError) as caught:
        Database.open(url)
    assert "0999_future" in caught.value.message
    assert "newer modelport" in caught.value.message


def test_an_unreachable_database_names_the_url_without_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        Database.open("postgresql://alice:s3cret-pw@127.0.0.1:1/state")
    message = caught.value.message
    assert "s3cret-pw" not in message
    assert "alice:***@127.0.0.1:1/state" in message
    assert "cannot open the database" in message


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state.db").write_text("these are someone's notes, not a database\n" * 40)
    with pytest.raises(ConfigError) as caught:
        Database.open(Database.sqlite_url(tmp_path))
    assert caught.value.message == (
        f"state store sqlite:///{tmp_path}/state.db: cannot open the database: "
        "file is not a database"
    )


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("mysql://root@localhost/db", "unsupported database 'mysql'"),
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
        ("not a url", "not a database URL"),
    ],
)
def test_unusable_urls_are_refused_before_connecting(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        Database.open(url)


# ---------------------------------------------------------------- policies


def test_policy_revisions_count_writes(store: Stores) -> None:
    assert store.policies.get("m") is None
    created = store.policies.put("m", POLICY, expected_revision=None, actor="local")
    assert (created.revision, created.body, created.updated_by) == (1, POLICY, "local")
    assert _is_aware_utc(created.updated_at)
    changed = store.policies.put("m", {"routes": []}, expected_revision=1, actor="bob")
    assert changed.revision == 2
    assert store.policies.get("m") == changed
    other = store.policies.put("a", POLICY, expected_revision=None, actor="local")
    assert store.policies.list_all() == [other, changed]


def test_a_stale_revision_is_refused_with_the_current_policy(store: Stores) -> None:
    store.policies.put("m", POLICY, expected_revision=None, actor="local")
    current = store.policies.put("m", {"routes": []}, expected_revision=1, actor="local")
    with pytest.raises(RevisionConflict) as caught:
        store.policies.put("m", {"lost": True}, expected_revision=1, actor="late")
    assert caught.value.current == current
    assert "revision 2, not 1" in caught.value.message
    assert store.policies.get("m") == current
    assert [e.detail["revision"] for e in store.audit.history("m")] == [2, 1]


def test_creating_an_existing_policy_is_a_conflict(store: Stores) -> None:
    current = store.policies.put("m", POLICY, expected_revision=None, actor="local")
    with pytest.raises(RevisionConflict) as caught:
        store.policies.put("m", {}, expected_revision=None, actor="local")
    assert caught.value.current == current
    assert "already has a traffic policy" in caught.value.message


def test_updating_a_missing_policy_is_a_conflict_without_current(store: Stores) -> None:
    with pytest.raises(RevisionConflict) as caught:
        store.policies.put("m", POLICY, expected_revision=3, actor="local")
    assert caught.value.current is None
    assert store.policies.get("m") is None


def test_revision_conflicts_are_409_and_aborted() -> None:
    import grpc

    conflict = RevisionConflict("changed", None)
    assert isinstance(conflict, Conflict)
    assert http_status(conflict) == 409
    assert grpc_status(conflict) == grpc.StatusCode.ABORTED


def _race(writers: int, write: Callable[[], Any]) -> tuple[list[Any], list[RevisionConflict]]:
    """Run ``write`` on many threads released at once; what each got back."""
    start = threading.Barrier(writers)
    won: list[Any] = []
    lost: list[RevisionConflict] = []
    lock = threading.Lock()

    def writer() -> None:
        start.wait()
        try:
            result = write()
        except RevisionConflict as exc:
            with lock:
                lost.append(exc)
        else:
            with lock:
                won.append(result)

    threads = [threading.Thread(target=writer) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return won, lost


def test_racing_updates_from_one_revision_have_exactly_one_winner(store: Stores) -> None:
    store.policies.put("m", POLICY, expected_revision=None, actor="local")
    won, lost = _race(
        8, lambda: store.policies.put("m", {"w": 1}, expected_revision=1, actor="racer")
    )
    assert len(won) == 1
    assert len(lost) == 7
    assert all(conflict.current == won[0] for conflict in lost)
    assert store.policies.get("m") == won[0]
    assert [e.detail["revision"] for e in store.audit.history("m")] == [2, 1]


def test_racing_creates_have_exactly_one_winner(store: Stores) -> None:
    won, lost = _race(
        8, lambda: store.policies.put("m", POLICY, expected_revision=None, actor="racer")
    )
    assert len(won) == 1
    assert len(lost) == 7
    assert all(conflict.current == won[0] for conflict in lost)
    assert len(store.audit.history("m")) == 1


def test_a_policy_write_records_its_event_in_the_same_transaction(
    store: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = store.policies.put(
        "m", POLICY, expected_revision=None, actor="local", reason="ramp to 10%"
    )
    (event,) = store.audit.history("m")
    assert event == Event(
        event.id,
        "m",
        policy.updated_at,
        "local",
        "traffic.update",
        {"revision": 1, "policy": POLICY},
        "ramp to 10%",
    )

    def history_is_down(*_args: Any) -> Event:
        raise RuntimeError("events table unavailable")

    monkeypatch.setattr(policies_module, "append_event", history_is_down)
    with pytest.raises(RuntimeError):
        store.policies.put("m", {"routes": []}, expected_revision=1, actor="local")
    assert store.policies.get("m") == policy  # the policy write rolled back with it


def test_deleting_a_policy(store: Stores) -> None:
    store.policies.put("m", POLICY, expected_revision=None, actor="local")
    store.policies.put("m", POLICY, expected_revision=1, actor="local")
    with pytest.raises(RevisionConflict) as caught:
        store.policies.delete("m", expected_revision=1, actor="local")
    assert caught.value.current is not None
    assert caught.value.current.revision == 2
    store.policies.delete("m", expected_revision=2, actor="local", reason="rollback done")
    assert store.policies.get("m") is None
    latest = store.audit.history("m")[0]
    assert (latest.action, latest.detail, latest.reason) == (
        "traffic.delete",
        {"revision": 2},
        "rollback done",
    )
    with pytest.raises(RevisionConflict) as missing:
        store.policies.delete("m", expected_revision=2, actor="local")
    assert missing.value.current is None


# ---------------------------------------------------------------- canaries


def test_canaries_advance_and_list_by_state(store: Stores) -> None:
    running = store.canaries.put(
        "a",
        {"steps": [10, 50]},
        "running",
        expected_revision=None,
        actor="c",
        action="canary.start",
    )
    store.canaries.put(
        "b", {"steps": [5]}, "running", expected_revision=None, actor="c", action="canary.start"
    )
    paused = store.canaries.put(
        "b", {"steps": [5]}, "paused", expected_revision=1, actor="c", action="canary.pause"
    )
    assert isinstance(paused, StoredCanary)
    assert (paused.state, paused.revision) == ("paused", 2)
    assert _is_aware_utc(paused.updated_at)
    assert store.canaries.list_all({"running"}) == [running]
    assert store.canaries.list_all(["running", "paused"]) == [running, paused]
    assert store.canaries.list_all() == [running, paused]
    assert store.canaries.list_all([]) == []
    latest = store.audit.history("b")[0]
    assert (latest.action, latest.detail) == (
        "canary.pause",
        {"revision": 2, "state": "paused", "canary": {"steps": [5]}},
    )


def test_a_stale_canary_write_is_refused(store: Stores) -> None:
    current = store.canaries.put(
        "a", {"step": 0}, "running", expected_revision=None, actor="c", action="canary.start"
    )
    with pytest.raises(RevisionConflict) as caught:
        store.canaries.put(
            "a", {}, "aborted", expected_revision=None, actor="c", action="canary.abort"
        )
    assert caught.value.current == current
    assert store.canaries.get("a") == current
    assert len(store.audit.history("a")) == 1


# ---------------------------------------------------------------- history


def test_history_is_newest_first_and_pages(store: Stores) -> None:
    recorded = [
        store.audit.record(model, "version.load", actor="local", detail={"n": n})
        for n, model in enumerate(["a", "b", "a", "b", "a"])
    ]
    newest_first = list(reversed(recorded))
    assert store.audit.history() == newest_first
    first = store.audit.history(limit=2)
    assert first == newest_first[:2]
    rest = store.audit.history(limit=10, before_id=first[-1].id)
    assert rest == newest_first[2:]
    assert store.audit.history("a") == [e for e in newest_first if e.model == "a"]
    assert store.audit.history("a", limit=1, before_id=recorded[2].id) == [recorded[0]]
    assert store.audit.history("nobody") == []
    assert all(_is_aware_utc(event.at) for event in store.audit.history())


def test_timestamps_come_back_as_the_same_instant_in_utc(url: str) -> None:
    local = datetime(2025, 3, 30, 2, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    with Stores.open(url, clock=lambda: local) as store:
        written = store.policies.put("m", POLICY, expected_revision=None, actor="local")
    with Stores.open(url) as store:
        read = store.policies.get("m")
        (event,) = store.audit.history("m")
    assert read is not None
    assert read.updated_at == written.updated_at == event.at == local
    assert read.updated_at.tzinfo == UTC
    assert event.at.tzinfo == UTC


# ---------------------------------------------------------------- bad input


def test_bad_arguments_are_refused_naming_the_problem(store: Stores) -> None:
    with pytest.raises(InvalidRequest, match="model name is 257 characters long; the limit is 256"):
        store.policies.put("m" * 257, POLICY, expected_revision=None, actor="local")
    with pytest.raises(InvalidRequest, match="traffic policy of model 'm' is not valid JSON"):
        store.policies.put("m", {"routes": {1, 2}}, expected_revision=None, actor="local")
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        store.policies.put("m", {"weight": float("nan")}, expected_revision=None, actor="local")
    with pytest.raises(InvalidRequest, match="expected_revision must be a positive integer"):
        store.policies.put("m", POLICY, expected_revision=0, actor="local")
    with pytest.raises(InvalidRequest, match="NUL"):
        store.audit.record("m", "note", actor="local", reason="a\x00b")
    with pytest.raises(InvalidRequest, match="history limit"):
        store.audit.history(limit=0)
    with pytest.raises(InvalidRequest, match="collection of names"):
        store.canaries.list_all("running")
    assert store.audit.history() == []  # nothing was written


def test_model_names_of_256_characters_are_kept(store: Stores) -> None:
    name = "m" * 256
    written = store.policies.put(name, POLICY, expected_revision=None, actor="local")
    assert isinstance(written, StoredPolicy)
    assert store.policies.get(name) == written
