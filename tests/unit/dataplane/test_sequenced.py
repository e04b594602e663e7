"""The SequencedServable as the control plane builds it: tensors hidden from clients, refusals."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from modelport.config.model import parse_model_config
from modelport.controlplane.lifecycle import load_version
from modelport.dataplane.sequenced import SequencedServable
from modelport.errors import ConfigError, InvalidRequest
from modelport.types import InferenceRequest, Tensor

START = {
    "name": "START",
    "control": [{"kind": "CONTROL_SEQUENCE_START", "fp32_false_true": [0, 1]}],
}
STATE = {"input_name": "ACC", "output_name": "ACC_OUT", "data_type": "TYPE_FP32", "dims": [1]}


def _model(version_dir: Path) -> None:
    """OUT = ACC + X + 100 * START; ACC_OUT = ACC + X."""
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["ACC", "X"], ["ACC_OUT"]),
            helper.make_node("Mul", ["START", "k"], ["s"]),
            helper.make_node("Add", ["ACC_OUT", "s"], ["OUT"]),
        ],
        "acc",
        [helper.make_tensor_value_info(n, f, ["batch", 1]) for n in ("X", "ACC", "START")],
        [helper.make_tensor_value_info(n, f, ["batch", 1]) for n in ("OUT", "ACC_OUT")],
        initializer=[helper.make_tensor("k", f, [], [100.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    version_dir.mkdir(parents=True)
    onnx.save(model, str(version_dir / "model.onnx"))


def _load(tmp_path: Path, **sequence: Any) -> Any:
    _model(tmp_path / "acc" / "1")
    data = {"max_batch_size": 4, **sequence}
    return load_version("acc", 1, tmp_path / "acc" / "1", parse_model_config(data, "c"), "c")


def _request(value: float, **params: Any) -> InferenceRequest:
    x = np.array([[value]], dtype=np.float32)
    return InferenceRequest("acc", None, [Tensor("X", "FP32", (1, 1), x)], parameters=params)


def test_a_sequence_model_serves_with_its_tensors_hidden(tmp_path: Path) -> None:
    version = _load(tmp_path, sequence_batching={"control_input": [START], "state": [STATE]})
    servable = version.servable
    assert isinstance(servable, SequencedServable)
    assert [t.name for t in version.signature.inputs] == ["X"]
    assert [t.name for t in version.signature.outputs] == ["OUT"]
    assert "dynamic_batching" not in version.config.to_json()

    async def run() -> list[float]:
        got = []
        for value, params in [
            (1.0, {"sequence_id": 3, "sequence_start": True}),
            (2.0, {"sequence_id": 3}),
            (4.0, {"sequence_id": 3, "sequence_end": True}),
        ]:
            outcome = await servable.execute(None, _request(value, **params))
            got.append(float(outcome.response.outputs[0].data[0, 0]))
        with pytest.raises(InvalidRequest, match="needs a 'sequence_id'"):
            await servable.execute(None, _request(1.0))
        await servable.drain_and_close()
        return got

    assert asyncio.run(run()) == [101.0, 3.0, 7.0]


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (
            {"sequence_batching": {"control_input": [{**START, "name": "NOPE"}]}},
            "'NOPE' is not an input",
        ),
        (
            {"sequence_batching": {"state": [{**STATE, "output_name": "NOPE"}]}},
            "'NOPE' is not an output",
        ),
        ({"sequence_batching": {}, "dynamic_batching": {}}, "not both"),
        ({"sequence_batching": {}, "response_cache": {"enable": True}}, "cannot be cached"),
    ],
)
def test_what_a_sequence_model_cannot_be_is_refused_at_load(
    tmp_path: Path, extra: dict[str, Any], words: str
) -> None:
    with pytest.raises(ConfigError, match=words):
        _load(tmp_path, **extra)


PYTHON_MODEL = """
import numpy as np


class Model:
    def predict(self, inputs):
        out = inputs["X"] + 100 * inputs["START"] + inputs["CORRID"]
        return {"OUT": out.astype(np.float32)}
"""


def test_a_python_model_gets_controls_its_config_does_not_list(tmp_path: Path) -> None:
    version_dir = tmp_path / "py" / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "model.py").write_text(PYTHON_MODEL)
    config = parse_model_config(
        {
            "backend": "python",
            "max_batch_size": 2,
            "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [1]}],
            "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [1]}],
            "sequence_batching": {
                "control_input": [
                    START,
                    {
                        "name": "CORRID",
                        "control": [{"kind": "CONTROL_SEQUENCE_CORRID", "data_type": "TYPE_INT32"}],
                    },
                ]
            },
        },
        "c",
    )
    version = load_version("py", 1, version_dir, config, "c")

    async def run() -> float:
        request = _request(1.0, sequence_id=20, sequence_start=True, sequence_end=True)
        request.model_name = "py"
        outcome = await version.servable.execute(None, request)
        await version.servable.drain_and_close()
        return float(outcome.response.outputs[0].data[0, 0])

    assert asyncio.run(run()) == 121.0
