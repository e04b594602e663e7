"""Sliding windows: error rate, p99 and agreement over the last minute, on a fake clock."""

from __future__ import annotations

import pytest

from modelport.dataplane.routing import Route, Traffic, TrafficPolicy, WindowSnapshot
from modelport.dataplane.routing.window import (
    LATENCY_BOUNDS_MS,
    SlidingWindow,
    counts_as_error,
    latency_bucket,
    merged,
)
from modelport.errors import (
    DeadlineExceeded,
    InferenceFailed,
    InvalidRequest,
    ModelNotReady,
    ModelportError,
    NotFound,
    PayloadTooLarge,
    Unavailable,
)
from modelport.observability.metrics import Metrics


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_empty_window_has_no_ratios() -> None:
    window = SlidingWindow(Clock())
    assert window.snapshot() == WindowSnapshot(
        0, 0, None, None, 0, 0, None, (0,) * len(LATENCY_BOUNDS_MS)
    )


def test_error_rate_and_p99() -> None:
    clock = Clock()
    window = SlidingWindow(clock)
    for ms in range(1, 101):  # 1 … 100 ms, spread over a few seconds
        clock.now += 0.03
        window.record(float(ms), failed=ms % 10 == 0)
    snap = window.snapshot()
    assert snap.requests == 100
    assert snap.errors == 10
    assert snap.error_rate == pytest.approx(0.1)
    # The 99th of 100 sorted latencies is 99 ms; the histogram reports its bucket's top.
    assert snap.p99_ms is not None
    assert 99.0 <= snap.p99_ms < 99.0 * 1.19
    assert snap.p99_ms == LATENCY_BOUNDS_MS[latency_bucket(99.0)]


def test_p99_sees_a_slow_tail() -> None:
    window = SlidingWindow(Clock())
    for _ in range(97):
        window.record(2.0, failed=False)
    for _ in range(3):
        window.record(800.0, failed=False)
    snap = window.snapshot()
    assert snap.p99_ms is not None and 800.0 <= snap.p99_ms < 800.0 * 1.19


def test_old_buckets_leave_the_window() -> None:
    clock = Clock()
    window = SlidingWindow(clock, window_s=60.0, bucket_s=1.0)
    window.record(5.0, failed=True)
    clock.now += 30
    window.record(5.0, failed=False)
    window.record_comparison(agreed=False)
    assert window.snapshot().requests == 2
    clock.now += 29.5  # the first request is 59.5 s old: still inside
    assert window.snapshot().errors == 1
    clock.now += 0.5  # now 60 s old: gone
    snap = window.snapshot()
    assert (snap.requests, snap.errors, snap.error_rate) == (1, 0, 0.0)
    assert (snap.shadow_compared, snap.shadow_agreed, snap.agreement) == (1, 0, 0.0)
    clock.now += 30
    assert window.snapshot() == WindowSnapshot(
        0, 0, None, None, 0, 0, None, (0,) * len(LATENCY_BOUNDS_MS)
    )


def test_a_reused_bucket_forgets_its_previous_minute() -> None:
    clock = Clock()
    window = SlidingWindow(clock)
    for _ in range(5):
        window.record(1.0, failed=True)
    clock.now += 60  # the same ring slot, a minute later
    window.record(1.0, failed=False)
    snap = window.snapshot()
    assert (snap.requests, snap.errors) == (1, 0)


def test_shadow_agreement() -> None:
    window = SlidingWindow(Clock())
    for agreed in (True, True, True, False):
        window.record_comparison(agreed)
    snap = window.snapshot()
    assert (snap.shadow_compared, snap.shadow_agreed, snap.agreement) == (4, 3, 0.75)
    assert snap.requests == 0  # comparisons are not requests


def test_latency_buckets_are_exact_at_their_bounds() -> None:
    for i, bound in enumerate(LATENCY_BOUNDS_MS):
        assert latency_bucket(bound) == i
        assert latency_bucket(bound * 1.0001) == min(i + 1, len(LATENCY_BOUNDS_MS) - 1)
    assert latency_bucket(0.0) == 0
    assert latency_bucket(1e12) == len(LATENCY_BOUNDS_MS) - 1


def test_bad_window_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="window_s must be at least bucket_s"):
        SlidingWindow(Clock(), window_s=0.5, bucket_s=1.0)
    with pytest.raises(ValueError, match="window_s must be at least bucket_s"):
        Traffic(Metrics(), bucket_s=0)


@pytest.mark.parametrize(
    ("error", "counts"),
    [
        (InferenceFailed("x"), True),
        (Unavailable("x"), True),
        (DeadlineExceeded("x"), True),
        (ModelNotReady("x"), True),
        (InvalidRequest("x"), False),
        (PayloadTooLarge("x"), False),
        (NotFound("x"), False),
    ],
)
def test_only_server_side_failures_count(error: ModelportError, counts: bool) -> None:
    assert counts_as_error(error) is counts


def test_traffic_windows_survive_policy_changes_and_go_with_the_policy() -> None:
    clock = Clock()
    traffic = Traffic(Metrics(), clock=clock, window_s=10.0)
    policy = TrafficPolicy((Route("1", 100),))
    traffic.set("m", policy)
    routed = traffic.routed("m")
    assert routed is not None
    routed.record("1", 3_000_000, failed=False)
    assert traffic.window("m", "1").requests == 1
    assert traffic.window("m", "9").requests == 0
    assert traffic.window("other", "1").requests == 0
    traffic.set("m", TrafficPolicy((Route("1", 50), Route("2", 50))))
    assert traffic.window("m", "1").requests == 1
    traffic.reset_window("m", "1")
    assert traffic.window("m", "1").requests == 0
    routed = traffic.routed("m")
    assert routed is not None
    routed.record("1", 1_000_000, failed=True)
    assert traffic.window("m", "1").errors == 1
    clock.now += 10  # the window is 10 s wide here
    assert traffic.window("m", "1").requests == 0
    routed.record("1", 1_000_000, failed=True)
    traffic.set("m", None)
    assert traffic.get("m") is None
    assert traffic.routed("m") is None
    assert traffic.window("m", "1").requests == 0


def test_windows_of_several_workers_add_up() -> None:
    clock = Clock()
    first, second = SlidingWindow(clock), SlidingWindow(clock)
    for _ in range(98):
        first.record(1.0, failed=False)
    first.record(400.0, failed=True)
    second.record(1.0, failed=True)
    second.record_comparison(agreed=True)
    second.record_comparison(agreed=False)
    both = merged([first.snapshot(), second.snapshot()])
    assert (both.requests, both.errors) == (100, 2)
    assert both.error_rate == pytest.approx(0.02)
    # 99 of 100 requests took about 1 ms: the node's p99 is theirs, though one worker's
    # own p99 (its only slow request among 99) is not.
    assert both.p99_ms == LATENCY_BOUNDS_MS[latency_bucket(1.0)]
    assert first.snapshot().p99_ms == LATENCY_BOUNDS_MS[latency_bucket(400.0)]
    assert (both.shadow_compared, both.shadow_agreed, both.agreement) == (2, 1, 0.5)
    assert merged([first.snapshot()]) == first.snapshot()
