"""Group commit for the job store: every job write of this process, several per transaction.

A submission answered 202 must be durable, so it waits for a commit. With
one transaction per submission, 200 submissions a second and the runner's
claims and results each took SQLite's single write lock from a thread of the
default pool: the threads queued on the lock (SQLite's busy handler sleeps
for up to 100 ms between tries) and fought the event loop for the GIL.

Here every write is queued in memory: a submission as the job to insert,
anything else (claims, results, leases) as an operation on a connection. One
writer thread takes whatever is queued, runs it all in one transaction (the
submissions first, as a single INSERT) and commits once; each caller's
future resolves only after that commit, so an answer never runs ahead of the
data. While a commit is under way new writes gather for the next one: at low
load each write commits alone and at once, under load the batches grow
instead of the wait. The thread takes its next batch as soon as it has
committed, without waiting for the busy event loop to hand it over.

Statements are what a batch pays for, more than rows: SQLite's driver lets
go of the GIL for each one, and getting it back from a busy event loop takes
up to the interpreter's switch interval (5 ms).

One operation that raises rolls the whole batch back; the batch then runs
again one operation per transaction, so only that operation fails. When the
transaction cannot even begin (the database is down, or locked past the busy
timeout) every operation would fail the same way, so all fail at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection

from modelport.controlplane.store.jobs import JobStore, StoredJob, Submission

log = logging.getLogger("modelport.jobs")

T = TypeVar("T")

#: Operations committed together at most; more wait for the next transaction.
MAX_BATCH = 512
#: Seconds an idle writer thread waits for work before it ends (a new one starts).
IDLE_S = 30.0

Operation = Callable[[Connection], Any]


@dataclass(slots=True)
class _Write:
    op: Operation | Submission
    done: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


@dataclass(slots=True)
class _Outcome:
    value: Any = None
    error: BaseException | None = None


class JobWriter:
    """Commits queued writes to a job store in batches, from one thread."""

    def __init__(self, store: JobStore, *, max_batch: int = MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._store = store
        self._max_batch = max_batch
        self._queued: deque[_Write] = deque()
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self.commits = 0
        """Transactions committed so far (for tests and statistics)."""

    async def add(self, submission: Submission) -> tuple[StoredJob, bool]:
        """Store a queued job (``JobStore.add_in``); answered once it is committed."""
        answer: tuple[StoredJob, bool] = await self._queue(submission)
        return answer

    async def write(self, op: Callable[[Connection], T]) -> T:
        """Run ``op`` in a write transaction shared with other queued writes; its result
        once that transaction has committed."""
        value: T = await self._queue(op)
        return value

    def _queue(self, item: Operation | Submission) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        with self._ready:
            self._queued.append(_Write(item, done, loop))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="modelport-job-writer", daemon=True
                )
                self._thread.start()
            self._ready.notify()
        return done

    def _serve(self) -> None:
        """The writer thread: batch after batch until idle for IDLE_S."""
        while True:
            with self._ready:
                if not self._queued and not self._ready.wait_for(lambda: self._queued, IDLE_S):
                    self._thread = None
                    return
                count = min(len(self._queued), self._max_batch)
                batch = [self._queued.popleft() for _ in range(count)]
            outcomes = self._commit([w.op for w in batch])
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Write, _Outcome]]] = {}
            for write, outcome in zip(batch, outcomes, strict=True):
                by_loop.setdefault(write.loop, []).append((write, outcome))
            for loop, settled in by_loop.items():
                # A closed loop raises RuntimeError: nobody waits for those any more.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_settle, settled)

    def _commit(self, ops: list[Operation | Submission]) -> list[_Outcome]:
        """In the writer thread: all of ``ops`` in one transaction, or one by one."""
        begun: list[bool] = []
        try:
            values = self._run(ops, begun)
        except Exception as exc:
            if not begun:
                return [_Outcome(error=exc) for _ in ops]
            if len(ops) == 1:
                return [_Outcome(error=exc)]
            log.debug("a batched job write failed; each write runs alone", exc_info=True)
            return [self._alone(op) for op in ops]
        return [_Outcome(value) for value in values]

    def _alone(self, op: Operation | Submission) -> _Outcome:
        try:
            return _Outcome(self._run([op], [])[0])
        except Exception as exc:
            return _Outcome(error=exc)

    def _run(self, ops: list[Operation | Submission], begun: list[bool]) -> list[Any]:
        """All of ``ops`` in one transaction, submissions first; ``begun`` gets an
        item once the transaction has begun."""
        values: list[Any] = [None] * len(ops)
        adds = [(i, op) for i, op in enumerate(ops) if isinstance(op, Submission)]
        with self._store.write_transaction() as conn:
            begun.append(True)
            if adds:
                added = self._store.add_many_in(conn, [op for _, op in adds])
                for (i, _), answer in zip(adds, added, strict=True):
                    values[i] = answer
            for i, op in enumerate(ops):
                if not isinstance(op, Submission):
                    values[i] = op(conn)
        self.commits += 1
        return values


def _settle(settled: list[tuple[_Write, _Outcome]]) -> None:
    """On the callers' loop: each future gets its write's result (unless cancelled)."""
    for write, outcome in settled:
        if write.done.done():
            continue
        if outcome.error is not None:
            write.done.set_exception(outcome.error)
        else:
            write.done.set_result(outcome.value)
