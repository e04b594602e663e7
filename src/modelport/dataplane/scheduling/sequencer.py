"""The scheduler of one sequence model version: lanes → slots → batches → instances.

The stateful shell around ``sequences.py``'s decisions, event-driven like
``scheduler.Scheduler``: ``_pump`` runs when a request arrives, an instance
finishes or a batching delay ends, and starts a batch on each free instance
that has one due. Each instance is one thread of its own, so "the same
instance" is literally the same thread for every request of a sequence under
the direct strategy.

Invariants:

- a sequence has at most one request in an execution, and its requests run
  in the order they arrived (its lane is a FIFO);
- a request is accepted into a lane only while the sequence is open (after
  its START, before its END), so an unknown, ended or idled-out sequence is
  refused at once rather than queued;
- a request once accepted runs even if its caller goes away, so the
  sequence's state and START/END flags stay consistent for the requests
  after it; its answer is dropped;
- a slot is freed when its sequence ends (its END request ran) or idles
  out, and the oldest sequence in the backlog takes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from modelport.clock import Clock, SystemClock
from modelport.dataplane.runtime.base import Runtime
from modelport.dataplane.scheduling.batcher import choose_batch
from modelport.dataplane.scheduling.queue import Pending
from modelport.dataplane.scheduling.scheduler import Execution
from modelport.dataplane.scheduling.sequences import (
    Lane,
    SequenceSettings,
    Step,
    choose_direct,
    corrid_fits,
    feed_for,
    keep_states,
)
from modelport.dataplane.scheduling.wakeup import Wakeup
from modelport.errors import (
    InferenceFailed,
    InvalidRequest,
    ModelportError,
    Unavailable,
    first_line,
)
from modelport.types import Array

log = logging.getLogger("modelport.sequences")

ExecutionRecorder = Callable[[int, int, int, int], None]


@dataclass(slots=True)
class _Ran:
    outputs: dict[str, Array] | None
    error: ModelportError | None
    input_ns: int
    infer_ns: int


class SequenceScheduler:
    """Runs the requests of a sequence model's sequences, each in order on its slot."""

    def __init__(
        self,
        runtime: Runtime,
        settings: SequenceSettings,
        label: str,
        on_execution: ExecutionRecorder | None = None,
        clock: Clock | None = None,
    ) -> None:
        """``label`` names the instance threads; ``clock`` sets idle timers and batching delays."""
        self.runtime = runtime
        self.settings = settings
        self._state_outputs = tuple(s.output_name for s in settings.states)
        self._executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{label}-i{i}")
            for i in range(settings.instances)
        ]
        self._busy = [False] * settings.instances
        self._lanes: dict[int | str, Lane] = {}
        self._slots: list[Lane | None] = [None] * settings.candidates
        self._backlog: deque[Lane] = deque()
        self._timers: Clock = clock if clock is not None else SystemClock()
        self._clock = self._timers.monotonic_ns
        self._on_execution = on_execution
        self._queued = 0
        self._running = 0
        self._wakeup = Wakeup(self._timers, self._pump)
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        # Slots in the order they are handed out: row 0 of every instance first, so
        # sequences spread over the instances before any instance batches two.
        per = settings.slots_per_instance
        if settings.oldest:
            self._order = list(range(settings.candidates))
        else:
            self._order = [i * per + row for row in range(per) for i in range(settings.instances)]

    # ------------------------------------------------------------ views

    @property
    def active(self) -> int:
        """Sequences holding a slot or waiting for one."""
        return len(self._lanes)

    @property
    def backlog(self) -> int:
        """Sequences waiting for a slot."""
        return len(self._backlog)

    def slot_of(self, sid: int | str) -> int | None:
        """The slot the sequence holds (None: unknown, or in the backlog)."""
        lane = self._lanes.get(sid)
        return lane.slot if lane is not None else None

    def saturated(self) -> bool:
        return self._queued >= self.settings.max_queued

    def refusal(self) -> Unavailable:
        return Unavailable(
            f"queue full: {self.settings.max_queued} sequence requests already wait; retry"
        )

    # ------------------------------------------------------------ requests

    async def submit(
        self,
        sid: int | str,
        start: bool,
        end: bool,
        inputs: dict[str, Array],
        outputs: Sequence[str],
        rows: int,
    ) -> Execution:
        """Queue one request of sequence ``sid`` and wait for its answer.

        Everything up to the wait runs without yielding to the loop, so
        requests that arrive in order (one stream's) are queued in order.
        """
        if self._closing:
            raise Unavailable("this model version is being unloaded; retry")
        settings = self.settings
        if settings.batching and rows != 1:
            raise InvalidRequest(
                f"sequence {sid}: a sequence request holds one row (batch size 1), got {rows}"
            )
        lane = self._lanes.get(sid)
        if not start and (lane is None or not lane.open):
            raise InvalidRequest(
                f"sequence {sid} is not active: no request with sequence_start began it, "
                "or it already ended (sequence_end) or was idle longer than "
                f"{settings.idle_ns // 1000} µs (max_sequence_idle_microseconds)"
            )
        if start:
            why = corrid_fits(sid, settings)
            if why is not None:
                raise InvalidRequest(f"sequence {sid}: {why}")
        if self._queued >= settings.max_queued:
            raise self.refusal()
        now = self._clock()
        loop = asyncio.get_running_loop()
        key = tuple(
            (n, a.shape[1:] if settings.batching else a.shape, a.dtype.str)
            for n, a in inputs.items()
        )
        pending = Pending(inputs, rows, key, 0, now, None, loop.create_future(), tuple(outputs))
        if lane is None:
            lane = Lane(sid, now)
            self._lanes[sid] = lane
            self._seat(lane)
        elif start:
            log.warning(
                "sequence restarted before it ended: its earlier requests run first",
                extra={"sequence_id": str(sid)},
            )
        lane.open = not end
        if lane.idle_timer is not None:
            lane.idle_timer.cancel()
            lane.idle_timer = None
        lane.steps.append(Step(pending, start, end))
        self._queued += 1
        self._idle.clear()
        self._pump()
        result: Execution = await pending.future
        return result

    def _seat(self, lane: Lane) -> None:
        """Give ``lane`` a free slot, or put it in the backlog."""
        slots = self._slots
        for i in self._order:
            if slots[i] is None:
                slots[i] = lane
                lane.slot = i
                return
        self._backlog.append(lane)

    def _retire(self, lane: Lane) -> None:
        """The sequence is over: forget it, free its slot, seat the oldest waiting one."""
        if self._lanes.get(lane.sid) is lane:
            del self._lanes[lane.sid]
        if lane.idle_timer is not None:
            lane.idle_timer.cancel()
            lane.idle_timer = None
        if lane.slot is not None:
            self._slots[lane.slot] = None
            lane.slot = None
        while self._backlog and None in self._slots:
            self._seat(self._backlog.popleft())

    def _idled(self, lane: Lane) -> None:
        lane.idle_timer = None
        if lane.running or lane.steps or self._lanes.get(lane.sid) is not lane:
            return
        log.info("sequence idle: ended", extra={"sequence_id": str(lane.sid)})
        lane.open = False
        self._retire(lane)
        self._pump()

    # ------------------------------------------------------------ batches

    def _pump(self) -> None:
        settings = self.settings
        now = self._clock()
        if settings.oldest:
            self._pump_oldest(now)
        else:
            for instance in range(settings.instances):
                if self._busy[instance]:
                    continue
                decision = choose_direct(self._slots, instance, settings, now)
                if decision.rows:
                    self._launch(instance, decision.rows, now)
                elif decision.wake_at_ns is not None:
                    self._wakeup.at(decision.wake_at_ns)
        self._check_idle()

    def _pump_oldest(self, now: int) -> None:
        while not all(self._busy):
            ready = sorted(
                (lane for lane in self._slots if lane is not None and lane.ready),
                key=lambda lane: lane.since_ns,
            )
            if not ready:
                return
            heads = {lane.steps[0].pending: lane for lane in ready}
            free = self._busy.count(False)
            decision = choose_batch(list(heads), self.settings.policy, now, free)
            if not decision.batch:
                if decision.wake_at_ns is not None:
                    self._wakeup.at(decision.wake_at_ns)
                return
            instance = self._busy.index(False)
            self._launch(instance, tuple(heads[p] for p in decision.batch), now)

    def _launch(self, instance: int, rows: tuple[Lane | None, ...], started: int) -> None:
        names: dict[str, None] = {}
        for lane in rows:
            if lane is not None:
                lane.running = True
                names.update(dict.fromkeys(lane.steps[0].pending.outputs))
        names.update(dict.fromkeys(self._state_outputs))
        self._busy[instance] = True
        self._running += 1
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._executors[instance], self._compute, rows, tuple(names))
        fut.add_done_callback(lambda f: self._finish(instance, rows, started, f))

    def _compute(self, rows: Sequence[Lane | None], names: Sequence[str]) -> _Ran:
        """Runs on the instance's thread: build the feed, predict."""
        clock = self._clock
        t0 = clock()
        out: dict[str, Array] | None = None
        err: ModelportError | None = None
        t1 = t0
        try:
            feed = feed_for(rows, self.settings)
            t1 = clock()
            out = self.runtime.predict(feed, names)
        except ModelportError as exc:
            err = exc
        except (ValueError, TypeError) as exc:
            err = InvalidRequest(f"model rejected the inputs: {first_line(exc, limit=500)}")
        except Exception as exc:
            err = InferenceFailed(f"model failed: {first_line(exc, limit=500)}")
        return _Ran(out, err, t1 - t0, clock() - t1)

    def _finish(
        self,
        instance: int,
        rows: tuple[Lane | None, ...],
        started: int,
        fut: asyncio.Future[_Ran],
    ) -> None:
        """On the event loop: answer each row's caller, move each sequence along."""
        self._busy[instance] = False
        self._running -= 1
        try:
            ran = fut.result()
        except Exception as exc:  # the executor itself failed
            ran = _Ran(None, InferenceFailed(f"model failed: {first_line(exc, limit=500)}"), 0, 0)
        t0 = self._clock()
        error = ran.error
        outputs = ran.outputs or {}
        settings = self.settings
        n = len(rows)
        if error is None and settings.batching:
            bad = [k for k, a in outputs.items() if a.ndim == 0 or a.shape[0] != n]
            if bad:
                error = InferenceFailed(
                    f"model returned {bad[0]!r} with a first dimension other than the batch's "
                    f"{n} rows"
                )
        if error is None and settings.states:
            keep_states(rows, settings, outputs)
        split_ns = self._clock() - t0
        if self._on_execution is not None:
            self._on_execution(n, ran.input_ns, ran.infer_ns, split_ns)
        for i, lane in enumerate(rows):
            if lane is None:
                continue
            step = lane.steps.popleft()
            lane.running = False
            self._queued -= 1
            p = step.pending
            if not p.future.done():
                if error is not None:
                    p.future.set_exception(error)
                else:
                    mine = (
                        {k: outputs[k][i : i + 1] for k in p.outputs}
                        if settings.batching
                        else {k: outputs[k] for k in p.outputs}
                    )
                    p.future.set_result(
                        Execution(
                            mine, started - p.enqueued_ns, ran.input_ns, ran.infer_ns, split_ns, n
                        )
                    )
            if lane.steps:
                continue
            if not lane.open:
                self._retire(lane)
            else:
                lane.idle_timer = self._timers.call_at(
                    self._clock() + settings.idle_ns, self._idled, lane
                )
        self._pump()

    def _check_idle(self) -> None:
        if self._running == 0 and self._queued == 0:
            self._idle.set()

    # ------------------------------------------------------------ lifecycle

    async def drain_and_close(self) -> None:
        """Refuse new requests, let accepted ones finish, then release."""
        self._closing = True
        await self._idle.wait()
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Release timers, threads and the runtime (callers made sure nothing runs)."""
        self._closing = True
        self._wakeup.cancel()
        for lane in list(self._lanes.values()):
            if lane.idle_timer is not None:
                lane.idle_timer.cancel()
        self._lanes.clear()
        for executor in self._executors:
            executor.shutdown(wait=True)
        self.runtime.unload()
