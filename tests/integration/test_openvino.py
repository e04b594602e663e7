"""Models served by the OpenVINO backend, over tritonclient.http and tritonclient.grpc.

One small convolutional classifier is served three ways from one repository:
as ``model.onnx`` with ``backend: openvino`` in its config (two instances),
as OpenVINO IR (``model.xml``, no config: the file picks the backend), and
as a broken IR that must leave its model UNAVAILABLE with the reason while
the others serve. The answers must equal ONNX Runtime's on the same rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.integration.conftest import CLIENTS, Server, client_for, start_server, stop_server

pytestmark = pytest.mark.integration

ONNX_CONFIG = """\
backend: openvino
max_batch_size: 16
instance_group: [{count: 2, kind: KIND_CPU}]
parameters:
  INFERENCE_NUM_THREADS: {string_value: "1"}
  HINT_BF16: {string_value: "NO"}
"""


def _cnn() -> onnx.ModelProto:
    rng = np.random.default_rng(3)

    def weights(*shape: int) -> np.ndarray:
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    inits = [
        numpy_helper.from_array(weights(8, 3, 3, 3), "C"),
        numpy_helper.from_array(np.zeros(8, np.float32), "Cb"),
        numpy_helper.from_array(weights(5, 8), "W"),
        numpy_helper.from_array(np.zeros(5, np.float32), "Wb"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "C", "Cb"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "W", "Wb"], ["scores"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 12, 12])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def build(root: Path) -> Path:
    """The repository; returns the ONNX file ONNX Runtime answers from."""
    onnx_version = root / "cnn_ov" / "1"
    onnx_version.mkdir(parents=True)
    onnx.save(_cnn(), str(onnx_version / "model.onnx"))
    (root / "cnn_ov" / "config.yaml").write_text(ONNX_CONFIG)

    ir_version = root / "cnn_ir" / "1"
    ir_version.mkdir(parents=True)
    model = ov.Core().read_model(str(onnx_version / "model.onnx"))
    ov.save_model(model, str(ir_version / "model.xml"), compress_to_fp16=False)

    broken = root / "ov_broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.xml").write_text("<net name='broken'><layers>")
    return onnx_version / "model.onnx"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    root = tmp_path_factory.mktemp("openvino_repo")
    onnx_file = build(root)
    server = start_server(root, tmp_path_factory.mktemp("openvino_log") / "server.log")
    yield server, onnx_file
    stop_server(server)


@pytest.fixture(scope="module")
def server(served: tuple[Server, Path]) -> Server:
    return served[0]


@pytest.fixture(scope="module")
def expected(served: tuple[Server, Path]) -> tuple[np.ndarray, np.ndarray]:
    """Rows, and ONNX Runtime's scores for them."""
    rows = np.random.default_rng(9).standard_normal((12, 3, 12, 12)).astype(np.float32)
    session = ort.InferenceSession(str(served[1]), providers=["CPUExecutionProvider"])
    scores: np.ndarray = session.run(["scores"], {"image": rows})[0]
    return rows, scores


def _infer(client: Any, module: Any, model: str, rows: np.ndarray) -> np.ndarray:
    tensor = module.InferInput("image", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    result = client.infer(model, [tensor], outputs=[module.InferRequestedOutput("scores")])
    scores: np.ndarray = result.as_numpy("scores")
    return scores


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("model", ["cnn_ov", "cnn_ir"])
def test_answers_equal_onnxruntime(
    kind: str, model: str, http: Any, grpc: Any, expected: tuple[np.ndarray, np.ndarray]
) -> None:
    client, module = client_for(kind, http, grpc)
    assert client.is_model_ready(model)
    rows, scores = expected
    got = _infer(client, module, model, rows)
    assert got.shape == scores.shape
    np.testing.assert_allclose(got, scores, rtol=0, atol=1e-5)
    one = _infer(client, module, model, rows[3:4])  # a batch of one, same answer
    np.testing.assert_allclose(one, scores[3:4], rtol=0, atol=1e-5)


def test_config_names_the_backend_and_keeps_its_parameters(server: Server) -> None:
    ov_config = httpx.get(f"{server.base}/v2/models/cnn_ov/config", timeout=10).json()
    assert ov_config["backend"] == "openvino"
    assert ov_config["parameters"]["HINT_BF16"] == {"string_value": "NO"}
    assert ov_config["instance_group"][0]["count"] == 2
    ir_config = httpx.get(f"{server.base}/v2/models/cnn_ir/config", timeout=10).json()
    assert ir_config["backend"] == "openvino"  # chosen by model.xml
    assert [i["name"] for i in ir_config["input"]] == ["image"]


def test_broken_model_is_unavailable_with_the_reason(server: Server) -> None:
    index = httpx.post(f"{server.base}/v2/repository/index", json={}, timeout=10).json()
    entry = next(e for e in index if e["name"] == "ov_broken")
    assert entry["state"] == "UNAVAILABLE"
    assert "not a model OpenVINO can read" in entry["reason"]
    assert server.alive()
