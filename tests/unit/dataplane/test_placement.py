"""place and defer_batching: loop or instance, as plain numbers (no threads, no clocks)."""

from __future__ import annotations

import time

import numpy as np

from modelport.config.model import parse_model_config
from modelport.dataplane.scheduling.placement import (
    INLINE_BUSY_SLACK,
    INLINE_MAX_BYTES,
    INLINE_WINDOW,
    Placement,
    RecentCosts,
    Traits,
    cost_source,
    defer_batching,
    inline_enabled,
    place,
)
from modelport.dataplane.scheduling.policy import SchedulingPolicy, scheduling_policy
from modelport.dataplane.scheduling.queue import Pending

SAFE = Traits(inline_safe=True, pin_safe=False)
LOOP, INSTANCE = Placement.LOOP, Placement.INSTANCE
US = 1_000


def settings(lone_us: int = 100, busy_us: int = 0) -> SchedulingPolicy:
    config = parse_model_config(
        {
            "max_batch_size": 64,
            "modelport": {"inline_max_us": lone_us, "inline_busy_max_us": busy_us},
        },
        "t",
    )
    return scheduling_policy(config, None)


def request(rows: int = 1, width: int = 2) -> Pending:
    x = np.zeros((rows, width), np.float32)
    return Pending({"x": x}, rows, None, 0, 0, None, future=None)  # type: ignore[arg-type]


def costs_of(
    cost_us: int, rows: int, policy: SchedulingPolicy, times: int = INLINE_WINDOW
) -> RecentCosts:
    costs = RecentCosts()
    for _ in range(times):
        costs.note(cost_us * US, rows, policy)
    return costs


def test_nothing_runs_inline_before_a_whole_window_of_cheap_executions() -> None:
    policy = settings(lone_us=100)
    assert place(SAFE, RecentCosts(), [request()], True, policy) is INSTANCE
    almost = costs_of(10, 1, policy, times=INLINE_WINDOW - 1)
    assert place(SAFE, almost, [request()], True, policy) is INSTANCE
    almost.note(10 * US, 1, policy)
    assert place(SAFE, almost, [request()], True, policy) is LOOP


def test_a_lone_request_runs_inline_only_when_the_version_is_idle() -> None:
    policy = settings(lone_us=100)
    costs = costs_of(10, 1, policy)
    assert place(SAFE, costs, [request()], True, policy) is LOOP
    assert place(SAFE, costs, [request()], False, policy) is INSTANCE
    assert place(SAFE, costs, [request(), request()], True, policy) is INSTANCE


def test_one_slow_execution_in_the_window_stops_lone_inline_runs() -> None:
    policy = settings(lone_us=100)
    costs = costs_of(10, 1, policy)
    costs.note(100 * US, 1, policy)  # at the bound counts as over it
    assert place(SAFE, costs, [request()], True, policy) is INSTANCE
    for _ in range(INLINE_WINDOW - 1):
        costs.note(10 * US, 1, policy)
    assert place(SAFE, costs, [request()], True, policy) is INSTANCE
    costs.note(10 * US, 1, policy)  # the slow one has left the window
    assert place(SAFE, costs, [request()], True, policy) is LOOP


def test_runtimes_not_inline_safe_or_inline_configured_off_never_run_on_the_loop() -> None:
    policy = settings(lone_us=100, busy_us=100)
    costs = costs_of(1, 1, policy)
    unsafe = Traits(inline_safe=False, pin_safe=True)
    assert place(unsafe, costs, [request()], True, policy) is INSTANCE
    off = settings(lone_us=0, busy_us=0)
    assert place(SAFE, costs_of(1, 1, off), [request()], True, off) is INSTANCE


def test_under_load_batches_run_inline_up_to_twice_the_rows_seen_cheap() -> None:
    policy = settings(lone_us=0, busy_us=50)
    costs = costs_of(10, 3, policy)
    assert costs.inline_rows == 6
    assert place(SAFE, costs, [request(2), request(4)], False, policy) is LOOP
    assert place(SAFE, costs, [request(3), request(4)], False, policy) is INSTANCE


def test_a_slow_batch_near_the_allowance_halves_it_and_a_small_one_does_not() -> None:
    policy = settings(lone_us=0, busy_us=50)
    costs = costs_of(10, 8, policy)
    assert costs.inline_rows == 16
    costs.note(80 * US, 2, policy)  # slow, but far below the allowance: says nothing
    assert costs.inline_rows == 16
    costs.note(80 * US, 8, policy)
    assert costs.inline_rows == 4


def test_the_slack_tolerates_a_few_slow_executions_under_load() -> None:
    policy = settings(lone_us=0, busy_us=50)
    costs = costs_of(10, 1, policy)
    for _ in range(INLINE_BUSY_SLACK):
        costs.note(80 * US, 1, policy)
    assert place(SAFE, costs, [request()], False, policy) is LOOP
    costs.note(80 * US, 1, policy)
    assert place(SAFE, costs, [request()], False, policy) is INSTANCE


def test_a_batch_over_the_byte_limit_goes_to_an_instance() -> None:
    policy = settings(lone_us=100)
    costs = costs_of(10, 1, policy)
    fits = INLINE_MAX_BYTES // 4  # FP32 columns
    assert place(SAFE, costs, [request(width=fits)], True, policy) is LOOP
    assert place(SAFE, costs, [request(width=fits + 1)], True, policy) is INSTANCE


def test_batching_waits_a_loop_turn_only_when_the_batch_may_run_inline() -> None:
    lone = settings(lone_us=100)
    cheap = costs_of(10, 1, lone)
    assert defer_batching(cheap, False)
    assert not defer_batching(cheap, True)  # an instance is busy: no lone run
    assert not defer_batching(RecentCosts(), False)
    # Never asked where no batch may run inline: the scheduler checks this once.
    assert inline_enabled(SAFE, lone)
    assert not inline_enabled(Traits(False, False), lone)
    busy = settings(lone_us=0, busy_us=50)
    assert defer_batching(costs_of(10, 1, busy), True)


def test_the_cost_of_a_pin_safe_runtime_is_its_threads_cpu_time() -> None:
    assert cost_source(Traits(inline_safe=True, pin_safe=True)) is time.thread_time_ns
    assert cost_source(SAFE) is None
