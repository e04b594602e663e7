"""Time, as one object passed in: two readings and a timer.

- ``monotonic_ns()`` for anything measured or compared within this process:
  deadlines, batching delays, execution and queue timings. It never steps
  back when the system time is set, so a deadline cannot move.
- ``wall()`` (seconds since the epoch) for anything stored and read again
  after a restart or on another node, such as the start of a canary step: a
  monotonic reading means nothing outside the process that took it.
- ``call_at`` / ``call_later`` run a callback on the event loop at a
  monotonic time, and hand back a handle that cancels it.

Code that needs time takes a ``Clock`` rather than reading ``time`` itself,
so tests drive it with a fake that moves only when told and fires due timers
as it moves (see ``tests/fake_clock.py``): deadline tests then need no sleeps
and cannot flake on a loaded machine.

This module imports nothing of modelport, so every layer may use it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol, TypeVarTuple

_Ts = TypeVarTuple("_Ts")


class Timer(Protocol):
    """A scheduled callback that may still be called off."""

    def cancel(self) -> None:
        """Make sure the callback does not run (nothing happens if it already ran)."""
        ...


class Clock(Protocol):
    """The time source and timer of the serving process."""

    def monotonic_ns(self) -> int:
        """Nanoseconds on a clock that only moves forward; only differences mean anything."""
        ...

    def wall(self) -> float:
        """Seconds since the Unix epoch, for times that are stored or shared between nodes."""
        ...

    def call_at(self, when_ns: int, callback: Callable[[*_Ts], object], *args: *_Ts) -> Timer:
        """Run ``callback(*args)`` on the event loop once ``monotonic_ns()`` reaches ``when_ns``.

        Must be called on the event loop's thread. Arguments are passed
        through rather than bound in a closure, so a timer per request
        allocates nothing more than its handle.
        """
        ...

    def call_later(self, delay_ns: int, callback: Callable[[*_Ts], object], *args: *_Ts) -> Timer:
        """Run ``callback(*args)`` on the event loop ``delay_ns`` from now."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic_ns``, ``time.time`` and the running event loop.

    The readings are the ``time`` functions themselves, bound once as
    attributes, so reading the clock on the request path costs one call, as
    calling ``time`` directly would. Timers go to whichever event loop is
    running when they are set, converted to a delay: the loop's own clock
    (uvloop's included) need not share an origin with ``monotonic_ns``.
    """

    __slots__ = ("monotonic_ns", "wall")

    def __init__(self) -> None:
        self.monotonic_ns: Callable[[], int] = time.monotonic_ns
        self.wall: Callable[[], float] = time.time

    def call_at(
        self, when_ns: int, callback: Callable[[*_Ts], object], *args: *_Ts
    ) -> asyncio.TimerHandle:
        delay_s = (when_ns - self.monotonic_ns()) / 1e9
        return asyncio.get_running_loop().call_later(delay_s, callback, *args)

    def call_later(
        self, delay_ns: int, callback: Callable[[*_Ts], object], *args: *_Ts
    ) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(delay_ns / 1e9, callback, *args)
