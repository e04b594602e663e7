"""JobStore on SQLite and PostgreSQL: claims, leases, outcomes stored once, purge."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from modelport.controlplane.store import Database, JobStore, NewJob


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def jobs(url: str, clock: Clock) -> Iterator[JobStore]:
    with Database.open(url, clock=clock) as database:
        yield JobStore(database)


def _new(job_id: str, owner: str = "key:a", key: str | None = None) -> NewJob:
    return NewJob(job_id, owner, None, None, key, "m", None, b'{"inputs": []}', None, None)


def test_claims_each_queued_job_once_oldest_first(jobs: JobStore, clock: Clock) -> None:
    for n in range(3):
        jobs.add(_new(f"j{n}"))
        clock.advance(1)
    first = jobs.claim("w1", 2, 10)
    second = jobs.claim("w2", 5, 10)
    assert [j.id for j in first] == ["j0", "j1"]
    assert [j.id for j in second] == ["j2"]
    assert first[0].request == b'{"inputs": []}'
    assert first[0].state == "running" and first[0].attempts == 1
    assert jobs.claim("w3", 5, 10) == []


def test_result_is_stored_once_by_the_holder_only(jobs: JobStore) -> None:
    jobs.add(_new("j"))
    jobs.claim("w1", 1, 10)
    assert not jobs.finish("j", "w2", status=200, result=b"other")
    assert jobs.finish("j", "w1", status=200, result=b"answer", version="1")
    assert not jobs.finish("j", "w1", status=500, result=b"again")
    stored = jobs.get("j", result=True)
    assert stored is not None
    assert (stored.state, stored.result, stored.version) == ("succeeded", b"answer", "1")


def test_cancelled_running_job_keeps_no_result(jobs: JobStore) -> None:
    jobs.add(_new("j"))
    jobs.claim("w1", 1, 10)
    cancelled = jobs.cancel("j", "key:a")
    assert cancelled is not None and cancelled.state == "cancelled"
    assert jobs.renew("w1", ["j"], 10) == set()
    assert not jobs.finish("j", "w1", status=200, result=b"late")
    assert jobs.get("j", result=True).result is None  # type: ignore[union-attr]


def test_cancel_by_another_owner_finds_nothing(jobs: JobStore) -> None:
    jobs.add(_new("j"))
    assert jobs.cancel("j", "key:b") is None
    assert jobs.get("j").state == "queued"  # type: ignore[union-attr]


def test_lapsed_lease_requeued_then_failed_after_max_attempts(jobs: JobStore, clock: Clock) -> None:
    jobs.add(_new("j"))
    jobs.claim("dead", 1, 10)
    clock.advance(5)
    assert jobs.recover(2) == (0, 0)  # lease still running
    clock.advance(6)
    assert jobs.recover(2) == (1, 0)
    assert [j.id for j in jobs.claim("w2", 1, 10)] == ["j"]
    assert not jobs.finish("j", "dead", status=200, result=b"x")
    clock.advance(11)
    assert jobs.recover(2) == (0, 1)
    failed = jobs.get("j")
    assert failed is not None and failed.state == "failed" and failed.status == 500
    assert "stopped 2 times" in (failed.error or "")


def test_pending_says_whether_a_claim_or_a_recovery_would_find_work(
    jobs: JobStore, clock: Clock
) -> None:
    assert jobs.pending() == (False, False)
    jobs.add(_new("j"))
    assert jobs.pending() == (True, False)
    jobs.claim("w1", 1, 10)
    assert jobs.pending() == (False, False)
    clock.advance(11)
    assert jobs.pending() == (False, True)
    assert jobs.recover(3) == (1, 0)
    assert jobs.pending() == (True, False)


def test_renew_keeps_a_live_claim(jobs: JobStore, clock: Clock) -> None:
    jobs.add(_new("j"))
    jobs.claim("w1", 1, 10)
    clock.advance(8)
    assert jobs.renew("w1", ["j"], 10) == {"j"}
    clock.advance(8)
    assert jobs.recover(3) == (0, 0)


def test_idempotency_key_returns_the_first_job(jobs: JobStore) -> None:
    first, created = jobs.add(_new("j1", key="k"))
    again, created_again = jobs.add(_new("j2", key="k"))
    other, other_created = jobs.add(_new("j3", owner="key:b", key="k"))
    assert created and not created_again and other_created
    assert again.id == first.id == "j1"
    assert other.id == "j3"


def test_list_newest_first_paged_per_owner(jobs: JobStore, clock: Clock) -> None:
    for n in range(3):
        jobs.add(_new(f"j{n}"))
        clock.advance(1)
    jobs.add(_new("theirs", owner="key:b"))
    assert [j.id for j in jobs.list_for("key:a", limit=2)] == ["j2", "j1"]
    assert [j.id for j in jobs.list_for("key:a", limit=2, offset=2)] == ["j0"]


def test_purge_removes_only_old_finished_jobs(jobs: JobStore, clock: Clock) -> None:
    jobs.add(_new("done"))
    jobs.add(_new("waiting"))
    jobs.cancel("done", "key:a")
    clock.advance(100)
    assert jobs.purge(200) == 0
    clock.advance(101)
    assert jobs.purge(200) == 1
    assert jobs.get("done") is None and jobs.get("waiting") is not None


def test_release_hands_a_job_back_without_counting_the_run(jobs: JobStore) -> None:
    jobs.add(_new("j"))
    jobs.claim("w1", 1, 10)
    assert jobs.release("w2", ["j"]) == 0
    assert jobs.release("w1", ["j"]) == 1
    again = jobs.claim("w2", 1, 10)
    assert [(j.id, j.attempts) for j in again] == [("j", 1)]
