"""Traffic anomalies: sudden request-rate spikes and bursts of authentication failures.

Each detector is O(1) per event and keeps a bounded amount of state (the
least recently seen sources are forgotten first), so a flood of distinct
identities or addresses cannot grow memory. When a detector fires, it calls
``on_event`` once per cooldown with what it saw. The server turns that into
an audit record and a metric; the detectors know nothing of either.

Rate spikes compare the current one-second count of an identity with an
exponentially weighted moving average of its past seconds: a spike is a
second with more than ``factor`` times the average and at least ``floor``
requests. Bursts of authentication failures are more than ``threshold``
failures from one source within ``window_s`` seconds.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Called with (kind, source, details) when a detector fires.
EventSink = Callable[[str, str, dict[str, Any]], None]

RATE_SPIKE = "security.rate_spike"
AUTH_FAILURE_BURST = "security.auth_failure_burst"


@dataclass(slots=True)
class _RateState:
    second: int
    count: int
    average: float
    seen_seconds: int
    last_event: float


class RateSpikeDetector:
    """Per-identity requests per second against its own recent average."""

    def __init__(
        self,
        on_event: EventSink,
        *,
        factor: float = 10.0,
        floor: int = 50,
        alpha: float = 0.2,
        warmup_s: int = 5,
        cooldown_s: float = 60.0,
        max_sources: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.on_event = on_event
        self.factor = factor
        self.floor = floor
        self.alpha = alpha
        self.warmup_s = warmup_s
        self.cooldown_s = cooldown_s
        self.max_sources = max_sources
        self.clock = clock
        self._states: OrderedDict[str, _RateState] = OrderedDict()

    def observe(self, source: str, count: int = 1) -> None:
        """``count`` requests of ``source`` now (several when a node's workers report
        what they counted since their last report)."""
        now = self.clock()
        second = int(now)
        state = self._states.get(source)
        if state is None:
            state = _RateState(second, 0, 0.0, 0, -float("inf"))
            self._states[source] = state
            if len(self._states) > self.max_sources:
                self._states.popitem(last=False)
        else:
            self._states.move_to_end(source)
        if second != state.second:
            self._close_seconds(state, second)
        state.count += count
        baseline = max(state.average, 1.0)
        spiking = (
            state.seen_seconds >= self.warmup_s
            and state.count >= self.floor
            and state.count > self.factor * baseline
        )
        if spiking and now - state.last_event >= self.cooldown_s:
            state.last_event = now
            self.on_event(
                RATE_SPIKE,
                source,
                {
                    "requests_this_second": state.count,
                    "average_per_second": round(state.average, 2),
                    "factor": self.factor,
                },
            )

    def _close_seconds(self, state: _RateState, second: int) -> None:
        """Fold the finished second (and any idle seconds since) into the average."""
        idle = min(second - state.second - 1, 60)
        state.average += self.alpha * (state.count - state.average)
        for _ in range(max(idle, 0)):
            state.average *= 1.0 - self.alpha
        state.seen_seconds += 1 + max(idle, 0)
        state.second = second
        state.count = 0


@dataclass(slots=True)
class _FailureState:
    window_start: float
    failures: int
    last_event: float


class AuthFailureBurstDetector:
    """Authentication failures per source (peer address) in a fixed window."""

    def __init__(
        self,
        on_event: EventSink,
        *,
        threshold: int = 20,
        window_s: float = 10.0,
        cooldown_s: float = 60.0,
        max_sources: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.on_event = on_event
        self.threshold = threshold
        self.window_s = window_s
        self.cooldown_s = cooldown_s
        self.max_sources = max_sources
        self.clock = clock
        self._states: OrderedDict[str, _FailureState] = OrderedDict()

    def observe_failure(self, source: str, count: int = 1) -> None:
        now = self.clock()
        state = self._states.get(source)
        if state is None:
            state = _FailureState(now, 0, -float("inf"))
            self._states[source] = state
            if len(self._states) > self.max_sources:
                self._states.popitem(last=False)
        else:
            self._states.move_to_end(source)
        if now - state.window_start >= self.window_s:
            state.window_start, state.failures = now, 0
        state.failures += count
        if state.failures > self.threshold and now - state.last_event >= self.cooldown_s:
            state.last_event = now
            self.on_event(
                AUTH_FAILURE_BURST,
                source,
                {"failures": state.failures, "window_s": self.window_s},
            )
