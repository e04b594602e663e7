"""The scheduler with a fake runtime: correctness first, then admission rules.

A runtime that blocks on a threading.Event holds the only instance busy, so
queue states are set up exactly, with no timing guesses; deadlines and
batching delays run on a fake clock that moves only when a test advances it.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from modelport.config.model import parse_model_config
from modelport.dataplane.scheduling.placement import GATHER_MAX_NS
from modelport.dataplane.scheduling.policy import scheduling_policy
from modelport.dataplane.scheduling.scheduler import Scheduler
from modelport.errors import DeadlineExceeded, InferenceFailed, Unavailable
from modelport.types import ModelSignature, TensorSpec
from tests.fake_clock import FakeClock


class Doubler:
    """y = 2x; records each batch's first column so tests see who ran when."""

    native = ModelSignature(
        (TensorSpec("x", "FP32", (-1, 2)),), (TensorSpec("y", "FP32", (-1, 2)),)
    )
    inline_safe = False
    pin_safe = False

    def __init__(self, gate: threading.Event | None = None, broken: bool = False) -> None:
        self.gate = gate
        self.batches: list[list[float]] = []
        self.broken = broken
        self.entered = threading.Event()

    def predict(self, inputs: Mapping[str, Any], outputs: Sequence[str]) -> dict[str, Any]:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        x = inputs["x"]
        self.batches.append(x[:, 0].tolist())
        if self.broken:
            return {"y": (2 * x)[:1]}
        return {"y": 2 * x}

    def unload(self) -> None:
        pass


def make(
    runtime: Doubler, instances: int = 1, clock: FakeClock | None = None, **config: Any
) -> Scheduler:
    cfg = parse_model_config({"max_batch_size": 16, **config}, "t")
    return Scheduler(runtime, scheduling_policy(cfg, None), instances, "t", clock=clock)


def rows(start: float, n: int) -> np.ndarray[Any, Any]:
    return np.stack([np.arange(start, start + n), np.full(n, -start)], axis=1).astype(np.float32)


async def wait_entered(runtime: Doubler) -> None:
    await asyncio.to_thread(runtime.entered.wait, 10)


def test_parallel_callers_get_exactly_their_rows() -> None:
    runtime = Doubler()
    sched = make(runtime, instances=2)
    rng = random.Random(7)

    async def caller(i: int) -> None:
        n = rng.randint(1, 4)
        x = rows(i * 10, n)
        ex = await sched.submit({"x": x}, ["y"], n)
        assert ex.outputs["y"].shape == (n, 2)
        np.testing.assert_array_equal(ex.outputs["y"], 2 * x)

    async def scenario() -> None:
        await asyncio.gather(*(caller(i) for i in range(250)))

    asyncio.run(scenario())
    assert sum(len(b) for b in runtime.batches) >= 250
    assert len(runtime.batches) < 250  # requests were batched together
    assert max(len(b) for b in runtime.batches) <= 16
    sched.close()


def test_different_inner_shapes_or_groups_never_mix() -> None:
    gate = threading.Event()
    runtime = Doubler(gate)
    sched = make(runtime)

    async def scenario() -> list[Any]:
        first = asyncio.ensure_future(sched.submit({"x": rows(0, 1)}, ["y"], 1))
        await wait_entered(runtime)
        rest = [
            asyncio.ensure_future(sched.submit({"x": rows(1, 1)}, ["y"], 1, group="a")),
            asyncio.ensure_future(sched.submit({"x": rows(2, 1)}, ["y"], 1, group="b")),
            asyncio.ensure_future(sched.submit({"x": rows(3, 1)}, ["y"], 1, group="a")),
            asyncio.ensure_future(sched.submit({"x": np.ones((1, 3), np.float32)}, ["y"], 1)),
        ]
        await asyncio.sleep(0)
        gate.set()
        await first
        return await asyncio.gather(*rest)

    results = asyncio.run(scenario())
    assert [r.outputs["y"][0, 0] for r in results] == [2, 4, 6, 2]
    assert results[3].outputs["y"].shape == (1, 3)
    assert runtime.batches[1:] == [[1.0, 3.0], [2.0], [1.0]]


def test_full_queue_is_refused_at_once() -> None:
    gate = threading.Event()
    runtime = Doubler(gate)
    sched = make(runtime, dynamic_batching={"default_queue_policy": {"max_queue_size": 2}})

    async def scenario() -> None:
        first = asyncio.ensure_future(sched.submit({"x": rows(0, 16)}, ["y"], 16))
        await wait_entered(runtime)
        queued = [asyncio.ensure_future(sched.submit({"x": rows(1, 16)}, ["y"], 16)) for _ in "ab"]
        await asyncio.sleep(0)
        with pytest.raises(Unavailable, match="queue full"):
            await sched.submit({"x": rows(2, 1)}, ["y"], 1)
        gate.set()
        await asyncio.gather(first, *queued)

    asyncio.run(scenario())


def test_deadline_drops_a_queued_request_before_compute() -> None:
    gate = threading.Event()
    runtime = Doubler(gate)
    clock = FakeClock()
    sched = make(runtime, clock=clock)

    async def scenario() -> None:
        first = asyncio.ensure_future(sched.submit({"x": rows(0, 16)}, ["y"], 16))
        await wait_entered(runtime)
        late = asyncio.ensure_future(sched.submit({"x": rows(5, 1)}, ["y"], 1, timeout_us=1000))
        await asyncio.sleep(0)
        clock.advance(999_999)
        await asyncio.sleep(0)
        assert not late.done()
        assert sched.queued == 1
        clock.advance(1)
        with pytest.raises(DeadlineExceeded, match=r"after waiting 1\.0 ms in the queue"):
            await late
        assert sched.queued == 0
        gate.set()
        await first

    asyncio.run(scenario())
    assert [5.0] not in runtime.batches


def test_an_answered_request_leaves_no_deadline_timer_behind() -> None:
    runtime = Doubler()
    clock = FakeClock()
    sched = make(runtime, clock=clock)

    async def scenario() -> None:
        await sched.submit({"x": rows(0, 1)}, ["y"], 1, timeout_us=1000)

    asyncio.run(scenario())
    assert clock.pending == 0
    clock.advance(10_000_000)  # the deadline passes after the answer: nothing happens
    sched.close()


def test_a_batch_waits_for_more_requests_until_the_queue_delay_ends() -> None:
    runtime = Doubler()
    clock = FakeClock()
    sched = make(runtime, clock=clock, dynamic_batching={"max_queue_delay_microseconds": 100})

    async def scenario() -> None:
        first = asyncio.ensure_future(sched.submit({"x": rows(0, 1)}, ["y"], 1))
        await asyncio.sleep(0)
        clock.advance(60_000)
        second = asyncio.ensure_future(sched.submit({"x": rows(1, 1)}, ["y"], 1))
        await asyncio.sleep(0)
        assert runtime.batches == []  # 60 µs of 100: still collecting
        clock.advance(40_000)
        await asyncio.gather(first, second)

    asyncio.run(scenario())
    assert runtime.batches == [[0.0, 1.0]]
    sched.close()


def test_cancelled_callers_are_dropped_from_the_queue() -> None:
    gate = threading.Event()
    runtime = Doubler(gate)
    sched = make(runtime)

    async def scenario() -> None:
        first = asyncio.ensure_future(sched.submit({"x": rows(0, 16)}, ["y"], 16))
        await wait_entered(runtime)
        gone = asyncio.ensure_future(sched.submit({"x": rows(7, 1)}, ["y"], 1))
        stays = asyncio.ensure_future(sched.submit({"x": rows(8, 1)}, ["y"], 1))
        await asyncio.sleep(0)
        assert sched.queued == 2
        gone.cancel()
        await asyncio.sleep(0)
        assert sched.queued == 1
        gate.set()
        await first
        assert (await stays).outputs["y"][0, 0] == 16

    asyncio.run(scenario())
    assert runtime.batches[-1] == [8.0]


def test_higher_priority_runs_first() -> None:
    gate = threading.Event()
    runtime = Doubler(gate)
    sched = make(
        runtime,
        max_batch_size=0,
        dynamic_batching={"priority_levels": 2, "default_priority_level": 2},
    )

    async def scenario() -> None:
        first = asyncio.ensure_future(sched.submit({"x": rows(0, 1)}, ["y"], 1))
        await wait_entered(runtime)
        low = asyncio.ensure_future(sched.submit({"x": rows(1, 1)}, ["y"], 1))
        high = asyncio.ensure_future(sched.submit({"x": rows(2, 1)}, ["y"], 1, priority=1))
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(first, low, high)

    asyncio.run(scenario())
    assert runtime.batches == [[0.0], [2.0], [1.0]]


def test_a_model_that_cannot_batch_fails_its_batch_clearly() -> None:
    gate = threading.Event()
    runtime = Doubler(gate, broken=True)
    sched = make(runtime)

    async def scenario() -> None:
        first = asyncio.ensure_future(sched.submit({"x": rows(0, 1)}, ["y"], 1))
        await wait_entered(runtime)
        pair = [asyncio.ensure_future(sched.submit({"x": rows(i, 1)}, ["y"], 1)) for i in (1, 2)]
        await asyncio.sleep(0)
        gate.set()
        await first
        for p in pair:
            with pytest.raises(InferenceFailed, match="cannot batch"):
                await p

    asyncio.run(scenario())


def test_drain_finishes_queued_work_then_refuses() -> None:
    gate = threading.Event()
    runtime = Doubler(gate)
    sched = make(runtime)

    async def scenario() -> None:
        work = [
            asyncio.ensure_future(sched.submit({"x": rows(i, 16)}, ["y"], 16)) for i in range(3)
        ]
        await wait_entered(runtime)
        drain = asyncio.ensure_future(sched.drain_and_close())
        await asyncio.sleep(0)
        with pytest.raises(Unavailable, match="being unloaded"):
            await sched.submit({"x": rows(9, 1)}, ["y"], 1)
        gate.set()
        await drain
        assert all(w.done() and not w.exception() for w in work)

    asyncio.run(scenario())


class Tracer(Doubler):
    """A compiled-graph-like runtime that records which thread ran each batch."""

    inline_safe = True

    def __init__(self, slow_s: float = 0.0) -> None:
        super().__init__()
        self.threads: list[int] = []
        self.slow_s = slow_s

    def predict(self, inputs: Mapping[str, Any], outputs: Sequence[str]) -> dict[str, Any]:
        self.threads.append(threading.get_ident())
        if self.slow_s:
            threading.Event().wait(self.slow_s)
        return super().predict(inputs, outputs)


def _lone_requests(sched: Scheduler, count: int, width: int = 2) -> int:
    """Send ``count`` requests one after another; returns the event loop's thread id."""

    async def scenario() -> int:
        for i in range(count):
            x = np.full((1, width), float(i), np.float32)
            ex = await sched.submit({"x": x}, ["y"], 1)
            np.testing.assert_array_equal(ex.outputs["y"], 2 * x)
        return threading.get_ident()

    return asyncio.run(scenario())


def test_a_lone_request_to_a_small_model_computes_on_the_event_loop() -> None:
    from modelport.dataplane.scheduling.placement import INLINE_WINDOW

    runtime = Tracer()
    sched = make(runtime, instances=2, modelport={"inline_busy_max_us": 0})
    loop_thread = _lone_requests(sched, INLINE_WINDOW + 5)
    # The first window goes to instance threads (nothing is known yet); then inline.
    assert loop_thread not in runtime.threads[:INLINE_WINDOW]
    assert runtime.threads[INLINE_WINDOW:] == [loop_thread] * 5
    sched.close()


def _together(sched: Scheduler, count: int, width: int = 2) -> None:
    """Send ``count`` requests at once; each must get exactly its own rows back."""

    async def scenario() -> None:
        xs = [np.full((1, width), float(i), np.float32) for i in range(count)]
        results = await asyncio.gather(*(sched.submit({"x": x}, ["y"], 1) for x in xs))
        for x, ex in zip(xs, results, strict=True):
            np.testing.assert_array_equal(ex.outputs["y"], 2 * x)

    asyncio.run(scenario())


def test_with_busy_inline_off_concurrent_requests_go_to_the_instances() -> None:
    from modelport.dataplane.scheduling.placement import INLINE_WINDOW

    runtime = Tracer()
    sched = make(runtime, instances=2, modelport={"inline_busy_max_us": 0})
    loop_thread = _lone_requests(sched, INLINE_WINDOW)
    before = len(runtime.threads)
    _together(sched, 40)
    # Requests arriving together are batched for the instance threads, never
    # computed one by one on the loop.
    later = runtime.threads[before:]
    assert later and all(t != loop_thread for t in later)
    assert len(later) < 40
    sched.close()


def test_a_tiny_model_runs_every_batch_on_the_event_loop() -> None:
    from modelport.dataplane.scheduling.placement import INLINE_WINDOW

    runtime = Tracer()
    # A generous bound: the fake is tiny, but a loaded test machine can stretch it.
    sched = make(runtime, instances=2, modelport={"inline_busy_max_us": 5000})
    loop_thread = _lone_requests(sched, INLINE_WINDOW)
    # One-row executions allow inline batches of two rows: these batches of twenty
    # still go to the instances, and being cheap they allow batches of forty.
    _together(sched, 40)
    before = len(runtime.threads)
    _together(sched, 40)
    later = runtime.threads[before:]
    # Batched as before (one loop turn collects them), but computed on the loop.
    assert later == [loop_thread] * len(later)
    assert len(later) < 40
    assert sorted(v for batch in runtime.batches[before:] for v in batch) == list(range(40))
    sched.close()


def test_a_model_between_the_two_bounds_runs_inline_only_when_idle() -> None:
    from modelport.dataplane.scheduling.placement import INLINE_WINDOW

    runtime = Tracer(slow_s=0.001)  # 1 ms by the wall clock: Tracer is not pin_safe
    sched = make(
        runtime, instances=2, modelport={"inline_max_us": 10_000, "inline_busy_max_us": 200}
    )
    loop_thread = _lone_requests(sched, INLINE_WINDOW + 2)
    assert runtime.threads[-2:] == [loop_thread] * 2
    before = len(runtime.threads)
    _together(sched, 12)
    # Over inline_busy_max_us: requests that arrive together go to the instances.
    assert all(t != loop_thread for t in runtime.threads[before:])
    sched.close()


def test_a_batch_over_the_byte_limit_goes_to_an_instance_even_for_a_tiny_model() -> None:
    from modelport.dataplane.scheduling.placement import INLINE_MAX_BYTES, INLINE_WINDOW

    runtime = Tracer()
    sched = make(runtime, instances=2, max_batch_size=64, modelport={"inline_busy_max_us": 5000})
    width = INLINE_MAX_BYTES // 4 // 10
    loop_thread = _lone_requests(sched, INLINE_WINDOW + 1, width=width)
    assert runtime.threads[-1] == loop_thread
    # Narrow batches of twenty rows raise the rows allowed inline past twenty, so
    # only the byte limit can keep the wide batches below off the loop.
    _together(sched, 40)
    before = len(runtime.threads)
    _together(sched, 40)
    assert runtime.threads[before:] == [loop_thread] * (len(runtime.threads) - before)
    before = len(runtime.threads)
    # Each request is a tenth of the limit; the batches forty of them form are over it.
    _together(sched, 40, width=width)
    later = runtime.threads[before:]
    assert any(t != loop_thread for t in later)
    sched.close()


class CpuTracer(Tracer):
    """Says it computes on the calling thread alone, so its cost is thread CPU time."""

    pin_safe = True


def test_a_few_slow_executions_do_not_stop_inline_batches_under_load() -> None:
    from modelport.dataplane.scheduling.placement import INLINE_BUSY_SLACK, INLINE_WINDOW

    runtime = Tracer()
    sched = make(runtime, instances=2, modelport={"inline_busy_max_us": 2000})
    loop_thread = _lone_requests(sched, INLINE_WINDOW + 1)
    runtime.slow_s = 0.005  # over the 2 ms bound, as many times as the slack allows
    _lone_requests(sched, INLINE_BUSY_SLACK)
    runtime.slow_s = 0.0
    _together(sched, 12)  # a slow execution also shrank the rows allowed inline
    before = len(runtime.threads)
    _together(sched, 12)
    assert runtime.threads[before:] == [loop_thread] * (len(runtime.threads) - before)
    runtime.slow_s = 0.005  # one more is over the slack: batches go back to the instances
    _lone_requests(sched, 1)
    runtime.slow_s = 0.0
    before = len(runtime.threads)
    _together(sched, 12)
    assert all(t != loop_thread for t in runtime.threads[before:])
    sched.close()


def test_the_cost_of_a_thread_computing_runtime_is_its_cpu_time_not_the_wall_clock() -> None:
    from modelport.dataplane.scheduling.placement import INLINE_WINDOW

    # Waiting 5 ms takes next to no CPU: a runtime that computes on its calling thread is
    # judged by what it cost that thread, so it counts as tiny (the wait stands in
    # for an instance thread queueing for the GIL or a core).
    runtime = CpuTracer(slow_s=0.005)
    sched = make(runtime, instances=2, modelport={"inline_busy_max_us": 2000})
    loop_thread = _lone_requests(sched, INLINE_WINDOW)
    _together(sched, 8)  # grows the rows allowed inline
    before = len(runtime.threads)
    _together(sched, 8)
    assert runtime.threads[before:] == [loop_thread] * (len(runtime.threads) - before)
    sched.close()


class RowCost(Tracer):
    """Takes 1 ms per row by the wall clock: cheap for one row, not for sixteen."""

    def predict(self, inputs: Mapping[str, Any], outputs: Sequence[str]) -> dict[str, Any]:
        self.slow_s = 0.001 * len(inputs["x"])
        return super().predict(inputs, outputs)


def test_rows_allowed_inline_grow_only_as_cheap_executions_show() -> None:
    from modelport.dataplane.scheduling.placement import INLINE_WINDOW

    runtime = RowCost()
    sched = make(runtime, instances=2, modelport={"inline_busy_max_us": 2500})
    loop_thread = _lone_requests(sched, INLINE_WINDOW + 1)
    assert runtime.threads[-1] == loop_thread  # one row, 1 ms: under the bound
    for _ in range(3):
        _together(sched, 32)
    on_loop = [
        len(b) for t, b in zip(runtime.threads, runtime.batches, strict=True) if t == loop_thread
    ]
    # A batch of n rows runs inline only after one of n/2 rows was cheap; four rows
    # (4 ms) never are, so nothing over four rows ever blocked the loop.
    assert on_loop and max(on_loop) <= 4
    assert any(len(b) > 4 for b in runtime.batches)
    sched.close()


def test_a_slow_execution_stops_inline_runs() -> None:
    from modelport.dataplane.scheduling.placement import INLINE_WINDOW

    runtime = Tracer()
    sched = make(runtime, instances=1, modelport={"inline_max_us": 1000, "inline_busy_max_us": 0})
    loop_thread = _lone_requests(sched, INLINE_WINDOW + 1)
    assert runtime.threads[-1] == loop_thread
    runtime.slow_s = 0.005  # 5 ms, over the 1 ms limit: this one runs inline once...
    _lone_requests(sched, 1)
    runtime.slow_s = 0.0
    _lone_requests(sched, 3)
    # ...and then the window holds a slow execution, so the next ones go to a thread.
    assert all(t != runtime.threads[-5] for t in runtime.threads[-3:])
    sched.close()


def test_inline_is_off_when_configured_off_or_for_large_batches() -> None:
    from modelport.dataplane.scheduling.placement import INLINE_MAX_BYTES, INLINE_WINDOW

    runtime = Tracer()
    sched = make(runtime, instances=1, modelport={"inline_max_us": 0, "inline_busy_max_us": 0})
    loop_thread = _lone_requests(sched, INLINE_WINDOW + 3)
    assert loop_thread not in runtime.threads
    sched.close()

    runtime = Tracer()
    sched = make(runtime, instances=1)
    wide = INLINE_MAX_BYTES // 4 + 1  # FP32 columns: one row over the byte limit
    loop_thread = _lone_requests(sched, INLINE_WINDOW + 3, width=wide)
    assert loop_thread not in runtime.threads
    sched.close()


def test_runtimes_that_do_not_say_inline_safe_never_run_inline() -> None:
    from modelport.dataplane.scheduling.placement import INLINE_WINDOW

    runtime = Doubler()
    threads: list[int] = []
    original = runtime.predict

    def traced(inputs: Mapping[str, Any], outputs: Sequence[str]) -> dict[str, Any]:
        threads.append(threading.get_ident())
        return original(inputs, outputs)

    runtime.predict = traced  # type: ignore[method-assign]
    sched = make(runtime, instances=1)
    loop_thread = _lone_requests(sched, INLINE_WINDOW + 3)
    assert loop_thread not in threads
    sched.close()


def test_batches_on_the_loop_are_not_split_into_instance_shares() -> None:
    """Forty requests arriving together at a loop-bound version are one execution.

    The loop runs batches one after another, so dividing them into each
    instance's share (halves, then halves of what is left) only multiplies
    executions; the cap is the rows the loop may take.
    """
    from modelport.dataplane.scheduling.placement import INLINE_WINDOW

    runtime = Tracer()
    sched = make(runtime, instances=2, max_batch_size=64, modelport={"inline_busy_max_us": 5000})
    loop_thread = _lone_requests(sched, INLINE_WINDOW)
    _together(sched, 40)  # cheap executions raise the rows allowed on the loop
    _together(sched, 40)
    before = len(runtime.threads)
    _together(sched, 40)
    assert runtime.threads[before:] == [loop_thread]
    assert sorted(runtime.batches[-1]) == list(range(40))
    sched.close()


def test_a_waiting_version_gathers_requests_that_arrive_one_per_turn_into_one_execution() -> None:
    """With gathering on (a trial showed it serves more), a request that starts a batch
    waits, on the scheduler's clock, for those that arrive after it; a request
    arriving before the wait ends rides in the same execution."""
    from modelport.dataplane.scheduling.placement import INLINE_WINDOW

    clock = FakeClock()
    runtime = Tracer()
    sched = make(runtime, instances=2, clock=clock, modelport={"inline_busy_max_us": 5000})
    loop_thread = _lone_requests(sched, INLINE_WINDOW)
    sched._gathering.waiting = sched._gathering.tracking = True  # what a kept trial leaves
    before = len(runtime.threads)

    async def scenario() -> None:
        first = asyncio.ensure_future(sched.submit({"x": rows(0, 1)}, ["y"], 1))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not first.done() and len(runtime.threads) == before  # waiting, not computed
        second = asyncio.ensure_future(sched.submit({"x": rows(1, 1)}, ["y"], 1))
        await asyncio.sleep(0)
        clock.advance(GATHER_MAX_NS)  # the wait ends
        a, b = await asyncio.gather(first, second)
        np.testing.assert_array_equal(a.outputs["y"], 2 * rows(0, 1))
        np.testing.assert_array_equal(b.outputs["y"], 2 * rows(1, 1))

    asyncio.run(scenario())
    assert runtime.threads[before:] == [loop_thread]  # one execution, on the loop
    sched.close()
