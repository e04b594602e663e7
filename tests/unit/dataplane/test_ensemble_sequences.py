"""A sequence model as an ensemble step: it gets the request's sequence, the others none."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from modelport.config.model import EnsembleScheduling, StepOptions
from modelport.dataplane.ensemble import EnsembleServable, build_graph
from modelport.errors import InvalidRequest
from modelport.types import (
    Array,
    Call,
    InferenceRequest,
    ModelSignature,
    RequestedOutput,
    Tensor,
    TensorSpec,
)

SIG = ModelSignature((TensorSpec("IN", "FP32", (-1, 1)),), (TensorSpec("OUT", "FP32", (-1, 1)),), 4)
ENSEMBLE = ModelSignature(
    (TensorSpec("x", "FP32", (-1, 1)),),
    (TensorSpec("a", "FP32", (-1, 1)), TensorSpec("total", "FP32", (-1, 1))),
    4,
)
#: pre(x) -> a; acc(a) -> total, where acc is the sequence model (step 1).
STEPS = [
    {"model_name": "pre", "input_map": {"IN": "x"}, "output_map": {"OUT": "a"}},
    {"model_name": "acc", "input_map": {"IN": "a"}, "output_map": {"OUT": "total"}},
]


class Recorder:
    """Adds one per step; remembers the parameters each step was called with."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def run_step(
        self,
        call: Call | None,
        model: str,
        version: str | None,
        inputs: Mapping[str, Array],
        parameters: Mapping[str, Any] | None = None,
    ) -> dict[str, Array]:
        self.calls.append((model, None if parameters is None else dict(parameters)))
        return {"OUT": inputs["IN"] + 1}


def servable(runner: Recorder, options: dict[str, Any] | None = None) -> EnsembleServable:
    scheduling = EnsembleScheduling.model_validate({"step": STEPS})
    steps = {k: StepOptions.model_validate(v) for k, v in (options or {}).items()}
    graph = build_graph(scheduling, ENSEMBLE, [SIG, SIG], "ens", steps)
    return EnsembleServable("ens", "1", graph, ENSEMBLE, runner, sequenced={1})


def request(parameters: dict[str, Any], outputs: list[str] | None = None) -> InferenceRequest:
    x = np.zeros((1, 1), np.float32)
    wanted = None if outputs is None else [RequestedOutput(n) for n in outputs]
    return InferenceRequest(
        "ens", None, [Tensor("x", "FP32", x.shape, x)], wanted, None, parameters
    )


SEQUENCE = {"sequence_id": 7, "sequence_start": True}


@pytest.mark.parametrize("options", [None, {"acc": {"retries": 1}}], ids=["plain", "controlled"])
def test_only_the_sequence_step_gets_the_sequence(options: dict[str, Any] | None) -> None:
    runner = Recorder()
    asyncio.run(servable(runner, options).execute(None, request({**SEQUENCE, "other": 1})))
    assert runner.calls == [("pre", None), ("acc", SEQUENCE)]


def test_a_request_without_a_sequence_is_refused_naming_the_step() -> None:
    runner = Recorder()
    with pytest.raises(InvalidRequest) as info:
        asyncio.run(servable(runner).execute(None, request({})))
    assert "model 'ens': step 1 ('acc') is a sequence model" in info.value.message
    assert "'sequence_id'" in info.value.message
    assert runner.calls == []  # refused before any step ran


def test_outputs_that_need_no_sequence_step_need_no_sequence() -> None:
    runner = Recorder()
    asyncio.run(servable(runner).execute(None, request({}, ["a"])))
    assert runner.calls == [("pre", None)]
