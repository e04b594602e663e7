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

import functools
import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Integer,
    Row,
    String,
    Table,
    Text,
    and_,
    bindparam,
    delete,
    exists,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Dialect

from modelport.controlplane.store.database import Database
from modelport.controlplane.store.tables import JOB_ID_MAX, UTCDateTime, jobs, metadata
from modelport.errors import Conflict

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
class Submission:
    """A job to store, with its callback URL and batch files when it has them."""

    job: NewJob
    callback_url: str | None = None
    batch: NewBatch | None = None


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


#: What :meth:`JobStore.pending` asks, built once: SQLAlchemy keeps a statement's
#: cache key with it, so polling with the same statement skips rebuilding that key.
_PENDING = select(
    exists().where(jobs.c.state == QUEUED),
    exists().where(jobs.c.state == RUNNING, jobs.c.lease_until < bindparam("now")),
)


class JobStore:
    """Every job submitted and not yet purged."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def now(self) -> datetime:
        return self._db.now()

    def write_transaction(self) -> AbstractContextManager[Connection]:
        """One write transaction, for several ``*_in`` operations committed together
        (``job_writer.py``); each public write method is one of them alone."""
        return self._db.transaction(write=True)

    def add(
        self, job: NewJob, *, callback_url: str | None = None, batch: NewBatch | None = None
    ) -> tuple[StoredJob, bool]:
        """Store a queued job in a transaction of its own (see :meth:`add_in`)."""
        with self._db.transaction(write=True) as conn:
            return self.add_in(conn, job, callback_url=callback_url, batch=batch)

    def add_in(
        self,
        conn: Connection,
        job: NewJob,
        *,
        callback_url: str | None = None,
        batch: NewBatch | None = None,
    ) -> tuple[StoredJob, bool]:
        """Store a queued job, with its callback and batch rows; with an idempotency key
        already used by this owner, the first job instead. Returns the job and whether
        it was created now."""
        return self.add_many_in(conn, [Submission(job, callback_url, batch)])[0]

    def add_many_in(
        self, conn: Connection, submissions: list[Submission]
    ) -> list[tuple[StoredJob, bool]]:
        """Store several queued jobs with one INSERT (see :meth:`add_in`), in order.

        One statement for the lot: SQLite's driver lets go of the GIL for every
        statement, and taking it back from a busy event loop costs up to the
        interpreter's switch interval, so statements, not rows, are what a
        batch pays for. Rows whose idempotency key is taken (by a stored job,
        or by an earlier submission of this same list) are skipped by ``ON
        CONFLICT DO NOTHING`` rather than failing the transaction, and answered
        with the job that holds the key.
        """
        if not submissions:
            return []
        now = self._db.now()
        rows = [_row(s.job, now) for s in submissions]
        inserted = _insert_or_skip(conn, rows)
        callbacks = [
            {"job_id": s.job.id, "url": s.callback_url, "attempts": 0}
            for s in submissions
            if s.callback_url is not None and s.job.id in inserted
        ]
        if callbacks:
            conn.execute(job_callbacks.insert(), callbacks)
        batches = [
            _batch_row(s.job.id, s.batch)
            for s in submissions
            if s.batch is not None and s.job.id in inserted
        ]
        if batches:
            conn.execute(job_batches.insert(), batches)
        answers: list[tuple[StoredJob, bool]] = []
        for s in submissions:
            if s.job.id in inserted:
                answers.append((_queued(s.job, now), True))
                continue
            if s.job.idempotency_key is None:
                raise Conflict(f"job id {s.job.id!r} is taken")
            first = self._by_key_in(conn, s.job.owner, s.job.idempotency_key)
            if first is None:  # the first job was purged meanwhile: this one takes the key
                answers.append(self._add_alone(conn, s))
            else:
                answers.append((first, False))
        return answers

    def _add_alone(self, conn: Connection, s: Submission) -> tuple[StoredJob, bool]:
        answer = self.add_many_in(conn, [s])[0]
        if not answer[1]:
            raise Conflict(f"idempotency key {s.job.idempotency_key!r} is in use; try again")
        return answer

    def by_key(self, owner: str, key: str) -> StoredJob | None:
        """The owner's job submitted with idempotency key ``key``, if any."""
        with self._db.transaction() as conn:
            return self._by_key_in(conn, owner, key)

    def _by_key_in(self, conn: Connection, owner: str, key: str) -> StoredJob | None:
        query = select(*_SUMMARY).where(jobs.c.owner == owner, jobs.c.idempotency_key == key)
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
        """:meth:`claim_in` in a transaction of its own."""
        with self._db.transaction(write=True) as conn:
            return self.claim_in(conn, worker, limit, lease_s)

    def claim_in(
        self, conn: Connection, worker: str, limit: int, lease_s: float
    ) -> list[StoredJob]:
        """Take up to ``limit`` queued jobs, oldest first, for ``worker``; with their requests.

        One conditional UPDATE over the oldest queued ids: a job another worker
        took meanwhile no longer matches ``state = 'queued'`` and is skipped.
        """
        if limit <= 0:
            return []
        now = self._db.now()
        oldest = (
            select(jobs.c.id)
            .where(jobs.c.state == QUEUED)
            .order_by(jobs.c.created_at, jobs.c.id)
            .limit(limit)
        )
        taken = conn.execute(
            update(jobs)
            .where(jobs.c.id.in_(oldest), jobs.c.state == QUEUED)
            .values(
                state=RUNNING,
                lease_owner=worker,
                lease_until=now + timedelta(seconds=lease_s),
                started_at=now,
                attempts=jobs.c.attempts + 1,
            )
            .returning(*_SUMMARY, jobs.c.request)
        )
        claimed = [_job(row) for row in taken]
        claimed.sort(key=lambda j: (j.created_at, j.id))
        return claimed

    def renew(self, worker: str, job_ids: list[str], lease_s: float) -> set[str]:
        """:meth:`renew_in` in a transaction of its own."""
        with self._db.transaction(write=True) as conn:
            return self.renew_in(conn, worker, job_ids, lease_s)

    def renew_in(
        self, conn: Connection, worker: str, job_ids: list[str], lease_s: float
    ) -> set[str]:
        """Extend ``worker``'s leases; the ids it still holds (not cancelled, not taken over)."""
        if not job_ids:
            return set()
        until = self._db.now() + timedelta(seconds=lease_s)
        held = and_(jobs.c.id.in_(job_ids), jobs.c.state == RUNNING, jobs.c.lease_owner == worker)
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
        """:meth:`finish_in` in a transaction of its own."""
        with self._db.transaction(write=True) as conn:
            return self.finish_in(
                conn,
                job_id,
                worker,
                status=status,
                result=result,
                result_header_length=result_header_length,
                error=error,
                version=version,
            )

    def finish_in(
        self,
        conn: Connection,
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
        done = conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.state == RUNNING, jobs.c.lease_owner == worker)
            .values(**values)
        )
        return bool(done.rowcount == 1)

    def cancel(self, job_id: str, owner: str) -> StoredJob | None:
        """:meth:`cancel_in` in a transaction of its own."""
        with self._db.transaction(write=True) as conn:
            return self.cancel_in(conn, job_id, owner)

    def cancel_in(self, conn: Connection, job_id: str, owner: str) -> StoredJob | None:
        """Cancel an owner's queued or running job; the job as it now stands (None: not theirs).

        A finished job is returned unchanged.
        """
        now = self._db.now()
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
        """:meth:`release_in` in a transaction of its own."""
        with self._db.transaction(write=True) as conn:
            return self.release_in(conn, worker, job_ids)

    def release_in(self, conn: Connection, worker: str, job_ids: list[str]) -> int:
        """Queue again the jobs ``worker`` holds and stops running (a graceful stop);
        the interrupted run does not count as an attempt."""
        done = conn.execute(
            update(jobs)
            .where(jobs.c.id.in_(job_ids), jobs.c.state == RUNNING, jobs.c.lease_owner == worker)
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
        """:meth:`recover_in` in a transaction of its own."""
        with self._db.transaction(write=True) as conn:
            return self.recover_in(conn, max_attempts)

    def pending(self) -> tuple[bool, bool]:
        """Whether a job waits to be claimed, and whether a running job's lease lapsed.

        One read, without the write lock: an idle runner looks here and takes
        the write lock (a claim or a recovery, a commit each) only when this
        says there is something to take.
        """
        with self._db.transaction() as conn:
            row = conn.execute(_PENDING, {"now": self._db.now()}).one()
        return bool(row[0]), bool(row[1])

    def recover_in(self, conn: Connection, max_attempts: int) -> tuple[int, int]:
        """Jobs whose worker stopped (lease lapsed): queued again, or failed after
        ``max_attempts`` runs. Returns (requeued, failed)."""
        now = self._db.now()
        lapsed = and_(jobs.c.state == RUNNING, jobs.c.lease_until < now)
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
        """:meth:`purge_in` in a transaction of its own."""
        with self._db.transaction(write=True) as conn:
            return self.purge_in(conn, older_than_s)

    def purge_in(self, conn: Connection, older_than_s: float) -> int:
        """Delete jobs finished more than ``older_than_s`` seconds ago, with their
        callback and batch rows; how many jobs."""
        cutoff = self._db.now() - timedelta(seconds=older_than_s)
        old = and_(jobs.c.state.in_(TERMINAL), jobs.c.finished_at < cutoff)
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
        """:meth:`claim_callbacks_in` in a transaction of its own."""
        with self._db.transaction(write=True) as conn:
            return self.claim_callbacks_in(conn, limit, lease_s)

    def claim_callbacks_in(
        self, conn: Connection, limit: int, lease_s: float
    ) -> list[tuple[StoredJob, str, int]]:
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
        """:meth:`callback_done_in` in a transaction of its own."""
        with self._db.transaction(write=True) as conn:
            self.callback_done_in(conn, job_id, error=error, retry_at=retry_at)

    def callback_done_in(
        self, conn: Connection, job_id: str, *, error: str | None, retry_at: datetime | None
    ) -> None:
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
        conn.execute(update(job_callbacks).where(job_callbacks.c.job_id == job_id).values(**values))

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
        """:meth:`checkpoint_in` in a transaction of its own."""
        with self._db.transaction(write=True) as conn:
            return self.checkpoint_in(conn, job_id, worker, state)

    def checkpoint_in(self, conn: Connection, job_id: str, worker: str, state: BatchState) -> bool:
        """Record a batch's progress after a chunk, only while ``worker`` holds the job;
        False when it does not (cancelled, taken over): the worker stops."""
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


def _row(job: NewJob, now: datetime) -> dict[str, Any]:
    return {
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


def _batch_row(job_id: str, batch: NewBatch) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "input": batch.input,
        "output": batch.output,
        "id_column": batch.id_column,
        "chunk_rows": batch.chunk_rows,
        "rows": 0,
        "input_offset": 0,
        "output_bytes": 0,
        "succeeded": 0,
        "failed": 0,
        "failures": "[]",
    }


def _queued(job: NewJob, now: datetime) -> StoredJob:
    """A job just inserted, as a read would return it."""
    return StoredJob(
        job.id,
        job.owner,
        job.tenant,
        job.identity,
        job.idempotency_key,
        job.model,
        job.version,
        QUEUED,
        0,
        job.header_length,
        job.residency,
        None,
        None,
        None,
        now,
        None,
        None,
    )


#: The columns a submission fills, in the order of the INSERT's values.
_INSERTED = (
    "id",
    "owner",
    "tenant",
    "identity",
    "idempotency_key",
    "model",
    "version",
    "state",
    "request",
    "header_length",
    "residency",
    "attempts",
    "created_at",
)


@functools.cache
def _insert_sql(dialect: str, rows: int) -> str:
    """``INSERT ... VALUES (...), (...) ON CONFLICT DO NOTHING`` for ``rows`` rows.

    Written out once per row count rather than compiled by SQLAlchemy on each
    batch: the writer thread gets the GIL in slices (the event loop holds it
    under load), and compiling hundreds of bind parameters took most of them.
    """
    mark = "?" if dialect == "sqlite" else "%s"
    row = "(" + ", ".join([mark] * len(_INSERTED)) + ")"
    sql = (
        f"INSERT INTO {jobs.name} ({', '.join(_INSERTED)}) VALUES "
        + ", ".join([row] * rows)
        + " ON CONFLICT DO NOTHING"
    )
    return sql + " RETURNING id" if dialect == "postgresql" else sql


def _binders(dialect: Dialect) -> list[Callable[[Any], Any] | None]:
    """Each inserted column's bind processor (UTC datetimes, bytes) for ``dialect``."""
    found = _BINDERS.get(dialect.name)
    if found is None:
        found = [jobs.c[name].type.bind_processor(dialect) for name in _INSERTED]
        _BINDERS[dialect.name] = found
    return found


_BINDERS: dict[str, list[Callable[[Any], Any] | None]] = {}


def _insert_or_skip(conn: Connection, rows: list[dict[str, Any]]) -> set[str]:
    """Insert job rows in one statement, skipping those whose unique key is taken;
    the ids inserted.

    PostgreSQL says which through RETURNING (psycopg's rowcount is -1 here).
    SQLite's rowcount is exact, and RETURNING would cost a step (a GIL
    round trip) per row, so only a short count asks which rows went in."""
    dialect = conn.dialect
    binders = _binders(dialect)
    params: list[Any] = []
    for row in rows:
        for name, bind in zip(_INSERTED, binders, strict=True):
            value = row[name]
            params.append(bind(value) if bind is not None and value is not None else value)
    result = conn.exec_driver_sql(_insert_sql(dialect.name, len(rows)), tuple(params))
    if dialect.name == "postgresql":
        return set(result.scalars())
    ids = [r["id"] for r in rows]
    if result.rowcount == len(rows):
        return set(ids)
    return set(conn.execute(select(jobs.c.id).where(jobs.c.id.in_(ids))).scalars())


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
