"""Per-step control: retries with backoff (no real waits), timeouts, the in-flight bound."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from modelport.config.model import StepControl
from modelport.dataplane.steps import ControlledStep, backoff_s
from modelport.errors import DeadlineExceeded, InvalidRequest, Unavailable
from modelport.types import Array, Call, Origin


class Flaky:
    """Fails with the queued errors first, then answers; counts calls and concurrency."""

    def __init__(self, *errors: Exception, hold: asyncio.Event | None = None) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.running = 0
        self.most = 0
        self.hold = hold

    async def run_step(
        self,
        call: Call | None,
        model: str,
        version: str | None,
        inputs: Mapping[str, Array],
        parameters: Any = None,
    ) -> dict[str, Array]:
        self.calls += 1
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            if self.hold is not None:
                await self.hold.wait()
            if self.errors:
                raise self.errors.pop(0)
            return {}
        finally:
            self.running -= 1


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def controlled(now: int = 0, sleep: Any = None, **control: Any) -> ControlledStep:
    return ControlledStep(
        "step 0 ('m')",
        "m",
        None,
        StepControl.model_validate(control),
        lambda: now,
        sleep,
        draw=lambda: 0.5,
    )


def test_backoff_doubles_and_is_jittered_within_its_cap() -> None:
    assert backoff_s(0, 0.1, 0.0) == pytest.approx(0.05)
    assert backoff_s(0, 0.1, 1.0) == pytest.approx(0.1)
    assert backoff_s(2, 0.1, 0.5) == pytest.approx(0.3)


def test_transient_failures_are_retried_with_growing_backoff() -> None:
    sleeps = Sleeps()
    runner = Flaky(Unavailable("full"), DeadlineExceeded("slow"))
    step = controlled(sleep=sleeps, retries=2, retry_backoff_s=0.1)
    assert asyncio.run(step.run(runner, None, {})) == {}
    assert runner.calls == 3
    assert sleeps.waits == pytest.approx([0.075, 0.15])


def test_retries_run_out_and_the_last_failure_is_raised() -> None:
    runner = Flaky(Unavailable("1"), Unavailable("2"))
    with pytest.raises(Unavailable, match="2"):
        asyncio.run(controlled(sleep=Sleeps(), retries=1).run(runner, None, {}))
    assert runner.calls == 2


def test_a_refused_request_is_never_retried() -> None:
    runner = Flaky(InvalidRequest("bad input"))
    with pytest.raises(InvalidRequest):
        asyncio.run(controlled(sleep=Sleeps(), retries=3).run(runner, None, {}))
    assert runner.calls == 1


def test_no_retry_starts_that_would_end_past_the_request_deadline() -> None:
    runner = Flaky(Unavailable("full"))
    call = Call(Origin.STEP, deadline_ns=10_000_000)  # 10 ms from now = 0
    step = controlled(sleep=Sleeps(), retries=3, retry_backoff_s=1.0)
    with pytest.raises(Unavailable):
        asyncio.run(step.run(runner, call, {}))
    assert runner.calls == 1


def test_a_step_past_its_timeout_fails_with_deadline_exceeded() -> None:
    runner = Flaky(hold=asyncio.Event())
    with pytest.raises(DeadlineExceeded, match=r"step 0 \('m'\) took longer than its timeout_s"):
        asyncio.run(controlled(timeout_s=0.01).run(runner, None, {}))


def test_max_inflight_bounds_concurrent_calls_across_requests() -> None:
    async def scenario() -> Flaky:
        hold = asyncio.Event()
        runner = Flaky(hold=hold)
        step = controlled(max_inflight=2)
        tasks = [asyncio.create_task(step.run(runner, None, {})) for _ in range(5)]
        for _ in range(5):
            await asyncio.sleep(0)
        assert runner.running == 2
        hold.set()
        await asyncio.gather(*tasks)
        return runner

    runner = asyncio.run(scenario())
    assert runner.calls == 5 and runner.most == 2
