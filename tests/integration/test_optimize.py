"""``modelport optimize`` end to end: optimize a small CNN, serve the new version, compare.

A small convolutional classifier (image-like rows, seeded weights) is
optimized with the real command; the model's config serves every version.
The server then answers both versions through tritonclient HTTP, and the
new version's top-1 classes must agree with the original's within the
budget on rows the optimizer never saw.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient
from onnx import TensorProto, helper, numpy_helper

from tests.integration.conftest import start_server, stop_server

pytestmark = pytest.mark.integration


def _cnn() -> onnx.ModelProto:
    rng = np.random.default_rng(0)

    def weights(*shape: int) -> np.ndarray:
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    inits = [
        numpy_helper.from_array(weights(16, 3, 3, 3), "C1"),
        numpy_helper.from_array(np.zeros(16, np.float32), "C1b"),
        numpy_helper.from_array(weights(4, 16), "W"),
        numpy_helper.from_array(np.zeros(4, np.float32), "Wb"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "C1", "C1b"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "W", "Wb"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "small_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_optimized_version_serves_answers_within_budget(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "cnn" / "1").mkdir(parents=True)
    (repo / "cnn" / "1" / "model.onnx").write_bytes(_cnn().SerializeToString())
    (repo / "cnn" / "config.yaml").write_text("max_batch_size: 32\nversion_policy: {all: {}}\n")
    rng = np.random.default_rng(1)
    rows = (rng.integers(0, 256, size=(160, 3, 16, 16)) / 255.0).astype(np.float32)
    np.save(tmp_path / "rows.npy", rows)

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "modelport",
            "optimize",
            str(repo / "cnn" / "1"),
            "--data",
            str(tmp_path / "rows.npy"),
            "--budget",
            "1%",
            "--objective",
            "throughput",
            "--seconds",
            "0.05",
            "--write-within-noise",  # what is served matters here, not whether it won
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["version"] == 2
    chosen = next(c for c in report["candidates"] if c["status"] == "chosen")
    assert chosen["metric"]["within_budget"]
    assert (repo / "cnn" / "2" / "report.md").is_file()

    server = start_server(repo, tmp_path / "server.log")
    try:
        client = httpclient.InferenceServerClient(server.http_url)
        assert client.is_model_ready("cnn", "2")
        fresh = (rng.integers(0, 256, size=(32, 3, 16, 16)) / 255.0).astype(np.float32)
        answers = {}
        for version in ("1", "2"):
            tensor = httpclient.InferInput("image", list(fresh.shape), "FP32")
            tensor.set_data_from_numpy(fresh, binary_data=True)
            result = client.infer("cnn", [tensor], model_version=version)
            answers[version] = result.as_numpy("y")
        client.close()
    finally:
        stop_server(server)
    agreement = np.mean(answers["1"].argmax(axis=1) == answers["2"].argmax(axis=1))
    assert agreement >= 0.9, agreement  # 32 unseen rows: at most a few off the 1% budget
    assert np.allclose(answers["1"], answers["2"], atol=0.1 * np.abs(answers["1"]).max())
