"""Requests held for a cold load: one load shared, bounded waits, a bounded queue."""

from __future__ import annotations

import asyncio

import pytest

from modelport.controlplane.coldstart import ColdLoads, HoldQueueFull
from modelport.errors import DeadlineExceeded, ModelNotReady, Unavailable
from tests.fake_clock import FakeClock

SECOND = 1_000_000_000


class SlowLoad:
    """A load that ends when the test says, counting how often it ran."""

    def __init__(self, reason: str | None = None) -> None:
        self.runs = 0
        self.release = asyncio.Event()
        self.reason = reason

    async def __call__(self) -> str | None:
        self.runs += 1
        await self.release.wait()
        return self.reason


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_held_callers_share_one_load() -> None:
    async def scenario() -> None:
        loads: ColdLoads[str] = ColdLoads(FakeClock(), timeout_s=60)
        load = SlowLoad()
        waits = [asyncio.create_task(loads.wait("m", "m", load, None)) for _ in range(32)]
        await _settle()
        assert loads.held("m") == 32 and load.runs == 1
        load.release.set()
        await asyncio.gather(*waits)
        assert loads.held("m") == 0 and not loads.loading("m")

    asyncio.run(scenario())


def test_a_failed_load_gives_every_caller_its_reason() -> None:
    async def scenario() -> None:
        loads: ColdLoads[str] = ColdLoads(FakeClock())
        load = SlowLoad("model.onnx: not a model")
        waits = [asyncio.create_task(loads.wait("m", "model 'm'", load, None)) for _ in range(3)]
        await _settle()
        load.release.set()
        results = await asyncio.gather(*waits, return_exceptions=True)
        reason = "model 'm' failed to load: model.onnx: not a model"
        assert [str(r) for r in results] == [reason] * 3
        assert all(isinstance(r, ModelNotReady) for r in results) and load.runs == 1

    asyncio.run(scenario())


def test_the_callers_deadline_and_the_cold_start_timeout_bound_the_wait() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        loads: ColdLoads[str] = ColdLoads(clock, timeout_s=10)
        load = SlowLoad()
        hurried = asyncio.create_task(loads.wait("m", "m", load, clock.monotonic_ns() + SECOND))
        patient = asyncio.create_task(loads.wait("m", "m", load, None))
        await _settle()
        clock.advance(2 * SECOND)
        with pytest.raises(DeadlineExceeded):
            await hurried
        assert not patient.done()
        clock.advance(9 * SECOND)
        with pytest.raises(Unavailable, match="cold_start_timeout"):
            await patient
        # The load runs on for whoever comes next.
        assert loads.loading("m") and load.runs == 1
        late = asyncio.create_task(loads.wait("m", "m", load, None))
        await _settle()
        load.release.set()
        await late
        assert load.runs == 1

    asyncio.run(scenario())


def test_past_the_hold_limit_callers_are_told_to_retry() -> None:
    async def scenario() -> None:
        loads: ColdLoads[str] = ColdLoads(FakeClock(), timeout_s=60, hold_limit=2)
        load = SlowLoad()
        waits = [asyncio.create_task(loads.wait("m", "m", load, None)) for _ in range(2)]
        await _settle()
        with pytest.raises(HoldQueueFull) as caught:
            await loads.wait("m", "m", load, None)
        assert isinstance(caught.value, Unavailable)
        assert caught.value.retry_after_header == "5"
        load.release.set()
        await asyncio.gather(*waits)

    asyncio.run(scenario())
