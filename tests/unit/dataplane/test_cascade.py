"""The cascade servable over a fake StepRunner: who answers, per request and per row."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from modelport.config.model import CascadeStage
from modelport.dataplane.cascade import CascadeServable, reassemble
from modelport.errors import InferenceFailed, Unavailable
from modelport.types import Array, Call, InferenceRequest, ModelSignature, Tensor, TensorSpec

SIGNATURE = ModelSignature(
    (TensorSpec("x", "FP32", (-1, 1)),), (TensorSpec("probabilities", "FP32", (-1, 2)),), 8
)


class Models:
    """``small`` is sure (0.95) of rows whose x is positive, unsure (0.6) otherwise;
    ``large`` is always sure. Each records the rows it was called with."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[float]]] = []
        self.fail: dict[str, Exception] = {}

    async def run_step(
        self,
        call: Call | None,
        model: str,
        version: str | None,
        inputs: Mapping[str, Array],
        parameters: Any = None,
    ) -> dict[str, Array]:
        x = np.asarray(inputs["x"])
        self.calls.append((model, x[:, 0].tolist()))
        if model in self.fail:
            raise self.fail[model]
        sure = 0.95 if model == "large" else 0.6
        top = np.where(x[:, 0] > 0, 0.95, sure).astype(np.float32)
        # The second column tells who answered, kept under any accept bound.
        marker = np.full_like(top, 0.01 if model == "small" else 0.02)
        return {"probabilities": np.stack([top, marker], axis=1)}


def cascade(models: Models, per_row: bool = False, **first: Any) -> CascadeServable:
    stages = [
        CascadeStage.model_validate(
            {"model": "small", "accept": {"output": "probabilities", "max_at_least": 0.9}, **first}
        ),
        CascadeStage.model_validate({"model": "large"}),
    ]
    counted: dict[str, int] = {}

    def answered(stage: str, count: int) -> None:
        counted[stage] = counted.get(stage, 0) + count

    servable = CascadeServable(
        "casc", "1", stages, SIGNATURE, models, per_row=per_row, answered=answered
    )
    servable.counted = counted  # type: ignore[attr-defined]
    return servable


def request(*xs: float, **parameters: Any) -> InferenceRequest:
    x = np.array([[v] for v in xs], dtype=np.float32)
    return InferenceRequest("casc", None, [Tensor("x", "FP32", x.shape, x)], parameters=parameters)


def answer(servable: CascadeServable, req: InferenceRequest) -> tuple[Array, str]:
    outcome = asyncio.run(servable.execute(None, req))
    return outcome.response.outputs[0].data, outcome.response.parameters["cascade_stage"]


def test_the_first_stage_sure_of_every_row_answers_and_the_large_one_is_not_called() -> None:
    models = Models()
    servable = cascade(models)
    data, stage = answer(servable, request(1.0, 2.0))
    assert stage == "small" and models.calls == [("small", [1.0, 2.0])]
    assert data[:, 1].tolist() == pytest.approx([0.01, 0.01])
    assert servable.counted == {"small": 1}  # type: ignore[attr-defined]


def test_per_request_one_unsure_row_sends_the_whole_request_on() -> None:
    models = Models()
    servable = cascade(models)
    data, stage = answer(servable, request(1.0, -1.0))
    assert stage == "large"
    assert models.calls == [("small", [1.0, -1.0]), ("large", [1.0, -1.0])]
    assert data[:, 1].tolist() == pytest.approx([0.02, 0.02])
    assert servable.counted == {"large": 1}  # type: ignore[attr-defined]


def test_per_row_only_unsure_rows_go_on_and_the_answer_keeps_row_order() -> None:
    models = Models()
    servable = cascade(models, per_row=True)
    data, stage = answer(servable, request(1.0, -1.0, 2.0, -2.0))
    assert models.calls == [("small", [1.0, -1.0, 2.0, -2.0]), ("large", [-1.0, -2.0])]
    assert stage == "small,large,small,large"
    assert data[:, 1].tolist() == pytest.approx([0.01, 0.02, 0.01, 0.02])
    assert data[:, 0].tolist() == pytest.approx([0.95] * 4)
    assert servable.counted == {"small": 2, "large": 2}  # type: ignore[attr-defined]


def test_per_row_with_every_row_sure_never_calls_the_next_stage() -> None:
    models = Models()
    _, stage = answer(cascade(models, per_row=True), request(1.0, 3.0))
    assert stage == "small,small" and [m for m, _ in models.calls] == ["small"]


@pytest.mark.parametrize("value", [True, "true"])
def test_a_caller_may_force_the_last_stage(value: Any) -> None:
    models = Models()
    _, stage = answer(cascade(models), request(1.0, cascade_force_last=value))
    assert stage == "large" and models.calls == [("large", [1.0])]


def test_a_failing_stage_fails_the_request() -> None:
    models = Models()
    models.fail["small"] = InferenceFailed("small broke")
    with pytest.raises(InferenceFailed, match="small broke"):
        answer(cascade(models), request(1.0))
    assert [m for m, _ in models.calls] == ["small"]


def test_a_failing_optional_stage_hands_the_request_to_the_next() -> None:
    models = Models()
    models.fail["small"] = Unavailable("small is full")
    _, stage = answer(cascade(models, per_row=True, optional=True), request(1.0, -1.0))
    assert stage == "large,large"
    assert models.calls == [("small", [1.0, -1.0]), ("large", [1.0, -1.0])]


def test_rows_from_stages_that_disagree_in_shape_cannot_be_joined() -> None:
    rows = np.array([0], dtype=np.intp), np.array([1], dtype=np.intp)
    with pytest.raises(InferenceFailed, match="'y' outputs cannot be joined"):
        reassemble([(rows[0], {"y": np.zeros((1, 2))}), (rows[1], {"y": np.zeros((1, 3))})], ["y"])


def test_closing_refuses_new_requests() -> None:
    servable = cascade(Models())
    asyncio.run(servable.drain_and_close())
    with pytest.raises(Unavailable):
        answer(servable, request(1.0))
