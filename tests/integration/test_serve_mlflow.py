"""MLflow models served end to end, over tritonclient.http and tritonclient.grpc.

scikit-learn models on the iris data are saved with ``mlflow.sklearn.save_model``
and a signature from ``infer_signature``; a string model is saved as MLflow
"model from code". Served answers must equal the model's own on the same rows.

The sklearn flavour writes ``model.skops`` next to ``MLmodel``, and a version
directory's files pick the backend with ``model.skops`` first, so those models
carry a config.yaml that says ``backend: mlflow`` (and nothing else: their
tensors still come from the signature). ``iris`` also lists one ``input``
matrix, which keeps the one-tensor form of a column signature; ``iris_auto``
is served one input per column.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

with warnings.catch_warnings():
    # mlflow warns about its own type hints while importing.
    warnings.simplefilter("ignore")
    pytest.importorskip("mlflow", reason="mlflow is not installed (pip install modelport[mlflow])")
    import mlflow.pyfunc
    import mlflow.sklearn
    from mlflow.models import infer_signature

from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from tests.integration.conftest import CLIENTS, Server, client_for, start_server, stop_server

pytestmark = pytest.mark.integration

IRIS = load_iris(as_frame=True)
IRIS_X: pd.DataFrame = IRIS.data
IRIS_Y = IRIS.target.to_numpy()
REQUIREMENTS = ["scikit-learn"]  # given, so mlflow does not start a subprocess to infer them
BACKEND_ONLY = "backend: mlflow\n"
ONE_MATRIX = BACKEND_ONLY + "input:\n- {name: input, data_type: TYPE_FP32, dims: [4]}\n"

SHOUT_CODE = """\
import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class Shout(PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None):
        return model_input["text"].str.upper() + "!"


mlflow.models.set_model(Shout())
"""


def quietly(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run an mlflow call with its hints and warnings silenced (pytest turns them into errors)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


@dataclass
class Models:
    labels: LogisticRegression
    proba: LogisticRegression


def save_sklearn(model: Any, target: Path, **kwargs: Any) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)  # the version directory itself must not exist
    quietly(mlflow.sklearn.save_model, model, str(target), pip_requirements=REQUIREMENTS, **kwargs)


def build(root: Path) -> Models:
    labels = LogisticRegression(max_iter=1000).fit(IRIS_X, IRIS_Y)
    signature = quietly(infer_signature, IRIS_X, labels.predict(IRIS_X))
    save_sklearn(labels, root / "iris" / "1", signature=signature)
    (root / "iris" / "config.yaml").write_text(ONE_MATRIX)
    save_sklearn(labels, root / "iris_auto" / "1", signature=signature)

    x = IRIS_X.to_numpy()
    proba = LogisticRegression(max_iter=1000).fit(x, IRIS_Y)
    save_sklearn(
        proba,
        root / "iris_proba" / "1",
        signature=quietly(infer_signature, x, proba.predict_proba(x)),
        pyfunc_predict_fn="predict_proba",
    )
    (root / "iris_proba" / "config.yaml").write_text(BACKEND_ONLY)

    save_sklearn(proba, root / "unsigned" / "1")
    (root / "unsigned" / "config.yaml").write_text(BACKEND_ONLY)

    save_sklearn(labels, root / "missing_flavour" / "1", signature=signature)
    (root / "missing_flavour" / "config.yaml").write_text(BACKEND_ONLY)
    mlmodel = root / "missing_flavour" / "1" / "MLmodel"
    mlmodel.write_text(
        mlmodel.read_text().replace("loader_module: mlflow.sklearn", "loader_module: nopkg")
    )

    shutil.copytree(root / "iris", root / "corrupt")
    for f in (root / "corrupt" / "1").iterdir():
        if f.name.startswith("model."):
            f.write_bytes(b"PK\x03\x04 not really a zip")

    code = root / "shout_code.py"
    code.write_text(SHOUT_CODE)
    examples = pd.DataFrame({"text": ["hello", "world"]})
    shout_signature = quietly(infer_signature, examples, pd.Series(["HELLO!", "WORLD!"]))
    (root / "shout").mkdir()
    quietly(
        mlflow.pyfunc.save_model,
        str(root / "shout" / "1"),
        python_model=str(code),
        signature=shout_signature,
        pip_requirements=[],
    )
    code.unlink()
    return Models(labels, proba)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Models]]:
    root = tmp_path_factory.mktemp("mlflow_repo")
    models = build(root)
    server = start_server(root, tmp_path_factory.mktemp("mlflow_log") / "server.log")
    yield server, models
    stop_server(server)


@pytest.fixture(scope="module")
def server(served: tuple[Server, Models]) -> Server:
    return served[0]


@pytest.fixture(scope="module")
def models(served: tuple[Server, Models]) -> Models:
    return served[1]


def infer(
    client: Any, lib: Any, model: str, x: np.ndarray, datatype: str, output: str
) -> np.ndarray:
    tensor = lib.InferInput("input", list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    result = client.infer(model, [tensor], outputs=[lib.InferRequestedOutput(output)])
    out: np.ndarray = result.as_numpy(output)
    return out


# ------------------------------------------------------------------ repository


def index(server: Server) -> dict[str, dict[str, Any]]:
    entries = httpx.post(f"{server.base}/v2/repository/index", json={}, timeout=10).json()
    return {e["name"]: e for e in entries}


def test_repository_states_and_reasons(server: Server) -> None:
    entries = index(server)
    for name in ("iris", "iris_auto", "iris_proba", "shout"):
        assert entries[name]["state"] == "READY", entries[name]
    unsigned = entries["unsigned"]
    assert unsigned["state"] == "UNAVAILABLE"
    assert "unsigned/1/MLmodel" in unsigned["reason"]
    assert "config.yaml must list its input and output" in unsigned["reason"]
    missing = entries["missing_flavour"]
    assert missing["state"] == "UNAVAILABLE"
    assert "missing_flavour/1/MLmodel" in missing["reason"]
    assert "'nopkg' package" in missing["reason"]
    corrupt = entries["corrupt"]
    assert corrupt["state"] == "UNAVAILABLE"
    assert "corrupt/1/MLmodel" in corrupt["reason"]


# ------------------------------------------------------------------ metadata


def test_column_signature_metadata(http: Any, grpc: Any) -> None:
    meta = http.get_model_metadata("iris")
    assert meta["platform"] == "mlflow"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "predictions", "datatype": "INT64", "shape": [-1, 1]}]
    assert http.get_model_config("iris")["max_batch_size"] == 64
    gmeta = grpc.get_model_metadata("iris", as_json=True)
    assert [(i["name"], i["datatype"], i["shape"]) for i in gmeta["inputs"]] == [
        ("input", "FP32", ["-1", "4"])
    ]


def test_tensor_signature_metadata(http: Any) -> None:
    meta = http.get_model_metadata("iris_proba")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "predictions", "datatype": "FP64", "shape": [-1, 3]}]


def test_mlmodel_alone_picks_the_backend(http: Any) -> None:
    meta = http.get_model_metadata("shout")
    assert meta["platform"] == "mlflow"
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1, 1]}]
    assert meta["outputs"] == [{"name": "predictions", "datatype": "BYTES", "shape": [-1, 1]}]


def test_sklearn_flavour_without_config_is_served_by_mlflow(http: Any) -> None:
    meta = http.get_model_metadata("iris_auto")
    assert meta["platform"] == "mlflow"
    # One input per column of the signature, as MLServer's pandas codec sends them.
    assert meta["inputs"] == [
        {"name": str(c), "datatype": "FP64", "shape": [-1, 1]} for c in IRIS_X.columns
    ]


@pytest.mark.parametrize("kind", CLIENTS)
def test_columns_equal_the_model(kind: str, http: Any, grpc: Any, models: Models) -> None:
    client, lib = client_for(kind, http, grpc)
    rows = IRIS_X.iloc[::4]
    tensors = []
    for column in rows.columns:
        tensor = lib.InferInput(str(column), [len(rows), 1], "FP64")
        tensor.set_data_from_numpy(rows[column].to_numpy().reshape(-1, 1))
        tensors.append(tensor)
    result = client.infer("iris_auto", tensors, outputs=[lib.InferRequestedOutput("predictions")])
    np.testing.assert_array_equal(result.as_numpy("predictions")[:, 0], models.labels.predict(rows))


# ------------------------------------------------------------------ predictions


@pytest.mark.parametrize("kind", CLIENTS)
def test_labels_equal_the_model(kind: str, http: Any, grpc: Any, models: Models) -> None:
    client, lib = client_for(kind, http, grpc)
    x = IRIS_X.to_numpy(dtype=np.float32)[::3]
    got = infer(client, lib, "iris", x, "FP32", "predictions")
    assert got.dtype == np.int64
    assert got.shape == (len(x), 1)
    # The model sees the float32 values widened to its double columns.
    frame = pd.DataFrame(x.astype(np.float64), columns=IRIS_X.columns)
    np.testing.assert_array_equal(got[:, 0], models.labels.predict(frame))


@pytest.mark.parametrize("kind", CLIENTS)
def test_probabilities_equal_the_model(kind: str, http: Any, grpc: Any, models: Models) -> None:
    client, lib = client_for(kind, http, grpc)
    x = IRIS_X.to_numpy()[1::5]
    got = infer(client, lib, "iris_proba", x, "FP64", "predictions")
    np.testing.assert_allclose(got, models.proba.predict_proba(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", CLIENTS)
def test_strings_round_trip(kind: str, http: Any, grpc: Any) -> None:
    client, lib = client_for(kind, http, grpc)
    x = np.array([["abc"], ["wörld"]], dtype=object)
    tensor = lib.InferInput("text", list(x.shape), "BYTES")
    tensor.set_data_from_numpy(x)
    result = client.infer("shout", [tensor], outputs=[lib.InferRequestedOutput("predictions")])
    got = result.as_numpy("predictions")
    assert got.tolist() == [[b"ABC!"], ["WÖRLD!".encode()]]


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
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}
    assert_refused(post(server, "iris", tensor), "shape")


def test_wrong_datatype_is_400(server: Server) -> None:
    tensor = {"name": "input", "datatype": "FP64", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}
    assert_refused(post(server, "iris", tensor), "datatype")


def test_server_serves_on(server: Server, models: Models) -> None:
    x = IRIS_X.to_numpy(dtype=np.float32)[-2:]
    tensor = {"name": "input", "datatype": "FP32", "shape": [2, 4], "data": x.ravel().tolist()}
    r = post(server, "iris", tensor)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    frame = pd.DataFrame(x.astype(np.float64), columns=IRIS_X.columns)
    assert out["data"] == models.labels.predict(frame).tolist()
    assert server.alive()
