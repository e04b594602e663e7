"""The pipeline's side of a cold start: the deadline it passes on, the answer's parameter."""

from __future__ import annotations

import asyncio

import numpy as np

from modelport.config.model import parse_model_config
from modelport.dataplane.pipeline import COLD_START, Pipeline
from modelport.dataplane.servable import Outcome
from modelport.dataplane.table import ModelVersion
from modelport.errors import ModelportError, NotLoaded
from modelport.observability.metrics import Metrics
from modelport.observability.statistics import ModelStatistics
from modelport.types import (
    Call,
    InferenceRequest,
    InferenceResponse,
    ModelSignature,
    Origin,
    Tensor,
    TensorSpec,
)
from tests.fake_clock import FakeClock

SIGNATURE = ModelSignature(
    inputs=(TensorSpec("a", "FP32", (-1, 2)),),
    outputs=(TensorSpec("a", "FP32", (-1, 2)),),
    max_batch_size=4,
)


class Echo:
    async def execute(self, call: Call | None, request: InferenceRequest) -> Outcome:
        return Outcome(InferenceResponse("m", "1", [request.inputs[0]]), 0, 0, 1)

    def refusal(self) -> ModelportError | None:
        return None

    async def drain_and_close(self) -> None:
        return None


class ColdTable:
    """One version, cold until ``acquire_loading`` loads it."""

    def __init__(self) -> None:
        config = parse_model_config({"max_batch_size": 4}, "m")
        self.model = ModelVersion("m", "1", "fake", SIGNATURE, config, Echo(), ModelStatistics())
        self.loaded = False
        self.deadlines: list[int | None] = []

    def acquire(self, name: str, version: str | None) -> ModelVersion:
        if not self.loaded:
            raise NotLoaded("model 'm' is not ready: unloaded: idle")
        return self.model

    async def acquire_loading(
        self, name: str, version: str | None, deadline_ns: int | None = None
    ) -> ModelVersion:
        self.deadlines.append(deadline_ns)
        self.loaded = True
        return self.model

    def versions(self, name: str) -> list[str]:
        return ["1"]

    def ready(self) -> list[ModelVersion]:
        return [self.model] if self.loaded else []

    def is_ready(self) -> bool:
        return True


def _request(timeout_us: int | None = None) -> InferenceRequest:
    data = np.ones((1, 2), np.float32)
    return InferenceRequest("m", None, [Tensor("a", "FP32", (1, 2), data)], timeout_us=timeout_us)


def test_a_cold_answer_says_so_and_a_warm_one_does_not() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        table = ColdTable()
        pipeline = Pipeline(table, Metrics(), clock=clock)
        cold = await pipeline.infer(_request(), "http")
        assert cold.parameters == {COLD_START: True}
        warm = await pipeline.infer(_request(), "http")
        assert warm.parameters == {}
        assert table.model.last_used_ns == clock.monotonic_ns()

    asyncio.run(scenario())


def test_the_wait_ends_at_the_earlier_of_the_calls_deadline_and_the_timeout() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        now = clock.monotonic_ns()
        table = ColdTable()
        pipeline = Pipeline(table, Metrics(), clock=clock)
        await pipeline.infer(_request(timeout_us=2_000), "http", call=Call(Origin.REST))
        table.loaded = False
        await pipeline.infer(_request(timeout_us=0), "http", call=Call(Origin.REST))
        table.loaded = False
        call = Call(Origin.GRPC, None, now + 1_000_000)
        await pipeline.infer(_request(timeout_us=5_000), "grpc", call=call)
        assert table.deadlines == [now + 2_000_000, None, now + 1_000_000]

    asyncio.run(scenario())
