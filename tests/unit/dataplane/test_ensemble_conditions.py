"""Ensemble conditions, early exit, optional steps and per-step options, over fake steps."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from modelport.config.model import EnsembleScheduling, StepOptions
from modelport.dataplane.ensemble import EnsembleServable, build_graph
from modelport.errors import ConfigError, InferenceFailed, Unavailable
from modelport.types import Array, Call, InferenceRequest, ModelSignature, Tensor, TensorSpec

SOURCE = "ens/config.yaml"


def sig(inputs: list[str], outputs: list[str]) -> ModelSignature:
    return ModelSignature(
        tuple(TensorSpec(n, "FP32", (-1, 1)) for n in inputs),
        tuple(TensorSpec(n, "FP32", (-1, 1)) for n in outputs),
        8,
    )


def step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> dict[str, Any]:
    return {"model_name": model, "input_map": inputs, "output_map": outputs}


#: score(x) -> s; refine(x) -> r; combine(s, r) -> out. ``s`` is also an output.
STEPS = [
    step("score", {"IN": "x"}, {"OUT": "s"}),
    step("refine", {"IN": "x"}, {"OUT": "r"}),
    step("combine", {"A": "s", "B": "r"}, {"OUT": "out"}),
]
SIGNATURES = [sig(["IN"], ["OUT"]), sig(["IN"], ["OUT"]), sig(["A", "B"], ["OUT"])]
ENSEMBLE = sig(["x"], ["out", "s"])


def graph(options: dict[str, Any]) -> Any:
    scheduling = EnsembleScheduling.model_validate({"step": STEPS})
    parsed = {k: StepOptions.model_validate(v) for k, v in options.items()}
    return build_graph(scheduling, ENSEMBLE, SIGNATURES, SOURCE, parsed)


class Steps:
    """score gives x, refine gives 10x, combine adds; records the models called."""

    def __init__(self) -> None:
        self.called: list[str] = []
        self.fail: dict[str, Exception] = {}

    async def run_step(
        self,
        call: Call | None,
        model: str,
        version: str | None,
        inputs: Mapping[str, Array],
        parameters: Any = None,
    ) -> dict[str, Array]:
        self.called.append(model)
        if model in self.fail:
            raise self.fail[model]
        if model == "combine":
            return {"OUT": inputs["A"] + inputs["B"]}
        return {"OUT": inputs["IN"] * (10 if model == "refine" else 1)}


def run(options: dict[str, Any], x: float, steps: Steps, **params: Any) -> Any:
    ens = EnsembleServable("ens", "1", graph(options), ENSEMBLE, steps)
    data = np.array([[x]], dtype=np.float32)
    req = InferenceRequest("ens", None, [Tensor("x", "FP32", data.shape, data)], parameters=params)
    return asyncio.run(ens.execute(None, req)).response


UNSURE_ONLY = {"refine": {"when": {"output": "s", "max_at_most": 0.5}}}


def test_a_step_whose_condition_fails_is_skipped_and_so_are_its_dependants() -> None:
    steps = Steps()
    response = run(UNSURE_ONLY, 0.9, steps)
    assert steps.called == ["score"]
    assert [t.name for t in response.outputs] == ["s"]
    assert response.parameters["ensemble_skipped"] == "refine,combine"


def test_a_step_whose_condition_holds_runs() -> None:
    steps = Steps()
    response = run(UNSURE_ONLY, 0.2, steps)
    assert steps.called == ["score", "refine", "combine"]
    assert {t.name: float(t.data[0, 0]) for t in response.outputs} == pytest.approx(
        {"out": 2.2, "s": 0.2}
    )
    assert "ensemble_skipped" not in response.parameters


def test_a_condition_on_a_request_parameter() -> None:
    options = {"combine": {"when": {"parameter": "mode", "equals": "full"}}}
    fast = Steps()
    assert [t.name for t in run(options, 1.0, fast, mode="fast").outputs] == ["s"]
    assert "combine" not in fast.called
    full = Steps()
    assert [t.name for t in run(options, 1.0, full, mode="full").outputs] == ["out", "s"]


def test_a_failed_optional_step_leaves_its_outputs_out() -> None:
    steps = Steps()
    steps.fail["refine"] = Unavailable("refine is full")
    response = run({"refine": {"optional": True}}, 1.0, steps)
    assert [t.name for t in response.outputs] == ["s"]
    assert response.parameters["ensemble_failed"] == "refine"
    assert response.parameters["ensemble_skipped"] == "combine"


def test_a_failed_step_that_is_not_optional_fails_the_request() -> None:
    steps = Steps()
    steps.fail["refine"] = InferenceFailed("refine broke")
    with pytest.raises(InferenceFailed, match="refine broke"):
        run({}, 1.0, steps)


def test_a_condition_waits_for_its_tensor_even_when_no_input_needs_it() -> None:
    # refine takes only x, yet its condition reads s: it starts after score.
    g = graph(UNSURE_ONLY)
    refine = g.steps[1]
    assert refine.waits == ("x", "s") and g.order == (0, 1, 2)


@pytest.mark.parametrize(
    ("options", "field", "problem"),
    [
        ({"refine": {"when": {"output": "nope", "any": True}}}, "refine.when.output", "nope"),
        ({"combine": {"when": {"output": "out", "any": True}}}, "combine.when.output", "itself"),
        ({"missing": {"optional": True}}, "missing", "names no step"),
    ],
)
def test_bad_options_are_load_errors_naming_the_file_and_field(
    options: dict[str, Any], field: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=rf"{SOURCE}: modelport\.steps\.{field}: .*{problem}"):
        graph(options)
