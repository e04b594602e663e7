"""The scheduler of one model version: queue → batch → instance → split.

Event-driven, with no task of its own: ``_pump`` runs whenever something
changes (a request arrives, an instance finishes, a batching delay ends) and
starts as many batches as there are free instances. Instances are threads
(ONNX Runtime releases the GIL); a finished batch comes back to the event
loop as a callback that splits the outputs by rows and answers each caller.

A batch of a small model may compute on the event loop itself instead
("inline"), when the runtime declares it safe and its recent executions were
cheap enough: ``placement.place`` decides, from the costs this scheduler
notes after every execution.

Invariants:

- a request's rows go to exactly one execution and its caller gets exactly
  those rows back (outputs are sliced by each request's row offsets);
- a request past its deadline is answered DeadlineExceeded before compute,
  by a timer, so no request waits longer than its timeout in the queue;
- a caller that goes away (cancelled) is dropped from the queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelport.clock import Clock, SystemClock
from modelport.dataplane.runtime.base import Runtime
from modelport.dataplane.scheduling.batcher import choose_batch
from modelport.dataplane.scheduling.cores import Pinning
from modelport.dataplane.scheduling.placement import (
    UNKNOWN_COST,
    Gathering,
    Placement,
    RecentCosts,
    Traits,
    cost_source,
    inline_enabled,
    place,
)
from modelport.dataplane.scheduling.policy import SchedulingPolicy
from modelport.dataplane.scheduling.queue import LevelQueues, Pending
from modelport.dataplane.scheduling.wakeup import Wakeup
from modelport.errors import (
    DeadlineExceeded,
    InferenceFailed,
    InvalidRequest,
    ModelportError,
    Unavailable,
    first_line,
)
from modelport.types import Array


@dataclass(slots=True)
class Execution:
    """One request's share of a runtime call, with the call's timings (ns)."""

    outputs: dict[str, Array]
    queue_ns: int
    input_ns: int
    infer_ns: int
    output_ns: int
    batch_rows: int


@dataclass(slots=True)
class _Result:
    outputs: dict[str, Array] | None
    error: ModelportError | None
    input_ns: int
    infer_ns: int
    cost_ns: int
    """What the execution cost the thread that ran it (see ``placement.cost_source``)."""


ExecutionRecorder = Callable[[int, int, int, int], None]


class Scheduler:
    """Queues, batches and runs requests for one loaded model version."""

    def __init__(
        self,
        runtime: Runtime,
        policy: SchedulingPolicy,
        instances: int,
        label: str,
        on_execution: ExecutionRecorder | None = None,
        clock: Clock | None = None,
    ) -> None:
        """``clock`` sets deadlines and batching delays and times executions."""
        self.runtime = runtime
        self.policy = policy
        self.instances = instances
        self._label = label
        self._executor = ThreadPoolExecutor(max_workers=instances, thread_name_prefix=label)
        self._threads = instances
        self._retired: list[ThreadPoolExecutor] = []
        self._queues = LevelQueues(len(policy.levels))
        self._free = instances
        self._timers: Clock = clock if clock is not None else SystemClock()
        self._clock = self._timers.monotonic_ns  # bound once: read on every request
        self._on_execution = on_execution
        self._wakeup = Wakeup(self._timers, self._pump)
        self._running = 0
        self._running_rows = 0
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._traits = Traits.of(runtime)
        # Checked first on the hot path, so a version that never runs inline skips
        # the placement calls altogether.
        self._inline = inline_enabled(self._traits, policy)
        self._cpu_cost = cost_source(self._traits)
        self._costs = RecentCosts()
        self._deferred = False
        self._gathering = Gathering()
        self._gathered = False
        """The pending deferred pump ends a wait for more requests (``Gathering``)."""
        self._pinning: Pinning | None = None
        if policy.pin_min_ns > 0 and self._traits.pin_safe:
            self._pinning = Pinning(policy.pin_min_ns, label=label)

    @property
    def queued(self) -> int:
        return len(self._queues)

    @property
    def in_flight(self) -> int:
        """Requests computing on an instance thread now (read by the autoscaler)."""
        return self._in_flight

    def resize(self, instances: int) -> None:
        """Run up to ``instances`` batches at once from now on.

        Instances share the one runtime, as instance_group's count does at
        load, so an instance is a thread and nothing is built. A smaller
        count starts no new batch until fewer than ``instances`` run: the
        batches already computing finish and answer first. A larger one
        than ever before needs more threads: a new pool takes the new
        batches while the old one ends once its batches are answered.
        """
        if instances < 1:
            raise ValueError(f"a scheduler runs at least 1 instance, not {instances}")
        if self._closing or instances == self.instances:
            return
        if instances > self._threads:
            old = self._executor
            self._executor = ThreadPoolExecutor(
                max_workers=instances, thread_name_prefix=self._label
            )
            self._threads = instances
            old.shutdown(wait=False)
            self._retired.append(old)
            if self._pinning is not None:
                asyncio.get_running_loop().run_in_executor(None, self._retire, old)
        self._free += instances - self.instances
        self.instances = instances
        self._pump()

    def _retire(self, old: ThreadPoolExecutor) -> None:
        """Off the loop: once the old pool's threads end, give back the cores they held."""
        old.shutdown(wait=True)
        if self._pinning is not None:
            self._pinning.release_ended()

    def saturated(self) -> bool:
        """Whether any new request would be refused (single priority level, full).

        Lets a transport refuse before reading and decoding a body under overload.
        """
        levels = self.policy.levels
        return len(levels) == 1 and self._queues.waiting[0] >= levels[0].max_queue_size

    def refusal(self, level: int) -> Unavailable:
        size = self.policy.levels[level].max_queue_size
        return Unavailable(f"queue full: {size} requests already wait at this priority; retry")

    # ------------------------------------------------------------ requests

    async def submit(
        self,
        inputs: dict[str, Array],
        outputs: Sequence[str],
        rows: int,
        priority: int = 0,
        timeout_us: int | None = None,
        group: Any = None,
        deadline_ns: int | None = None,
    ) -> Execution:
        """Queue one request and wait for its rows of the result.

        ``deadline_ns`` is the caller's own deadline (the Call's, monotonic):
        the request is refused with DeadlineExceeded if it is still queued
        then, whichever comes first of it and the queue policy's timeout.
        A DELAY policy moves a request past the policy's timeout to the back,
        but still refuses it at the caller's deadline: no one waits after it.
        """
        if self._closing:
            raise Unavailable("this model version is being unloaded; retry")
        policy = self.policy
        level = policy.level_of(priority)
        lp = policy.levels[level]
        if self._queues.waiting[level] >= lp.max_queue_size:
            raise self.refusal(level)
        loop = asyncio.get_running_loop()
        now = self._clock()
        deadline = policy.deadline_ns(level, timeout_us, now)
        expires = None if lp.delay_on_timeout else deadline
        if deadline_ns is not None:
            if expires is None or deadline_ns < expires:
                expires = deadline_ns
            if not lp.delay_on_timeout:
                deadline = expires
        key: Any = None
        if policy.batching:
            key = (group, tuple((n, a.shape[1:], a.dtype.str) for n, a in inputs.items()))
        pending = Pending(
            inputs, rows, key, level, now, deadline, loop.create_future(), tuple(outputs)
        )
        self._queues.push(pending)
        self._idle.clear()
        timer = None
        if expires is not None:
            timer = self._timers.call_at(expires, self._expire, pending)
        costs = self._costs
        # defer_batching(costs, busy), read straight from the costs: asked per request.
        if self._inline and (costs.defer_busy if self._running else costs.defer_idle):
            gathering = self._gathering
            if gathering.tracking:
                gathering.arrived(now)
            if not self._deferred:
                self._deferred = True
                wait = gathering.wait_ns() if costs.defer_busy and not self._running else 0
                if wait:
                    self._gathered = True
                    self._timers.call_at(now + wait, self._deferred_pump)
                else:
                    loop.call_soon(self._deferred_pump)
        else:
            self._pump()
        try:
            result: Execution = await pending.future
        except asyncio.CancelledError:
            self._queues.retire(pending)
            self._check_idle()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        return result

    def _expire(self, p: Pending) -> None:
        if p.done:
            return
        self._queues.retire(p)
        if not p.future.done():
            waited_ms = (self._clock() - p.enqueued_ns) / 1e6
            p.future.set_exception(
                DeadlineExceeded(f"request timed out after waiting {waited_ms:.1f} ms in the queue")
            )
        self._check_idle()

    def _check_idle(self) -> None:
        if self._running == 0 and len(self._queues) == 0:
            self._idle.set()

    # ------------------------------------------------------------ batches

    def _pump(self) -> None:
        """Start batches while an instance is free and something is due.

        While every batch runs on the loop (nothing on an instance, and the
        costs say every batch may), batches are not shared out between
        instances: they would run one after the other on the loop anyway.
        Each is then as large as the loop may take (``RecentCosts.inline_rows``).
        """
        costs = self._costs
        while self._free > 0 and len(self._queues) > 0:
            now = self._clock()
            on_loop = self._inline and not self._running and costs.defer_busy
            decision = choose_batch(
                list(self._queues.live()),
                self.policy,
                now,
                1 if on_loop else self._free,
                self._running_rows,
                self._running,
                costs.inline_rows if on_loop else None,
            )
            if not decision.batch:
                if decision.wake_at_ns is not None:
                    self._wakeup.at(decision.wake_at_ns)
                return
            for p in decision.batch:
                self._queues.retire(p)
            self._free -= 1
            self._launch(decision.batch, now)
        self._queues.sweep()
        self._check_idle()

    def _launch(self, batch: Sequence[Pending], started: int) -> None:
        names = batch[0].outputs
        for p in batch[1:]:
            if p.outputs != names:
                names = tuple(dict.fromkeys((*names, *p.outputs)))
        if (
            self._inline
            and place(
                self._traits,
                self._costs,
                batch,
                not self._running and not len(self._queues),
                self.policy,
            )
            is Placement.LOOP
        ):
            result = self._compute(batch, names)
            self._free += 1
            self._complete(batch, started, result)
            return
        rows = sum(p.rows for p in batch)
        self._running += 1
        self._running_rows += rows
        self._in_flight += len(batch)
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._executor, self._compute_on_instance, batch, names)
        fut.add_done_callback(lambda f: self._finish(batch, rows, started, f))

    def _deferred_pump(self) -> None:
        self._deferred = False
        gathering = self._gathering
        if self._gathered:
            self._gathered = False
            gathering.waited(len(self._queues))
        else:
            gathering.deferred(len(self._queues))
        gathering.tick(self._clock())
        self._pump()

    def _compute_on_instance(self, batch: Sequence[Pending], names: Sequence[str]) -> _Result:
        """Runs on an instance thread (never inline): compute, then maybe pin the thread.

        Pinning goes by the thread's CPU time, not the wall clock: a small model's
        execution can take milliseconds of wall time under load (waiting for the
        GIL or for a core) while computing for microseconds.
        """
        result = self._compute(batch, names)
        if self._pinning is not None and result.error is None:
            self._pinning.after(result.cost_ns)
        return result

    def _compute(self, batch: Sequence[Pending], names: Sequence[str]) -> _Result:
        """Runs on an instance thread: concatenate, predict."""
        clock = self._clock
        t0 = clock()
        if len(batch) == 1:
            feed: Mapping[str, Array] = batch[0].inputs
        else:
            feed = {
                name: np.concatenate([p.inputs[name] for p in batch], axis=0)
                for name in batch[0].inputs
            }
        cpu = self._cpu_cost
        c1 = cpu() if cpu is not None else 0
        t1 = clock()
        out: dict[str, Array] | None = None
        err: ModelportError | None = None
        try:
            out = self.runtime.predict(feed, names)
        except ModelportError as exc:
            err = exc
        except (ValueError, TypeError) as exc:
            err = InvalidRequest(f"model rejected the inputs: {first_line(exc, limit=500)}")
        except Exception as exc:
            err = InferenceFailed(f"model failed: {first_line(exc, limit=500)}")
        infer_ns = clock() - t1
        cost_ns = cpu() - c1 if cpu is not None else infer_ns
        return _Result(out, err, t1 - t0, infer_ns, cost_ns)

    def _finish(
        self, batch: Sequence[Pending], rows: int, started: int, fut: asyncio.Future[_Result]
    ) -> None:
        """On the event loop, when an instance thread is done: answer, then start more."""
        self._free += 1
        self._running -= 1
        self._running_rows -= rows
        self._in_flight -= len(batch)
        try:
            result = fut.result()
        except Exception as exc:  # the executor itself failed
            failed = InferenceFailed(f"model failed: {first_line(exc, limit=500)}")
            result = _Result(None, failed, 0, 0, UNKNOWN_COST)
        self._complete(batch, started, result)
        self._pump()

    def _complete(self, batch: Sequence[Pending], started: int, result: _Result) -> None:
        """Split outputs by rows and answer every caller."""
        t0 = self._clock()
        total_rows = sum(p.rows for p in batch)
        if self._inline:
            self._costs.note(result.cost_ns, total_rows, self.policy)
            if self._gathering.tracking:
                self._gathering.served(total_rows)
        error = result.error
        outputs = result.outputs or {}
        if error is None and len(batch) > 1:
            bad = [n for n, a in outputs.items() if a.ndim == 0 or a.shape[0] != total_rows]
            if bad:
                error = InferenceFailed(
                    f"model returned {bad[0]!r} with a first dimension other than the batch's "
                    f"{total_rows} rows; it cannot batch (set max_batch_size: 0)"
                )
        split_ns = self._clock() - t0
        if self._on_execution is not None:
            self._on_execution(total_rows, result.input_ns, result.infer_ns, split_ns)
        offset = 0
        for p in batch:
            if p.future.done():  # its caller went away meanwhile
                offset += p.rows
                continue
            if error is not None:
                p.future.set_exception(error)
                continue
            if len(batch) == 1:
                mine = outputs
            else:
                mine = {n: a[offset : offset + p.rows] for n, a in outputs.items()}
            offset += p.rows
            p.future.set_result(
                Execution(
                    mine,
                    started - p.enqueued_ns,
                    result.input_ns,
                    result.infer_ns,
                    split_ns,
                    total_rows,
                )
            )

    # ------------------------------------------------------------ lifecycle

    def warm(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> None:
        """Run the runtime once, synchronously, outside the queue (load-time warm-up)."""
        self.runtime.predict(inputs, outputs)

    async def drain_and_close(self) -> None:
        """Refuse new work, let queued and running requests finish, then release."""
        self._closing = True
        await self._idle.wait()
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Release threads and the runtime (callers made sure nothing runs)."""
        self._closing = True
        self._wakeup.cancel()
        self._executor.shutdown(wait=True)
        for old in self._retired:
            old.shutdown(wait=True)
        if self._pinning is not None:
            self._pinning.release()
        self.runtime.unload()
