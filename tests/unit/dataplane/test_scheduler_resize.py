"""Changing a scheduler's instance count while it serves: the autoscaler's lever.

A runtime that blocks until released holds instances busy, so how many
batches compute at once is counted exactly, with no timing guesses.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from modelport.config.model import parse_model_config
from modelport.dataplane.scheduling.cores import PIN_STREAK, CoreClaims, Pinning
from modelport.dataplane.scheduling.policy import scheduling_policy
from modelport.dataplane.scheduling.scheduler import Scheduler
from modelport.errors import Unavailable
from modelport.types import ModelSignature, TensorSpec


class Held:
    """y = x + 1, each call waiting for ``gate``; counts the calls computing."""

    native = ModelSignature((TensorSpec("x", "FP32", (2,)),), (TensorSpec("y", "FP32", (2,)),))
    inline_safe = False
    pin_safe = False

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.now = 0

    def predict(self, inputs: Mapping[str, Any], outputs: Sequence[str]) -> dict[str, Any]:
        with self.lock:
            self.now += 1
        self.gate.wait(10)
        with self.lock:
            self.now -= 1
        return {"y": inputs["x"] + 1}

    def computing(self) -> int:
        with self.lock:
            return self.now

    def unload(self) -> None:
        pass


def make(runtime: Held, instances: int) -> Scheduler:
    cfg = parse_model_config({"max_batch_size": 0}, "t")
    return Scheduler(runtime, scheduling_policy(cfg, None), instances, "t")


async def until(check: Any) -> None:
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


def submit(sched: Scheduler, i: int) -> asyncio.Task[Any]:
    x = np.full(2, float(i), dtype=np.float32)
    return asyncio.ensure_future(sched.submit({"x": x}, ["y"], 1))


async def answers(tasks: list[asyncio.Task[Any]]) -> list[float]:
    done = await asyncio.gather(*tasks)
    return [float(ex.outputs["y"][0]) for ex in done]


def test_a_larger_count_starts_queued_requests_at_once() -> None:
    async def main() -> None:
        runtime = Held()
        sched = make(runtime, 1)
        tasks = [submit(sched, i) for i in range(4)]
        await until(lambda: runtime.computing() == 1)
        assert (sched.in_flight, sched.queued) == (1, 3)
        sched.resize(3)
        await until(lambda: runtime.computing() == 3)
        assert (sched.in_flight, sched.queued) == (3, 1)
        runtime.gate.set()
        assert await answers(tasks) == [1.0, 2.0, 3.0, 4.0]
        assert sched.in_flight == 0
        sched.close()

    asyncio.run(main())


def test_a_smaller_count_lets_running_batches_finish_first() -> None:
    async def main() -> None:
        runtime = Held()
        sched = make(runtime, 3)
        tasks = [submit(sched, i) for i in range(3)]
        await until(lambda: runtime.computing() == 3)
        sched.resize(1)
        later = [submit(sched, i) for i in range(3, 6)]
        await asyncio.sleep(0.02)
        assert (sched.in_flight, sched.queued) == (3, 3)
        runtime.gate.set()
        assert await answers(tasks + later) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        runtime.gate.clear()
        again = [submit(sched, i) for i in range(2)]
        await until(lambda: runtime.computing() == 1)
        await asyncio.sleep(0.02)
        assert (sched.in_flight, sched.queued) == (1, 1)
        runtime.gate.set()
        assert await answers(again) == [1.0, 2.0]
        sched.close()

    asyncio.run(main())


def test_growing_again_after_shrinking_and_past_the_first_count() -> None:
    async def main() -> None:
        runtime = Held()
        sched = make(runtime, 2)
        sched.resize(1)
        sched.resize(4)
        tasks = [submit(sched, i) for i in range(6)]
        await until(lambda: runtime.computing() == 4)
        assert sched.instances == 4
        runtime.gate.set()
        assert await answers(tasks) == [float(i + 1) for i in range(6)]
        sched.close()

    asyncio.run(main())


def test_no_count_below_one_and_none_once_closing() -> None:
    async def main() -> None:
        runtime = Held()
        sched = make(runtime, 2)
        with pytest.raises(ValueError, match="at least 1"):
            sched.resize(0)
        runtime.gate.set()
        await sched.drain_and_close()
        sched.resize(3)
        assert sched.instances == 2
        with pytest.raises(Unavailable):
            await sched.submit({"x": np.zeros(2, np.float32)}, ["y"], 1)

    asyncio.run(main())


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_cores_of_ended_threads_are_given_back_and_live_ones_kept() -> None:
    core = min(os.sched_getaffinity(0))
    claims = CoreClaims({core})
    pinning = Pinning(1000, claims)
    ended = ThreadPoolExecutor(1)
    ended.submit(lambda: [pinning.after(5000) for _ in range(PIN_STREAK)]).result()
    assert pinning.held == [core]
    pinning.release_ended()  # its thread is still there, idle in its pool
    assert pinning.held == [core]
    ended.shutdown(wait=True)
    pinning.release_ended()
    assert pinning.held == []
    assert claims.claim() == core
