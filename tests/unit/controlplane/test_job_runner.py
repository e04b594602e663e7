"""JobRunner with a fake execution over a real SQLite store: claims, cancel, restarts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelport.controlplane.jobs import (
    JobOutcome,
    JobRunner,
    JobSettings,
    identity_from,
    identity_json,
)
from modelport.controlplane.store import Database, JobStore, StoredJob
from modelport.types import Identity, Role

ALICE = Identity("key:a", "alice", Role.INVOKER, ("*",), "acme")
FAST = JobSettings(in_flight=2, lease_s=0.3, poll_s=0.01, idle_poll_s=0.02)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    with Database.open(Database.sqlite_url(tmp_path)) as database:
        yield JobStore(database)


class Fake:
    """Executes jobs: each waits for ``release`` and answers its request upper-cased."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started: list[str] = []
        self.running = 0
        self.most = 0

    async def __call__(self, job: StoredJob) -> JobOutcome:
        self.started.append(job.id)
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        assert job.request is not None
        return JobOutcome(200, job.request.upper(), version="1")


async def _submit(runner: JobRunner, body: bytes, key: str | None = None) -> str:
    job = await runner.submit(
        model="m",
        version=None,
        identity=ALICE,
        body=body,
        header_length=None,
        residency=None,
        idempotency_key=key,
    )
    return job.id


async def _until(check: object, within: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)


async def _runs_at_most_in_flight_and_stores_results(store: JobStore) -> None:
    fake = Fake()
    runner = JobRunner(store, fake, FAST)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    ids = [await _submit(runner, f"r{n}".encode()) for n in range(4)]
    await _until(lambda: len(fake.started) == 2)
    await asyncio.sleep(0.05)
    assert fake.most == 2 and store.get(ids[3]).state == "queued"  # type: ignore[union-attr]
    fake.release.set()
    await _until(lambda: all(store.get(i).state == "succeeded" for i in ids))  # type: ignore[union-attr]
    assert store.get(ids[0], result=True).result == b"R0"  # type: ignore[union-attr]
    stop.set()
    await task


async def _cancel_stops_a_running_job_and_keeps_no_result(store: JobStore) -> None:
    fake = Fake()
    runner = JobRunner(store, fake, FAST)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    job_id = await _submit(runner, b"x")
    await _until(lambda: fake.running == 1)
    assert (await runner.cancel(job_id, ALICE)).state == "cancelled"
    await _until(lambda: fake.running == 0)
    fake.release.set()
    stop.set()
    await task
    stored = store.get(job_id, result=True)
    assert stored is not None and stored.state == "cancelled" and stored.result is None


async def _a_dead_workers_job_is_taken_over(store: JobStore) -> None:
    dead = JobRunner(store, Fake(), FAST, worker="dead")
    job_id = await _submit(dead, b"x")
    store.claim("dead", 1, FAST.lease_s)  # claimed, then the worker vanished
    fake = Fake()
    fake.release.set()
    alive = JobRunner(store, fake, FAST, worker="alive")
    stop = asyncio.Event()
    task = asyncio.create_task(alive.run(stop))
    await _until(lambda: store.get(job_id).state == "succeeded")  # type: ignore[union-attr]
    stop.set()
    await task
    assert store.get(job_id).attempts == 2  # type: ignore[union-attr]


async def _stop_hands_running_jobs_back(store: JobStore) -> None:
    fake = Fake()
    runner = JobRunner(store, fake, FAST)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    job_id = await _submit(runner, b"x")
    await _until(lambda: fake.running == 1)
    stop.set()
    await task
    stored = store.get(job_id)
    assert stored is not None and (stored.state, stored.attempts) == ("queued", 0)


async def _another_identity_gets_not_found(store: JobStore) -> None:
    runner = JobRunner(store, Fake(), FAST)
    job_id = await _submit(runner, b"x")
    bob = Identity("key:b", "bob", Role.INVOKER, ("*",))
    with pytest.raises(Exception, match=job_id):
        await runner.get(job_id, bob)
    assert (await runner.get(job_id, ALICE)).id == job_id


def test_identity_round_trips() -> None:
    assert identity_from(identity_json(ALICE)) == ALICE
    assert identity_from(identity_json(None)) is None


def test_runs_at_most_in_flight_and_stores_results(store: JobStore) -> None:
    asyncio.run(_runs_at_most_in_flight_and_stores_results(store))


def test_cancel_stops_a_running_job_and_keeps_no_result(store: JobStore) -> None:
    asyncio.run(_cancel_stops_a_running_job_and_keeps_no_result(store))


def test_a_dead_workers_job_is_taken_over(store: JobStore) -> None:
    asyncio.run(_a_dead_workers_job_is_taken_over(store))


def test_stop_hands_running_jobs_back(store: JobStore) -> None:
    asyncio.run(_stop_hands_running_jobs_back(store))


def test_another_identity_gets_not_found(store: JobStore) -> None:
    asyncio.run(_another_identity_gets_not_found(store))


class CountingStore(JobStore):
    """The real store, counting the runner's looks for work: reads and claims (writes)."""

    claims = 0
    reads = 0

    def claim_in(self, *args: object, **kwargs: object) -> list[StoredJob]:
        CountingStore.claims += 1
        return super().claim_in(*args, **kwargs)  # type: ignore[arg-type]

    def pending(self) -> tuple[bool, bool]:
        CountingStore.reads += 1
        return super().pending()


async def _an_idle_runner_looks_less_often_and_a_submission_wakes_it(tmp_path: Path) -> None:
    settings = JobSettings(in_flight=2, lease_s=5.0, poll_s=0.01, idle_poll_s=0.5)
    with Database.open(Database.sqlite_url(tmp_path)) as database:
        store = CountingStore(database)
        fake = Fake()
        fake.release.set()
        runner = JobRunner(store, fake, settings)
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        CountingStore.claims = CountingStore.reads = 0
        await asyncio.sleep(1.0)
        looks = CountingStore.claims + CountingStore.reads
        # Every 0.01 s would be about 100 looks; doubling up to 0.5 s is about 8.
        assert 3 <= looks <= 12, looks
        # Once a look found nothing, the next ones only read: an idle runner
        # takes no write lock and commits nothing.
        assert CountingStore.claims <= 1, CountingStore.claims
        assert CountingStore.reads >= 2, CountingStore.reads
        started = asyncio.get_running_loop().time()
        job_id = await _submit(runner, b"x")
        await _until(lambda: store.get(job_id).state == "succeeded", within=1.0)  # type: ignore[union-attr]
        # Woken at once, not at the next look (up to 0.5 s away by now).
        assert asyncio.get_running_loop().time() - started < 0.3
        stop.set()
        await task


def test_an_idle_runner_looks_less_often_and_a_submission_wakes_it(tmp_path: Path) -> None:
    asyncio.run(_an_idle_runner_looks_less_often_and_a_submission_wakes_it(tmp_path))
