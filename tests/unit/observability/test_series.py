"""The lock-free request series expose what prometheus_client's Counter and Histogram would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from modelport.observability.series import CounterFamily, HistogramFamily

BOUNDS = (0.001, 0.01, 0.1, 1.0)
LABELS = ("model", "version")


def _without_created(text: bytes) -> list[str]:
    """Exposition lines, less the creation timestamps (they differ by construction)."""
    return [line for line in text.decode().splitlines() if "_created" not in line]


def test_counter_and_histogram_expose_what_prometheus_client_exposes() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counter = CounterFamily("calls", "Calls made.", LABELS, ours)
    histogram = HistogramFamily("wait_seconds", "Waits.", LABELS, ours, BOUNDS)
    ref_counter = Counter("calls", "Calls made.", LABELS, registry=theirs)
    ref_histogram = Histogram("wait_seconds", "Waits.", LABELS, buckets=BOUNDS, registry=theirs)
    # Values on, below and above the bounds: a bound belongs to its own bucket ("le").
    for value in (0.0, 0.001, 0.0011, 0.01, 0.5, 1.0, 7.0):
        histogram.labels("m", "1").observe(value)
        ref_histogram.labels("m", "1").observe(value)
    for labels in (("m", "1"), ("m", "1"), ("n", "2")):
        counter.labels(*labels).inc()
        ref_counter.labels(*labels).inc()
    counter.labels("n", "2").inc(2.5)
    ref_counter.labels("n", "2").inc(2.5)

    assert _without_created(generate_latest(ours)) == _without_created(generate_latest(theirs))
    assert ours.get_sample_value("calls_total", {"model": "n", "version": "2"}) == 3.5
    assert (
        ours.get_sample_value("wait_seconds_bucket", {"model": "m", "version": "1", "le": "0.001"})
        == 2
    )
    assert ours.get_sample_value("wait_seconds_count", {"model": "m", "version": "1"}) == 7
    assert ours.get_sample_value("wait_seconds_created", {"model": "m", "version": "1"})


def test_wrong_label_count_and_unordered_bounds_are_refused() -> None:
    registry = CollectorRegistry()
    counter = CounterFamily("calls", "Calls made.", LABELS, registry)
    with pytest.raises(ValueError, match="expected labels"):
        counter.labels("only-one")
    with pytest.raises(ValueError, match="must increase"):
        HistogramFamily("bad_seconds", "Bad.", LABELS, registry, (1.0, 0.5))


def test_a_name_registered_twice_is_refused() -> None:
    registry = CollectorRegistry()
    CounterFamily("calls", "Calls made.", LABELS, registry)
    with pytest.raises(ValueError):
        Counter("calls", "Calls made.", LABELS, registry=registry)
