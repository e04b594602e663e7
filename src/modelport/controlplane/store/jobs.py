"""Asynchronous inference jobs as stored: the request, its claim, its result.

Every state change is one conditional UPDATE, so several workers (or
servers) sharing the database never both own a job:

- ``claim``: ``queued → running`` only ``WHERE state = 'queued'``; the
  claimer's id and a lease end go with it.
- ``renew``: a running worker pushes its leases forward; ``finish`` stores the
  result only ``WHERE state = 'running' AND lease_owner = me``, so a job
  cancelled meanwhile, or taken over after the lease lapsed, keeps the one
  outcome it already has (each result is stored once).
- ``recover``: a running job whose lease lapsed belonged to a worker that
  stopped (killed, crashed): queued again while it has attempts left,
  failed with the reason otherwise.

Two tables hang off a job (migration 0005), each deleted with it when it is
purged: ``job_callbacks``, a callback's delivery, due once its job is
finished and claimed by a sender with a lease like a job's; and
``job_batches``, a batch job's files and the checkpoint written after each
chunk, only by the worker holding the job.

Times come from the database's clock (``Database.now``), so tests move them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    Row,
    String,
    Table,
    Text,
    and_,
    delete,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from modelport.controlplane.store.database import Database
from modelport.controlplane.store.tables import JOB_ID_MAX, UTCDateTime, jobs, metadata

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
#: States a job never leaves.
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})


#: A job's callback delivery (migration 0005).
job_callbacks = Table(
    "job_callbacks",
    metadata,
    Column("job_id", String(JOB_ID_MAX), primary_key=True),
    Column("url", Text(), nullable=False),
    Column("attempts", Integer(), nullable=False),
    Column("next_at", UTCDateTime(), nullable=True),
    Column("lease_until", UTCDateTime(), nullable=True),
    Column("delivered_at", UTCDateTime(), nullable=True),
    Column("abandoned_at", UTCDateTime(), nullable=True),
    Column("last_error", Text(), nullable=True),
)

#: A batch job's files and checkpoint (migration 0005).
job_batches = Table(
    "job_batches",
    metadata,
    Column("job_id", String(JOB_ID_MAX), primary_key=True),
    Column("input", Text(), nullable=False),
    Column("output", Text(), nullable=False),
    Column("id_column", String(256), nullable=True),
    Column("chunk_rows", Integer(), nullable=False),
    Column("rows", Integer(), nullable=False),
    Column("input_offset", BigInteger(), nullable=False),
    Column("output_bytes", BigInteger(), nullable=False),
    Column("succeeded", Integer(), nullable=False),
    Column("failed", Integer(), nullable=False),
    Column("failures", Text(), nullable=False),
)

#: Failures a batch keeps with their row numbers; the rest are counted.
KEPT_FAILURES = 100


@dataclass(frozen=True, slots=True)
class NewBatch:
    """A batch job's files, relative to the server's batch_dir."""

    input: str
    output: str
    id_column: str | None
    chunk_rows: int


@dataclass(frozen=True, slots=True)
class BatchState:
    """A batch job's files and how far it got: the checkpoint of its last chunk."""

    input: str
    output: str
    id_column: str | None
    chunk_rows: int
    rows: int = 0
    """Input rows done (written to the output)."""
    input_offset: int = 0
    output_bytes: int = 0
    succeeded: int = 0
    failed: int = 0
    failures: tuple[tuple[int, str], ...] = ()
    """The first KEPT_FAILURES failed rows: (row number, why)."""


@dataclass(frozen=True, slots=True)
class CallbackState:
    """Where a job's callback delivery stands."""

    url: str
    attempts: int
    delivered_at: datetime | None
    abandoned_at: datetime | None
    last_error: str | None

    @property
    def state(self) -> str:
        if self.delivered_at is not None:
            return "delivered"
        return "abandoned" if self.abandoned_at is not None else "pending"


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job as submitted, before it has an outcome."""

    id: str
    owner: str
    tenant: str | None
    identity: str | None
    """The caller's identity as JSON (None with authentication off)."""
    idempotency_key: str | None
    model: str
    version: str | None
    request: bytes
    header_length: int | None
    residency: str | None


@dataclass(frozen=True, slots=True)
class StoredJob:
    """One job as stored; ``request`` and ``result`` only where the read asked for them."""

    id: str
    owner: str
    tenant: str | None
    identity: str | None
    idempotency_key: str | None
    model: str
    version: str | None
    state: str
    attempts: int
    header_length: int | None
    residency: str | None
    status: int | None
    result_header_length: int | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    request: bytes | None = None
    result: bytes | None = None

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL


_SUMMARY = [c for c in jobs.c if c.name not in ("request", "result")]


class JobStore:
    """Every job submitted and not yet purged."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def now(self) -> datetime:
        return self._db.now()

    def add(
        self, job: NewJob, *, callback_url: str | None = None, batch: NewBatch | None = None
    ) -> tuple[StoredJob, bool]:
        """Store a queued job, with its callback and batch rows; with an idempotency key
        already used by this owner, the first job instead. Returns the job and whether
        it was created now."""
        now = self._db.now()
        values = {
            "id": job.id,
            "owner": job.owner,
            "tenant": job.tenant,
            "identity": job.identity,
            "idempotency_key": job.idempotency_key,
            "model": job.model,
            "version": job.version,
            "state": QUEUED,
            "request": job.request,
            "header_length": job.header_length,
            "residency": job.residency,
            "attempts": 0,
            "created_at": now,
        }
        try:
            with self._db.transaction(write=True) as conn:
                conn.execute(jobs.insert().values(**values))
                if callback_url is not None:
                    conn.execute(
                        job_callbacks.insert().values(job_id=job.id, url=callback_url, attempts=0)
                    )
                if batch is not None:
                    conn.execute(
                        job_batches.insert().values(
                            job_id=job.id,
                            input=batch.input,
                            output=batch.output,
                            id_column=batch.id_column,
                            chunk_rows=batch.chunk_rows,
                            rows=0,
                            input_offset=0,
                            output_bytes=0,
                            succeeded=0,
                            failed=0,
                            failures="[]",
                        )
                    )
        except IntegrityError:
            if job.idempotency_key is None:
                raise
            first = self._by_key(job.owner, job.idempotency_key)
            if first is None:  # purged between the two statements: try once more
                return self.add(job)
            return first, False
        stored = self.get(job.id)
        assert stored is not None
        return stored, True

    def _by_key(self, owner: str, key: str) -> StoredJob | None:
        query = select(*_SUMMARY).where(jobs.c.owner == owner, jobs.c.idempotency_key == key)
        with self._db.transaction() as conn:
            row = conn.execute(query).first()
        return None if row is None else _job(row)

    def get(self, job_id: str, *, result: bool = False) -> StoredJob | None:
        """One job, with its stored result when ``result``."""
        columns = [*_SUMMARY, jobs.c.result] if result else _SUMMARY
        with self._db.transaction() as conn:
            row = conn.execute(select(*columns).where(jobs.c.id == job_id)).first()
        return None if row is None else _job(row)

    def list_for(self, owner: str, *, limit: int, offset: int = 0) -> list[StoredJob]:
        """An owner's jobs, newest first."""
        query = (
            select(*_SUMMARY)
            .where(jobs.c.owner == owner)
            .order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        with self._db.transaction() as conn:
            return [_job(row) for row in conn.execute(query)]

    def claim(self, worker: str, limit: int, lease_s: float) -> list[StoredJob]:
        """Take up to ``limit`` queued jobs, oldest first, for ``worker``; with their requests.

        Each is taken by its own conditional UPDATE: a job another worker took
        between the SELECT and the UPDATE is simply skipped.
        """
        if limit <= 0:
            return []
        now = self._db.now()
        until = now + timedelta(seconds=lease_s)
        taken: list[str] = []
        with self._db.transaction(write=True) as conn:
            ids = conn.execute(
                select(jobs.c.id)
                .where(jobs.c.state == QUEUED)
                .order_by(jobs.c.created_at, jobs.c.id)
                .limit(limit)
            ).scalars()
            for job_id in list(ids):
                done = conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.state == QUEUED)
                    .values(
                        state=RUNNING,
                        lease_owner=worker,
                        lease_until=until,
                        started_at=now,
                        attempts=jobs.c.attempts + 1,
                    )
                )
                if done.rowcount == 1:
                    taken.append(job_id)
            if not taken:
                return []
            rows = conn.execute(
                select(*_SUMMARY, jobs.c.request)
                .where(jobs.c.id.in_(taken))
                .order_by(jobs.c.created_at, jobs.c.id)
            )
            return [_job(cast(Row[Any], row)) for row in rows]

    def renew(self, worker: str, job_ids: list[str], lease_s: float) -> set[str]:
        """Extend ``worker``'s leases; the ids it still holds (not cancelled, not taken over)."""
        if not job_ids:
            return set()
        until = self._db.now() + timedelta(seconds=lease_s)
        held = and_(jobs.c.id.in_(job_ids), jobs.c.state == RUNNING, jobs.c.lease_owner == worker)
        with self._db.transaction(write=True) as conn:
            conn.execute(update(jobs).where(held).values(lease_until=until))
            return set(conn.execute(select(jobs.c.id).where(held)).scalars())

    def finish(
        self,
        job_id: str,
        worker: str,
        *,
        status: int,
        result: bytes,
        result_header_length: int | None = None,
        error: str | None = None,
        version: str | None = None,
    ) -> bool:
        """Store a running job's outcome: succeeded for status 200, failed otherwise.

        False when ``worker`` no longer holds the job (cancelled, or taken over
        after its lease lapsed): the outcome already stored stands.
        """
        values: dict[str, Any] = {
            "state": SUCCEEDED if status == 200 else FAILED,
            "status": status,
            "result": result,
            "result_header_length": result_header_length,
            "error": error,
            "finished_at": self._db.now(),
            "lease_owner": None,
            "lease_until": None,
        }
        if version is not None:
            values["version"] = version
        with self._db.transaction(write=True) as conn:
            done = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.state == RUNNING, jobs.c.lease_owner == worker)
                .values(**values)
            )
            return bool(done.rowcount == 1)

    def cancel(self, job_id: str, owner: str) -> StoredJob | None:
        """Cancel an owner's queued or running job; the job as it now stands (None: not theirs).

        A finished job is returned unchanged.
        """
        now = self._db.now()
        with self._db.transaction(write=True) as conn:
            conn.execute(
                update(jobs)
                .where(
                    jobs.c.id == job_id,
                    jobs.c.owner == owner,
                    jobs.c.state.in_([QUEUED, RUNNING]),
                )
                .values(state=CANCELLED, finished_at=now, lease_owner=None, lease_until=None)
            )
            row = conn.execute(
                select(*_SUMMARY).where(jobs.c.id == job_id, jobs.c.owner == owner)
            ).first()
        return None if row is None else _job(row)

    def release(self, worker: str, job_ids: list[str]) -> int:
        """Queue again the jobs ``worker`` holds and stops running (a graceful stop);
        the interrupted run does not count as an attempt."""
        with self._db.transaction(write=True) as conn:
            done = conn.execute(
                update(jobs)
                .where(
                    jobs.c.id.in_(job_ids), jobs.c.state == RUNNING, jobs.c.lease_owner == worker
                )
                .values(
                    state=QUEUED,
                    lease_owner=None,
                    lease_until=None,
                    started_at=None,
                    attempts=jobs.c.attempts - 1,
                )
            )
        return int(done.rowcount)

    def recover(self, max_attempts: int) -> tuple[int, int]:
        """Jobs whose worker stopped (lease lapsed): queued again, or failed after
        ``max_attempts`` runs. Returns (requeued, failed)."""
        now = self._db.now()
        lapsed = and_(jobs.c.state == RUNNING, jobs.c.lease_until < now)
        with self._db.transaction(write=True) as conn:
            failed = conn.execute(
                update(jobs)
                .where(lapsed, jobs.c.attempts >= max_attempts)
                .values(
                    state=FAILED,
                    status=500,
                    error=(
                        f"the worker running this job stopped {max_attempts} times "
                        "before it finished; it is not run again"
                    ),
                    finished_at=now,
                    lease_owner=None,
                    lease_until=None,
                )
            ).rowcount
            requeued = conn.execute(
                update(jobs)
                .where(lapsed, jobs.c.attempts < max_attempts)
                .values(state=QUEUED, lease_owner=None, lease_until=None, started_at=None)
            ).rowcount
        return int(requeued), int(failed)

    def purge(self, older_than_s: float) -> int:
        """Delete jobs finished more than ``older_than_s`` seconds ago, with their
        callback and batch rows; how many jobs."""
        cutoff = self._db.now() - timedelta(seconds=older_than_s)
        old = and_(jobs.c.state.in_(TERMINAL), jobs.c.finished_at < cutoff)
        with self._db.transaction(write=True) as conn:
            for child in (job_callbacks, job_batches):
                ids = select(jobs.c.id).where(old)
                conn.execute(delete(child).where(child.c.job_id.in_(ids)))
            done = conn.execute(delete(jobs).where(old))
        return int(done.rowcount)

    # Callbacks

    def callback_of(self, job_id: str) -> CallbackState | None:
        with self._db.transaction() as conn:
            row = conn.execute(
                select(job_callbacks).where(job_callbacks.c.job_id == job_id)
            ).first()
        if row is None:
            return None
        v = row._mapping
        return CallbackState(
            v["url"], v["attempts"], v["delivered_at"], v["abandoned_at"], v["last_error"]
        )

    def claim_callbacks(self, limit: int, lease_s: float) -> list[tuple[StoredJob, str, int]]:
        """Take up to ``limit`` due deliveries: the job finished, not delivered nor
        abandoned, its next try due, no live claim. (job, url, attempts so far) each."""
        now = self._db.now()
        cb = job_callbacks.c
        due = and_(
            cb.delivered_at.is_(None),
            cb.abandoned_at.is_(None),
            or_(cb.next_at.is_(None), cb.next_at <= now),
            or_(cb.lease_until.is_(None), cb.lease_until < now),
        )
        taken: list[tuple[StoredJob, str, int]] = []
        with self._db.transaction(write=True) as conn:
            rows = conn.execute(
                select(*_SUMMARY, cb.url, cb.attempts.label("callback_attempts"))
                .join(job_callbacks, cb.job_id == jobs.c.id)
                .where(due, jobs.c.state.in_(TERMINAL))
                .order_by(jobs.c.finished_at)
                .limit(limit)
            ).all()
            until = now + timedelta(seconds=lease_s)
            for row in rows:
                done = conn.execute(
                    update(job_callbacks).where(cb.job_id == row.id, due).values(lease_until=until)
                )
                if done.rowcount == 1:
                    taken.append((_job(cast(Row[Any], row)), row.url, row.callback_attempts))
        return taken

    def callback_done(self, job_id: str, *, error: str | None, retry_at: datetime | None) -> None:
        """Record one try: delivered (``error`` None), to be tried again at ``retry_at``,
        or abandoned (``retry_at`` None)."""
        now = self._db.now()
        values: dict[str, Any] = {
            "attempts": job_callbacks.c.attempts + 1,
            "lease_until": None,
            "last_error": error,
        }
        if error is None:
            values["delivered_at"] = now
        elif retry_at is None:
            values["abandoned_at"] = now
        else:
            values["next_at"] = retry_at
        with self._db.transaction(write=True) as conn:
            conn.execute(
                update(job_callbacks).where(job_callbacks.c.job_id == job_id).values(**values)
            )

    # Batches

    def batch_of(self, job_id: str) -> BatchState | None:
        with self._db.transaction() as conn:
            row = conn.execute(select(job_batches).where(job_batches.c.job_id == job_id)).first()
        if row is None:
            return None
        v = row._mapping
        return BatchState(
            v["input"],
            v["output"],
            v["id_column"],
            v["chunk_rows"],
            v["rows"],
            v["input_offset"],
            v["output_bytes"],
            v["succeeded"],
            v["failed"],
            tuple((int(r), str(m)) for r, m in json.loads(v["failures"])),
        )

    def checkpoint(self, job_id: str, worker: str, state: BatchState) -> bool:
        """Record a batch's progress after a chunk, only while ``worker`` holds the job;
        False when it does not (cancelled, taken over): the worker stops."""
        with self._db.transaction(write=True) as conn:
            held = conn.execute(
                select(jobs.c.id).where(
                    jobs.c.id == job_id, jobs.c.state == RUNNING, jobs.c.lease_owner == worker
                )
            ).first()
            if held is None:
                return False
            conn.execute(
                update(job_batches)
                .where(job_batches.c.job_id == job_id)
                .values(
                    rows=state.rows,
                    input_offset=state.input_offset,
                    output_bytes=state.output_bytes,
                    succeeded=state.succeeded,
                    failed=state.failed,
                    failures=json.dumps([list(f) for f in state.failures[:KEPT_FAILURES]]),
                )
            )
        return True


def _job(row: Row[Any]) -> StoredJob:
    values = row._mapping
    return StoredJob(
        values["id"],
        values["owner"],
        values["tenant"],
        values["identity"],
        values["idempotency_key"],
        values["model"],
        values["version"],
        values["state"],
        values["attempts"],
        values["header_length"],
        values["residency"],
        values["status"],
        values["result_header_length"],
        values["error"],
        values["created_at"],
        values["started_at"],
        values["finished_at"],
        values.get("request"),
        values.get("result"),
    )
