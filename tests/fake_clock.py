"""A clock for tests: time moves only when the test says so.

``advance`` moves both readings forward and runs every timer that comes due
on the way, each at its own time and in time order (timers due at the same
moment run in the order they were set), so a test states "4 ms pass" and then
asserts what the code did, with no sleeps and no margin for a slow machine.
Timers run on the calling thread: advance from the event loop's thread, as
the code under test expects its callbacks there.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any


class FakeTimer:
    """A timer set on a ``FakeClock``."""

    __slots__ = ("args", "callback", "cancelled", "when_ns")

    def __init__(
        self, when_ns: int, callback: Callable[..., object], args: tuple[Any, ...]
    ) -> None:
        self.when_ns = when_ns
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Implements ``modelport.clock.Clock``; starts at ``start_ns`` and ``wall_s``."""

    def __init__(self, start_ns: int = 1_000_000_000, wall_s: float = 1_700_000_000.0) -> None:
        self.now_ns = start_ns
        self._wall_offset_s = wall_s - start_ns / 1e9
        self._timers: list[tuple[int, int, FakeTimer]] = []
        self._order = itertools.count()

    def monotonic_ns(self) -> int:
        return self.now_ns

    def wall(self) -> float:
        return self._wall_offset_s + self.now_ns / 1e9

    def call_at(self, when_ns: int, callback: Callable[..., object], *args: Any) -> FakeTimer:
        timer = FakeTimer(when_ns, callback, args)
        heapq.heappush(self._timers, (when_ns, next(self._order), timer))
        return timer

    def call_later(self, delay_ns: int, callback: Callable[..., object], *args: Any) -> FakeTimer:
        return self.call_at(self.now_ns + delay_ns, callback, *args)

    def advance(self, ns: int) -> None:
        """Move time forward by ``ns``, running the timers due meanwhile."""
        if ns < 0:
            raise ValueError("a monotonic clock does not go back")
        end = self.now_ns + ns
        while self._timers and self._timers[0][0] <= end:
            when, _, timer = heapq.heappop(self._timers)
            self.now_ns = max(self.now_ns, when)
            if not timer.cancelled:
                timer.callback(*timer.args)
        self.now_ns = end

    def set_wall(self, wall_s: float) -> None:
        """Step the wall clock (as an operator or NTP may); the monotonic reading stays."""
        self._wall_offset_s = wall_s - self.now_ns / 1e9

    @property
    def pending(self) -> int:
        """Timers set and neither run nor cancelled."""
        return sum(not t.cancelled for _, _, t in self._timers)
