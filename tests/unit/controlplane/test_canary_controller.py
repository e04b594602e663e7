"""The canary controller's ticks over a fake clock, a real store and real
routing windows: steps advance, promote, roll back and resume after a restart
without a server or a sleep."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from modelport.controlplane.canary import CanaryController
from modelport.controlplane.store import Database
from modelport.controlplane.traffic import TrafficManager
from modelport.dataplane.routing.traffic import Traffic
from modelport.observability.metrics import Metrics
from tests.fake_clock import FakeClock
from tests.unit.controlplane.stores import Stores

T = TypeVar("T")
SECOND_NS = 1_000_000_000
SPEC = {"version": "2", "steps": [50, 100], "interval_s": 10, "min_requests": 3}


class Registry:
    """Versions 1 and 2 of model m, both ready; pins are only remembered."""

    def __init__(self) -> None:
        self.pinned: dict[str, set[int]] = {}

    def version_states(self, model: str) -> dict[str, tuple[str, str]]:
        return {"1": ("READY", ""), "2": ("READY", "")}

    def pins(self, model: str) -> set[int]:
        return self.pinned.get(model, set())

    def pin(self, model: str, versions: set[int]) -> None:
        self.pinned[model] = versions

    async def refresh(self, model: str) -> None:
        return None


class World:
    """One server's canary controller, with what it reads and writes."""

    def __init__(self, stores: Stores, clock: FakeClock) -> None:
        self.stores = stores
        self.clock = clock
        self.traffic = Traffic(Metrics(), clock=lambda: clock.monotonic_ns() / SECOND_NS)
        manager = TrafficManager(stores.policies, stores.audit, Registry(), self.traffic)  # type: ignore[arg-type]
        self.controller = CanaryController(
            stores.canaries, stores.policies, manager, self.traffic, clock=clock
        )

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run(coro)

    def answer(self, version: str, count: int, failed: bool = False) -> None:
        routed = self.traffic.routed("m")
        assert routed is not None
        for _ in range(count):
            routed.record(version, 2_000_000, failed)

    def tick_after(self, seconds: float) -> None:
        self.clock.advance(int(seconds * SECOND_NS))
        self.run(self.controller.tick())

    def routes(self) -> list[dict[str, Any]]:
        stored = self.stores.policies.get("m")
        assert stored is not None
        routes: list[dict[str, Any]] = stored.body["routes"]
        return routes


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[Stores]:
    with Stores.open(Database.sqlite_url(tmp_path / "data")) as opened:
        yield opened


@pytest.fixture
def world(stores: Stores) -> World:
    return World(stores, FakeClock())


def test_steps_advance_on_evidence_and_the_last_one_promotes(world: World) -> None:
    started = world.run(world.controller.begin("m", SPEC))
    assert started.body["step_started_at"] == world.clock.wall()
    assert world.routes() == [{"version": "1", "weight": 50}, {"version": "2", "weight": 50}]
    world.answer("2", 3)
    world.tick_after(9.9)
    assert world.controller.get("m").body["step"] == 0
    world.tick_after(0.1)
    assert world.controller.get("m").body["step"] == 1
    assert world.routes() == [{"version": "2", "weight": 100}]
    world.answer("2", 3)
    world.tick_after(10)
    promoted = world.controller.get("m")
    assert promoted.state == "promoted"
    assert promoted.body["reason"] == "every step passed its SLO"
    assert not world.controller.is_active("m")


def test_an_error_rate_breach_rolls_back_to_stable_at_once(world: World) -> None:
    world.run(world.controller.begin("m", SPEC))
    world.answer("2", 3, failed=True)
    world.tick_after(1)
    canary = world.controller.get("m")
    assert canary.state == "rolled_back"
    assert canary.body["reason"].startswith("error rate 1.000 > 0.01 over 3 requests")
    assert world.routes() == [{"version": "1", "weight": 100}]


def test_a_first_release_canary_resumes_with_its_step_clock_restarted(
    stores: Stores,
) -> None:
    stored = {
        "version": "2",
        "steps": [50, 100],
        "interval_s": 10.0,
        "slo": {"max_error_rate": 0.01, "max_p99_ms": None, "min_agreement": None},
        "min_requests": 3,
        "stable": "1",
        "step": 0,
        "step_started_at": 1000.0,
        "weight": 50,
        "reason": None,
    }
    stores.canaries.put(
        "m", stored, "running", expected_revision=None, actor="t", action="canary.start"
    )
    world = World(stores, FakeClock())
    world.controller.load_stored()
    resumed = world.controller.get("m")
    assert resumed.body == {**stored, "step_started_at": world.clock.wall()}
    # No evidence_timeout_s was stored: the step waits five intervals, then aborts.
    world.tick_after(49.9)
    assert world.controller.is_active("m")
    world.tick_after(0.1)
    aborted = world.controller.get("m")
    assert aborted.state == "aborted"
    assert "policy_before" not in aborted.body and "evidence_timeout_s" not in aborted.body


async def _ticks_only_while_a_canary_runs(world: World) -> tuple[int, int]:
    controller = world.controller
    controller.tick_s = 0.01
    ticks = 0
    tick = controller.tick

    async def counted() -> None:
        nonlocal ticks
        ticks += 1
        await tick()

    controller.tick = counted  # type: ignore[method-assign]
    stop = asyncio.Event()
    loop = asyncio.create_task(controller.run(stop))
    await asyncio.sleep(0.2)
    idle = ticks
    await controller.begin("m", SPEC)
    await asyncio.sleep(0.2)
    running = ticks - idle
    stop.set()
    await loop
    return idle, running


def test_the_controller_ticks_only_while_a_canary_runs(world: World) -> None:
    idle, running = world.run(_ticks_only_while_a_canary_runs(world))
    # Every 0.01 s would be about 20 ticks in 0.2 s; with no canary there are none.
    assert idle == 0
    assert running >= 5
