"""The real clock's timers on an event loop, and the fake clock the other tests rely on."""

from __future__ import annotations

import asyncio
import time

import pytest

from modelport.clock import Clock, SystemClock
from tests.fake_clock import FakeClock


def test_system_clock_timers_run_on_the_loop_and_can_be_cancelled() -> None:
    clock: Clock = SystemClock()

    async def scenario() -> list[str]:
        fired: list[str] = []
        done = asyncio.get_running_loop().create_future()
        cancelled = clock.call_at(clock.monotonic_ns(), fired.append, "cancelled")
        cancelled.cancel()
        clock.call_at(clock.monotonic_ns() - 1, fired.append, "due")
        clock.call_later(0, done.set_result, None)
        await done
        return fired

    assert asyncio.run(scenario()) == ["due"]


def test_system_clock_readings() -> None:
    clock = SystemClock()
    first = clock.monotonic_ns()
    assert clock.monotonic_ns() >= first
    assert abs(clock.wall() - time.time()) < 60


def test_fake_clock_runs_due_timers_in_time_order_each_at_its_time() -> None:
    clock = FakeClock(start_ns=0)
    seen: list[tuple[str, int]] = []

    def note(name: str) -> None:
        seen.append((name, clock.monotonic_ns()))

    clock.call_later(300, note, "c")
    clock.call_at(100, note, "a")
    clock.call_at(100, note, "b")  # same time: after the one set first
    gone = clock.call_later(200, note, "cancelled")
    gone.cancel()
    clock.call_later(1_000, note, "later")
    clock.advance(500)
    assert seen == [("a", 100), ("b", 100), ("c", 300)]
    assert clock.monotonic_ns() == 500
    assert clock.pending == 1


def test_fake_clock_runs_a_timer_set_by_a_timer_when_it_comes_due() -> None:
    clock = FakeClock(start_ns=0)
    seen: list[int] = []
    clock.call_at(10, lambda: clock.call_later(5, lambda: seen.append(clock.monotonic_ns())))
    clock.advance(14)
    assert seen == []
    clock.advance(1)
    assert seen == [15]


def test_fake_clock_wall_moves_with_it_and_may_be_stepped() -> None:
    clock = FakeClock(start_ns=0, wall_s=1000.0)
    clock.advance(2_500_000_000)
    assert clock.wall() == pytest.approx(1002.5)
    clock.set_wall(50.0)  # a wall clock can go back; the monotonic reading never does
    assert clock.wall() == pytest.approx(50.0)
    assert clock.monotonic_ns() == 2_500_000_000
    with pytest.raises(ValueError, match="does not go back"):
        clock.advance(-1)
