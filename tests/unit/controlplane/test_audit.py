"""The hash-chained audit log, on SQLite and PostgreSQL (fixtures in conftest.py).

Tampering is done the way an intruder with database access would do it:
plain SQL on the events table, behind the store's back.
"""

from __future__ import annotations

import io
import itertools
import json
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from typer.testing import CliRunner

from modelport.cli.audit import audit_app
from modelport.cli.main import app as main_app
from modelport.controlplane.store import AuditProblem, Database
from modelport.controlplane.store.chain import GENESIS_HASH, record_hash
from modelport.controlplane.store.migrate import alembic_config
from modelport.controlplane.store.tables import events
from modelport.errors import InvalidRequest
from tests.unit.controlplane.stores import Stores

POLICY = {"routes": [{"version": "1", "weight": 100}]}


def _raw(url: str) -> sa.Engine:
    """An engine that bypasses the store, as an intruder's would."""
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))


@pytest.fixture
def raw(url: str) -> Iterator[sa.Engine]:
    engine = _raw(url)
    yield engine
    engine.dispose()


def _mixed_writes(store: Stores) -> None:
    """Five events, one of each kind of write."""
    store.policies.put("m", POLICY, expected_revision=None, actor="alice", reason="first")
    store.policies.put("m", POLICY, expected_revision=1, actor="alice")
    store.canaries.put(
        "m", {"step": 1}, "running", expected_revision=None, actor="bob", action="canary.start"
    )
    store.audit.record("m", "version.load", actor="server", detail={"version": "2"})
    store.policies.delete("m", expected_revision=2, actor="alice", reason="done")


def _rows(raw: sa.Engine) -> list[dict[str, Any]]:
    with raw.connect() as conn:
        return [
            dict(row._mapping) for row in conn.execute(sa.select(events).order_by(events.c.seq))
        ]


def _export(store: Stores, since_seq: int | None = None) -> list[dict[str, Any]]:
    out = io.StringIO()
    store.audit.export(out, since_seq)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def _kinds(problems: list[AuditProblem]) -> list[tuple[int, int | None, str]]:
    return [(problem.seq, problem.id, problem.what) for problem in problems]


# ---------------------------------------------------------------- an intact chain


def test_every_kind_of_write_extends_one_intact_chain(store: Stores) -> None:
    _mixed_writes(store)
    report = store.audit.verify()
    assert report.ok
    assert report.checked == 5
    assert report.problems == []
    records = _export(store)
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["action"] for r in records] == [
        "traffic.update",
        "traffic.update",
        "canary.start",
        "version.load",
        "traffic.delete",
    ]
    assert records[0]["prev_hash"] == GENESIS_HASH
    for before, after in itertools.pairwise(records):
        assert after["prev_hash"] == before["hash"]


def test_an_empty_log_is_intact(store: Stores) -> None:
    report = store.audit.verify()
    assert (report.ok, report.checked) == (True, 0)


def test_numbers_the_database_rewrites_still_verify(store: Stores) -> None:
    # PostgreSQL's JSONB gives the float 1e20 back as an integer.
    event = store.audit.record("m", "version.load", actor="a", detail={"big": 1e20, "one": 1.0})
    assert store.audit.history("m") == [event]
    assert store.audit.verify().ok


# ---------------------------------------------------------------- tampering


def test_an_edited_record_is_named(store: Stores, raw: sa.Engine) -> None:
    _mixed_writes(store)
    target = _rows(raw)[1]
    with raw.begin() as conn:
        conn.execute(sa.update(events).where(events.c.id == target["id"]).values(actor="mallory"))
    report = store.audit.verify()
    assert not report.ok
    assert _kinds(report.problems) == [(2, target["id"], "edited")]
    assert "hash does not match its content" in report.problems[0].detail


def test_an_edited_detail_is_named(store: Stores, raw: sa.Engine) -> None:
    _mixed_writes(store)
    target = _rows(raw)[3]
    with raw.begin() as conn:
        conn.execute(
            sa.update(events).where(events.c.id == target["id"]).values(detail={"version": "9"})
        )
    assert _kinds(store.audit.verify().problems) == [(4, target["id"], "edited")]


def test_a_removed_record_is_named_by_its_seq(store: Stores, raw: sa.Engine) -> None:
    _mixed_writes(store)
    with raw.begin() as conn:
        conn.execute(sa.delete(events).where(events.c.seq == 3))
    report = store.audit.verify()
    assert report.checked == 4
    assert _kinds(report.problems) == [(3, None, "removed")]
    assert "jumps from seq 2 to seq 4" in report.problems[0].detail


def test_removing_the_first_record_is_noticed(store: Stores, raw: sa.Engine) -> None:
    _mixed_writes(store)
    with raw.begin() as conn:
        conn.execute(sa.delete(events).where(events.c.seq == 1))
    assert _kinds(store.audit.verify().problems) == [(1, None, "removed")]


def test_swapped_contents_are_reported_as_reordered(store: Stores, raw: sa.Engine) -> None:
    _mixed_writes(store)
    rows = _rows(raw)
    content = ("model", "at", "actor", "action", "detail", "reason")
    second, fourth = rows[1], rows[3]
    with raw.begin() as conn:
        for row, other in ((second, fourth), (fourth, second)):
            conn.execute(
                sa.update(events)
                .where(events.c.id == row["id"])
                .values({name: other[name] for name in content})
            )
    report = store.audit.verify()
    assert _kinds(report.problems) == [
        (2, second["id"], "reordered"),
        (4, fourth["id"], "reordered"),
    ]
    assert report.problems[0].detail == "it holds the content written as seq 4"


def test_swapped_chain_positions_are_reported_as_reordered(store: Stores, raw: sa.Engine) -> None:
    _mixed_writes(store)
    rows = _rows(raw)
    second, third = rows[1], rows[2]
    _swap(raw, second["id"], third["id"], ("seq", "prev_hash", "hash"), "seq")
    problems = store.audit.verify().problems
    assert _kinds(problems) == [(2, third["id"], "reordered"), (3, second["id"], "reordered")]


@pytest.mark.parametrize(("first", "second"), [(2, 3), (2, 4)])
def test_swapped_seq_values_are_reported_as_reordered(
    store: Stores, raw: sa.Engine, first: int, second: int
) -> None:
    # The rows keep their hashes and links; only their places in the chain
    # change. The records after them link to hashes that still exist and
    # are not blamed.
    _mixed_writes(store)
    rows = _rows(raw)
    moved_a, moved_b = rows[first - 1], rows[second - 1]
    _swap(raw, moved_a["id"], moved_b["id"], ("seq",), "seq")
    problems = store.audit.verify().problems
    assert _kinds(problems) == [
        (first, moved_b["id"], "reordered"),
        (second, moved_a["id"], "reordered"),
    ]
    assert problems[0].detail == f"it holds the content written as seq {second}"


def test_an_inserted_record_that_shifts_the_rest_is_not_called_reordered(
    store: Stores, raw: sa.Engine
) -> None:
    # A forged record at seq 3 that links to record 2, with 3..5 moved one up:
    # positions shifted along a line, not swapped in a cycle. (Its new id is
    # out of order, which is reported as such.)
    _mixed_writes(store)
    rows = _rows(raw)
    at = datetime(2025, 1, 1, tzinfo=UTC)
    digest = record_hash(3, rows[1]["hash"], "m", at, "x", "version.load", {}, None)
    with raw.begin() as conn:
        for row in reversed(rows[2:]):
            conn.execute(
                sa.update(events).where(events.c.id == row["id"]).values(seq=row["seq"] + 1)
            )
        conn.execute(
            sa.insert(events).values(
                model="m", at=at, actor="x", action="version.load", detail={}, reason=None,
                seq=3, prev_hash=rows[1]["hash"], hash=digest,
            )
        )  # fmt: skip
    problems = store.audit.verify().problems
    assert "inserted" in [p.what for p in problems]
    assert not [p for p in problems if "content written as" in p.detail]


def test_swapped_ids_are_reported_as_reordered(store: Stores, raw: sa.Engine) -> None:
    # history() pages by id: swapping ids reorders what users see, while
    # read in seq order every hash still links up.
    _mixed_writes(store)
    rows = _rows(raw)
    second, third = rows[1], rows[2]
    _swap(raw, second["id"], third["id"], ("id",), "id")
    problems = store.audit.verify().problems
    assert _kinds(problems) == [(2, third["id"], "reordered"), (3, second["id"], "reordered")]
    assert (
        problems[0].detail == f"id {third['id']} sits at seq 2, where id {second['id']} was written"
    )


def _swap(raw: sa.Engine, first: int, second: int, columns: tuple[str, ...], unique: str) -> None:
    """Swap ``columns`` between two rows, parking one on a free value of ``unique`` first."""
    with raw.begin() as conn:
        values = {
            row.id: {name: row._mapping[name] for name in columns}
            for row in conn.execute(sa.select(events).where(events.c.id.in_([first, second])))
        }
        conn.execute(sa.update(events).where(events.c.id == first).values({unique: -1}))
        parked = -1 if unique == "id" else first
        conn.execute(sa.update(events).where(events.c.id == second).values(values[first]))
        conn.execute(sa.update(events).where(events.c.id == parked).values(values[second]))


def test_a_forged_record_is_reported_as_inserted(store: Stores, raw: sa.Engine) -> None:
    _mixed_writes(store)
    at = datetime(2025, 1, 1, tzinfo=UTC)
    forged = {"model": "m", "at": at, "actor": "alice", "action": "traffic.update"}
    detail: dict[str, Any] = {"revision": 3, "policy": POLICY}
    # Its own hash is right; only the link to the chain cannot be.
    digest = record_hash(6, GENESIS_HASH, "m", at, "alice", "traffic.update", detail, None)
    with raw.begin() as conn:
        result = conn.execute(
            sa.insert(events).values(
                **forged, detail=detail, reason=None, seq=6, prev_hash=GENESIS_HASH, hash=digest
            )
        )
        (forged_id,) = result.inserted_primary_key or (None,)
    report = store.audit.verify()
    assert _kinds(report.problems) == [(6, forged_id, "inserted")]
    assert "prev_hash is not the hash of the record before it" in report.problems[0].detail


def test_a_forged_record_with_a_made_up_hash_is_inserted(store: Stores, raw: sa.Engine) -> None:
    _mixed_writes(store)
    with raw.begin() as conn:
        result = conn.execute(
            sa.insert(events).values(
                model="m",
                at=datetime(2025, 1, 1, tzinfo=UTC),
                actor="x",
                action="version.load",
                detail={},
                reason=None,
                seq=6,
                prev_hash="f" * 64,
                hash="e" * 64,
            )
        )
        (forged_id,) = result.inserted_primary_key or (None,)
    assert _kinds(store.audit.verify().problems) == [(6, forged_id, "inserted")]


def test_writes_after_tampering_keep_the_damage_pinned(store: Stores, raw: sa.Engine) -> None:
    _mixed_writes(store)
    with raw.begin() as conn:
        conn.execute(sa.update(events).where(events.c.seq == 2).values(reason="nothing to see"))
    store.audit.record("m", "version.unload", actor="server")
    assert [(p.seq, p.what) for p in store.audit.verify().problems] == [(2, "edited")]


def test_values_that_no_longer_parse_are_edits_not_crashes(tmp_path: Path) -> None:
    # SQLite stores any text in any column; PostgreSQL would refuse these.
    url = Database.sqlite_url(tmp_path)
    with Stores.open(url) as store:
        _mixed_writes(store)
        engine = _raw(url)
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql("UPDATE events SET at = 'last tuesday' WHERE seq = 2")
                conn.exec_driver_sql("UPDATE events SET detail = '{not json' WHERE seq = 4")
        finally:
            engine.dispose()
        assert [(p.seq, p.what) for p in store.audit.verify().problems] == [
            (2, "edited"),
            (4, "edited"),
        ]


# ---------------------------------------------------------------- log injection


def test_control_characters_are_kept_and_cannot_forge_an_export_line(store: Stores) -> None:
    fake = json.dumps({"seq": 99, "actor": "root", "action": "traffic.delete"})
    actor = f"eve\n{fake}"
    reason = "ok\r\n\u2028\x85\x1b[2Kdone"
    model = "m\nx"
    event = store.audit.record(
        model, "version.load", actor=actor, detail={"note": "a\nb"}, reason=reason
    )
    (stored,) = store.audit.history(model)
    assert stored == event
    assert (stored.actor, stored.reason, stored.model) == (actor, reason, model)
    out = io.StringIO()
    assert store.audit.export(out) == 1
    text = out.getvalue()
    assert text.isascii()
    lines = text.splitlines()  # splits on \r, \u2028, \x85 … as well as \n
    assert len(lines) == 1
    (record,) = [json.loads(line) for line in lines]
    assert (record["actor"], record["reason"], record["model"]) == (actor, reason, model)
    assert record["detail"] == {"note": "a\nb"}
    assert store.audit.verify().ok


def test_unpaired_surrogates_are_refused_before_anything_is_written(store: Stores) -> None:
    with pytest.raises(InvalidRequest, match="actor contains an unpaired surrogate"):
        store.audit.record("m", "version.load", actor="eve\ud800")
    with pytest.raises(InvalidRequest, match=r"detail of 'version\.load' contains an unpaired"):
        store.audit.record("m", "version.load", actor="eve", detail={"note": "\udc00"})
    assert store.audit.verify().checked == 0


# ---------------------------------------------------------------- export


def test_the_export_carries_everything_needed_to_recheck_it(store: Stores) -> None:
    _mixed_writes(store)
    history = {event.id: event for event in store.audit.history()}
    previous = GENESIS_HASH
    for record in _export(store):
        event = history[record["id"]]
        at = datetime.fromisoformat(record["at"])
        assert at == event.at
        assert (record["model"], record["actor"], record["action"]) == (
            event.model,
            event.actor,
            event.action,
        )
        assert (record["detail"], record["reason"]) == (event.detail, event.reason)
        assert record["prev_hash"] == previous
        assert record["hash"] == record_hash(
            record["seq"],
            record["prev_hash"],
            record["model"],
            at,
            record["actor"],
            record["action"],
            record["detail"],
            record["reason"],
        )
        previous = record["hash"]


def test_an_export_continues_after_a_seq(store: Stores) -> None:
    _mixed_writes(store)
    everything = _export(store)
    rest = _export(store, since_seq=3)
    assert [r["seq"] for r in rest] == [4, 5]
    assert rest == everything[3:]
    assert rest[0]["prev_hash"] == everything[2]["hash"]
    assert _export(store, since_seq=5) == []


def test_a_negative_since_is_refused(store: Stores) -> None:
    with pytest.raises(InvalidRequest, match="since_seq must be a non-negative integer"):
        store.audit.export(io.StringIO(), -1)


# ---------------------------------------------------------------- concurrency


def test_eight_writers_at_once_leave_one_unforked_chain(store: Stores) -> None:
    writers, each = 8, 10
    start = threading.Barrier(writers)
    failures: list[BaseException] = []

    def write(number: int) -> None:
        try:
            start.wait()
            model = f"model-{number}"
            for step in range(each):
                if step == 0:
                    store.policies.put(model, POLICY, expected_revision=None, actor=model)
                elif step % 2:
                    store.audit.record(model, "version.load", actor=model, detail={"step": step})
                else:
                    store.policies.put(model, POLICY, expected_revision=step // 2, actor=model)
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    report = store.audit.verify()
    assert (report.ok, report.checked) == (True, writers * each)
    records = _export(store)
    assert [r["seq"] for r in records] == list(range(1, writers * each + 1))
    assert [r["id"] for r in records] == sorted(r["id"] for r in records)


# ---------------------------------------------------------------- migration


def test_a_database_from_revision_0001_is_chained_on_upgrade(url: str, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()  # where the sqlite URL points; the store would make it
    engine = _raw(url)
    old_events = sa.table(
        "events",
        sa.column("model", sa.String()),
        sa.column("at", sa.DateTime(timezone=True)),
        sa.column("actor", sa.String()),
        sa.column("action", sa.String()),
        sa.column("detail", sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")),
        sa.column("reason", sa.Text()),
    )
    written = [
        ("a", datetime(2025, 1, 1, 12, 0, 0, 123456), "alice", {"revision": 1, "big": 1e20}, None),
        ("a", datetime(2025, 1, 1, 12, 0, 1), "bob\nroot", {"version": "2"}, "line\nbreak"),
        ("b", datetime(2025, 1, 2), "carol", {}, "why"),
    ]
    try:
        with engine.begin() as conn:
            config = alembic_config()
            config.attributes["connection"] = conn
            command.upgrade(config, "0001")
            for model, at, actor, detail, reason in written:
                # 0001's code wrote naive UTC on SQLite and instants on PostgreSQL.
                stamp = at if conn.dialect.name == "sqlite" else at.replace(tzinfo=UTC)
                conn.execute(
                    sa.insert(old_events).values(
                        model=model,
                        at=stamp,
                        actor=actor,
                        action="traffic.update",
                        detail=detail,
                        reason=reason,
                    )
                )
    finally:
        engine.dispose()
    with Stores.open(url) as store:
        report = store.audit.verify()
        assert (report.ok, report.checked) == (True, 3)
        records = _export(store)
        assert [(r["seq"], r["model"], r["actor"]) for r in records] == [
            (1, "a", "alice"),
            (2, "a", "bob\nroot"),
            (3, "b", "carol"),
        ]
        assert records[0]["at"] == "2025-01-01T12:00:00.123456Z"
        store.audit.record("b", "version.load", actor="server")
        report = store.audit.verify()
        assert (report.ok, report.checked) == (True, 4)
        assert _export(store, since_seq=3)[0]["prev_hash"] == records[2]["hash"]


# ---------------------------------------------------------------- CLI


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "data"
    with Stores.open(Database.sqlite_url(directory)) as store:
        _mixed_writes(store)
    return directory


def _sqlite_engine(data_dir: Path) -> sa.Engine:
    return _raw(Database.sqlite_url(data_dir))


def test_cli_verify_reports_an_intact_chain(data_dir: Path) -> None:
    result = CliRunner().invoke(audit_app, ["verify", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert result.stdout == "5 records, chain intact\n"


def test_cli_is_registered_under_modelport_audit(data_dir: Path) -> None:
    url = Database.sqlite_url(data_dir)
    result = CliRunner().invoke(main_app, ["audit", "verify", "--state-url", url])
    assert result.exit_code == 0, result.output
    assert result.stdout == "5 records, chain intact\n"


def test_cli_defaults_to_the_servers_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Stores.open(Database.sqlite_url(tmp_path / ".modelport")) as store:
        store.audit.record("m", "version.load", actor="server")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(audit_app, ["verify"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "1 records, chain intact\n"


def test_cli_verify_lists_each_problem_and_exits_1(data_dir: Path) -> None:
    engine = _sqlite_engine(data_dir)
    try:
        with engine.begin() as conn:
            conn.execute(sa.update(events).where(events.c.seq == 2).values(actor="mallory"))
            conn.execute(sa.delete(events).where(events.c.seq == 4))
    finally:
        engine.dispose()
    result = CliRunner().invoke(audit_app, ["verify", "--data-dir", str(data_dir)])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["SEQ", "ID", "PROBLEM", "DETAIL"]
    assert lines[2].split()[:3] == ["2", "2", "edited"]
    assert lines[3].split()[:3] == ["4", "-", "removed"] and "no record has seq 4" in lines[3]
    assert lines[4] == "4 records, 2 problems: chain broken"
    as_json = CliRunner().invoke(audit_app, ["verify", "--data-dir", str(data_dir), "--json"])
    assert as_json.exit_code == 1
    report = json.loads(as_json.stdout)
    assert report["ok"] is False and report["checked"] == 4
    assert [(p["seq"], p["id"], p["what"]) for p in report["problems"]] == [
        (2, 2, "edited"),
        (4, None, "removed"),
    ]


def test_cli_verify_calls_two_swapped_records_reordered(data_dir: Path) -> None:
    engine = _sqlite_engine(data_dir)
    try:
        rows = _rows(engine)
        _swap(engine, rows[1]["id"], rows[2]["id"], ("seq",), "seq")
    finally:
        engine.dispose()
    url = Database.sqlite_url(data_dir)
    result = CliRunner().invoke(main_app, ["audit", "verify", "--state-url", url])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[2].split(maxsplit=3) == [
        "2", str(rows[2]["id"]), "reordered", "it holds the content written as seq 3"
    ]  # fmt: skip
    assert lines[3].split(maxsplit=3) == [
        "3", str(rows[1]["id"]), "reordered", "it holds the content written as seq 2"
    ]  # fmt: skip
    assert lines[4:] == ["5 records, 2 problems: chain broken"]


def test_cli_refuses_a_data_directory_without_a_database(tmp_path: Path) -> None:
    result = CliRunner().invoke(audit_app, ["verify", "--data-dir", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert f"no state database at {tmp_path / 'nowhere' / 'state.db'}" in result.stderr
    assert not (tmp_path / "nowhere").exists()


def test_cli_names_an_unusable_state_url() -> None:
    result = CliRunner().invoke(audit_app, ["verify", "--state-url", "mysql://root@db/x"])
    assert result.exit_code == 2
    assert "unsupported database 'mysql'" in result.stderr


def test_cli_exports_to_a_file_from_a_seq(data_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "audit.jsonl"
    args = ["export", "--data-dir", str(data_dir), "--since", "2", "-o", str(target)]
    result = CliRunner().invoke(audit_app, args)
    assert result.exit_code == 0, result.output
    assert result.stderr == f"wrote 3 records to {target}\n"
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["seq"] for r in records] == [3, 4, 5]


def test_cli_exports_to_stdout(data_dir: Path) -> None:
    result = CliRunner().invoke(audit_app, ["export", "--data-dir", str(data_dir), "--json"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5]


def test_cli_export_without_json_is_a_table_of_the_records(data_dir: Path) -> None:
    result = CliRunner().invoke(audit_app, ["export", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    header, _, *rows = result.stdout.splitlines()
    assert header.split()[:5] == ["SEQ", "TIME", "MODEL", "ACTOR", "ACTION"]
    assert [row.split()[0] for row in rows] == ["1", "2", "3", "4", "5"]
    # Not a terminal: times in UTC, ISO 8601 to the second.
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r.split()[1]) for r in rows)
    later = CliRunner().invoke(audit_app, ["export", "--data-dir", str(data_dir), "--since", "5"])
    assert later.stdout == "no audit records after seq 5\n"


def test_cli_refuses_a_negative_since(data_dir: Path) -> None:
    result = CliRunner().invoke(audit_app, ["export", "--data-dir", str(data_dir), "--since", "-1"])
    assert result.exit_code == 2
    assert "--since" in result.stderr
