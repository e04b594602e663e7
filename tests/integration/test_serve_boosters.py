"""XGBoost and LightGBM models served end to end, over tritonclient.http and tritonclient.grpc.

The models are trained here on data sets that ship with scikit-learn and
saved in each framework's own format; the served answers must equal the
framework's own on the same rows. Damaged model files sit in the same
repository: they must leave their model UNAVAILABLE with a reason, and
every other model serving (an unchecked truncated LightGBM or UBJSON file
would otherwise kill the server process).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import lightgbm as lgb
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import xgboost as xgb
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import CLIENTS, Server, client_for, start_server, stop_server

pytestmark = pytest.mark.integration

# float32 from the start: the wire carries exactly what the frameworks are given.
CANCER_X, CANCER_Y = load_breast_cancer(return_X_y=True)
IRIS_X, IRIS_Y = load_iris(return_X_y=True)
DIABETES_X, DIABETES_Y = load_diabetes(return_X_y=True)
CANCER_X, IRIS_X, DIABETES_X = (x.astype(np.float32) for x in (CANCER_X, IRIS_X, DIABETES_X))


@dataclass
class Case:
    """A served model: the framework's estimator and the rows it is asked about."""

    model: Any
    x: np.ndarray
    classifier: bool


def _version(root: Path, name: str) -> Path:
    path = root / name / "1"
    path.mkdir(parents=True)
    return path


def build(root: Path) -> dict[str, Case]:
    cases: dict[str, Case] = {}

    cancer = xgb.XGBClassifier(n_estimators=20, max_depth=3).fit(CANCER_X, CANCER_Y)
    cancer.get_booster().save_model(str(_version(root, "xgb_cancer") / "model.ubj"))
    cases["xgb_cancer"] = Case(cancer, CANCER_X[::10], True)

    iris = xgb.XGBClassifier(n_estimators=10, max_depth=3).fit(IRIS_X, IRIS_Y)
    iris.get_booster().save_model(str(_version(root, "xgb_iris") / "model.json"))
    cases["xgb_iris"] = Case(iris, IRIS_X[::3], True)

    diabetes = xgb.XGBRegressor(n_estimators=20, max_depth=3).fit(DIABETES_X, DIABETES_Y)
    diabetes.get_booster().save_model(str(_version(root, "xgb_diabetes") / "model.ubj"))
    cases["xgb_diabetes"] = Case(diabetes, DIABETES_X[::9], False)

    lcancer = lgb.LGBMClassifier(n_estimators=20, verbose=-1).fit(CANCER_X, CANCER_Y)
    lcancer.booster_.save_model(str(_version(root, "lgb_cancer") / "model.txt"))
    cases["lgb_cancer"] = Case(lcancer, CANCER_X[::10], True)

    liris = lgb.LGBMClassifier(n_estimators=10, verbose=-1).fit(IRIS_X, IRIS_Y)
    liris.booster_.save_model(str(_version(root, "lgb_iris") / "model.txt"))
    cases["lgb_iris"] = Case(liris, IRIS_X[::3], True)

    ldiabetes = lgb.LGBMRegressor(n_estimators=20, verbose=-1).fit(DIABETES_X, DIABETES_Y)
    ldiabetes.booster_.save_model(str(_version(root, "lgb_diabetes") / "model.txt"))
    cases["lgb_diabetes"] = Case(ldiabetes, DIABETES_X[::9], False)

    # Any width declared: the runtime itself must refuse a wrong feature count.
    for name, kind, filename, save in (
        ("xgb_open", "xgboost", "model.ubj", lambda p: cancer.get_booster().save_model(str(p))),
        ("lgb_open", "lightgbm", "model.txt", lambda p: lcancer.booster_.save_model(str(p))),
    ):
        save(_version(root, name) / filename)
        (root / name / "config.yaml").write_text(
            f"backend: {kind}\nmax_batch_size: 8\n"
            "input:\n- {name: features, data_type: TYPE_FP32, dims: [-1]}\n"
        )

    # Damaged or wrong files.
    ubj = bytes(cancer.get_booster().save_raw("ubj"))
    (_version(root, "xgb_truncated") / "model.ubj").write_bytes(ubj[: len(ubj) // 3])
    (_version(root, "xgb_not_a_model") / "model.json").write_text('{"hello": "world"}')
    text = lcancer.booster_.model_to_string().encode()
    cut = text.index(b"Tree=3") + 40  # inside a tree: LightGBM alone aborts the process
    (_version(root, "lgb_truncated") / "model.txt").write_bytes(text[:cut])
    (_version(root, "lgb_not_a_model") / "model.txt").write_text("hello, I am a text file\n")
    return cases


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, Case]]]:
    root = tmp_path_factory.mktemp("boosters_repo")
    cases = build(root)
    server = start_server(root, tmp_path_factory.mktemp("boosters_log") / "server.log")
    yield server, cases
    stop_server(server)


@pytest.fixture(scope="module")
def server(served: tuple[Server, dict[str, Case]]) -> Server:
    return served[0]


@pytest.fixture(scope="module")
def cases(served: tuple[Server, dict[str, Case]]) -> dict[str, Case]:
    return served[1]


def infer(
    client: Any, module: Any, model: str, x: np.ndarray, outputs: list[str], name: str = "input"
) -> dict[str, np.ndarray]:
    tensor = module.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    requested = [module.InferRequestedOutput(o) for o in outputs]
    result = client.infer(model, [tensor], outputs=requested)
    return {o: result.as_numpy(o) for o in outputs}


# ------------------------------------------------------------------ repository


def index(server: Server) -> dict[str, dict[str, Any]]:
    entries = httpx.post(f"{server.base}/v2/repository/index", json={}, timeout=10).json()
    return {e["name"]: e for e in entries}


def test_damaged_files_are_unavailable_with_the_file_named(server: Server) -> None:
    entries = index(server)
    for name in (
        "xgb_cancer",
        "xgb_iris",
        "xgb_diabetes",
        "lgb_cancer",
        "lgb_iris",
        "lgb_diabetes",
        "xgb_open",
        "lgb_open",
    ):
        assert entries[name]["state"] == "READY", entries[name]
    for name, filename, cause in (
        ("xgb_truncated", "model.ubj", "not a loadable XGBoost model"),
        ("xgb_not_a_model", "model.json", "'learner'"),
        ("lgb_truncated", "model.txt", "not a loadable LightGBM model"),
        ("lgb_not_a_model", "model.txt", "not 'tree'"),
    ):
        entry = entries[name]
        assert entry["state"] == "UNAVAILABLE", entry
        assert f"{name}/1/{filename}" in entry["reason"], entry
        assert cause in entry["reason"], entry
        assert "save_model" in entry["reason"], entry  # says what was expected
    assert server.alive()


# ------------------------------------------------------------------ metadata and config


@pytest.mark.parametrize(
    ("model", "backend", "features", "outputs"),
    [
        ("xgb_cancer", "xgboost", 30, [("probabilities", "FP32", 2), ("label", "INT64", 1)]),
        ("xgb_iris", "xgboost", 4, [("probabilities", "FP32", 3), ("label", "INT64", 1)]),
        ("xgb_diabetes", "xgboost", 10, [("predictions", "FP32", 1)]),
        ("lgb_cancer", "lightgbm", 30, [("probabilities", "FP64", 2), ("label", "INT64", 1)]),
        ("lgb_iris", "lightgbm", 4, [("probabilities", "FP64", 3), ("label", "INT64", 1)]),
        ("lgb_diabetes", "lightgbm", 10, [("predictions", "FP64", 1)]),
    ],
)
def test_auto_configured_metadata_and_config(
    http: Any,
    grpc: Any,
    server: Server,
    model: str,
    backend: str,
    features: int,
    outputs: list[tuple[str, str, int]],
) -> None:
    meta = http.get_model_metadata(model)
    assert meta["platform"] == backend
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, features]}]
    assert meta["outputs"] == [
        {"name": name, "datatype": datatype, "shape": [-1, width]}
        for name, datatype, width in outputs
    ]
    gmeta = grpc.get_model_metadata(model, as_json=True)
    assert [(o["name"], o["datatype"]) for o in gmeta["outputs"]] == [
        (name, datatype) for name, datatype, _ in outputs
    ]
    r = httpx.get(f"{server.base}/v2/models/{model}/config", timeout=10)
    assert r.status_code == 200, r.text
    config = r.json()
    assert config["backend"] == backend
    assert config["max_batch_size"] == 64
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
        ("input", "TYPE_FP32", [features])
    ]
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [
        (name, f"TYPE_{datatype}", [width]) for name, datatype, width in outputs
    ]


# ------------------------------------------------------------------ predictions


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("model", ["xgb_cancer", "xgb_iris", "lgb_cancer", "lgb_iris"])
def test_classifier_predictions_equal_the_frameworks(
    kind: str, model: str, http: Any, grpc: Any, cases: dict[str, Case]
) -> None:
    client, module = client_for(kind, http, grpc)
    case = cases[model]
    out = infer(client, module, model, case.x, ["label", "probabilities"])
    assert out["label"].dtype == np.int64
    np.testing.assert_array_equal(out["label"][:, 0], case.model.predict(case.x))
    np.testing.assert_allclose(out["probabilities"], case.model.predict_proba(case.x), atol=1e-5)


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("model", ["xgb_diabetes", "lgb_diabetes"])
def test_regressor_predictions_equal_the_frameworks(
    kind: str, model: str, http: Any, grpc: Any, cases: dict[str, Case]
) -> None:
    client, module = client_for(kind, http, grpc)
    case = cases[model]
    out = infer(client, module, model, case.x, ["predictions"])
    assert out["predictions"].shape == (len(case.x), 1)
    np.testing.assert_allclose(out["predictions"][:, 0], case.model.predict(case.x), atol=1e-5)


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("model", ["xgb_open", "lgb_open"])
def test_a_configured_input_name_serves(
    kind: str, model: str, http: Any, grpc: Any, cases: dict[str, Case]
) -> None:
    client, module = client_for(kind, http, grpc)
    case = cases["xgb_cancer" if model == "xgb_open" else "lgb_cancer"]
    out = infer(client, module, model, case.x[:8], ["label"], name="features")
    np.testing.assert_array_equal(out["label"][:, 0], case.model.predict(case.x[:8]))


# ------------------------------------------------------------------ bad input


def post(
    server: Server, model: str, name: str, shape: list[int], datatype: str = "FP32"
) -> httpx.Response:
    count = int(np.prod(shape))
    body = {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": [0.5] * count}]}
    return httpx.post(f"{server.base}/v2/models/{model}/infer", json=body, timeout=10)


@pytest.mark.parametrize("model", ["xgb_cancer", "lgb_cancer"])
def test_a_wrong_feature_count_is_400(server: Server, model: str) -> None:
    r = post(server, model, "input", [2, 29])
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"}
    assert "30" in r.json()["error"]


@pytest.mark.parametrize("model", ["xgb_open", "lgb_open"])
def test_a_wrong_feature_count_reaching_the_runtime_is_400(server: Server, model: str) -> None:
    r = post(server, model, "features", [2, 29])
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"}
    assert "expects 30 features" in r.json()["error"]


@pytest.mark.parametrize("model", ["xgb_open", "lgb_open"])
def test_a_wrong_feature_count_over_grpc_is_invalid_argument(grpc: Any, model: str) -> None:
    with pytest.raises(InferenceServerException) as err:
        infer(grpc, grpcclient, model, np.zeros((1, 12), np.float32), ["label"], name="features")
    assert str(err.value.status()) == "StatusCode.INVALID_ARGUMENT"
    assert "expects 30 features" in err.value.message()


@pytest.mark.parametrize("model", ["xgb_diabetes", "lgb_diabetes"])
def test_a_wrong_datatype_is_400(server: Server, model: str) -> None:
    r = post(server, model, "input", [1, 10], datatype="FP64")
    assert r.status_code == 400, r.text
    assert "datatype" in r.json()["error"]


def test_the_server_still_serves(server: Server, cases: dict[str, Case]) -> None:
    assert server.alive()
    case = cases["lgb_cancer"]
    data = case.x[:2]
    body = {
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [2, 30], "data": data.ravel().tolist()}
        ],
        "outputs": [{"name": "label"}],
    }
    r = httpx.post(f"{server.base}/v2/models/lgb_cancer/infer", json=body, timeout=10)
    assert r.status_code == 200, r.text
    labels = json.loads(r.text)["outputs"][0]["data"]
    assert labels == case.model.predict(data).tolist()
