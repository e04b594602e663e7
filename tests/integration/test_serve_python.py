"""Custom Python models served end to end: the shipped example and every way one can fail."""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).parents[2] / "examples" / "custom_python"

SIGNATURE = """
max_batch_size: 8
input:
- {name: x, data_type: TYPE_FP32, dims: [2]}
output:
- {name: y, data_type: TYPE_FP32, dims: [2]}
"""

SECRET = "card-4111-1111-1111-1111"

MODELS = {
    # The load-time warm-up sends zeros: these fail only on real data.
    "raises": f"""
        class Model:
            def predict(self, inputs):
                if inputs["x"].any():
                    raise KeyError("{SECRET}")
                return {{"y": inputs["x"]}}
    """,
    "wrong_dtype": """
        import numpy as np

        class Model:
            def predict(self, inputs):
                x = inputs["x"]
                return {"y": x.astype(np.float64) if x.any() else x}
    """,
    "wrong_rows": """
        class Model:
            def predict(self, inputs):
                return {"y": inputs["x"][:1]}
    """,
    "triton": """
        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            def execute(self, requests):
                return []
    """,
    "syntax": """
        class Model:
            def predict(self, inputs)
                return inputs
    """,
    "load_fails": """
        class Model:
            def load(self, version_dir, config):
                raise FileNotFoundError("tokenizer.json is missing")

            def predict(self, inputs):
                return {}
    """,
}


def build(root: Path) -> None:
    shutil.copytree(EXAMPLES / "text_stats", root / "text_stats")
    for name, source in MODELS.items():
        version = root / name / "1"
        version.mkdir(parents=True)
        (version / "model.py").write_text(textwrap.dedent(source))
        (root / name / "config.yaml").write_text(SIGNATURE)
    # A python model with no config.yaml has no signature.
    (root / "no_config" / "1").mkdir(parents=True)
    shutil.copy(EXAMPLES / "text_stats" / "1" / "model.py", root / "no_config" / "1" / "model.py")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("python_repo")
    build(root)
    srv = start_server(root, tmp_path_factory.mktemp("python_log") / "server.log")
    yield srv
    stop_server(srv)


def index(server: Server) -> dict[str, dict[str, Any]]:
    entries = httpx.post(f"{server.base}/v2/repository/index", json={}, timeout=10).json()
    return {e["name"]: e for e in entries}


def infer_json(server: Server, model: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.base}/v2/models/{model}/infer", json=body, timeout=10)


X_BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}]}

TEXTS = ["hello modelport world", "  two   words ", "h\u00e9llo", ""]


def expected_stats() -> tuple[np.ndarray, np.ndarray]:
    length = np.array([[len(t)] for t in TEXTS], dtype=np.int64)
    words = np.array([[len(t.split())] for t in TEXTS], dtype=np.int64)
    return length, words


# ------------------------------------------------------------------ the example


def test_example_metadata_from_config(http: Any, grpc: Any) -> None:
    meta = http.get_model_metadata("text_stats")
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1, 1]}]
    assert meta["outputs"] == [
        {"name": "length", "datatype": "INT64", "shape": [-1, 1]},
        {"name": "words", "datatype": "INT64", "shape": [-1, 1]},
    ]
    assert http.get_model_config("text_stats")["max_batch_size"] == 64
    gmeta = grpc.get_model_metadata("text_stats", as_json=True)
    assert [o["name"] for o in gmeta["outputs"]] == ["length", "words"]


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_example_predictions(kind: str, http: Any, grpc: Any) -> None:
    client, module = (http, httpclient) if kind == "http" else (grpc, grpcclient)
    text = np.array([[t.encode()] for t in TEXTS], dtype=object)
    tensor = module.InferInput("text", [len(TEXTS), 1], "BYTES")
    tensor.set_data_from_numpy(text)
    result = client.infer("text_stats", [tensor])
    length, words = expected_stats()
    np.testing.assert_array_equal(result.as_numpy("length"), length)
    np.testing.assert_array_equal(result.as_numpy("words"), words)


def test_example_readme_request(server: Server) -> None:
    """The request and answer shown in examples/custom_python/README.md."""
    body = {
        "inputs": [
            {
                "name": "text",
                "datatype": "BYTES",
                "shape": [2, 1],
                "data": ["hello modelport world", "h\u00e9llo"],
            }
        ]
    }
    r = infer_json(server, "text_stats", body)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert outputs["length"] == {
        "name": "length",
        "datatype": "INT64",
        "shape": [2, 1],
        "data": [21, 5],
    }
    assert outputs["words"] == {
        "name": "words",
        "datatype": "INT64",
        "shape": [2, 1],
        "data": [3, 1],
    }
    readme = (EXAMPLES / "README.md").read_text()
    assert '"data":[21,5]' in readme.replace(" ", "")


def test_example_wrong_datatype_is_400(server: Server) -> None:
    body = {"inputs": [{"name": "text", "datatype": "INT64", "shape": [1, 1], "data": [1]}]}
    r = infer_json(server, "text_stats", body)
    assert r.status_code == 400
    assert set(r.json()) == {"error"}


def test_example_wrong_shape_is_400(server: Server) -> None:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "b"]}]}
    r = infer_json(server, "text_stats", body)
    assert r.status_code == 400
    assert "shape" in r.json()["error"]


# ------------------------------------------------------------------ failing models


def test_model_exception_is_500_without_its_message(server: Server, grpc: Any) -> None:
    r = infer_json(server, "raises", X_BODY)
    assert r.status_code == 500
    assert r.json() == {"error": "model raises raised KeyError"}
    assert SECRET not in r.text
    x = grpcclient.InferInput("x", [1, 2], "FP32")
    x.set_data_from_numpy(np.ones((1, 2), dtype=np.float32))
    with pytest.raises(InferenceServerException) as err:
        grpc.infer("raises", [x])
    assert "model raises raised KeyError" in err.value.message()
    assert SECRET not in err.value.message()
    # The operator's log has the whole traceback, message included.
    records = [
        json.loads(line)
        for line in server.log().splitlines()
        if line.startswith("{") and "modelport.runtime.python" in line and SECRET in line
    ]
    assert records, server.log()[-2000:]
    assert "Traceback" in records[0]["exception"]
    assert SECRET in records[0]["exception"]


def test_wrong_dtype_is_500_naming_the_output(server: Server) -> None:
    r = infer_json(server, "wrong_dtype", X_BODY)
    assert r.status_code == 500
    error = r.json()["error"]
    assert "'y'" in error
    assert "float64" in error
    assert "FP32" in error


def test_wrong_rows_is_500_naming_the_output(server: Server) -> None:
    r = infer_json(server, "wrong_rows", X_BODY)
    assert r.status_code == 500
    error = r.json()["error"]
    assert "'y'" in error
    assert "[1, 2]" in error
    assert "2 rows" in error


def test_broken_models_are_unavailable_with_reasons(server: Server) -> None:
    entries = index(server)
    assert entries["text_stats"]["state"] == "READY"
    for name in ("raises", "wrong_dtype", "wrong_rows"):
        assert entries[name]["state"] == "READY"
    triton = entries["triton"]
    assert triton["state"] == "UNAVAILABLE"
    assert "model.py" in triton["reason"]
    assert "Triton's python-backend interface" in triton["reason"]
    syntax = entries["syntax"]
    assert syntax["state"] == "UNAVAILABLE"
    assert "model.py: SyntaxError" in syntax["reason"]
    assert "line 3" in syntax["reason"]
    load_fails = entries["load_fails"]
    assert load_fails["state"] == "UNAVAILABLE"
    assert "FileNotFoundError: tokenizer.json is missing" in load_fails["reason"]
    assert "Traceback" not in load_fails["reason"]
    no_config = entries["no_config"]
    assert no_config["state"] == "UNAVAILABLE"
    assert "config.yaml" in no_config["reason"]
    assert "no input and no output" in no_config["reason"]


def test_server_still_serves(server: Server) -> None:
    assert server.alive()
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": ["a b c"]}]}
    r = infer_json(server, "text_stats", body)
    assert r.status_code == 200
    words = next(o for o in r.json()["outputs"] if o["name"] == "words")
    assert words["data"] == [3]
