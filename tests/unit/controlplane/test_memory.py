"""The memory budget: the eviction choice, measuring, and the registry applying both.

Registry tests read no real memory: the process's resident size is a fake
that never grows, so each version costs exactly its files (the floor of a
measure) and a budget is written in those sizes. Time is a fake clock.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import onnx
import pytest

from modelport.controlplane.memory import (
    MEMORY_REASON,
    MemoryBudget,
    OverBudget,
    Resident,
    disk_bytes,
    evictions,
    format_bytes,
    node_budget,
    process_rss,
    refusal,
    trim_heap,
    worth_waiting,
)
from modelport.controlplane.ondemand import busy
from modelport.controlplane.registry import Registry
from modelport.dataplane.table import ModelVersion
from modelport.errors import ModelNotReady, NotLoaded, Unavailable
from modelport.observability.metrics import Metrics
from tests.fake_clock import FakeClock
from tests.integration.models import identity_model

SECOND = 1_000_000_000


def _resident(name: str, size: int, used: int, evictable: bool = True, later: bool = False):
    return Resident((name, "1"), size, used, evictable, later)


# ----------------------------------------------------------------- the choice


def test_nothing_is_evicted_when_the_load_fits() -> None:
    assert evictions([_resident("a", 100, 1)], needed_bytes=50, free_bytes=50) == []


def test_the_least_recently_used_go_first_and_only_as_many_as_needed() -> None:
    residents = [_resident("new", 100, 30), _resident("old", 100, 10), _resident("mid", 100, 20)]
    assert evictions(residents, needed_bytes=150, free_bytes=0) == [("old", "1"), ("mid", "1")]
    assert evictions(residents, needed_bytes=80, free_bytes=0) == [("old", "1")]
    assert evictions(residents, needed_bytes=120, free_bytes=30) == [("old", "1")]


def test_versions_that_may_not_be_evicted_are_skipped() -> None:
    residents = [_resident("held", 500, 1, evictable=False), _resident("idle", 100, 2)]
    assert evictions(residents, needed_bytes=100, free_bytes=0) == [("idle", "1")]


def test_nothing_is_evicted_when_even_all_would_not_be_enough() -> None:
    residents = [_resident("held", 500, 1, evictable=False), _resident("idle", 100, 2)]
    assert evictions(residents, needed_bytes=300, free_bytes=0) is None
    assert evictions([], needed_bytes=1, free_bytes=0) is None


def test_a_load_waits_only_when_busy_versions_could_make_room() -> None:
    busy_one = [_resident("busy", 200, 1, evictable=False, later=True)]
    assert evictions(busy_one, needed_bytes=150, free_bytes=0) is None
    assert worth_waiting(busy_one, needed_bytes=150, free_bytes=0)
    pinned = [_resident("pinned", 200, 1, evictable=False)]
    assert not worth_waiting(pinned, needed_bytes=150, free_bytes=0)
    assert not worth_waiting(busy_one, needed_bytes=250, free_bytes=0)


def test_the_refusal_names_the_budget_and_what_was_needed() -> None:
    message = refusal("m version 1", 120 << 20, 2 << 30, 30 << 20)
    assert message == (
        "loading m version 1 needs about 120 MiB; the memory budget 2.0 GiB "
        "has 30 MiB free and nothing can be evicted"
    )
    assert format_bytes(3 << 10) == "3 KiB"
    assert "0 KiB free" in refusal("m version 1", 10, 5, -7)


# ---------------------------------------------------------------- measuring


def test_the_resident_size_is_read_for_this_process_and_others() -> None:
    own = process_rss()
    assert own > 1 << 20  # a Python interpreter takes more than a MiB
    grown = bytearray(64 << 20)
    grown[::4096] = b"x" * len(grown[::4096])  # touch every page
    assert process_rss() - own > 32 << 20
    del grown
    assert process_rss(os.getpid()) > 0
    assert process_rss(2**22 + 12345) == 0  # no such process: 0, not an error


def test_trimming_is_harmless_and_files_are_counted(tmp_path: Path) -> None:
    assert trim_heap() in (True, False)
    (tmp_path / "sub").mkdir()
    (tmp_path / "a").write_bytes(b"x" * 1000)
    (tmp_path / "sub" / "b").write_bytes(b"y" * 24)
    assert disk_bytes(tmp_path) == 1024
    assert disk_bytes(tmp_path / "missing") == 0


def test_a_node_of_workers_shares_the_budget_equally() -> None:
    class Audit:
        def record(self, model: str, action: str, **kwargs: object) -> None: ...

    assert node_budget(None, 4, busy, Audit(), "local") is None
    budget = node_budget(4 << 30, 4, busy, Audit(), "local")
    assert budget is not None and budget.limit == 1 << 30
    with pytest.raises(ValueError):
        MemoryBudget(0, busy)


# ------------------------------------------------------- the registry applies it


def _write(root: Path, name: str, config: str = "") -> int:
    path = root / name / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    onnx.save(identity_model("FP32"), str(path))
    if config:
        (root / name / "config.yaml").write_text(config)
    return disk_bytes(path.parent)


class Recorded:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, int, str]] = []

    async def __call__(self, name: str, version: str, size: int, made_room_for: str) -> None:
        self.events.append((name, version, size, made_room_for))


def _registry(root: Path, limit: int, clock: FakeClock, on_evict: Recorded | None = None):
    budget = MemoryBudget(limit, busy, on_evict, rss=lambda pid: 0, trim=lambda: True)
    metrics = Metrics()
    return Registry(root, metrics, clock=clock, cold_start_timeout=5, memory=budget), metrics


def _entry(reg: Registry, name: str) -> tuple[str, str]:
    found = next(e for e in reg.index(False) if e.name == name)
    return found.state, found.reason


def test_a_third_model_evicts_the_least_recently_used_and_it_comes_back(tmp_path: Path) -> None:
    size = max(_write(tmp_path, n) for n in ("a", "b", "c"))
    recorded = Recorded()

    async def scenario() -> None:
        clock = FakeClock()
        reg, metrics = _registry(tmp_path, 2 * size + size // 2, clock, recorded)
        await reg.start()  # a and b load; c makes room by evicting a (the oldest)
        assert _entry(reg, "a") == ("UNAVAILABLE", MEMORY_REASON)
        assert {m.name for m in reg.ready()} == {"b", "c"}
        assert recorded.events == [("a", "1", size, "c version 1")]
        assert (
            metrics.registry.get_sample_value(
                "modelport_evictions_total", {"model": "a", "version": "1"}
            )
            == 1
        )
        assert metrics.registry.get_sample_value("modelport_memory_budget_bytes") == (
            2 * size + size // 2
        )
        assert (
            metrics.registry.get_sample_value(
                "modelport_model_memory_bytes", {"model": "c", "version": "1"}
            )
            == size
        )
        with pytest.raises(NotLoaded, match=MEMORY_REASON):
            reg.acquire("a", None)
        clock.advance(SECOND)
        reg.acquire("b", None).last_used_ns = clock.monotonic_ns()  # b is used: c is older
        model = await reg.acquire_loading("a", None)  # on demand, as after an idle unload
        assert (model.name, _entry(reg, "a")) == ("a", ("READY", ""))
        assert _entry(reg, "c") == ("UNAVAILABLE", MEMORY_REASON)
        assert (
            metrics.registry.get_sample_value(
                "modelport_model_memory_bytes", {"model": "c", "version": "1"}
            )
            is None
        )
        assert reg.memory is not None and reg.memory.used() == 2 * size
        await reg.close()

    asyncio.run(scenario())


def test_kept_and_pinned_versions_are_never_evicted(tmp_path: Path) -> None:
    size = _write(tmp_path, "kept", "modelport: {keep_loaded: true}\n")
    _write(tmp_path, "pinned")
    _write(tmp_path, "later")

    async def scenario() -> None:
        clock = FakeClock()
        reg, _ = _registry(tmp_path, 2 * size + size // 2, clock)
        reg.pin("pinned", {1})
        await reg.start()  # "kept" and "later" load first (name order), "pinned" last
        assert {m.name for m in reg.ready()} == {"kept", "pinned"}
        assert _entry(reg, "later") == ("UNAVAILABLE", MEMORY_REASON)
        # Nothing can make room now: the request fails at once, naming the budget.
        with pytest.raises(OverBudget, match="memory budget") as refused:
            await reg.acquire_loading("later", None)
        assert isinstance(refused.value, Unavailable)
        assert {m.name for m in reg.ready()} == {"kept", "pinned"}
        state, reason = _entry(reg, "later")
        assert state == "UNAVAILABLE" and "memory budget" in reason
        # ... and it stays loadable on demand: with the pin gone, it loads.
        reg.pin("pinned", set())
        assert (await reg.acquire_loading("later", None)).name == "later"
        assert _entry(reg, "pinned") == ("UNAVAILABLE", MEMORY_REASON)
        assert _entry(reg, "kept") == ("READY", "")
        await reg.close()

    asyncio.run(scenario())


def test_a_budget_too_small_for_a_kept_model_leaves_it_unavailable(tmp_path: Path) -> None:
    _write(tmp_path, "big", "modelport: {keep_loaded: true}\n")
    (tmp_path / "big" / "1" / "weights.bin").write_bytes(bytes(100_000))  # makes it bigger
    size = _write(tmp_path, "other")

    async def scenario() -> None:
        reg, _ = _registry(tmp_path, size + 50_000, FakeClock())
        await reg.start()
        state, reason = _entry(reg, "big")
        assert state == "UNAVAILABLE"
        assert reason.startswith("loading big version 1 needs about")
        assert "the memory budget" in reason
        assert not reg.is_ready()  # a model that must serve did not: strict readiness
        assert reg.acquire("other", None).name == "other"
        with pytest.raises(ModelNotReady):
            reg.acquire("big", None)
        with pytest.raises(OverBudget, match="memory budget"):
            await reg.load_model_version("big", 1)
        await reg.close()

    asyncio.run(scenario())


def test_a_load_waits_for_a_busy_version_to_go_idle(tmp_path: Path) -> None:
    size = max(_write(tmp_path, n) for n in ("a", "b"))
    working: set[str] = {"b"}

    def is_busy(model: ModelVersion) -> bool:
        return model.name in working

    async def scenario() -> None:
        clock = FakeClock()
        budget = MemoryBudget(size + size // 2, is_busy, rss=lambda pid: 0, trim=lambda: True)
        reg = Registry(tmp_path, Metrics(), clock=clock, cold_start_timeout=5, memory=budget)
        await reg.start()  # b evicts a, a was idle
        assert _entry(reg, "a") == ("UNAVAILABLE", MEMORY_REASON)
        load = asyncio.create_task(reg.acquire_loading("a", None))
        for _ in range(400):  # the load's directory scan runs on a thread
            await asyncio.sleep(0.005)
            if clock._timers:
                break
        clock.advance(SECOND)  # b computes for a second: the load waits
        assert not load.done() and _entry(reg, "b") == ("READY", "")
        working.clear()
        clock.advance(SECOND)
        assert (await load).name == "a"
        assert _entry(reg, "b") == ("UNAVAILABLE", MEMORY_REASON)
        await reg.close()

    asyncio.run(scenario())


def test_a_load_that_waits_past_the_cold_start_timeout_fails(tmp_path: Path) -> None:
    size = max(_write(tmp_path, n) for n in ("a", "b"))

    async def scenario() -> None:
        clock = FakeClock()
        budget = MemoryBudget(size + size // 2, lambda m: m.name == "b", rss=lambda pid: 0)
        reg = Registry(tmp_path, Metrics(), clock=clock, cold_start_timeout=5, memory=budget)
        await reg.start()
        load = asyncio.create_task(reg.acquire_loading("a", None))
        for _ in range(400):
            await asyncio.sleep(0.005)
            if clock._timers:
                break
        for _ in range(120):  # 6 s in steps, each letting the load look again
            clock.advance(SECOND // 20)
            await asyncio.sleep(0)
        with pytest.raises(Unavailable):
            await load
        assert _entry(reg, "b") == ("READY", "")
        await reg.close()

    asyncio.run(scenario())


def test_a_measure_adds_the_worker_processes_and_never_reads_below_the_files(
    tmp_path: Path,
) -> None:
    (tmp_path / "model.onnx").write_bytes(bytes(1000))
    readings = {None: [100_000, 160_000], 41: [5_000], 42: [7_000]}

    def rss(pid: int | None) -> int:
        return readings[pid].pop(0)

    class Runtime:
        def pids(self) -> list[int]:
            return [41, 42]

    class Scheduler:
        runtime = Runtime()

    class Servable:
        scheduler = Scheduler()

    model = ModelVersion.__new__(ModelVersion)
    model.servable = Servable()  # type: ignore[assignment]
    budget = MemoryBudget(1 << 30, busy, rss=rss, trim=lambda: True)

    async def scenario() -> None:
        before = await budget.before_load()
        assert await budget.measured(("m", "1"), before, model, tmp_path) == 72_000
        readings[None] = [100_000, 90_000]  # the load reused memory freed before it
        readings[41], readings[42] = [0], [0]
        before = await budget.before_load()
        assert await budget.measured(("m", "2"), before, model, tmp_path) == 1000
        assert budget.used() == 73_000 and budget.free() == (1 << 30) - 73_000
        assert budget.estimate(("m", "1"), tmp_path) == 72_000  # its last measure
        assert budget.estimate(("m", "3"), tmp_path) == 1000  # never loaded: its files
        budget.forget(("m", "1"))
        assert budget.used() == 1000

    asyncio.run(scenario())
