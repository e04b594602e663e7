"""Asynchronous inference: jobs queued in the state store, run below synchronous traffic.

A request sent with ``Prefer: respond-async`` is admitted by the transport
and handed to :meth:`JobRunner.submit`, which stores it as a queued job.
Every worker of a node (and every server sharing the store) runs a
:class:`JobRunner`; each claims queued jobs through the store's conditional
UPDATE, so a job runs on one worker at a time, and keeps a bounded number in
flight (``JobSettings.in_flight``) so jobs never crowd out synchronous calls.

A job runs through the same ``Pipeline.infer`` as a synchronous call, at the
lowest priority level of its model, under an internal Call (``Origin.JOB``:
it was admitted, rate limits included, when it was submitted), and its
answer is encoded exactly as the synchronous call's would have been. A
refusal is stored with the HTTP status the synchronous call would have had.

Failure model. A claim is a lease, renewed every ``lease_s / 3`` while the
job runs. A worker killed mid-job (SIGKILL, a crash) stops renewing; once
the lease lapses any runner (the same server after a restart included)
queues the job again, since inference is a pure function of its input. After
``max_attempts`` claims that never finished, the job fails with that reason
instead. A result is stored only by the claim's holder while the job is
still running, so each job ends with one outcome.

A job may name a callback URL (``callbacks.py``: checked against the allow-list
at submission, sent when the job ends, at least once) and may be a batch over
files under ``batch_dir`` (``batch_jobs.py``), run by the same runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from modelport.clock import Clock, SystemClock
from modelport.controlplane.job_writer import JobWriter
from modelport.controlplane.store.jobs import (
    QUEUED,
    BatchState,
    CallbackState,
    JobStore,
    NewBatch,
    NewJob,
    StoredJob,
    Submission,
)
from modelport.controlplane.waiting import wait_any
from modelport.dataplane.codec.json_v2 import decode_request, encode_json, encode_response
from modelport.dataplane.pipeline import Pipeline
from modelport.errors import InvalidRequest, ModelportError, NotFound, internal_error
from modelport.types import Call, Identity, Origin, Role

if TYPE_CHECKING:
    from modelport.controlplane.callbacks import CallbackSender

log = logging.getLogger("modelport.jobs")

#: A priority past every model's levels: the scheduler clamps it to the lowest one.
LOWEST_PRIORITY = 2**31 - 1
#: The protocol label a job's requests are counted under (statistics, metrics).
JOB_PROTOCOL = "http"


@dataclass(frozen=True)
class JobSettings:
    retention_s: float = 86400.0
    """Seconds a finished job is kept before it is purged."""
    in_flight: int = 2
    """Jobs one runner runs at once; the rest wait queued in the store."""
    lease_s: float = 10.0
    """How long a claim lasts without renewal; a dead worker's jobs wait this long."""
    poll_s: float = 0.25
    """How soon a runner looks again for work queued by other workers after finding some."""
    idle_poll_s: float = 2.0
    """The longest it waits between looks once the queue has stayed empty: each empty
    claim doubles the wait from ``poll_s`` up to this, so an idle server does not query
    the store four times a second. Work submitted through this process wakes it at once."""
    max_attempts: int = 3
    """Claims of one job that may end without a result before it fails."""
    purge_every_s: float = 60.0
    """How often finished jobs past their retention are deleted."""


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """What running a job produced: the synchronous call's status and body."""

    status: int
    body: bytes
    header_length: int | None = None
    error: str | None = None
    version: str | None = None


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What a batch job ended with: its summary, or why it failed as a whole."""

    status: int
    body: bytes
    error: str | None = None


class Batches(Protocol):
    """Batch jobs over files (``batch_jobs.BatchRunner``)."""

    def check(
        self,
        identity: Identity | None,
        model: str,
        version: str | None,
        input: str,
        output: str,
        id_column: str | None,
        chunk_rows: int,
    ) -> NewBatch: ...

    async def execute(
        self, job: StoredJob, batch: BatchState, worker: str, identity: Identity | None
    ) -> BatchOutcome: ...


@dataclass(frozen=True, slots=True)
class JobDetails:
    """What the jobs API shows beside a job's state: its callback and batch progress."""

    callback: CallbackState | None
    batch: BatchState | None


class Execute(Protocol):
    """Runs one claimed job to its outcome; never raises but for cancellation."""

    async def __call__(self, job: StoredJob) -> JobOutcome: ...


def owner_of(identity: Identity | None) -> str:
    """The key a job is owned by: the identity's stable id, "" with authentication off."""
    return identity.id if identity is not None else ""


def identity_json(identity: Identity | None) -> str | None:
    if identity is None:
        return None
    return json.dumps(
        {
            "id": identity.id,
            "name": identity.name,
            "role": identity.role.label,
            "models": list(identity.models),
            "tenant": identity.tenant,
        }
    )


def identity_from(text: str | None) -> Identity | None:
    if text is None:
        return None
    data = json.loads(text)
    return Identity(
        data["id"], data["name"], Role[data["role"].upper()], tuple(data["models"]), data["tenant"]
    )


def pipeline_executor(
    pipeline: Pipeline, max_elements: int, status_of: Callable[[ModelportError], int]
) -> Execute:
    """Run a job as the synchronous REST call it came from would have run.

    ``status_of`` is the REST transport's error table, so a failed job keeps
    the status the caller would have seen.
    """

    async def execute(job: StoredJob) -> JobOutcome:
        assert job.request is not None
        try:
            request = decode_request(
                job.request, job.header_length, job.model, job.version, max_elements, None
            )
            request.priority = LOWEST_PRIORITY
            call = Call(Origin.JOB, identity_from(job.identity), request_id=request.id)
            response = await pipeline.infer(request, JOB_PROTOCOL, None, call)
            body, hlen = encode_response(request, response, None)
        except ModelportError as exc:
            status = status_of(exc)
            return JobOutcome(status, encode_json({"error": exc.message}), error=exc.message)
        except Exception as exc:
            log.exception("job failed", extra={"job": job.id, "model": job.model})
            message = internal_error(exc)
            return JobOutcome(500, encode_json({"error": message}), error=message)
        return JobOutcome(200, body, hlen, version=response.model_version)

    return execute


def worker_id() -> str:
    """This runner's claim name: host, process and a random part (pids are reused)."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobRunner:
    """Submits, claims, runs, cancels and purges jobs; the transport's ``JobQueue``."""

    def __init__(
        self,
        store: JobStore,
        execute: Execute,
        settings: JobSettings | None = None,
        *,
        worker: str | None = None,
        clock: Clock | None = None,
        callbacks: CallbackSender | None = None,
        batches: Batches | None = None,
    ) -> None:
        self.store = store
        self.execute = execute
        self.callbacks = callbacks
        self.batches = batches
        self.settings = settings if settings is not None else JobSettings()
        self.worker = worker if worker is not None else worker_id()
        self.clock = clock if clock is not None else SystemClock()
        self.writer = JobWriter(store)
        """Every write of this runner: submissions, claims, results, leases (group commit),
        and its callbacks' claims and outcomes."""
        if callbacks is not None:
            callbacks.writer = self.writer
        self._running: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()

    async def submit(
        self,
        *,
        model: str,
        version: str | None,
        identity: Identity | None,
        body: bytes,
        header_length: int | None,
        residency: str | None,
        idempotency_key: str | None,
        callback_url: str | None = None,
    ) -> StoredJob:
        """Store a queued job (or find the first one with this caller's idempotency key).

        ``callback_url``: where to POST when the job ends; InvalidRequest (400)
        for a host the server's allow-list does not name."""
        callback = self._callback(callback_url)
        job = NewJob(
            uuid.uuid4().hex,
            owner_of(identity),
            identity.tenant if identity is not None else None,
            identity_json(identity),
            idempotency_key,
            model,
            version,
            body,
            header_length,
            residency,
        )
        # Answered once the job is committed (a 202 means it survives a crash), in a
        # transaction shared with whatever else was queued meanwhile.
        stored, created = await self.writer.add(Submission(job, callback))
        if created:
            log.debug("job queued", extra={"job": stored.id, "model": model})
            self._wake.set()
        return stored

    async def submit_batch(
        self,
        *,
        identity: Identity | None,
        model: str,
        version: str | None,
        input: str,
        output: str,
        id_column: str | None,
        chunk_rows: int,
        callback_url: str | None,
        idempotency_key: str | None = None,
    ) -> StoredJob:
        """Store a queued batch job over files under batch_dir, once they are checked.

        With an idempotency key this caller used already, the first job, before
        any check: a retry must not be refused because the first job has
        started writing its output file."""
        if self.batches is None:
            raise InvalidRequest("this server runs no batch jobs (its batch_dir is not set)")
        owner = owner_of(identity)
        if idempotency_key is not None:
            first = await asyncio.to_thread(self.store.by_key, owner, idempotency_key)
            if first is not None:
                return first
        callback = self._callback(callback_url)
        # On the loop: admission reads the model table; the file checks are a few stats.
        batch = self.batches.check(identity, model, version, input, output, id_column, chunk_rows)
        job = NewJob(
            uuid.uuid4().hex,
            owner,
            identity.tenant if identity is not None else None,
            identity_json(identity),
            idempotency_key,
            model,
            version,
            json.dumps(dataclasses.asdict(batch)).encode(),  # for people reading the store
            None,
            None,
        )
        stored, created = await self.writer.add(Submission(job, callback, batch))
        if created:
            log.debug("batch job queued", extra={"job": stored.id, "model": model})
            self._wake.set()
        return stored

    def _callback(self, url: str | None) -> str | None:
        if url is None:
            return None
        if self.callbacks is None:
            raise InvalidRequest(
                "this server sends no job callbacks (its job_callback_hosts is empty)"
            )
        return self.callbacks.policy.check(url).url

    async def details(self, job: StoredJob) -> JobDetails:
        def read() -> JobDetails:
            return JobDetails(self.store.callback_of(job.id), self.store.batch_of(job.id))

        return await asyncio.to_thread(read)

    async def get(
        self, job_id: str, identity: Identity | None, *, result: bool = False
    ) -> StoredJob:
        """The caller's job; NotFound for an id that is not theirs, as for one that never was."""
        job = await asyncio.to_thread(self.store.get, job_id, result=result)
        if job is None or job.owner != owner_of(identity):
            raise NotFound(f"unknown job {job_id!r}")
        return job

    async def list_for(
        self, identity: Identity | None, *, limit: int, offset: int
    ) -> list[StoredJob]:
        return await asyncio.to_thread(
            self.store.list_for, owner_of(identity), limit=limit, offset=offset
        )

    async def cancel(self, job_id: str, identity: Identity | None) -> StoredJob:
        """Cancel the caller's job: a queued one at once; a running one here is stopped
        now, one on another worker when its lease renewal finds it cancelled."""
        owner = owner_of(identity)
        job = await self.writer.write(lambda conn: self.store.cancel_in(conn, job_id, owner))
        if job is None:
            raise NotFound(f"unknown job {job_id!r}")
        task = self._running.get(job_id)
        if task is not None and job.state != QUEUED:
            task.cancel()
        self._ended()
        return job

    def _ended(self) -> None:
        """A job ended here: its callback (if any) is due now, not at the next poll."""
        if self.callbacks is not None:
            self.callbacks.wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and run jobs until ``stop``; then hand the unfinished ones back to the queue."""
        settings = self.settings
        monotonic = self.clock.monotonic_ns
        await self._housekeep(purge=True)
        next_recover = next_purge = monotonic()
        wait_s = settings.poll_s
        handed_back: list[str] = []
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._keep_leases(stop))
                if self.callbacks is not None:
                    group.create_task(self.callbacks.run(stop))
                idle = False
                while not stop.is_set():
                    now = monotonic()
                    free = settings.in_flight - len(self._running)
                    recover = now >= next_recover
                    purge = now >= next_purge
                    # An idle runner reads first and writes only when the read found
                    # work: an idle server's polls take no write lock and commit nothing.
                    queued, lapsed = await self._pending() if idle else (True, True)
                    if recover:
                        if lapsed or purge:
                            await self._housekeep(purge=purge)
                            queued = queued or lapsed
                        next_recover = now + int(settings.lease_s / 2 * 1e9)
                        if purge:
                            next_purge = now + int(settings.purge_every_s * 1e9)
                    if free > 0:
                        claimed = await self._claim(free) if queued else []
                        for job in claimed:
                            self._running[job.id] = group.create_task(self._run_one(job))
                        wait_s = (
                            settings.poll_s
                            if claimed
                            else min(settings.idle_poll_s, max(wait_s, settings.poll_s / 2) * 2)
                        )
                    else:
                        wait_s = settings.poll_s
                    idle = not self._running and wait_s > settings.poll_s
                    self._wake.clear()
                    await wait_any(stop, self._wake, wait_s)
                    if self._wake.is_set():  # work arrived here: look again soon after
                        wait_s = settings.poll_s
                        idle = False
                handed_back = list(self._running)
                for task in self._running.values():
                    task.cancel()
        finally:
            handed_back += list(self._running)
            self._running.clear()
            if handed_back:
                with contextlib.suppress(ModelportError):
                    await asyncio.to_thread(self.store.release, self.worker, handed_back)

    async def _claim(self, free: int) -> list[StoredJob]:
        try:
            lease_s = self.settings.lease_s
            return await self.writer.write(
                lambda conn: self.store.claim_in(conn, self.worker, free, lease_s)
            )
        except ModelportError as exc:  # the store is down: try again on the next turn
            log.warning("cannot claim jobs: %s", exc.message)
            return []

    async def _pending(self) -> tuple[bool, bool]:
        """The store's :meth:`JobStore.pending`; both True when it cannot be read, so the
        writes that follow report the failure as they always have."""
        try:
            return await asyncio.to_thread(self.store.pending)
        except ModelportError:
            return True, True

    async def _housekeep(self, *, purge: bool) -> None:
        """Queue again (or fail) jobs of stopped workers; purge those past retention."""
        try:
            attempts = self.settings.max_attempts
            requeued, failed = await self.writer.write(
                lambda conn: self.store.recover_in(conn, attempts)
            )
            if requeued or failed:
                log.info(
                    "jobs of a stopped worker taken over",
                    extra={"requeued": requeued, "failed": failed},
                )
            if purge:
                retention_s = self.settings.retention_s
                await self.writer.write(lambda conn: self.store.purge_in(conn, retention_s))
        except ModelportError as exc:
            log.warning("job housekeeping failed: %s", exc.message)

    async def _run_one(self, job: StoredJob) -> None:
        try:
            batch = None
            if self.batches is not None:
                batch = await asyncio.to_thread(self.store.batch_of, job.id)
            if self.batches is not None and batch is not None:
                done = await self.batches.execute(
                    job, batch, self.worker, identity_from(job.identity)
                )
                outcome = JobOutcome(done.status, done.body, error=done.error)
            else:
                outcome = await self.execute(job)
            stored = await self.writer.write(
                lambda conn: self.store.finish_in(
                    conn,
                    job.id,
                    self.worker,
                    status=outcome.status,
                    result=outcome.body,
                    result_header_length=outcome.header_length,
                    error=outcome.error,
                    version=outcome.version,
                )
            )
            if not stored:
                log.info("job result dropped: cancelled or taken over", extra={"job": job.id})
            self._ended()
        except ModelportError as exc:  # the store failed: the lease lapses, the job reruns
            log.warning("cannot store a job's result: %s", exc.message, extra={"job": job.id})
        finally:
            self._running.pop(job.id, None)
            self._wake.set()

    async def _keep_leases(self, stop: asyncio.Event) -> None:
        """Renew the leases of running jobs; stop those cancelled or taken over elsewhere."""
        every = self.settings.lease_s / 3
        while not stop.is_set():
            await wait_any(stop, None, every)
            ids = list(self._running)
            if not ids:
                continue
            try:
                renew = functools.partial(
                    self.store.renew_in,
                    worker=self.worker,
                    job_ids=ids,
                    lease_s=self.settings.lease_s,
                )
                held = await self.writer.write(renew)
            except ModelportError as exc:
                log.warning("cannot renew job leases: %s", exc.message)
                continue
            for job_id in ids:
                task = self._running.get(job_id)
                if job_id not in held and task is not None:
                    task.cancel()
