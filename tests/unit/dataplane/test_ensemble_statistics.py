"""An ensemble's statistics are its steps', summed as Triton sums them.

Each step model here reports fixed queue and compute times; the pipeline's
clock stands still, so its own stages add nothing and every number is exact.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from modelport.config.model import CascadeStage, EnsembleScheduling, parse_model_config
from modelport.dataplane.cascade import CascadeServable
from modelport.dataplane.ensemble import EnsembleServable, build_graph
from modelport.dataplane.pipeline import Pipeline
from modelport.dataplane.servable import Outcome, respond, wanted_outputs
from modelport.dataplane.table import ModelVersion
from modelport.errors import InferenceFailed, ModelportError, NotFound
from modelport.observability.metrics import Metrics
from modelport.observability.statistics import ModelStatistics
from modelport.types import Call, InferenceRequest, ModelSignature, Tensor, TensorSpec
from tests.fake_clock import FakeClock

SIGNATURE = ModelSignature(
    inputs=(TensorSpec("x", "FP32", (-1, 2)),),
    outputs=(TensorSpec("y", "FP32", (-1, 2)),),
    max_batch_size=4,
)
OUTPUTS = {s.name: s for s in SIGNATURE.outputs}


class Timed:
    """A step model adding ``shift``, reporting the same timings on every request."""

    def __init__(self, shift: float, queue_ns: int, compute_ns: int, fail: bool = False) -> None:
        self.shift, self.queue_ns, self.compute_ns, self.fail = shift, queue_ns, compute_ns, fail

    async def execute(self, call: Call | None, request: InferenceRequest) -> Outcome:
        if self.fail:
            raise InferenceFailed("broken on purpose")
        x = request.inputs[0].data
        y = (x + self.shift).astype(np.float32)
        wanted = wanted_outputs(request, ("y",))
        response = respond("m", "1", OUTPUTS, request, {"y": y}, wanted)
        return Outcome(response, self.queue_ns, self.compute_ns, x.shape[0], 10, 20)

    def refusal(self) -> ModelportError | None:
        return None

    async def drain_and_close(self) -> None:
        return None


class Table:
    def __init__(self, servables: dict[str, Any]) -> None:
        config = parse_model_config({"max_batch_size": 4}, "t")
        self.models = {
            name: ModelVersion(name, "1", "fake", SIGNATURE, config, s, ModelStatistics())
            for name, s in servables.items()
        }

    def acquire(self, name: str, version: str | None) -> ModelVersion:
        model = self.models.get(name)
        if model is None:
            raise NotFound(f"unknown model {name!r}")
        return model

    async def acquire_loading(
        self, name: str, version: str | None, deadline_ns: int | None = None
    ) -> ModelVersion:
        return self.acquire(name, version)


def chain_steps(*models: str) -> list[dict[str, Any]]:
    """Each model takes the tensor the one before gave: x -> t0 -> t1 ... -> y."""
    names = ["x", *(f"t{i}" for i in range(len(models) - 1)), "y"]
    return [
        {"model_name": m, "input_map": {"x": names[i]}, "output_map": {"y": names[i + 1]}}
        for i, m in enumerate(models)
    ]


def serve(steps: dict[str, Timed], composite: str = "ensemble") -> tuple[Pipeline, Table]:
    table = Table(dict(steps))
    pipeline = Pipeline(table, Metrics(), clock=FakeClock())  # type: ignore[arg-type]
    stats = ModelStatistics()
    if composite == "ensemble":
        scheduling = EnsembleScheduling.model_validate({"step": chain_steps(*steps)})
        graph = build_graph(scheduling, SIGNATURE, [SIGNATURE] * len(steps), "ens")
        servable: Any = EnsembleServable(
            "ens", "1", graph, SIGNATURE, pipeline, on_execution=stats.record_execution
        )
    else:
        stages = [CascadeStage(model=m, accept=None) for m in steps]
        servable = CascadeServable("ens", "1", stages[-1:], SIGNATURE, pipeline)
    config = parse_model_config({"max_batch_size": 4}, "t")
    table.models["ens"] = ModelVersion("ens", "1", "ensemble", SIGNATURE, config, servable, stats)
    return pipeline, table


def ask(pipeline: Pipeline, rows: int = 2) -> Any:
    x = np.zeros((rows, 2), np.float32)
    request = InferenceRequest("ens", None, [Tensor("x", "FP32", x.shape, x)])
    return asyncio.run(pipeline.infer(request, "http"))


def durations(stats: ModelStatistics) -> dict[str, int]:
    return {
        "queue": stats.queue.ns,
        "compute_input": stats.compute_input.ns,
        "compute_infer": stats.compute_infer.ns,
        "compute_output": stats.compute_output.ns,
    }


def test_the_ensemble_queue_and_compute_are_its_steps_summed() -> None:
    steps = {"a": Timed(1, 100, 1_000), "b": Timed(2, 200, 2_000), "c": Timed(3, 300, 3_000)}
    pipeline, table = serve(steps)
    response = ask(pipeline)
    np.testing.assert_array_equal(response.outputs[0].data, np.full((2, 2), 6, np.float32))
    ens = table.models["ens"].stats
    assert durations(ens) == {
        "queue": 600,
        "compute_input": 30,  # 10 per step; the still clock adds nothing
        "compute_infer": 6_000,
        "compute_output": 60,
    }
    assert (ens.success.count, ens.inference_count) == (1, 2)
    for name, step in steps.items():
        stats = table.models[name].stats
        # Each step model counts the request the ensemble sent it, with its own timings.
        assert (stats.success.count, stats.inference_count) == (1, 2)
        assert (stats.queue.ns, stats.compute_infer.ns) == (step.queue_ns, step.compute_ns)


def test_each_request_sums_only_its_own_steps() -> None:
    pipeline, table = serve({"a": Timed(1, 100, 1_000), "b": Timed(2, 200, 2_000)})

    async def two_at_once() -> None:
        x = np.zeros((1, 2), np.float32)
        request = InferenceRequest("ens", None, [Tensor("x", "FP32", x.shape, x)])
        await asyncio.gather(pipeline.infer(request, "http"), pipeline.infer(request, "http"))

    asyncio.run(two_at_once())
    ens = table.models["ens"].stats
    assert (ens.success.count, ens.queue.ns, ens.compute_infer.ns) == (2, 600, 6_000)


def test_a_request_outside_an_ensemble_adds_to_no_ensemble() -> None:
    pipeline, table = serve({"a": Timed(1, 100, 1_000)})
    ask(pipeline)
    x = np.zeros((1, 2), np.float32)
    direct = InferenceRequest("a", None, [Tensor("x", "FP32", x.shape, x)])
    asyncio.run(pipeline.infer(direct, "http"))
    assert table.models["ens"].stats.compute_infer.ns == 1_000
    assert table.models["a"].stats.compute_infer.ns == 2_000


def test_a_failed_step_fails_the_ensemble_in_both_statistics() -> None:
    pipeline, table = serve({"a": Timed(1, 100, 1_000), "b": Timed(2, 0, 0, fail=True)})
    with pytest.raises(InferenceFailed, match="broken on purpose"):
        ask(pipeline)
    ens, a, b = (table.models[m].stats for m in ("ens", "a", "b"))
    assert (ens.success.count, ens.fail.count) == (0, 1)
    assert (a.success.count, b.fail.count) == (1, 1)


def test_a_cascade_reports_its_stages_time_the_same_way() -> None:
    pipeline, table = serve({"only": Timed(1, 400, 4_000)}, composite="cascade")
    ask(pipeline)
    stats = table.models["ens"].stats
    assert (stats.queue.ns, stats.compute_infer.ns, stats.compute_output.ns) == (400, 4_000, 20)


def test_a_nested_ensemble_counts_once_in_the_outer_one() -> None:
    pipeline, table = serve({"a": Timed(1, 100, 1_000), "b": Timed(2, 200, 2_000)})
    # "outer" runs "ens" (a then b) and then "b" again.
    scheduling = EnsembleScheduling.model_validate({"step": chain_steps("ens", "b")})
    graph = build_graph(scheduling, SIGNATURE, [SIGNATURE] * 2, "outer")
    outer = EnsembleServable("outer", "1", graph, SIGNATURE, pipeline)
    config = parse_model_config({"max_batch_size": 4}, "t")
    table.models["outer"] = ModelVersion(
        "outer", "1", "ensemble", SIGNATURE, config, outer, ModelStatistics()
    )
    x = np.zeros((1, 2), np.float32)
    request = InferenceRequest("outer", None, [Tensor("x", "FP32", x.shape, x)])
    asyncio.run(pipeline.infer(request, "http"))
    inner, whole = table.models["ens"].stats, table.models["outer"].stats
    assert (inner.queue.ns, inner.compute_infer.ns) == (300, 3_000)
    assert (whole.queue.ns, whole.compute_infer.ns) == (500, 5_000)


def test_each_ensemble_request_is_one_execution_of_its_own_batch_size() -> None:
    pipeline, table = serve({"a": Timed(1, 100, 1_000), "b": Timed(2, 200, 2_000)})
    ask(pipeline, rows=2)
    ask(pipeline, rows=2)
    ask(pipeline, rows=3)
    ens = table.models["ens"].stats
    # As Triton: one execution per ensemble request, never batched with another.
    assert (ens.execution_count, ens.inference_count) == (3, 7)
    entries = {b["batch_size"]: b for b in ens.to_json("ens", "1")["batch_stats"]}
    assert sorted(entries) == [2, 3]
    two = entries[2]
    # Its steps' compute, summed: 10 + 10 input, 1 000 + 2 000 infer, 20 + 20 output.
    assert two["compute_input"] == {"count": 2, "ns": 40}
    assert two["compute_infer"] == {"count": 2, "ns": 6_000}
    assert two["compute_output"] == {"count": 2, "ns": 80}
    assert entries[3]["compute_infer"] == {"count": 1, "ns": 3_000}


def test_a_failed_ensemble_request_is_no_execution() -> None:
    pipeline, table = serve({"a": Timed(1, 100, 1_000), "b": Timed(2, 0, 0, fail=True)})
    with pytest.raises(InferenceFailed):
        ask(pipeline)
    ens = table.models["ens"].stats
    assert (ens.execution_count, ens.batches) == (0, {})
    assert table.models["a"].stats.success.count == 1
