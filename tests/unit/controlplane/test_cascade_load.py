"""A cascade's load checks against its stage models, each naming the file and field."""

from __future__ import annotations

from typing import Any

import pytest

from modelport.config.model import parse_model_config
from modelport.controlplane.lifecycle import ensemble_steps, load_cascade, load_order
from modelport.dataplane.cascade import CascadeServable
from modelport.dataplane.ensemble import LateStepRunner
from modelport.dataplane.table import ModelVersion
from modelport.errors import ConfigError, NotFound
from modelport.observability.statistics import ModelStatistics
from modelport.types import ModelSignature, TensorSpec

SOURCE = "models/triage/config.yaml"


def version(name: str, out_type: str = "FP32", extra_input: bool = False) -> ModelVersion:
    inputs = [TensorSpec("x", "FP32", (-1, 2))]
    if extra_input:
        inputs.append(TensorSpec("y", "FP32", (-1, 2)))
    signature = ModelSignature(
        tuple(inputs),
        (TensorSpec("probabilities", out_type, (-1, 2)), TensorSpec("label", "BYTES", (-1, 1))),
        8,
    )
    config = parse_model_config({"max_batch_size": 8}, name)
    return ModelVersion(name, "1", "onnxruntime_onnx", signature, config, None, ModelStatistics())  # type: ignore[arg-type]


def config(stages: list[dict[str, Any]], **cascade: Any) -> Any:
    return parse_model_config(
        {
            "max_batch_size": 8,
            "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [2]}],
            "output": [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [2]}],
            "modelport": {"cascade": {"stages": stages, **cascade}},
        },
        SOURCE,
    )


ACCEPT = {"output": "probabilities", "max_at_least": 0.9}
GOOD = [{"model": "small", "accept": ACCEPT}, {"model": "large"}]


def load(stages: list[dict[str, Any]], models: dict[str, ModelVersion], **cascade: Any) -> Any:
    def lookup(name: str, wanted: str | None) -> ModelVersion:
        if name not in models:
            raise NotFound(f"unknown model {name!r}: not in the repository")
        return models[name]

    return load_cascade("triage", 1, config(stages, **cascade), SOURCE, lookup, LateStepRunner())


def test_a_good_cascade_loads_and_orders_after_its_stages() -> None:
    loaded = load(GOOD, {"small": version("small"), "large": version("large")})
    assert loaded.platform == "cascade" and isinstance(loaded.servable, CascadeServable)
    assert ensemble_steps(config(GOOD)) == ("small", "large")
    assert load_order({"triage": ("small", "large"), "small": (), "large": ()}) == [
        "large",
        "small",
        "triage",
    ]


def stages(first: dict[str, Any] | None = None, last: dict[str, Any] | None = None) -> Any:
    small = {"model": "small", "accept": ACCEPT, **(first or {})}
    return [{k: v for k, v in small.items() if v is not None}, {"model": "large", **(last or {})}]


BYTES_RULE = {"output": "label", "max_at_least": 1}

#: (stages, stage models replaced (None: missing), the field named, a word of the problem)
BAD = [
    (GOOD, {"large": None}, "stages[1].model", "not in the repository"),
    (GOOD, {"large": version("large", "INT64")}, "stages[1].model", "INT64"),
    (GOOD, {"small": version("small", extra_input=True)}, "stages[0].model", "'y'"),
    (stages({"accept": None}), {}, "stages[0].accept", "every stage but the last"),
    (stages(last={"accept": ACCEPT}), {}, "stages[1].accept", "last stage"),
    (stages(last={"optional": True}), {}, "stages[1].optional", "last stage"),
    (stages({"accept": {"output": "nope", "any": True}}), {}, "stages[0].accept.output", "'nope'"),
    (stages({"accept": BYTES_RULE}), {}, "stages[0].accept", "BYTES"),
    (stages(last={"model": "small"}), {}, "stages[1].name", "two stages"),
]


@pytest.mark.parametrize(("written", "replaced", "field", "problem"), BAD)
def test_bad_cascades_name_the_file_and_field(
    written: list[dict[str, Any]],
    replaced: dict[str, ModelVersion | None],
    field: str,
    problem: str,
) -> None:
    models = {"small": version("small"), "large": version("large"), **replaced}
    present = {name: model for name, model in models.items() if model is not None}
    with pytest.raises(ConfigError) as raised:
        load(written, present)
    assert f"{SOURCE}: modelport.cascade.{field}" in str(raised.value)
    assert problem in str(raised.value)


def test_per_row_needs_batching() -> None:
    unbatched = config(GOOD, per_row=True).model_copy(update={"max_batch_size": 0})
    models = {"small": version("small"), "large": version("large")}
    with pytest.raises(ConfigError, match=r"modelport\.cascade\.per_row"):
        load_cascade("triage", 1, unbatched, SOURCE, lambda n, v: models[n], LateStepRunner())
