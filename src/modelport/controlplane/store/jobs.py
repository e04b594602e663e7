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

Times come from the database's clock (``Database.now``), so tests move them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Row, and_, delete, select, update
from sqlalchemy.exc import IntegrityError

from modelport.controlplane.store.database import Database
from modelport.controlplane.store.tables import jobs

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
#: States a job never leaves.
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})


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

    def add(self, job: NewJob) -> tuple[StoredJob, bool]:
        """Store a queued job; with an idempotency key already used by this owner, the
        first job instead. Returns the job and whether it was created now."""
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
        """Delete jobs finished more than ``older_than_s`` seconds ago; how many."""
        cutoff = self._db.now() - timedelta(seconds=older_than_s)
        with self._db.transaction(write=True) as conn:
            done = conn.execute(
                delete(jobs).where(jobs.c.state.in_(TERMINAL), jobs.c.finished_at < cutoff)
            )
        return int(done.rowcount)


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
