"""scikit-learn models served end to end, over tritonclient.http and tritonclient.grpc.

The models are trained here on datasets that ship with scikit-learn; the
served answers must equal the estimator's own on the same rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
import skops.io as sio
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import CLIENTS, Server, client_for, start_server, stop_server

pytestmark = pytest.mark.integration

CANCER_X, CANCER_Y = load_breast_cancer(return_X_y=True)
DIABETES_X, DIABETES_Y = load_diabetes(return_X_y=True)
IRIS_X, IRIS_Y = load_iris(return_X_y=True)
IRIS_NAMES = np.array(["setosa", "versicolor", "virginica"])


class Models:
    cancer: Pipeline
    diabetes: RandomForestRegressor
    pca: Pipeline
    iris: LogisticRegression


def _version(root: Path, name: str) -> Path:
    path = root / name / "1"
    path.mkdir(parents=True)
    return path


def build(root: Path) -> Models:
    m = Models()
    m.cancer = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    m.cancer.fit(CANCER_X, CANCER_Y)
    sio.dump(m.cancer, _version(root, "cancer") / "model.skops")

    m.diabetes = RandomForestRegressor(n_estimators=20, max_depth=6, random_state=0)
    m.diabetes.fit(DIABETES_X, DIABETES_Y)
    sio.dump(m.diabetes, _version(root, "diabetes") / "model.skops")

    m.pca = Pipeline([("scale", StandardScaler()), ("pca", PCA(5))]).fit(CANCER_X)
    sio.dump(m.pca, _version(root, "pca") / "model.skops")
    (root / "pca" / "config.yaml").write_text("modelport: {method: transform}\n")

    # Named input, FP64, string class labels.
    m.iris = LogisticRegression(max_iter=1000).fit(IRIS_X, IRIS_NAMES[IRIS_Y])
    sio.dump(m.iris, _version(root, "iris") / "model.skops")
    (root / "iris" / "config.yaml").write_text(
        "input:\n- {name: measurements, data_type: TYPE_FP64, dims: [4]}\n"
    )

    joblib.dump(m.cancer, _version(root, "pickled") / "model.joblib")
    (root / "pickled" / "config.yaml").write_text("modelport: {allow_unsafe_pickle: true}\n")
    joblib.dump(m.cancer, _version(root, "pickled_refused") / "model.joblib")

    # Never fitted or called: refused by its types before anything runs.
    evil = make_pipeline(FunctionTransformer(os.system), LinearRegression())
    sio.dump(evil, _version(root, "untrusted") / "model.skops")

    (_version(root, "corrupt") / "model.skops").write_bytes(b"PK\x03\x04 not really a zip")
    return m


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Models]]:
    root = tmp_path_factory.mktemp("sklearn_repo")
    models = build(root)
    server = start_server(root, tmp_path_factory.mktemp("sklearn_log") / "server.log")
    yield server, models
    stop_server(server)


@pytest.fixture(scope="module")
def server(served: tuple[Server, Models]) -> Server:
    return served[0]


@pytest.fixture(scope="module")
def models(served: tuple[Server, Models]) -> Models:
    return served[1]


def infer(
    client: Any,
    module: Any,
    model: str,
    name: str,
    x: np.ndarray,
    datatype: str,
    outputs: list[str],
) -> dict[str, np.ndarray]:
    tensor = module.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    requested = [module.InferRequestedOutput(o) for o in outputs]
    result = client.infer(model, [tensor], outputs=requested)
    return {o: result.as_numpy(o) for o in outputs}


# ------------------------------------------------------------------ repository


def index(server: Server) -> dict[str, dict[str, Any]]:
    entries = httpx.post(f"{server.base}/v2/repository/index", json={}, timeout=10).json()
    return {e["name"]: e for e in entries}


def test_repository_states_and_reasons(server: Server) -> None:
    entries = index(server)
    for name in ("cancer", "diabetes", "pca", "iris", "pickled"):
        assert entries[name]["state"] == "READY", entries[name]
    refused = entries["pickled_refused"]
    assert refused["state"] == "UNAVAILABLE"
    assert "model.joblib" in refused["reason"]
    assert "allow_unsafe_pickle: true" in refused["reason"]
    untrusted = entries["untrusted"]
    assert untrusted["state"] == "UNAVAILABLE"
    assert "model.skops" in untrusted["reason"]
    assert "posix.system" in untrusted["reason"]
    corrupt = entries["corrupt"]
    assert corrupt["state"] == "UNAVAILABLE"
    assert "model.skops" in corrupt["reason"]


def test_pickle_load_is_logged_as_running_code(server: Server) -> None:
    lines = [
        line
        for line in server.log().splitlines()
        if '"level": "warning"' in line and "modelport.runtime.sklearn" in line
    ]
    assert len(lines) == 1, lines
    assert "pickled/1/model.joblib" in lines[0]
    assert "ran code" in lines[0]


# ------------------------------------------------------------------ metadata


def test_autoconfigured_classifier_metadata(http: Any, grpc: Any) -> None:
    meta = http.get_model_metadata("cancer")
    assert meta["platform"] == "sklearn"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}]
    assert meta["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [-1, 1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
    ]
    config = http.get_model_config("cancer")
    assert config["max_batch_size"] == 64
    gmeta = grpc.get_model_metadata("cancer", as_json=True)
    assert [(o["name"], o["datatype"]) for o in gmeta["outputs"]] == [
        ("label", "INT64"),
        ("probabilities", "FP32"),
    ]


def test_other_metadata(http: Any) -> None:
    assert http.get_model_metadata("diabetes")["outputs"] == [
        {"name": "predictions", "datatype": "FP32", "shape": [-1, 1]}
    ]
    assert http.get_model_metadata("pca")["outputs"] == [
        {"name": "output", "datatype": "FP32", "shape": [-1, 5]}
    ]
    iris = http.get_model_metadata("iris")
    assert iris["inputs"] == [{"name": "measurements", "datatype": "FP64", "shape": [-1, 4]}]
    assert iris["outputs"][0] == {"name": "label", "datatype": "BYTES", "shape": [-1, 1]}


# ------------------------------------------------------------------ predictions


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("model", ["cancer", "pickled"])
def test_classifier_predictions(
    kind: str, model: str, http: Any, grpc: Any, models: Models
) -> None:
    client, module = client_for(kind, http, grpc)
    x = CANCER_X[100:140].astype(np.float32)
    out = infer(client, module, model, "input", x, "FP32", ["label", "probabilities"])
    assert out["label"].dtype == np.int64
    np.testing.assert_array_equal(out["label"][:, 0], models.cancer.predict(x))
    np.testing.assert_allclose(out["probabilities"], models.cancer.predict_proba(x), atol=1e-5)


@pytest.mark.parametrize("kind", CLIENTS)
def test_only_requested_output_is_returned(kind: str, http: Any, grpc: Any) -> None:
    client, module = client_for(kind, http, grpc)
    x = CANCER_X[:3].astype(np.float32)
    tensor = module.InferInput("input", [3, 30], "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(
        "cancer", [tensor], outputs=[module.InferRequestedOutput("probabilities")]
    )
    assert result.as_numpy("label") is None
    assert result.as_numpy("probabilities").shape == (3, 2)


@pytest.mark.parametrize("kind", CLIENTS)
def test_regressor_predictions(kind: str, http: Any, grpc: Any, models: Models) -> None:
    client, module = client_for(kind, http, grpc)
    x = DIABETES_X[:25].astype(np.float32)
    out = infer(client, module, "diabetes", "input", x, "FP32", ["predictions"])
    assert out["predictions"].shape == (25, 1)
    np.testing.assert_allclose(out["predictions"][:, 0], models.diabetes.predict(x), rtol=1e-5)


@pytest.mark.parametrize("kind", CLIENTS)
def test_transform_predictions(kind: str, http: Any, grpc: Any, models: Models) -> None:
    client, module = client_for(kind, http, grpc)
    x = CANCER_X[:10].astype(np.float32)
    out = infer(client, module, "pca", "input", x, "FP32", ["output"])
    np.testing.assert_allclose(out["output"], models.pca.transform(x), atol=1e-5)


@pytest.mark.parametrize("kind", CLIENTS)
def test_string_labels_and_named_fp64_input(
    kind: str, http: Any, grpc: Any, models: Models
) -> None:
    client, module = client_for(kind, http, grpc)
    x = IRIS_X[::10]
    out = infer(client, module, "iris", "measurements", x, "FP64", ["label", "probabilities"])
    assert [v.decode() for v in out["label"][:, 0]] == list(models.iris.predict(x))
    np.testing.assert_allclose(out["probabilities"], models.iris.predict_proba(x), atol=1e-5)


# ------------------------------------------------------------------ bad input


def post(server: Server, model: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.base}/v2/models/{model}/infer", json=body, timeout=10)


def test_wrong_shape_is_400(server: Server) -> None:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 29], "data": [0.0] * 29}]}
    r = post(server, "cancer", body)
    assert r.status_code == 400
    assert "shape" in r.json()["error"]


def test_wrong_datatype_is_400(server: Server) -> None:
    body = {"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 30], "data": [0.0] * 30}]}
    r = post(server, "cancer", body)
    assert r.status_code == 400
    assert "datatype" in r.json()["error"]


@pytest.mark.parametrize("kind", CLIENTS)
def test_nan_is_refused_by_the_model_as_400(kind: str, http: Any, grpc: Any) -> None:
    client, module = client_for(kind, http, grpc)
    x = CANCER_X[:1].astype(np.float32)
    x[0, 3] = np.nan  # binary tensors carry NaN through to scikit-learn
    with pytest.raises(InferenceServerException) as err:
        infer(client, module, "cancer", "input", x, "FP32", ["label"])
    assert str(err.value.status()) in ("400", "StatusCode.INVALID_ARGUMENT")
    assert "NaN" in err.value.message()


def test_server_still_serves(server: Server, models: Models) -> None:
    assert server.alive()
    x = CANCER_X[:1]
    body = {
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [1, 30], "data": x.ravel().tolist()}
        ]
    }
    r = post(server, "cancer", body)
    assert r.status_code == 200
    label = next(o for o in r.json()["outputs"] if o["name"] == "label")
    assert label["data"] == [int(models.cancer.predict(x.astype(np.float32))[0])]
