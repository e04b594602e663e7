"""Pinning instance threads of compute-bound models to cores of their own."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from modelport.config.model import parse_model_config
from modelport.dataplane.scheduling import cores
from modelport.dataplane.scheduling.cores import PIN_STREAK, CoreClaims, Pinning
from modelport.dataplane.scheduling.policy import PIN_MIN_NS, scheduling_policy
from modelport.dataplane.scheduling.scheduler import Scheduler

ALL = os.sched_getaffinity(0)
pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")


def on_a_thread(pinning: Pinning, durations: list[int]) -> set[int]:
    """Report each duration from one fresh thread; its affinity afterwards."""

    def run() -> set[int]:
        for ns in durations:
            pinning.after(ns)
        return os.sched_getaffinity(0)

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


def test_claims_are_exclusive_until_released() -> None:
    claims = CoreClaims({3, 1})
    assert [claims.claim(), claims.claim(), claims.claim()] == [1, 3, None]
    claims.release(3)
    claims.release(3)  # twice is harmless
    assert claims.claim() == 3
    assert claims.claim() is None


def test_a_thread_is_pinned_after_a_streak_of_long_executions() -> None:
    core = min(ALL)
    claims = CoreClaims({core})
    pinning = Pinning(1000, claims)
    assert on_a_thread(pinning, [5000] * (PIN_STREAK - 1)) == ALL
    assert pinning.held == []
    assert on_a_thread(pinning, [5000] * PIN_STREAK) == {core}
    assert pinning.held == [core]
    assert os.sched_getaffinity(0) == ALL  # the calling (test) thread is untouched
    pinning.release()
    assert claims.claim() == core


def test_a_short_execution_restarts_the_streak() -> None:
    claims = CoreClaims({min(ALL)})
    pinning = Pinning(1000, claims)
    durations = [5000] * (PIN_STREAK - 1) + [10] + [5000] * (PIN_STREAK - 1)
    assert on_a_thread(pinning, durations) == ALL
    assert pinning.held == []


def test_when_every_core_is_held_threads_stay_unpinned() -> None:
    claims = CoreClaims({min(ALL)})
    first, second = Pinning(1000, claims), Pinning(1000, claims)
    assert on_a_thread(first, [5000] * PIN_STREAK) == {min(ALL)}
    assert on_a_thread(second, [5000] * (PIN_STREAK * 2)) == ALL
    assert second.held == []
    first.release()


class Slow:
    """A runtime whose executions take about 1.5 ms (of CPU, or asleep); records affinities."""

    inline_safe = False

    def __init__(self, pin_safe: bool, computes: bool = True) -> None:
        self.pin_safe = pin_safe
        self.computes = computes
        self.affinities: list[frozenset[int]] = []
        self.lock = threading.Lock()

    def predict(self, inputs: Mapping[str, Any], outputs: Sequence[str]) -> dict[str, Any]:
        if self.computes:
            end = time.thread_time() + 0.0015
            while time.thread_time() < end:
                pass
        else:  # as long on the wall clock, but waiting: a small model kept waiting
            threading.Event().wait(0.0015)
        with self.lock:
            self.affinities.append(frozenset(os.sched_getaffinity(0)))
        return {"y": 2 * inputs["x"]}

    def unload(self) -> None:
        pass


def serve(runtime: Slow, count: int, **modelport: Any) -> Scheduler:
    config = parse_model_config({"max_batch_size": 4, "modelport": modelport}, "slow")
    sched = Scheduler(runtime, scheduling_policy(config, None), 1, "slow")

    async def scenario() -> None:
        for i in range(count):
            x = np.full((1, 2), float(i), np.float32)
            ex = await sched.submit({"x": x}, ["y"], 1)
            np.testing.assert_array_equal(ex.outputs["y"], 2 * x)

    asyncio.run(scenario())
    return sched


def test_a_compute_bound_version_gets_its_thread_pinned_and_gives_the_core_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    claims = CoreClaims({max(ALL)})
    monkeypatch.setattr(cores, "CORES", claims)
    runtime = Slow(pin_safe=True)
    sched = serve(runtime, PIN_STREAK + 3)
    assert PIN_MIN_NS <= 1_500_000
    assert runtime.affinities[:PIN_STREAK] == [frozenset(ALL)] * PIN_STREAK
    assert runtime.affinities[-1] == frozenset({max(ALL)})
    assert claims.claim() is None  # held while the version is loaded
    sched.close()
    assert claims.claim() == max(ALL)


@pytest.mark.parametrize(("pin_safe", "configured"), [(False, True), (True, False)])
def test_no_pinning_unless_the_runtime_is_pin_safe_and_it_is_on(
    monkeypatch: pytest.MonkeyPatch, pin_safe: bool, configured: bool
) -> None:
    claims = CoreClaims(set(ALL))
    monkeypatch.setattr(cores, "CORES", claims)
    runtime = Slow(pin_safe=pin_safe)
    sched = serve(runtime, PIN_STREAK + 3, pin_instances=configured)
    assert set(runtime.affinities) == {frozenset(ALL)}
    sched.close()


def test_waiting_is_not_computing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Executions long on the wall clock but short on the CPU never pin."""
    claims = CoreClaims(set(ALL))
    monkeypatch.setattr(cores, "CORES", claims)
    runtime = Slow(pin_safe=True, computes=False)
    sched = serve(runtime, PIN_STREAK + 3)
    assert set(runtime.affinities) == {frozenset(ALL)}
    sched.close()
