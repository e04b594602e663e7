"""The registry over a real repository on disk (tiny ONNX models)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from modelport.controlplane.registry import Registry
from modelport.dataplane.scheduled import ScheduledServable
from modelport.errors import InvalidRequest, ModelLoadError, ModelNotReady, NotFound
from modelport.observability.metrics import Metrics
from tests.fake_clock import FakeClock
from tests.integration.models import add_sub_model, identity_model


def _write(path: Path, model: onnx.ModelProto) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    _write(tmp_path / "add_sub" / "1" / "model.onnx", add_sub_model())
    _write(tmp_path / "add_sub" / "2" / "model.onnx", add_sub_model())
    _write(tmp_path / "ident" / "1" / "model.onnx", identity_model("FP32"))
    return tmp_path


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_auto_configuration_from_the_graph(repo: Path) -> None:
    async def scenario() -> None:
        reg = Registry(repo, Metrics())
        await reg.start()
        model = reg.acquire("add_sub", None)
        assert model.version == "2"  # latest 1 by default
        assert model.config.max_batch_size == 64
        assert [i.dims for i in model.config.input] == [[16], [16]]
        assert model.signature.inputs[0].shape == (-1, 16)
        assert model.config.platform == "onnxruntime_onnx"
        with pytest.raises(NotFound, match="unknown version '7'"):
            reg.acquire("add_sub", "7")
        with pytest.raises(ModelNotReady, match="not selected by version_policy"):
            reg.acquire("add_sub", "1")
        await reg.close()

    run(scenario())


def test_config_that_disagrees_with_the_graph_names_the_field(repo: Path) -> None:
    (repo / "ident" / "config.yaml").write_text(
        "max_batch_size: 8\ninput: [{name: INPUT0, data_type: TYPE_INT32, dims: [4]}]\n"
    )

    async def scenario() -> None:
        reg = Registry(repo, Metrics())
        await reg.start()
        with pytest.raises(ModelNotReady) as info:
            reg.acquire("ident", None)
        assert "config.yaml: input[0].data_type: TYPE_INT32 but the model has TYPE_FP32" in str(
            info.value
        )
        assert reg.acquire("add_sub", None).version == "2"  # the others serve on
        await reg.close()

    run(scenario())


def test_poll_follows_the_disk(repo: Path) -> None:
    async def scenario() -> None:
        reg = Registry(repo, Metrics())
        await reg.start()
        old = reg.acquire("add_sub", None)
        shutil.copytree(repo / "add_sub" / "2", repo / "add_sub" / "3")
        shutil.rmtree(repo / "ident")
        shutil.copytree(repo / "add_sub", repo / "copy")
        await reg.poll()
        assert reg.acquire("add_sub", None).version == "3"
        assert reg.acquire("copy", None).version == "3"
        with pytest.raises(NotFound):
            reg.acquire("ident", None)
        with pytest.raises(Exception, match="being unloaded"):
            await old.servable.scheduler.submit({}, [], 1)
        await reg.close()

    run(scenario())


def test_explicit_load_and_unload(repo: Path) -> None:
    async def scenario() -> None:
        reg = Registry(repo, Metrics())
        await reg.start()
        await reg.unload("ident")
        with pytest.raises(ModelNotReady, match="unloaded"):
            reg.acquire("ident", None)
        await reg.poll()  # an explicit unload sticks until the files change
        with pytest.raises(ModelNotReady):
            reg.acquire("ident", None)
        await reg.load("ident", {"max_batch_size": 4})
        assert reg.acquire("ident", None).config.max_batch_size == 4
        with pytest.raises(ModelLoadError, match="max_batch_size"):
            await reg.load("ident", {"max_batch_size": "many"})
        with pytest.raises(NotFound):
            await reg.load("nothing_here", None)
        with pytest.raises(InvalidRequest):
            await reg.load("../etc", None)
        entries = {(e.name, e.version): e.state for e in reg.index(ready_only=False)}
        assert entries[("add_sub", "2")] == "READY"
        assert entries[("add_sub", "1")] == "UNAVAILABLE"
        await reg.close()

    run(scenario())


def test_a_residency_change_that_excludes_this_node_stops_the_serving_copy(repo: Path) -> None:
    async def scenario() -> None:
        reg = Registry(repo, Metrics(), region="eu-west-1")
        await reg.start()
        assert reg.acquire("ident", None).version == "1"
        (repo / "ident" / "config.yaml").write_text("modelport: {residency: [ae]}\n")
        await reg.poll()
        with pytest.raises(ModelNotReady, match="not served on this node"):
            reg.acquire("ident", None)
        assert reg.version_states("ident")["1"][0] == "UNAVAILABLE"
        assert reg.acquire("add_sub", None).version == "2"  # the others serve on
        await reg.close()

    run(scenario())


def test_strict_readiness_counts_versions_that_failed_not_those_unloaded(repo: Path) -> None:
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"not a model")
    (repo / "bad name" / "1").mkdir(parents=True)

    async def scenario() -> None:
        strict, relaxed = (
            Registry(repo, Metrics()),
            Registry(repo, Metrics(), strict_readiness=False),
        )
        for reg in (strict, relaxed):
            await reg.start()
        assert relaxed.is_ready() is True
        assert strict.is_ready() is False
        entries = {e.name: (e.state, e.reason) for e in strict.index(ready_only=False)}
        assert entries["bad name"][0] == "UNAVAILABLE"
        assert "not a valid model name" in entries["bad name"][1]
        assert "bad name" not in {e.name for e in strict.index(ready_only=True)}
        shutil.rmtree(repo / "bad name")
        await strict.poll()
        assert strict.is_ready() is False  # broken still failed
        await strict.unload("broken")  # on purpose: no longer counts
        await strict.unload("ident")
        await strict.unload_model_version("add_sub", 2)
        assert strict.is_ready() is True
        with pytest.raises(ModelLoadError):
            await strict.load("broken", None)
        assert strict.is_ready() is False
        for reg in (strict, relaxed):
            await reg.close()
        assert strict.is_ready() is False  # stopping

    run(scenario())


class CountingClock(FakeClock):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def monotonic_ns(self) -> int:
        self.reads += 1
        return super().monotonic_ns()


def test_loaded_versions_schedule_on_the_servers_clock(repo: Path) -> None:
    clock = CountingClock()

    async def scenario() -> None:
        reg = Registry(repo, Metrics(), clock=clock)
        await reg.start()
        servable = reg.acquire("add_sub", None).servable
        assert isinstance(servable, ScheduledServable)
        before = clock.reads
        x = np.ones((1, 16), np.float32)
        done = await servable.scheduler.submit(
            {"INPUT0": x, "INPUT1": x}, ["OUTPUT0"], 1, timeout_us=1000
        )
        np.testing.assert_array_equal(done.outputs["OUTPUT0"], 2 * x)
        assert clock.reads > before
        await reg.close()

    run(scenario())
