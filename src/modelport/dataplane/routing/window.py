"""Per-version sliding windows: what a canary controller judges a version by.

Each window is a ring of time buckets (1 s wide by default, 60 of them), and
every bucket holds a request count, an error count, shadow comparisons and a
fixed histogram of latencies. Recording a request touches one bucket, so the
request path pays O(1); a snapshot sums the buckets still inside the window.
A bucket is reused for a later second by zeroing it when the first request
of that second arrives, so old seconds leave the window without a timer.

The p99 is read from the summed histogram and reported as the upper bound of
the bucket it falls in: the true value is at most that, and at most about
19 % less (four buckets per doubling).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from modelport.errors import InvalidRequest, ModelportError, NotFound

#: Latency histogram upper bounds in ms: 50 µs · 2^(i/4), i = 0 … 96, up to
#: about 14 minutes. Slower requests are counted in the last bucket.
_BASE_MS = 0.05
_PER_DOUBLING = 4
LATENCY_BOUNDS_MS: tuple[float, ...] = tuple(
    _BASE_MS * 2 ** (i / _PER_DOUBLING) for i in range(24 * _PER_DOUBLING + 1)
)


def counts_as_error(exc: ModelportError) -> bool:
    """Whether a failure is the version's fault rather than the caller's.

    Client mistakes (InvalidRequest and its subclasses, NotFound) say nothing
    about a version's health and are not recorded in windows at all.
    """
    return not isinstance(exc, InvalidRequest | NotFound)


def latency_bucket(ms: float) -> int:
    """Index of the first bound >= ``ms`` (the last bucket for anything slower)."""
    last = len(LATENCY_BOUNDS_MS) - 1
    if ms <= _BASE_MS:
        return 0
    i = min(last, math.ceil(_PER_DOUBLING * math.log2(ms / _BASE_MS)))
    # log2 can land one off at a boundary; settle on the exact bucket.
    if ms > LATENCY_BOUNDS_MS[i] and i < last:
        i += 1
    elif i > 0 and ms <= LATENCY_BOUNDS_MS[i - 1]:
        i -= 1
    return i


@dataclass(frozen=True, slots=True)
class WindowSnapshot:
    """One version's recent health; ratios are None while there is nothing to divide."""

    requests: int
    errors: int
    error_rate: float | None
    p99_ms: float | None
    shadow_compared: int
    shadow_agreed: int
    agreement: float | None
    latency: tuple[int, ...] = ()
    """Requests per latency bucket (``LATENCY_BOUNDS_MS``), so that windows of several
    workers of a node can be added up (:func:`merged`)."""


EMPTY = WindowSnapshot(0, 0, None, None, 0, 0, None)


class _Bucket:
    __slots__ = ("agreed", "compared", "count", "epoch", "errors", "latency")

    def __init__(self) -> None:
        self.epoch = -1
        self.count = 0
        self.errors = 0
        self.compared = 0
        self.agreed = 0
        self.latency = [0] * len(LATENCY_BOUNDS_MS)

    def claim(self, epoch: int) -> None:
        self.epoch = epoch
        self.count = self.errors = self.compared = self.agreed = 0
        latency = self.latency
        for i in range(len(latency)):
            latency[i] = 0


class SlidingWindow:
    """Requests of one (model, version) over the last ``window_s`` seconds.

    Not thread-safe: it is written and read on the event loop only.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        window_s: float = 60.0,
        bucket_s: float = 1.0,
    ) -> None:
        if not (bucket_s > 0 and window_s >= bucket_s):
            raise ValueError("window_s must be at least bucket_s, and bucket_s positive")
        self._clock = clock
        self._width = bucket_s
        self._buckets = [_Bucket() for _ in range(round(window_s / bucket_s))]

    def _current(self) -> _Bucket:
        epoch = int(self._clock() // self._width)
        bucket = self._buckets[epoch % len(self._buckets)]
        if bucket.epoch != epoch:
            bucket.claim(epoch)
        return bucket

    def record(self, latency_ms: float, failed: bool) -> None:
        bucket = self._current()
        bucket.count += 1
        if failed:
            bucket.errors += 1
        bucket.latency[latency_bucket(latency_ms)] += 1

    def record_comparison(self, agreed: bool) -> None:
        bucket = self._current()
        bucket.compared += 1
        if agreed:
            bucket.agreed += 1

    def snapshot(self) -> WindowSnapshot:
        now = int(self._clock() // self._width)
        oldest = now - len(self._buckets) + 1
        requests = errors = compared = agreed = 0
        latency = [0] * len(LATENCY_BOUNDS_MS)
        for bucket in self._buckets:
            if not oldest <= bucket.epoch <= now:
                continue
            requests += bucket.count
            errors += bucket.errors
            compared += bucket.compared
            agreed += bucket.agreed
            if bucket.count:
                for i, n in enumerate(bucket.latency):
                    latency[i] += n
        return _snapshot(requests, errors, compared, agreed, latency)


def _snapshot(
    requests: int, errors: int, compared: int, agreed: int, latency: list[int]
) -> WindowSnapshot:
    return WindowSnapshot(
        requests=requests,
        errors=errors,
        error_rate=errors / requests if requests else None,
        p99_ms=_quantile(latency, requests, 0.99),
        shadow_compared=compared,
        shadow_agreed=agreed,
        agreement=agreed / compared if compared else None,
        latency=tuple(latency),
    )


def merged(snapshots: Sequence[WindowSnapshot]) -> WindowSnapshot:
    """One window of several workers' windows of the same version: counts added,
    ratios and the p99 worked out again from the added counts and histograms."""
    latency = [0] * len(LATENCY_BOUNDS_MS)
    for snapshot in snapshots:
        for i, n in enumerate(snapshot.latency):
            latency[i] += n
    return _snapshot(
        sum(s.requests for s in snapshots),
        sum(s.errors for s in snapshots),
        sum(s.shadow_compared for s in snapshots),
        sum(s.shadow_agreed for s in snapshots),
        latency,
    )


def _quantile(histogram: list[int], total: int, q: float) -> float | None:
    if total == 0:
        return None
    rank = math.ceil(q * total)
    seen = 0
    for i, n in enumerate(histogram):
        seen += n
        if seen >= rank:
            return LATENCY_BOUNDS_MS[i]
    return LATENCY_BOUNDS_MS[-1]
