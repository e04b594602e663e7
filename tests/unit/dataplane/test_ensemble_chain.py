"""Plans whose steps can only run one after another run as a plain loop.

They must behave as the general graph runner does: same answers, a failure
raised as it comes with nothing after it started, a cancelled caller
cancelling the step running, per-step control applied.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from modelport.config.model import EnsembleScheduling, StepOptions
from modelport.dataplane.ensemble import EnsembleServable, build_graph, chain_of, needed_steps
from modelport.errors import InferenceFailed, Unavailable
from modelport.types import Array, Call
from tests.unit.dataplane.test_ensemble import (
    DIAMOND,
    ENSEMBLE,
    SOURCE,
    STEP_SIGNATURES,
    FakeSteps,
    graph_of,
    request,
)


def test_a_chain_is_found_and_a_diamond_is_not() -> None:
    graph = graph_of(DIAMOND)
    assert chain_of(graph, needed_steps(graph, ["out"])) is None  # left and right overlap
    chain = chain_of(graph, needed_steps(graph, ["l"]))
    assert chain is not None and [s.model for s in chain] == ["pre", "left"]


def test_a_condition_or_an_optional_step_is_left_to_the_graph_runner() -> None:
    scheduling = EnsembleScheduling.model_validate({"step": DIAMOND})
    for option in ({"optional": True}, {"when": {"parameter": "p", "equals": "1"}}):
        options = {"left": StepOptions.model_validate(option)}
        graph = build_graph(scheduling, ENSEMBLE, STEP_SIGNATURES, SOURCE, options)
        assert chain_of(graph, needed_steps(graph, ["l"])) is None, option


def test_a_chain_answers_as_the_graph_would() -> None:
    steps = FakeSteps()
    ens = EnsembleServable("ens", "1", graph_of(DIAMOND), ENSEMBLE, steps)
    outcome = asyncio.run(ens.execute(None, request(["l"])))
    # x = 1 → a = 2 → l = 4
    np.testing.assert_array_equal(outcome.response.outputs[0].data, np.full((1, 4), 4.0))
    assert steps.started == ["pre", "left"]


def test_a_failed_link_fails_the_request_and_nothing_after_it_starts() -> None:
    steps = FakeSteps()
    steps.fail = "pre"
    ens = EnsembleServable("ens", "1", graph_of(DIAMOND), ENSEMBLE, steps)
    with pytest.raises(InferenceFailed, match="pre failed"):
        asyncio.run(ens.execute(None, request(["l"])))
    assert steps.started == ["pre"]


def test_a_cancelled_caller_cancels_the_link_running() -> None:
    async def scenario() -> FakeSteps:
        steps = FakeSteps(gate=asyncio.Event())
        ens = EnsembleServable("ens", "1", graph_of(DIAMOND), ENSEMBLE, steps)
        task = asyncio.create_task(ens.execute(None, request(["l"])))
        for _ in range(5):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return steps

    steps = asyncio.run(scenario())
    assert steps.started == ["pre", "left"] and steps.cancelled == ["left"]


class FlakyOnce(FakeSteps):
    """``left`` is unavailable the first time it is called."""

    async def run_step(
        self,
        call: Call | None,
        model: str,
        version: str | None,
        inputs: Mapping[str, Array],
        parameters: Any = None,
    ) -> dict[str, Array]:
        if model == "left" and "left" not in self.started:
            self.started.append(model)
            raise Unavailable("reloading")
        return await super().run_step(call, model, version, inputs)


def test_a_link_with_retries_is_retried() -> None:
    scheduling = EnsembleScheduling.model_validate({"step": DIAMOND})
    options = {"left": StepOptions(retries=1, retry_backoff_s=0.01)}
    graph = build_graph(scheduling, ENSEMBLE, STEP_SIGNATURES, SOURCE, options)
    steps = FlakyOnce()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    ens = EnsembleServable("ens", "1", graph, ENSEMBLE, steps, sleep=sleep)
    outcome = asyncio.run(ens.execute(None, request(["l"])))
    np.testing.assert_array_equal(outcome.response.outputs[0].data, np.full((1, 4), 4.0))
    assert steps.started == ["pre", "left", "left"] and len(slept) == 1
