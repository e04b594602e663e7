"""place and defer_batching: loop or instance, as plain numbers (no threads, no clocks)."""

from __future__ import annotations

import time

import numpy as np

from modelport.config.model import parse_model_config
from modelport.dataplane.scheduling.placement import (
    GATHER_MAX_NS,
    GATHER_SPAN,
    INLINE_BUSY_SLACK,
    INLINE_MAX_BYTES,
    INLINE_WINDOW,
    TRIAL_EVERY_NS,
    TRIAL_FIRST_NS,
    TRIAL_WINDOW_NS,
    Gathering,
    Placement,
    RecentCosts,
    Traits,
    Trial,
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


# ------------------------------------------------------------------ gathering

MS = 1_000_000


def _lone_version() -> Gathering:
    """A version whose one-turn deferrals each found one request, arrivals 200 µs apart."""
    g = Gathering()
    for i in range(64):
        g.arrived(i * 200_000)
        g.deferred(1)
    return g


def _window(g: Gathering, start: int, rows: int) -> int:
    """Serve ``rows`` over one trial window from ``start``; returns when the window ends."""
    g.served(rows)
    end = start + TRIAL_WINDOW_NS
    g.tick(end)
    return end


def test_a_version_waits_only_after_a_trial_shows_waiting_serves_more() -> None:
    g = _lone_version()
    assert g.wait_ns() == 0  # nothing measured yet: no waiting
    g.tick(0)  # the first tick schedules the first trial
    g.tick(TRIAL_FIRST_NS - 1)
    assert g.phase is Trial.NONE
    g.tick(TRIAL_EVERY_NS)
    assert g.phase is Trial.OFF
    end = _window(g, TRIAL_EVERY_NS, 1000)  # 2000 rows/s without waiting
    assert g.phase is Trial.ON and g.wait_ns() == GATHER_SPAN * g.gap_ns
    for _ in range(10):
        g.waited(4)  # waits that found company
    _window(g, end, 1300)  # 30 % more with waiting: kept
    assert g.phase is Trial.NONE and g.waiting
    assert 0 < g.wait_ns() <= GATHER_MAX_NS


def test_waiting_that_serves_less_is_turned_off_and_tried_again_later() -> None:
    g = _lone_version()
    g.tick(0)
    g.tick(TRIAL_EVERY_NS)
    end = _window(g, TRIAL_EVERY_NS, 1000)
    for _ in range(10):
        g.waited(2)
    _window(g, end, 800)  # a few callers each waiting: fewer served while waiting
    assert not g.waiting and g.wait_ns() == 0
    # Nothing changed: the next trial comes after twice the time.
    g.tick(end + TRIAL_WINDOW_NS + TRIAL_EVERY_NS)
    assert g.phase is Trial.NONE
    g.tick(end + TRIAL_WINDOW_NS + 2 * TRIAL_EVERY_NS)
    assert g.phase is Trial.OFF


def test_a_trial_whose_waits_find_no_one_ends_at_once() -> None:
    """One caller at a time: each wait is pure latency, so the trial stops after a few."""
    g = _lone_version()
    g.tick(0)
    g.tick(TRIAL_EVERY_NS)
    _window(g, TRIAL_EVERY_NS, 1000)
    assert g.waiting
    for _ in range(8):
        g.waited(1)
    assert not g.waiting and g.phase is Trial.NONE


def test_requests_that_arrive_together_never_start_a_trial() -> None:
    g = Gathering()
    for i in range(64):
        g.arrived(i * 10_000)
        g.deferred(6)  # each one-turn deferral already batches six
    g.tick(0)
    g.tick(10 * TRIAL_EVERY_NS)
    assert g.phase is Trial.NONE and g.wait_ns() == 0


def test_a_wait_is_a_few_gaps_between_arrivals_and_never_over_the_cap() -> None:
    g = _lone_version()
    g.waiting = True
    assert g.wait_ns() == min(GATHER_SPAN * g.gap_ns, GATHER_MAX_NS)
    for i in range(200):
        g.arrived(100 * MS + i * 5 * MS)  # sparse arrivals: gaps capped at the maximum
    assert g.wait_ns() == GATHER_MAX_NS


def test_a_window_the_version_spent_idle_is_measured_again() -> None:
    """A trial window across a quiet spell would compare idle time, not waiting."""
    g = _lone_version()
    g.tick(0)
    g.tick(TRIAL_FIRST_NS)
    assert g.phase is Trial.OFF
    g.served(1000)
    g.tick(TRIAL_FIRST_NS + 10 * TRIAL_WINDOW_NS)  # the next batch came much later
    assert g.phase is Trial.OFF  # the same window again, from now
    end = _window(g, TRIAL_FIRST_NS + 10 * TRIAL_WINDOW_NS, 1000)
    assert g.phase is Trial.ON
    assert end > 0


def test_a_trial_in_which_waiting_serves_less_ends_a_quarter_of_the_way_in() -> None:
    g = _lone_version()
    g.tick(0)
    g.tick(TRIAL_FIRST_NS)
    end = _window(g, TRIAL_FIRST_NS, 1000)  # 2000 rows/s without waiting
    assert g.phase is Trial.ON
    g.served(100)  # 800 rows/s a quarter of the way in
    g.tick(end + TRIAL_WINDOW_NS // 4)
    assert g.phase is Trial.NONE and not g.waiting
