"""The autoscaler on real schedulers: held requests make the load, a fake clock the time."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from modelport.config.model import parse_model_config
from modelport.controlplane.autoscaler import Autoscaler
from modelport.dataplane.scheduled import ScheduledServable
from modelport.dataplane.table import ModelVersion
from modelport.types import ModelSignature, TensorSpec
from tests.fake_clock import FakeClock
from tests.unit.dataplane.versions import scheduled_version

S = 1_000_000_000
SIGNATURE = ModelSignature((TensorSpec("x", "FP32", (2,)),), (TensorSpec("y", "FP32", (2,)),))


class Held:
    """y = x + 1 once ``gate`` opens."""

    native = SIGNATURE
    inline_safe = False
    pin_safe = False

    def __init__(self) -> None:
        self.gate = threading.Event()

    def predict(self, inputs: Mapping[str, Any], outputs: Sequence[str]) -> dict[str, Any]:
        self.gate.wait(10)
        return {"y": inputs["x"] + 1}

    def unload(self) -> None:
        pass


def version(runtime: Held, name: str = "m", **autoscaling: float) -> ModelVersion:
    raw: dict[str, Any] = {"max_batch_size": 0}
    if autoscaling:
        raw["modelport"] = {"autoscaling": autoscaling}
    return scheduled_version(runtime, SIGNATURE, parse_model_config(raw, name), name)


def instances(v: ModelVersion) -> int:
    servable = v.servable
    assert isinstance(servable, ScheduledServable)
    return servable.scheduler.instances


def submit(v: ModelVersion, n: int) -> list[asyncio.Task[Any]]:
    servable = v.servable
    assert isinstance(servable, ScheduledServable)
    x = np.zeros(2, np.float32)
    return [asyncio.ensure_future(servable.scheduler.submit({"x": x}, ["y"], 1)) for _ in range(n)]


async def ticks(scaler: Autoscaler, clock: FakeClock, seconds: float) -> None:
    for _ in range(round(seconds * 2)):
        await asyncio.sleep(0.01)  # lets queued requests reach the scheduler
        scaler.tick()
        clock.advance(S // 2)


def test_overload_adds_instances_and_quiet_removes_them(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        runtime = Held()
        v = version(
            runtime,
            min_instances=1,
            max_instances=3,
            target_in_flight_per_instance=2,
            upscale_delay_s=1,
            downscale_delay_s=2,
        )
        clock = FakeClock()
        scaler = Autoscaler(lambda: [v], clock)
        tasks = submit(v, 8)
        await ticks(scaler, clock, 1)
        assert instances(v) == 1
        await ticks(scaler, clock, 0.5)
        assert instances(v) == 3
        runtime.gate.set()
        await asyncio.gather(*tasks)
        await ticks(scaler, clock, 2)
        assert instances(v) == 3
        await ticks(scaler, clock, 0.5)
        assert instances(v) == 1

    with caplog.at_level(logging.INFO, "modelport.autoscaling"):
        asyncio.run(main())
    changes = [r for r in caplog.records if r.message == "instance count changed"]
    assert [(r.__dict__["from"], r.__dict__["to"]) for r in changes] == [(1, 3), (3, 1)]
    assert all(r.__dict__["model"] == "m" and r.__dict__["version"] == "1" for r in changes)
    assert "overload" in changes[0].__dict__["reason"]
    assert "underload" in changes[1].__dict__["reason"]


def test_versions_without_autoscaling_keep_their_count() -> None:
    async def main() -> None:
        runtime = Held()
        v = version(runtime)
        clock = FakeClock()
        scaler = Autoscaler(lambda: [v], clock)
        tasks = submit(v, 8)
        await ticks(scaler, clock, 5)
        assert instances(v) == 1
        runtime.gate.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())


def test_gauge_lists_each_visible_version_with_its_count() -> None:
    async def main() -> None:
        runtime = Held()
        runtime.gate.set()
        a = version(runtime, "a", min_instances=2, max_instances=4)
        b = version(runtime, 'b"q')
        clock = FakeClock()
        scaler = Autoscaler(lambda: [b, a], clock)
        scaler.tick()  # 1 is below min_instances: brought to 2 at once
        text = scaler.render().decode()
        assert "# TYPE modelport_instances gauge" in text
        assert 'modelport_instances{model="a",version="1"} 2\n' in text
        assert 'modelport_instances{model="b\\"q",version="1"} 1\n' in text
        assert text.index('model="a"') < text.index('model="b')
        hidden = scaler.render(lambda name: name == "a").decode()
        assert 'model="b' not in hidden

    asyncio.run(main())


def test_run_ticks_on_the_clock_until_stopped() -> None:
    async def main() -> None:
        runtime = Held()
        runtime.gate.set()
        v = version(runtime, min_instances=2, max_instances=2)
        clock = FakeClock()
        stop = asyncio.Event()
        task = asyncio.ensure_future(Autoscaler(lambda: [v], clock).run(stop))
        await asyncio.sleep(0.01)
        assert instances(v) == 1
        clock.advance(S // 2)
        await asyncio.sleep(0.01)
        assert instances(v) == 2
        stop.set()
        await asyncio.wait_for(task, 1)

    asyncio.run(main())
