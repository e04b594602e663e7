"""The step runner: a composite servable calls back into routing and execution.

A fake table serves two plain versions and one composite ("chain") whose
servable runs its steps through the pipeline's ``StepRunner``; no scheduler
and no control plane are involved.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from modelport.config.model import parse_model_config
from modelport.dataplane.pipeline import Pipeline
from modelport.dataplane.servable import Outcome, StepRunner, respond, wanted_outputs
from modelport.dataplane.table import ModelVersion
from modelport.errors import InvalidRequest, ModelportError, NotFound
from modelport.observability.metrics import Metrics
from modelport.observability.statistics import ModelStatistics
from modelport.types import (
    Array,
    Call,
    InferenceRequest,
    ModelSignature,
    Origin,
    Tensor,
    TensorSpec,
)

SIGNATURE = ModelSignature(
    inputs=(TensorSpec("x", "FP32", (-1, 2)),),
    outputs=(TensorSpec("y", "FP32", (-1, 2)),),
    max_batch_size=4,
)
OUTPUTS = {s.name: s for s in SIGNATURE.outputs}


class Affine:
    """A servable computing ``x * scale + shift``, remembering the calls it saw."""

    def __init__(self, name: str, scale: float, shift: float) -> None:
        self.name, self.scale, self.shift = name, scale, shift
        self.calls: list[Call | None] = []

    async def execute(self, call: Call | None, request: InferenceRequest) -> Outcome:
        self.calls.append(call)
        x = request.inputs[0].data
        y = (x * self.scale + self.shift).astype(np.float32)
        wanted = wanted_outputs(request, ("y",))
        response = respond(self.name, "1", OUTPUTS, request, {"y": y}, wanted)
        return Outcome(response, queue_ns=0, compute_ns=1, batch_size=x.shape[0])

    def refusal(self) -> ModelportError | None:
        return None

    async def drain_and_close(self) -> None:
        return None


class Chain:
    """A composite: ``double`` then ``inc``, each step through the runner."""

    def __init__(self, steps: tuple[str, ...]) -> None:
        self.steps = steps
        self.runner: StepRunner | None = None

    async def execute(self, call: Call | None, request: InferenceRequest) -> Outcome:
        assert self.runner is not None
        values: Mapping[str, Array] = {"x": request.inputs[0].data}
        for step in self.steps:
            out = await self.runner.run_step(call, step, None, values)
            values = {"x": out["y"]}
        wanted = wanted_outputs(request, ("y",))
        response = respond("chain", "1", OUTPUTS, request, {"y": values["x"]}, wanted)
        return Outcome(response, queue_ns=0, compute_ns=0, batch_size=1)

    def refusal(self) -> ModelportError | None:
        return None

    async def drain_and_close(self) -> None:
        return None


class Table:
    """Every model at version 1; nothing loads, nothing is ever NotLoaded."""

    def __init__(self, servables: dict[str, Any]) -> None:
        config = parse_model_config({"max_batch_size": 4}, "t")
        self.models = {
            name: ModelVersion(name, "1", "fake", SIGNATURE, config, s, ModelStatistics())
            for name, s in servables.items()
        }

    def acquire(self, name: str, version: str | None) -> ModelVersion:
        model = self.models.get(name)
        if model is None or version not in (None, "1"):
            raise NotFound(f"unknown model {name!r}")
        return model

    async def acquire_loading(
        self, name: str, version: str | None, deadline_ns: int | None = None
    ) -> ModelVersion:
        return self.acquire(name, version)

    def versions(self, name: str) -> list[str]:
        return ["1"]

    def ready(self) -> list[ModelVersion]:
        return list(self.models.values())

    def is_ready(self) -> bool:
        return True


def _setup() -> tuple[Pipeline, Table, Affine, Affine, Chain, Metrics]:
    double, inc = Affine("double", 2, 0), Affine("inc", 1, 1)
    chain = Chain(("double", "inc"))
    table = Table({"double": double, "inc": inc, "chain": chain})
    metrics = Metrics()
    pipeline = Pipeline(table, metrics)  # type: ignore[arg-type]
    chain.runner = pipeline
    return pipeline, table, double, inc, chain, metrics


def _request(model: str, x: Any) -> InferenceRequest:
    a = np.asarray(x, np.float32)
    return InferenceRequest(model, None, [Tensor("x", "FP32", a.shape, a)], id="r-1")


def test_pipeline_is_a_step_runner() -> None:
    pipeline, *_ = _setup()
    runner: StepRunner = pipeline
    assert runner is pipeline


def test_a_composite_runs_its_steps_through_routing_and_execution() -> None:
    pipeline, _, double, inc, _, metrics = _setup()
    call = Call(Origin.REST, request_id="r-1")
    response = asyncio.run(pipeline.infer(_request("chain", [[1, 2]]), "http", call=call))
    np.testing.assert_array_equal(response.outputs[0].data, [[3, 5]])
    assert response.model_name == "chain"
    # Each step saw the composite's call as an internal one, and was served as a
    # request of its own.
    step = dataclasses.replace(call, origin=Origin.STEP)
    assert double.calls == [step] and inc.calls == [step]
    for model, protocol in (("chain", "http"), ("double", "step"), ("inc", "step")):
        labels = {"model": model, "version": "1", "protocol": protocol}
        assert metrics.registry.get_sample_value("modelport_inference_requests_total", labels) == 1


def test_a_step_is_validated_like_any_request() -> None:
    pipeline, *_ = _setup()
    bad = {"x": np.zeros((1, 3), np.float32)}  # the signature wants (-1, 2)
    with pytest.raises(InvalidRequest, match="shape"):
        asyncio.run(pipeline.run_step(None, "double", None, bad))


def test_a_step_to_an_unknown_model_raises_not_found() -> None:
    pipeline, *_ = _setup()
    with pytest.raises(NotFound):
        asyncio.run(pipeline.run_step(None, "missing", None, {"x": np.zeros((1, 2))}))
