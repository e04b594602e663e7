"""The per-request series (request counts, latency histograms) without a lock per update.

prometheus_client guards every ``inc`` and ``observe`` with a mutex, and a
histogram observation takes two of them; for a small model the four series
written per request cost more than the validation of its body. Every update
here happens on the event loop's thread, so a series is plain numbers: an
``inc`` adds to a float, an ``observe`` bisects the bucket bounds and adds one
to a list entry. A scrape (any thread) reads the numbers as they are; a
histogram's count is taken from its buckets so the two always agree.

The families register in the server's ``CollectorRegistry`` like any
collector, and the exposition is the one ``Counter`` and ``Histogram``
give (``_total``, ``_created``, ``_bucket``, ``_count``, ``_sum``).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class CounterSeries:
    """One labelled counter."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class HistogramSeries:
    """One labelled histogram: a count per bucket (the last is +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        # A bucket counts values up to and including its bound ("le").
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


S = TypeVar("S", CounterSeries, HistogramSeries)


class _Family(Collector, Generic[S]):
    """Children by label values, created on first use, never removed (as prometheus_client)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], S] = {}
        registry.register(self)

    def labels(self, *values: str) -> S:
        """The series of these label values (in ``labelnames`` order), made on first use."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values}")
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.new_series()
        return child

    def new_series(self) -> S:
        raise NotImplementedError

    def describe(self) -> list[Metric]:
        """The family without samples: what the registry checks names against."""
        return [self.empty()]

    def empty(self) -> Metric:
        raise NotImplementedError


class CounterFamily(_Family[CounterSeries]):
    """A labelled counter family; ``labels(...)`` gives the series to ``inc``."""

    def new_series(self) -> CounterSeries:
        return CounterSeries()

    def empty(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self.empty()
        for values, child in list(self._children.items()):
            family.add_metric(values, child.value, created=child.created)
        yield family


class HistogramFamily(_Family[HistogramSeries]):
    """A labelled histogram family with fixed bucket bounds."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        buckets: Sequence[float],
    ) -> None:
        bounds = tuple(float(b) for b in buckets)
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"{name}: bucket bounds must increase")
        self.bounds = bounds
        self._names = (*(floatToGoString(b) for b in bounds), "+Inf")  # type: ignore[no-untyped-call]
        super().__init__(name, documentation, labelnames, registry)

    def new_series(self) -> HistogramSeries:
        return HistogramSeries(self.bounds)

    def empty(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self.empty()
        for values, child in list(self._children.items()):
            counts = list(child.counts)
            cumulative = 0
            buckets = []
            for le, count in zip(self._names, counts, strict=True):
                cumulative += count
                buckets.append((le, float(cumulative)))
            family.add_metric(values, buckets, child.sum)
            named = dict(zip(self.labelnames, values, strict=True))
            family.add_sample(self.name + "_created", named, child.created)
        yield family
