"""Idle unload and cold start in the registry, on a fake clock (no sleeps)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import onnx
import pytest

from modelport.controlplane.ondemand import IdleUnloader, busy, idle_due
from modelport.controlplane.registry import IDLE_REASON, Registry
from modelport.errors import ModelNotReady, NotLoaded
from modelport.observability.metrics import Metrics
from tests.fake_clock import FakeClock
from tests.integration.models import identity_model

SECOND = 1_000_000_000


def _write(path: Path, model: onnx.ModelProto) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    _write(tmp_path / "sleepy" / "1" / "model.onnx", identity_model("FP32"))
    (tmp_path / "sleepy" / "config.yaml").write_text("modelport: {idle_unload_s: 2}\n")
    _write(tmp_path / "awake" / "1" / "model.onnx", identity_model("FP32"))
    (tmp_path / "awake" / "config.yaml").write_text(
        "modelport: {idle_unload_s: 2, keep_loaded: true}\n"
    )
    _write(tmp_path / "plain" / "1" / "model.onnx", identity_model("FP32"))
    return tmp_path


def _sample(metrics: Metrics, name: str, model: str) -> float:
    value = metrics.registry.get_sample_value(name, {"model": model})
    return value or 0.0


def _registry(repo: Path, clock: FakeClock) -> Registry:
    return Registry(repo, Metrics(), clock=clock, cold_start_timeout=30)


async def _unloaded(reg: Registry, clock: FakeClock) -> None:
    """Let ``sleepy`` go idle and be unloaded."""
    clock.advance(3 * SECOND)
    unloaded, _ = await IdleUnloader(reg, None, clock).check()
    assert ("sleepy", "1") in unloaded


def test_the_decision_follows_the_model_then_the_server(repo: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        reg = _registry(repo, clock)
        await reg.start()
        sleepy, awake, plain = (reg.acquire(n, None) for n in ("sleepy", "awake", "plain"))
        now = clock.monotonic_ns() + 3 * SECOND
        assert idle_due(sleepy, now, None, pinned=False, is_busy=False)
        assert idle_due(sleepy, now, 60.0, pinned=False, is_busy=False)  # the model's wins
        assert not idle_due(sleepy, now, None, pinned=True, is_busy=False)
        assert not idle_due(sleepy, now, None, pinned=False, is_busy=True)
        assert not idle_due(sleepy, now - 2 * SECOND, None, pinned=False, is_busy=False)
        assert not idle_due(awake, now, 1.0, pinned=False, is_busy=False)  # keep_loaded
        assert not idle_due(plain, now, None, pinned=False, is_busy=False)  # off by default
        assert idle_due(plain, now, 1.0, pinned=False, is_busy=False)  # the server's default
        await reg.close()

    asyncio.run(scenario())


def test_autoscaling_to_zero_instances_unloads_after_the_downscale_delay(
    tmp_path: Path,
) -> None:
    scaling = "autoscaling: {min_instances: 0, max_instances: 2, downscale_delay_s: 5}"
    _write(tmp_path / "zero" / "1" / "model.onnx", identity_model("FP32"))
    (tmp_path / "zero" / "config.yaml").write_text(f"modelport: {{{scaling}}}\n")
    _write(tmp_path / "own" / "1" / "model.onnx", identity_model("FP32"))
    (tmp_path / "own" / "config.yaml").write_text(f"modelport: {{idle_unload_s: 20, {scaling}}}\n")

    async def scenario() -> None:
        clock = FakeClock()
        reg = _registry(tmp_path, clock)
        await reg.start()
        zero, own = reg.acquire("zero", None), reg.acquire("own", None)
        now = clock.monotonic_ns()
        assert not idle_due(zero, now + 4 * SECOND, None, pinned=False, is_busy=False)
        assert idle_due(zero, now + 6 * SECOND, None, pinned=False, is_busy=False)
        # A model's own idle_unload_s wins over the delay.
        assert not idle_due(own, now + 6 * SECOND, None, pinned=False, is_busy=False)
        assert idle_due(own, now + 21 * SECOND, None, pinned=False, is_busy=False)
        await reg.close()

    asyncio.run(scenario())


def test_an_idle_version_is_unloaded_and_says_why(repo: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        reg = _registry(repo, clock)
        await reg.start()
        idle = IdleUnloader(reg, None, clock)
        clock.advance(1 * SECOND)
        reg.acquire("sleepy", None).last_used_ns = clock.monotonic_ns()  # a request
        clock.advance(int(1.5 * SECOND))
        assert (await idle.check())[0] == []  # used 1.5 s ago: not idle yet
        clock.advance(1 * SECOND)
        unloaded, _ = await idle.check()
        assert unloaded == [("sleepy", "1")]
        entry = next(e for e in reg.index(False) if e.name == "sleepy")
        assert (entry.state, entry.reason) == ("UNAVAILABLE", IDLE_REASON)
        with pytest.raises(NotLoaded):
            reg.acquire("sleepy", None)
        with pytest.raises(NotLoaded):
            reg.acquire("sleepy", "1")
        # Admission's first phase takes the request as the version's outline.
        outline = reg.admit("sleepy", None)
        assert (outline.name, outline.version) == ("sleepy", "1")
        assert outline.servable.refusal() is None and outline not in reg.ready()
        clock.advance(60 * SECOND)
        assert (await idle.check())[0] == []  # keep_loaded, and no limit, stay
        assert reg.acquire("awake", None) and reg.acquire("plain", None)
        assert _sample(reg.metrics, "modelport_idle_unloads_total", "sleepy") == 1
        await reg.poll()  # a poll leaves it for the next request to load
        with pytest.raises(NotLoaded):
            reg.acquire("sleepy", None)
        await reg.close()

    asyncio.run(scenario())


def test_a_pinned_version_is_never_idle(repo: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        reg = _registry(repo, clock)
        await reg.start()
        reg.pin("sleepy", {1})
        clock.advance(10 * SECOND)
        assert (await IdleUnloader(reg, None, clock).check())[0] == []
        assert reg.acquire("sleepy", "1")
        await reg.close()

    asyncio.run(scenario())


def test_concurrent_cold_requests_share_one_load(repo: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        reg = _registry(repo, clock)
        await reg.start()
        loads = _sample(reg.metrics, "modelport_model_load_duration_seconds_count", "sleepy")
        await _unloaded(reg, clock)
        got = await asyncio.gather(*(reg.acquire_loading("sleepy", None) for _ in range(32)))
        assert {m.version for m in got} == {"1"} and len({id(m) for m in got}) == 1
        after = _sample(reg.metrics, "modelport_model_load_duration_seconds_count", "sleepy")
        assert after == loads + 1
        assert _sample(reg.metrics, "modelport_cold_starts_total", "sleepy") == 1
        assert reg.acquire("sleepy", None) is got[0]
        entry = next(e for e in reg.index(False) if e.name == "sleepy")
        assert (entry.state, entry.reason) == ("READY", "")
        await reg.close()

    asyncio.run(scenario())


def test_an_operator_unload_is_not_undone_by_traffic(repo: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        reg = _registry(repo, clock)
        await reg.start()
        await _unloaded(reg, clock)
        await reg.unload("sleepy")
        for attempt in (reg.acquire_loading("sleepy", None), reg.acquire_loading("sleepy", "1")):
            with pytest.raises(ModelNotReady, match="unloaded") as caught:
                await attempt
            assert not isinstance(caught.value, NotLoaded)
        await reg.unload_model_version("plain", 1)
        with pytest.raises(ModelNotReady, match="management API"):
            await reg.acquire_loading("plain", "1")
        await reg.close()

    asyncio.run(scenario())


def test_a_broken_version_fails_every_held_request_with_its_reason(repo: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        reg = _registry(repo, clock)
        await reg.start()
        await _unloaded(reg, clock)
        (repo / "sleepy" / "1" / "model.onnx").write_bytes(b"not a model")
        results = await asyncio.gather(
            *(reg.acquire_loading("sleepy", None) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, ModelNotReady) for r in results)
        messages = {str(r) for r in results}
        assert len(messages) == 1 and "failed to load" in messages.pop()
        assert _sample(reg.metrics, "modelport_cold_starts_total", "sleepy") == 1
        # Failed once: later requests get the reason without loading again.
        with pytest.raises(ModelNotReady) as caught:
            await reg.acquire_loading("sleepy", None)
        assert not isinstance(caught.value, NotLoaded)
        assert _sample(reg.metrics, "modelport_cold_starts_total", "sleepy") == 1
        await reg.close()

    asyncio.run(scenario())


def test_an_operator_load_wakes_a_cold_version_at_once(repo: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        reg = _registry(repo, clock)
        await reg.start()
        await _unloaded(reg, clock)
        await reg.load("sleepy", None)
        assert reg.acquire("sleepy", None).version == "1"
        assert _sample(reg.metrics, "modelport_cold_starts_total", "sleepy") == 0
        await reg.close()

    asyncio.run(scenario())


def test_requests_naming_no_version_wake_the_default_not_an_older_one(repo: Path) -> None:
    _write(repo / "sleepy" / "2" / "model.onnx", identity_model("FP32"))
    (repo / "sleepy" / "config.yaml").write_text(
        "modelport: {idle_unload_s: 2}\nversion_policy: {all: {}}\n"
    )

    async def scenario() -> None:
        clock = FakeClock()
        reg = _registry(repo, clock)
        await reg.start()
        clock.advance(3 * SECOND)
        reg.acquire("sleepy", "1").last_used_ns = clock.monotonic_ns()  # version 1 in use
        unloaded, _ = await IdleUnloader(reg, None, clock).check()
        assert ("sleepy", "2") in unloaded and ("sleepy", "1") not in unloaded
        assert reg.acquire("sleepy", "1").version == "1"
        with pytest.raises(NotLoaded):
            reg.acquire("sleepy", None)
        assert (await reg.acquire_loading("sleepy", None)).version == "2"
        assert reg.acquire("sleepy", None).version == "2"
        await reg.close()

    asyncio.run(scenario())


def test_requests_arriving_while_it_loads_wait_for_the_same_load(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        reg = _registry(repo, clock)
        await reg.start()
        await _unloaded(reg, clock)
        inside, go = asyncio.Event(), asyncio.Event()
        real_sync = reg._sync

        async def paused_sync(*args: object, **kwargs: object) -> object:
            inside.set()
            await go.wait()
            return await real_sync(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(reg, "_sync", paused_sync)
        first = asyncio.create_task(reg.acquire_loading("sleepy", None))
        await inside.wait()  # the load has begun
        with pytest.raises(NotLoaded):
            reg.acquire("sleepy", None)
        assert reg.admit("sleepy", "1").version == "1"
        late = asyncio.create_task(reg.acquire_loading("sleepy", "1"))
        await asyncio.sleep(0)
        go.set()
        assert (await first) is (await late)
        assert _sample(reg.metrics, "modelport_cold_starts_total", "sleepy") == 1
        await reg.close()

    asyncio.run(scenario())


def test_queued_computing_or_open_sequences_keep_a_version_loaded(repo: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        reg = _registry(repo, clock)
        await reg.start()
        model = reg.acquire("sleepy", None)
        scheduler = model.servable.scheduler  # type: ignore[attr-defined]
        assert not busy(model)
        scheduler._in_flight = 1  # a request computing on an instance thread
        assert busy(model)
        clock.advance(10 * SECOND)
        assert ("sleepy", "1") not in (await IdleUnloader(reg, None, clock).check())[0]
        scheduler._in_flight = 0
        assert ("sleepy", "1") in (await IdleUnloader(reg, None, clock).check())[0]
        await reg.close()

    asyncio.run(scenario())


def test_a_sequence_scheduler_with_open_sequences_is_busy(repo: Path) -> None:
    class Sequences:
        active, backlog = 2, 0

    class Servable:
        scheduler = Sequences()

    async def scenario() -> None:
        reg = _registry(repo, FakeClock())
        await reg.start()
        model = reg.acquire("sleepy", None)
        real, model.servable = model.servable, Servable()  # type: ignore[assignment]
        assert busy(model)
        Sequences.active = 0
        assert not busy(model)
        model.servable = real
        await reg.close()

    asyncio.run(scenario())


def test_the_periodic_check_runs_on_the_servers_clock(repo: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        reg = _registry(repo, clock)
        await reg.start()
        stop = asyncio.Event()
        runner = asyncio.create_task(IdleUnloader(reg, None, clock).run(stop))
        for _ in range(4):  # the clock moves; no time passes
            await asyncio.sleep(0)
            clock.advance(1 * SECOND)
            for _ in range(20):
                await asyncio.sleep(0)
        with pytest.raises(NotLoaded):
            reg.acquire("sleepy", None)
        stop.set()
        await asyncio.wait_for(runner, 5)
        await reg.close()

    asyncio.run(scenario())
