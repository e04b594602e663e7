"""The pipeline over a fake runtime: validation, outputs, statistics and metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from modelport.config.model import parse_model_config
from modelport.dataplane.pipeline import Pipeline
from modelport.dataplane.table import ModelVersion
from modelport.errors import InferenceFailed, InvalidRequest, ModelNotReady, NotFound
from modelport.observability.metrics import Metrics
from modelport.types import InferenceRequest, ModelSignature, RequestedOutput, Tensor, TensorSpec
from tests.unit.dataplane.versions import scheduled_version

SIGNATURE = ModelSignature(
    inputs=(TensorSpec("a", "FP32", (-1, 2)), TensorSpec("b", "FP32", (-1, 2))),
    outputs=(TensorSpec("sum", "FP32", (-1, 2)), TensorSpec("diff", "FP32", (-1, 2))),
    max_batch_size=4,
)


class AddSub:
    native = SIGNATURE
    inline_safe = False
    pin_safe = False

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.unloaded = False

    def predict(self, inputs: Mapping[str, Any], outputs: Sequence[str]) -> dict[str, Any]:
        a, b = inputs["a"], inputs["b"]
        self.calls.append(a.shape[0])
        if np.isnan(a).any():
            raise RuntimeError("NaN reached the model\nstack trace")
        return {"sum": (a + b).astype(np.float64), "diff": a - b}

    def unload(self) -> None:
        self.unloaded = True


class Table:
    def __init__(self, model: ModelVersion) -> None:
        self.model = model

    def acquire(self, name: str, version: str | None) -> ModelVersion:
        if name == "missing":
            raise NotFound("unknown model 'missing'")
        if name == "cold":
            raise ModelNotReady("model 'cold' is not ready")
        return self.model

    def versions(self, name: str) -> list[str]:
        return ["1"]

    def ready(self) -> list[ModelVersion]:
        return [self.model]

    def is_ready(self) -> bool:
        return True


@pytest.fixture
def setup() -> tuple[Pipeline, ModelVersion, AddSub, Metrics]:
    runtime = AddSub()
    config = parse_model_config({"max_batch_size": 4}, "t")
    model = scheduled_version(runtime, SIGNATURE, config, count_executions=True)
    metrics = Metrics()
    return Pipeline(Table(model), metrics), model, runtime, metrics


def _request(a: Any, b: Any, outputs: list[str] | None = None) -> InferenceRequest:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return InferenceRequest(
        "m",
        None,
        [Tensor("a", "FP32", a.shape, a), Tensor("b", "FP32", b.shape, b)],
        outputs=[RequestedOutput(n) for n in outputs] if outputs is not None else None,
        id="req-7",
    )


def test_infer_returns_outputs_in_declared_dtype(setup: Any) -> None:
    pipeline, model, _runtime, metrics = setup
    resp = asyncio.run(pipeline.infer(_request([[1, 2], [3, 4]], [[1, 1], [1, 1]]), "http"))
    assert resp.id == "req-7"
    assert resp.model_version == "1"
    assert [t.name for t in resp.outputs] == ["sum", "diff"]
    assert resp.outputs[0].data.dtype == np.float32
    np.testing.assert_array_equal(resp.outputs[0].data, [[2, 3], [4, 5]])
    np.testing.assert_array_equal(resp.outputs[1].data, [[0, 1], [2, 3]])
    stats = model.stats.to_json("m", "1")
    assert stats["inference_count"] == 2
    assert stats["execution_count"] == 1
    assert stats["inference_stats"]["success"]["count"] == 1
    assert stats["batch_stats"][0]["batch_size"] == 2
    text = metrics.render().decode()
    assert 'modelport_inference_requests_total{model="m",protocol="http",version="1"} 1.0' in text


def test_requested_outputs_only(setup: Any) -> None:
    pipeline, *_ = setup
    resp = asyncio.run(pipeline.infer(_request([[1, 2]], [[1, 1]], ["diff"]), "grpc"))
    assert [t.name for t in resp.outputs] == ["diff"]


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (InferenceRequest("m", None, []), "missing input 'a'"),
        (_request([[1, 2]], [[1, 1], [2, 2]]), "disagree on the batch size"),
        (_request([[1, 2, 3]], [[1, 1, 1]]), "has shape [1, 3], expected [-1, 2]"),
        (_request([[1, 2]] * 5, [[1, 1]] * 5), "exceeds max_batch_size 4"),
        (_request([[1, 2]], [[1, 1]], ["nope"]), "unknown requested output 'nope'"),
    ],
)
def test_invalid_requests_never_reach_the_model(
    setup: Any, request_: InferenceRequest, message: str
) -> None:
    pipeline, _model, runtime, metrics = setup
    with pytest.raises(InvalidRequest) as info:
        asyncio.run(pipeline.infer(request_, "http"))
    assert message in info.value.message
    assert runtime.calls == []
    assert "InvalidRequest" in metrics.render().decode()


def test_wrong_datatype_and_unknown_input(setup: Any) -> None:
    pipeline, *_ = setup
    req = _request([[1, 2]], [[1, 1]])
    req.inputs[1] = Tensor("b", "INT32", (1, 2), np.ones((1, 2), np.int32))
    with pytest.raises(InvalidRequest, match="has datatype INT32, expected FP32"):
        asyncio.run(pipeline.infer(req, "http"))
    req.inputs.append(Tensor("c", "FP32", (1, 2), np.ones((1, 2), np.float32)))
    req.inputs[1] = Tensor("b", "FP32", (1, 2), np.ones((1, 2), np.float32))
    with pytest.raises(InvalidRequest, match="unknown input 'c'"):
        asyncio.run(pipeline.infer(req, "http"))


def test_runtime_failure_is_reported_with_first_line_and_counted(setup: Any) -> None:
    pipeline, model, *_ = setup
    with pytest.raises(InferenceFailed, match=r"NaN reached the model$"):
        asyncio.run(pipeline.infer(_request([[np.nan, 1]], [[1, 1]]), "http"))
    assert model.stats.fail.count == 1


def test_unknown_and_unready_models(setup: Any) -> None:
    pipeline, *_ = setup
    with pytest.raises(NotFound):
        asyncio.run(pipeline.infer(InferenceRequest("missing", None, []), "http"))
    with pytest.raises(ModelNotReady):
        asyncio.run(pipeline.infer(InferenceRequest("cold", None, []), "http"))


def test_draining_pool_refuses_new_work_and_unloads(setup: Any) -> None:
    pipeline, model, runtime, _ = setup

    async def scenario() -> None:
        await model.servable.drain_and_close()
        with pytest.raises(Exception, match="being unloaded"):
            await pipeline.infer(_request([[1, 2]], [[1, 1]]), "http")

    asyncio.run(scenario())
    assert runtime.unloaded


def test_a_model_failure_is_logged_as_the_model_failing_not_as_a_refusal(
    setup: Any, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline, *_ = setup
    with (
        caplog.at_level(logging.WARNING, logger="modelport.inference"),
        pytest.raises(InferenceFailed),
    ):
        asyncio.run(pipeline.infer(_request([[np.nan, 1]], [[1, 1]]), "http"))
    messages = [r.getMessage() for r in caplog.records if r.name == "modelport.inference"]
    assert messages == ["model failed"]
    assert caplog.records[-1].levelno == logging.WARNING
