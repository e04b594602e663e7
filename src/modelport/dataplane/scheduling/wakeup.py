"""One pending wake-up of a scheduler's pump, at the earliest time asked for.

A batching decision may say "nothing now, look again at T" (a batch still
gathering, a queue delay not yet spent). Several such answers in a row must
not stack timers: only the earliest one matters, and a later one is dropped.
"""

from __future__ import annotations

from collections.abc import Callable

from modelport.clock import Clock, Timer


class Wakeup:
    """Calls ``pump`` once at the earliest time ``at`` was given since it last ran."""

    __slots__ = ("_at", "_pump", "_timer", "_timers")

    def __init__(self, timers: Clock, pump: Callable[[], object]) -> None:
        self._timers = timers
        self._pump = pump
        self._timer: Timer | None = None
        self._at = 0

    def at(self, at_ns: int) -> None:
        """Wake at ``at_ns``, unless a wake-up at that time or earlier is pending."""
        if self._timer is not None:
            if self._at <= at_ns:
                return
            self._timer.cancel()
        self._at = at_ns
        self._timer = self._timers.call_at(at_ns, self._woken)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _woken(self) -> None:
        self._timer = None
        self._pump()
