"""JobWriter on SQLite and PostgreSQL: submissions committed together, each answered
once durable, idempotency keys within one batch, one bad write failing alone."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, text

from modelport.controlplane.job_writer import JobWriter
from modelport.controlplane.store import Database, JobStore, NewJob
from modelport.controlplane.store.jobs import StoredJob, Submission


@pytest.fixture
def database(url: str) -> Iterator[Database]:
    with Database.open(url) as opened:
        yield opened


def _job(job_id: str, key: str | None = None, owner: str = "key:a") -> Submission:
    new = NewJob(job_id, owner, None, None, key, "m", None, b'{"inputs": []}', None, None)
    return Submission(new)


async def _add_all(writer: JobWriter, jobs: list[Submission]) -> list[tuple[StoredJob, bool]]:
    """Submit ``jobs`` while the writer is busy with another transaction, so that they
    all wait for the next one, as a burst does under load."""
    gate = threading.Event()
    busy = asyncio.ensure_future(writer.write(lambda conn: gate.wait(5)))
    await asyncio.sleep(0.05)  # the writer thread is inside that transaction now
    adds = [asyncio.ensure_future(writer.add(j)) for j in jobs]
    await asyncio.sleep(0)  # every submission is queued
    gate.set()
    assert await busy
    return list(await asyncio.gather(*adds))


def test_concurrent_submissions_share_transactions_and_are_stored(
    database: Database, url: str
) -> None:
    writer = JobWriter(JobStore(database))
    answers = asyncio.run(_add_all(writer, [_job(f"j{n}") for n in range(40)]))
    assert [(job.id, created) for job, created in answers] == [(f"j{n}", True) for n in range(40)]
    assert writer.commits == 2  # the one that held the writer, then all 40 together
    # Answered only once committed: another connection to the database sees every job.
    with Database.open(url) as other:
        stored = JobStore(other).list_for("key:a", limit=100)
    assert sorted(j.id for j in stored) == sorted(f"j{n}" for n in range(40))
    assert {j.state for j in stored} == {"queued"}


def test_same_idempotency_key_in_one_batch_answers_the_first_job(database: Database) -> None:
    store = JobStore(database)
    writer = JobWriter(store)
    jobs = [_job("first", "k1"), _job("second", "k1"), _job("other", "k1", owner="key:b")]
    answers = asyncio.run(_add_all(writer, jobs))
    assert writer.commits == 2
    assert [(job.id, created) for job, created in answers] == [
        ("first", True),
        ("first", False),
        ("other", True),
    ]
    assert store.get("second") is None
    # A later batch finds the committed first job too.
    later = asyncio.run(_add_all(writer, [_job("third", "k1")]))
    assert [(job.id, created) for job, created in later] == [("first", False)]


def test_a_failing_write_fails_alone(database: Database) -> None:
    store = JobStore(database)
    writer = JobWriter(store)

    def broken(conn: Connection) -> None:
        conn.execute(text("SELECT * FROM no_such_table"))

    async def mixed() -> list[object]:
        return await asyncio.gather(
            writer.add(_job("a")),
            writer.write(broken),
            writer.add(_job("b")),
            return_exceptions=True,
        )

    a, failed, b = asyncio.run(mixed())
    assert isinstance(failed, Exception) and "no_such_table" in str(failed)
    assert isinstance(a, tuple) and isinstance(b, tuple)
    assert store.get("a") is not None and store.get("b") is not None


def test_writes_run_in_order_within_a_batch(database: Database) -> None:
    store = JobStore(database)
    writer = JobWriter(store)

    async def submit_then_claim() -> list[StoredJob]:
        added = writer.add(_job("j"))
        claimed = writer.write(lambda conn: store.claim_in(conn, "w1", 5, 10.0))
        _, jobs = await asyncio.gather(added, claimed)
        return jobs

    assert [j.id for j in asyncio.run(submit_then_claim())] == ["j"]


def test_max_batch_must_be_positive(database: Database) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        JobWriter(JobStore(database), max_batch=0)
