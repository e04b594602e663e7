"""Ensembles: the graph as pure functions, and the servable over a fake StepRunner."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from modelport.config.model import EnsembleScheduling
from modelport.dataplane.ensemble import (
    EnsembleServable,
    LateStepRunner,
    build_graph,
    needed_steps,
    shapes_compatible,
)
from modelport.errors import ConfigError, InferenceFailed, ResidencyRefused, Unavailable
from modelport.types import (
    Array,
    Call,
    InferenceRequest,
    ModelSignature,
    RequestedOutput,
    Tensor,
    TensorSpec,
)

SOURCE = "ens/config.pbtxt"


def spec(name: str, datatype: str = "FP32", shape: tuple[int, ...] = (-1, 4)) -> TensorSpec:
    return TensorSpec(name, datatype, shape)


def sig(inputs: list[str], outputs: list[str], datatype: str = "FP32") -> ModelSignature:
    return ModelSignature(
        tuple(spec(n, datatype) for n in inputs), tuple(spec(n, datatype) for n in outputs), 8
    )


def step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> dict[str, Any]:
    return {"model_name": model, "model_version": -1, "input_map": inputs, "output_map": outputs}


#: pre(x) -> a, b; left(a) -> l; right(b) -> r; combine(l, r) -> out.
DIAMOND = [
    step("pre", {"IN": "x"}, {"A": "a", "B": "b"}),
    step("left", {"IN": "a"}, {"OUT": "l"}),
    step("right", {"IN": "b"}, {"OUT": "r"}),
    step("combine", {"L": "l", "R": "r"}, {"OUT": "out"}),
]
STEP_SIGNATURES = [
    sig(["IN"], ["A", "B"]),
    sig(["IN"], ["OUT"]),
    sig(["IN"], ["OUT"]),
    sig(["L", "R"], ["OUT"]),
]
ENSEMBLE = sig(["x"], ["out", "l"])


def graph_of(
    steps: list[dict[str, Any]],
    signatures: list[ModelSignature | None] | None = None,
    ensemble: ModelSignature = ENSEMBLE,
) -> Any:
    scheduling = EnsembleScheduling.model_validate({"step": steps})
    return build_graph(scheduling, ensemble, signatures or STEP_SIGNATURES, SOURCE)


# ------------------------------------------------------------------ graph


def test_steps_are_ordered_by_readiness_not_as_written() -> None:
    written = [DIAMOND[3], DIAMOND[1], DIAMOND[0], DIAMOND[2]]
    signatures = [STEP_SIGNATURES[i] for i in (3, 1, 0, 2)]
    graph = graph_of(written, signatures)
    models = [graph.steps[i].model for i in graph.order]
    assert models[0] == "pre" and models[-1] == "combine"
    assert graph.steps[0].version is None  # -1: the model's routing picks


def test_a_request_runs_only_the_steps_its_outputs_need() -> None:
    graph = graph_of(DIAMOND)
    assert [graph.steps[i].model for i in needed_steps(graph, ["l"])] == ["pre", "left"]
    assert [graph.steps[i].model for i in needed_steps(graph, ["out"])] == [
        "pre",
        "left",
        "right",
        "combine",
    ]


def test_a_cycle_is_refused_naming_the_steps() -> None:
    steps = [
        step("pre", {"IN": "x"}, {"A": "a", "B": "b"}),
        step("left", {"IN": "r"}, {"OUT": "l"}),
        step("right", {"IN": "l"}, {"OUT": "r"}),
        step("combine", {"L": "l", "R": "a"}, {"OUT": "out"}),
    ]
    with pytest.raises(ConfigError) as info:
        graph_of(steps)
    assert info.value.source == SOURCE and info.value.field == "ensemble_scheduling.step"
    assert "cycle" in info.value.problem
    assert "step 1 ('left')" in info.value.problem and "step 2 ('right')" in info.value.problem


@pytest.mark.parametrize(
    ("steps", "field", "problem"),
    [
        (
            [step("pre", {"NOPE": "x"}, {"A": "a", "B": "b"}), *DIAMOND[1:]],
            "ensemble_scheduling.step[0].input_map",
            "'NOPE' is not an input of model 'pre'",
        ),
        (
            [step("pre", {"IN": "x"}, {"A": "a", "C": "b"}), *DIAMOND[1:]],
            "ensemble_scheduling.step[0].output_map",
            "'C' is not an output of model 'pre'",
        ),
        (
            [*DIAMOND[:3], step("combine", {"L": "l", "R": "zz"}, {"OUT": "out"})],
            "ensemble_scheduling.step[3].input_map",
            "'zz' is neither an ensemble input nor given by any step",
        ),
        (
            [*DIAMOND[:3], step("combine", {"L": "l"}, {"OUT": "out"})],
            "ensemble_scheduling.step[3].input_map",
            "model 'combine' input 'R' is not mapped",
        ),
        (
            [*DIAMOND[:3], step("combine", {"L": "l", "R": "r"}, {"OUT": "other"})],
            "output[0]",
            "'out' is given by no step",
        ),
        (
            [*DIAMOND[:3], step("combine", {"L": "l", "R": "r"}, {"OUT": "a"})],
            "ensemble_scheduling.step[3].output_map",
            "'a' is given by step 0 ('pre') already",
        ),
    ],
)
def test_wiring_errors_name_the_file_and_field(
    steps: list[dict[str, Any]], field: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        graph_of(steps)
    assert (info.value.source, info.value.field) == (SOURCE, field)
    assert problem in info.value.problem


def test_an_unused_ensemble_input_is_refused() -> None:
    ensemble = ModelSignature((spec("x"), spec("spare")), (spec("out"),), 8)
    with pytest.raises(ConfigError) as info:
        graph_of(DIAMOND, ensemble=ensemble)
    assert info.value.field == "input[1]" and "'spare' is used by no step" in info.value.problem


def test_mismatched_datatypes_between_steps_are_refused() -> None:
    signatures = [*STEP_SIGNATURES[:3], sig(["L", "R"], ["OUT"], "INT64")]
    with pytest.raises(ConfigError) as info:
        graph_of(DIAMOND, signatures)
    assert info.value.field == "ensemble_scheduling.step[3].input_map"
    assert info.value.problem == (
        "step 1 ('left') output 'OUT' is FP32 but model 'combine' input 'L' takes INT64"
    )


def test_incompatible_shapes_are_refused_and_any_size_matches() -> None:
    assert shapes_compatible((-1, 4), (8, -1))
    assert not shapes_compatible((-1, 4), (-1, 5))
    assert not shapes_compatible((-1, 4), (-1, 4, 1))
    wide = ModelSignature((spec("IN"),), (spec("A"), spec("B", shape=(-1, 5))), 8)
    with pytest.raises(ConfigError) as info:
        graph_of(DIAMOND, [wide, *STEP_SIGNATURES[1:]])
    assert info.value.field == "ensemble_scheduling.step[2].input_map"
    assert "has shape [-1, 5] but model 'right' input 'IN' takes [-1, 4]" in info.value.problem


def test_a_step_with_an_unknown_signature_is_taken_as_written() -> None:
    graph = graph_of(DIAMOND, [STEP_SIGNATURES[0], None, *STEP_SIGNATURES[2:]])
    assert len(graph.order) == 4


# --------------------------------------------------------------- servable


class FakeSteps:
    """Each step doubles its inputs' sum after ``delay`` seconds (or an event)."""

    def __init__(self, delay: float = 0.0, gate: asyncio.Event | None = None) -> None:
        self.delay = delay
        self.gate = gate
        self.started: list[str] = []
        self.finished: list[str] = []
        self.fail: str | None = None
        self.cancelled: list[str] = []

    async def run_step(
        self,
        call: Call | None,
        model: str,
        version: str | None,
        inputs: Mapping[str, Array],
        parameters: Any = None,
    ) -> dict[str, Array]:
        self.started.append(model)
        try:
            if self.gate is not None and model in ("left", "right"):
                await self.gate.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled.append(model)
            raise
        if model == self.fail:
            raise InferenceFailed(f"{model} failed")
        self.finished.append(model)
        total = sum(inputs.values())
        if model == "pre":
            return {"A": total + 1, "B": total + 2}
        if model == "combine":
            return {"OUT": total}
        return {"OUT": total * 2}


def request(outputs: list[str] | None = None) -> InferenceRequest:
    x = np.ones((1, 4), dtype=np.float32)
    wanted = [RequestedOutput(n) for n in outputs] if outputs is not None else None
    return InferenceRequest("ens", None, [Tensor("x", "FP32", x.shape, x)], wanted)


def servable(runner: Any, refused: dict[int, str] | None = None) -> EnsembleServable:
    return EnsembleServable("ens", "1", graph_of(DIAMOND), ENSEMBLE, runner, refused=refused)


def test_independent_steps_run_at_the_same_time() -> None:
    async def scenario() -> None:
        gate = asyncio.Event()
        steps = FakeSteps(gate=gate)
        task = asyncio.create_task(servable(steps).execute(None, request()))
        for _ in range(10):
            await asyncio.sleep(0)
        # Both branches started, and neither could finish: they wait on one gate.
        assert steps.started == ["pre", "left", "right"] and steps.finished == ["pre"]
        gate.set()
        outcome = await task
        # x = 1 → a = 2, b = 3 → l = 4, r = 6 → out = 10
        outs = {t.name: t.data for t in outcome.response.outputs}
        np.testing.assert_array_equal(outs["out"], np.full((1, 4), 10, np.float32))
        np.testing.assert_array_equal(outs["l"], np.full((1, 4), 4, np.float32))
        assert outcome.batch_size == 1 and outcome.queue_ns == 0

    asyncio.run(scenario())


def test_two_100_ms_branches_finish_in_well_under_200_ms() -> None:
    async def scenario() -> float:
        slow = EnsembleServable("ens", "1", graph_of(DIAMOND), ENSEMBLE, _OnlyBranchesSlow())
        start = time.perf_counter()
        await slow.execute(None, request(["out"]))
        return time.perf_counter() - start

    assert asyncio.run(scenario()) < 0.17


class _OnlyBranchesSlow:
    """left and right take 100 ms each; pre and combine are instant."""

    async def run_step(
        self,
        call: Call | None,
        model: str,
        version: str | None,
        inputs: Mapping[str, Array],
        parameters: Any = None,
    ) -> dict[str, Array]:
        if model in ("left", "right"):
            await asyncio.sleep(0.1)
        return await FakeSteps().run_step(call, model, version, inputs)


def test_only_the_needed_steps_run() -> None:
    steps = FakeSteps()
    outcome = asyncio.run(servable(steps).execute(None, request(["l"])))
    assert steps.started == ["pre", "left"]
    assert [t.name for t in outcome.response.outputs] == ["l"]


def test_a_failing_step_cancels_its_sibling_and_fails_the_request() -> None:
    async def scenario() -> FakeSteps:
        steps = FakeSteps(gate=asyncio.Event())
        steps.fail = "pre"
        with pytest.raises(InferenceFailed, match="pre failed"):
            await servable(steps).execute(None, request())
        return steps

    assert asyncio.run(scenario()).started == ["pre"]

    async def sibling() -> FakeSteps:
        steps = FakeSteps()
        gate = asyncio.Event()

        async def run_step(
            call: Any, model: str, version: Any, inputs: Any, parameters: Any = None
        ) -> Any:
            if model == "right":
                raise InferenceFailed("right failed")
            if model == "left":
                steps.started.append(model)
                try:
                    await gate.wait()
                except asyncio.CancelledError:
                    steps.cancelled.append(model)
                    raise
            return await FakeSteps().run_step(call, model, version, inputs)

        steps.run_step = run_step  # type: ignore[method-assign]
        with pytest.raises(InferenceFailed, match="right failed"):
            await servable(steps).execute(None, request())
        return steps

    assert asyncio.run(sibling()).cancelled == ["left"]


def test_a_step_this_region_may_not_serve_refuses_before_anything_runs() -> None:
    steps = FakeSteps()
    ens = servable(steps, refused={2: "the model's residency is [de]"})
    with pytest.raises(ResidencyRefused, match=r"step 2 \('right'\): the model's residency"):
        asyncio.run(ens.execute(None, request()))
    assert steps.started == []
    asyncio.run(ens.execute(None, request(["l"])))  # right is pruned: it serves
    assert steps.started == ["pre", "left"]


def test_unbound_step_runner_refuses_and_bound_one_runs() -> None:
    late = LateStepRunner()
    with pytest.raises(Unavailable):
        asyncio.run(late.run_step(None, "m", None, {}))
    steps = FakeSteps()
    late.bind(steps)
    x = np.ones((1, 4), np.float32)
    assert asyncio.run(late.run_step(None, "left", None, {"IN": x}))["OUT"][0, 0] == 2


def test_closing_waits_for_requests_in_flight_then_refuses() -> None:
    async def scenario() -> None:
        gate = asyncio.Event()
        ens = servable(FakeSteps(gate=gate))
        task = asyncio.create_task(ens.execute(None, request()))
        await asyncio.sleep(0)
        closing = asyncio.create_task(ens.drain_and_close())
        await asyncio.sleep(0)
        assert not closing.done() and isinstance(ens.refusal(), Unavailable)
        gate.set()
        await task
        await closing
        with pytest.raises(Unavailable):
            await ens.execute(None, request())

    asyncio.run(scenario())
