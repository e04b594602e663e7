"""Rate spikes and authentication-failure bursts, on a fake clock."""

from __future__ import annotations

from typing import Any

from modelport.observability.anomaly import (
    AUTH_FAILURE_BURST,
    RATE_SPIKE,
    AuthFailureBurstDetector,
    RateSpikeDetector,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def collect() -> tuple[list[tuple[str, str, dict[str, Any]]], Any]:
    events: list[tuple[str, str, dict[str, Any]]] = []
    return events, lambda kind, source, detail: events.append((kind, source, detail))


def test_steady_traffic_raises_nothing_and_a_spike_raises_once() -> None:
    events, sink = collect()
    clock = Clock()
    detector = RateSpikeDetector(sink, factor=10, floor=50, clock=clock)
    for _ in range(30):  # 30 seconds at 20 requests per second
        for _ in range(20):
            detector.observe("key-a")
        clock.now += 1
    assert events == []
    for _ in range(400):  # one second at 400: 20 times the average
        detector.observe("key-a")
    assert len(events) == 1
    kind, source, detail = events[0]
    assert (kind, source) == (RATE_SPIKE, "key-a")
    assert detail["requests_this_second"] > 10 * detail["average_per_second"]
    for _ in range(400):  # still spiking: the cooldown keeps it to one event
        detector.observe("key-a")
    assert len(events) == 1


def test_a_new_identity_is_not_flagged_before_it_has_a_history() -> None:
    events, sink = collect()
    detector = RateSpikeDetector(sink, clock=Clock())
    for _ in range(5000):
        detector.observe("brand-new")
    assert events == []


def test_sources_are_bounded() -> None:
    _events, sink = collect()
    detector = RateSpikeDetector(sink, max_sources=100, clock=Clock())
    for i in range(10_000):
        detector.observe(f"key-{i}")
    assert len(detector._states) == 100


def test_failure_burst_from_one_source() -> None:
    events, sink = collect()
    clock = Clock()
    detector = AuthFailureBurstDetector(sink, threshold=5, window_s=10, clock=clock)
    for _ in range(5):
        detector.observe_failure("10.0.0.9")
    detector.observe_failure("10.0.0.8")
    assert events == []
    detector.observe_failure("10.0.0.9")
    assert events == [(AUTH_FAILURE_BURST, "10.0.0.9", {"failures": 6, "window_s": 10})]


def test_failures_spread_over_windows_are_not_a_burst() -> None:
    events, sink = collect()
    clock = Clock()
    detector = AuthFailureBurstDetector(sink, threshold=5, window_s=10, clock=clock)
    for _ in range(20):
        detector.observe_failure("10.0.0.9")
        clock.now += 3  # about three failures per window
    assert events == []
