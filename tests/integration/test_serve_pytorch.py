"""PyTorch models served end to end, over tritonclient.http and tritonclient.grpc.

A small classifier for the breast cancer data (standardise, Linear 30 -> 16
-> 2, fixed random weights) is saved twice: exported with torch.export and a
dynamic batch dimension (``model.pt2``, configured automatically), and as
TorchScript (``model.pt``, with config.yaml). Served outputs must equal the
same module run here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install modelport[torch])")

from sklearn.datasets import load_breast_cancer  # noqa: E402
from torch import nn  # noqa: E402

from tests.integration.conftest import CLIENTS, Server, client_for, start_server, stop_server  # noqa: E402

pytestmark = pytest.mark.integration

FEATURES = load_breast_cancer().data.astype(np.float32)
TOL = 1e-5

SCRIPT_CONFIG = """\
max_batch_size: 16
input:
- {name: INPUT__0, data_type: TYPE_FP32, dims: [30]}
output:
- {name: OUTPUT__0, data_type: TYPE_FP32, dims: [2]}
"""


class Classifier(nn.Module):
    """Standardise, then Linear 30 -> 16 -> 2."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.hidden = nn.Linear(30, 16)
        self.out = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden((x - self.mean) / self.std)))


def _version(root: Path, name: str) -> Path:
    path = root / name / "1"
    path.mkdir(parents=True)
    return path


def build(root: Path) -> Classifier:
    torch.manual_seed(0)
    x = torch.from_numpy(FEATURES)
    module = Classifier(x.mean(0), x.std(0)).eval()

    program = torch.export.export(
        module, (torch.zeros(4, 30),), dynamic_shapes={"x": {0: torch.export.Dim("batch")}}
    )
    torch.export.save(program, str(_version(root, "cancer_export") / "model.pt2"))

    scripted = torch.jit.script(module)
    scripted.save(str(_version(root, "cancer_script") / "model.pt"))
    (root / "cancer_script" / "config.yaml").write_text(SCRIPT_CONFIG)

    scripted.save(str(_version(root, "script_no_config") / "model.pt"))

    (_version(root, "corrupt") / "model.pt2").write_bytes(b"PK\x03\x04 not really a zip")
    return module


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Classifier]]:
    root = tmp_path_factory.mktemp("pytorch_repo")
    module = build(root)
    server = start_server(root, tmp_path_factory.mktemp("pytorch_log") / "server.log")
    yield server, module
    stop_server(server)


@pytest.fixture(scope="module")
def server(served: tuple[Server, Classifier]) -> Server:
    return served[0]


@pytest.fixture(scope="module")
def module(served: tuple[Server, Classifier]) -> Classifier:
    return served[1]


def infer(client: Any, lib: Any, model: str, name: str, x: np.ndarray, output: str) -> np.ndarray:
    tensor = lib.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(model, [tensor], outputs=[lib.InferRequestedOutput(output)])
    out: np.ndarray = result.as_numpy(output)
    return out


def expected(module: Classifier, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        out: np.ndarray = module(torch.from_numpy(x.copy())).numpy()
    return out


# ------------------------------------------------------------------ repository


def index(server: Server) -> dict[str, dict[str, Any]]:
    entries = httpx.post(f"{server.base}/v2/repository/index", json={}, timeout=10).json()
    return {e["name"]: e for e in entries}


def test_repository_states_and_reasons(server: Server) -> None:
    entries = index(server)
    for name in ("cancer_export", "cancer_script"):
        assert entries[name]["state"] == "READY", entries[name]
    no_config = entries["script_no_config"]
    assert no_config["state"] == "UNAVAILABLE"
    assert "script_no_config/1/model.pt" in no_config["reason"]
    assert "config.yaml must list its input and output" in no_config["reason"]
    corrupt = entries["corrupt"]
    assert corrupt["state"] == "UNAVAILABLE"
    assert "corrupt/1/model.pt2" in corrupt["reason"]


def test_device_is_logged(server: Server) -> None:
    ready = [
        json.loads(line)
        for line in server.log().splitlines()
        if "pytorch model ready" in line and line.startswith("{")
    ]
    assert {r["model"] for r in ready} == {"cancer_export", "cancer_script"}
    assert {r["device"] for r in ready} == {"cpu"}


# ------------------------------------------------------------------ metadata


def test_exported_model_is_configured_from_its_graph(http: Any, grpc: Any) -> None:
    meta = http.get_model_metadata("cancer_export")
    assert meta["platform"] == "pytorch_libtorch"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 30]}]
    assert meta["outputs"] == [{"name": "output__0", "datatype": "FP32", "shape": [-1, 2]}]
    assert http.get_model_config("cancer_export")["max_batch_size"] == 64
    gmeta = grpc.get_model_metadata("cancer_export", as_json=True)
    assert [(i["name"], i["datatype"], i["shape"]) for i in gmeta["inputs"]] == [
        ("x", "FP32", ["-1", "30"])
    ]
    assert [o["name"] for o in gmeta["outputs"]] == ["output__0"]


def test_scripted_model_metadata_is_its_config(http: Any) -> None:
    meta = http.get_model_metadata("cancer_script")
    assert meta["inputs"] == [{"name": "INPUT__0", "datatype": "FP32", "shape": [-1, 30]}]
    assert meta["outputs"] == [{"name": "OUTPUT__0", "datatype": "FP32", "shape": [-1, 2]}]
    assert http.get_model_config("cancer_script")["max_batch_size"] == 16


# ------------------------------------------------------------------ predictions


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("rows", [slice(0, 1), slice(100, 164)])
def test_exported_predictions(
    kind: str, rows: slice, http: Any, grpc: Any, module: Classifier
) -> None:
    client, lib = client_for(kind, http, grpc)
    x = FEATURES[rows]
    got = infer(client, lib, "cancer_export", "x", x, "output__0")
    assert got.shape == (len(x), 2)
    np.testing.assert_allclose(got, expected(module, x), rtol=0, atol=TOL)


@pytest.mark.parametrize("kind", CLIENTS)
def test_scripted_predictions(kind: str, http: Any, grpc: Any, module: Classifier) -> None:
    client, lib = client_for(kind, http, grpc)
    x = FEATURES[200:216]
    got = infer(client, lib, "cancer_script", "INPUT__0", x, "OUTPUT__0")
    np.testing.assert_allclose(got, expected(module, x), rtol=0, atol=TOL)


# ------------------------------------------------------------------ bad input


def post(server: Server, model: str, tensor: dict[str, Any]) -> httpx.Response:
    body = {"inputs": [tensor]}
    return httpx.post(f"{server.base}/v2/models/{model}/infer", json=body, timeout=10)


def assert_refused(r: httpx.Response, *fragments: str) -> None:
    assert r.status_code == 400, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    for fragment in fragments:
        assert fragment in body["error"], body


def test_wrong_shape_is_400(server: Server) -> None:
    r = post(server, "cancer_export", {"name": "x", "datatype": "FP32", "shape": [1, 29],
                                       "data": [0.0] * 29})  # fmt: skip
    assert_refused(r, "shape")


def test_wrong_datatype_is_400(server: Server) -> None:
    r = post(server, "cancer_script", {"name": "INPUT__0", "datatype": "FP64", "shape": [1, 30],
                                       "data": [0.0] * 30})  # fmt: skip
    assert_refused(r, "datatype")


def test_unavailable_model_is_refused_and_others_serve(server: Server, module: Classifier) -> None:
    r = post(server, "corrupt", {"name": "x", "datatype": "FP32", "shape": [1, 30],
                                 "data": [0.0] * 30})  # fmt: skip
    assert r.status_code in (400, 404, 503), r.text
    x = FEATURES[:2]
    r = post(server, "cancer_export", {"name": "x", "datatype": "FP32", "shape": [2, 30],
                                       "data": x.ravel().tolist()})  # fmt: skip
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    got = np.array(out["data"], dtype=np.float32).reshape(out["shape"])
    np.testing.assert_allclose(got, expected(module, x), rtol=0, atol=TOL)
    assert server.alive()
