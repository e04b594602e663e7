"""DataFrame models served one input per column, end to end.

A ColumnTransformer pipeline (a numeric, an integer, a string and a boolean
column; OneHotEncoder on the string) is trained here on a small DataFrame,
saved as ``model.skops`` in a Triton-layout repository, and served by the
real server, with dynamic batching. Requests come as MLServer's pandas codec
sends them (``parameters: {"content_type": "pd"}``, the string column
BYTES with ``content_type: "str"``, shapes ``[N, 1]`` or ``[N]``) and as
tritonclient.http sends named inputs; answers must equal the pipeline's
own ``predict`` on the same DataFrame. The same pipeline logged with
MLflow (a column signature) is served the same way. Models fitted without
column names keep their one input matrix.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import skops.io as sio
import tritonclient.http as httpclient
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from tests.integration.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.integration

BUNDLED = Path(__file__).resolve().parents[2] / "src" / "modelport" / "examples" / "models"

_rng = np.random.default_rng(7)
_N = 120
FRAME = pd.DataFrame(
    {
        "age": _rng.uniform(18, 80, _N).round(1),
        "visits": _rng.integers(0, 12, _N),
        "city": _rng.choice(["Oslo", "Lima", "Kyiv", "São Paulo"], _N),
        "member": _rng.random(_N) < 0.4,
    }
)
TARGET = ((FRAME["age"] > 45) ^ FRAME["member"] ^ (FRAME["city"] == "Lima")).astype(int)

PEOPLE_CONFIG = "dynamic_batching: {max_queue_delay_microseconds: 20000}\n"


@dataclass
class Models:
    people: Pipeline
    matrix: Pipeline


def pipeline() -> Pipeline:
    prep = ColumnTransformer(
        [
            ("num", StandardScaler(), ["age", "visits"]),
            ("city", OneHotEncoder(handle_unknown="ignore"), ["city"]),
            ("member", OneHotEncoder(), ["member"]),
        ]
    )
    return Pipeline([("prep", prep), ("clf", LogisticRegression(max_iter=1000))]).fit(FRAME, TARGET)


def save_mlflow(model: Pipeline, root: Path) -> bool:
    """The pipeline as an MLflow model with a column signature; False without mlflow."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import mlflow.sklearn
            from mlflow.models import infer_signature
        except ImportError:
            return False
        signature = infer_signature(FRAME, model.predict(FRAME))
        (root / "people_mlflow").mkdir()
        mlflow.sklearn.save_model(
            model,
            str(root / "people_mlflow" / "1"),
            signature=signature,
            pip_requirements=["scikit-learn"],
            serialization_format="skops",
        )
    # model.skops sits beside MLmodel: say which backend serves the directory.
    (root / "people_mlflow" / "config.yaml").write_text("backend: mlflow\n")
    return True


def build(root: Path) -> Models:
    people = pipeline()
    (root / "people" / "1").mkdir(parents=True)
    sio.dump(people, root / "people" / "1" / "model.skops")
    (root / "people" / "config.yaml").write_text(PEOPLE_CONFIG)

    # Fitted on an array: no column names, so the one input matrix of before.
    x = FRAME[["age", "visits"]].to_numpy(dtype=np.float64)
    matrix = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression())]).fit(x, TARGET)
    (root / "matrix" / "1").mkdir(parents=True)
    sio.dump(matrix, root / "matrix" / "1" / "model.skops")

    shutil.copytree(BUNDLED / "breast_cancer", root / "breast_cancer")
    save_mlflow(people, root)
    return Models(people, matrix)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Models]]:
    root = tmp_path_factory.mktemp("frames_repo")
    models = build(root)
    server = start_server(root, tmp_path_factory.mktemp("frames_log") / "server.log")
    yield server, models
    stop_server(server)


@pytest.fixture(scope="module")
def server(served: tuple[Server, Models]) -> Server:
    return served[0]


@pytest.fixture(scope="module")
def models(served: tuple[Server, Models]) -> Models:
    return served[1]


def mlserver_body(frame: pd.DataFrame, flat: bool = False) -> dict[str, Any]:
    """What MLServer's PandasCodec.encode_request makes of a DataFrame."""
    inputs = []
    for name in frame.columns:
        column = frame[name]
        shape = [len(frame)] if flat else [len(frame), 1]
        if column.dtype == bool:
            tensor = {"name": name, "datatype": "BOOL", "data": column.tolist()}
        elif pd.api.types.is_integer_dtype(column):
            tensor = {"name": name, "datatype": "INT64", "data": column.tolist()}
        elif pd.api.types.is_float_dtype(column):
            tensor = {"name": name, "datatype": "FP64", "data": column.tolist()}
        else:
            tensor = {
                "name": name,
                "datatype": "BYTES",
                "parameters": {"content_type": "str"},
                "data": [str(v) for v in column],
            }
        inputs.append({**tensor, "shape": shape})
    return {"parameters": {"content_type": "pd"}, "inputs": inputs}


def infer(server: Server, model: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.base}/v2/models/{model}/infer", json=body, timeout=30)


def outputs(response: httpx.Response) -> dict[str, np.ndarray[Any, Any]]:
    assert response.status_code == 200, response.text
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in response.json()["outputs"]}


# ------------------------------------------------------------------ metadata


COLUMNS = [
    {"name": "age", "datatype": "FP64", "shape": [-1, 1]},
    {"name": "visits", "datatype": "FP64", "shape": [-1, 1]},
    {"name": "city", "datatype": "BYTES", "shape": [-1, 1]},
    {"name": "member", "datatype": "BOOL", "shape": [-1, 1]},
]


def test_metadata_lists_one_input_per_column(server: Server) -> None:
    meta = httpx.get(f"{server.base}/v2/models/people", timeout=10).json()
    assert meta["inputs"] == COLUMNS
    assert meta["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [-1, 1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
    ]
    config = httpx.get(f"{server.base}/v2/models/people/config", timeout=10).json()
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
        ("age", "TYPE_FP64", [1]),
        ("visits", "TYPE_FP64", [1]),
        ("city", "TYPE_STRING", [1]),
        ("member", "TYPE_BOOL", [1]),
    ]


# ------------------------------------------------------------------ predictions


@pytest.mark.parametrize("flat", [False, True], ids=["n-by-1", "rank-1"])
def test_mlserver_pandas_request(server: Server, models: Models, flat: bool) -> None:
    rows = FRAME.iloc[:40]
    got = outputs(infer(server, "people", mlserver_body(rows, flat)))
    np.testing.assert_array_equal(got["label"][:, 0], models.people.predict(rows))
    np.testing.assert_allclose(got["probabilities"], models.people.predict_proba(rows), atol=1e-6)


def test_tritonclient_named_inputs(server: Server, models: Models) -> None:
    rows = FRAME.iloc[40:90]
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        tensors = []
        for spec in COLUMNS:
            values = rows[spec["name"]].to_numpy()
            if spec["datatype"] == "BYTES":
                values = values.astype(object)
            elif spec["datatype"] == "FP64":
                values = values.astype(np.float64)
            tensor = httpclient.InferInput(spec["name"], [len(rows), 1], spec["datatype"])
            tensor.set_data_from_numpy(values.reshape(-1, 1))
            tensors.append(tensor)
        result = client.infer("people", tensors)
    finally:
        client.close()
    np.testing.assert_array_equal(result.as_numpy("label")[:, 0], models.people.predict(rows))
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), models.people.predict_proba(rows), atol=1e-6
    )


def test_grpc_pandas_request(server: Server, models: Models) -> None:
    """Over gRPC too: the request parameter content_type "pd" lets INT64 feed an FP64 column."""
    import tritonclient.grpc as grpcclient

    rows = FRAME.iloc[90:]
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        tensors = []
        for name, datatype in (("age", "FP64"), ("visits", "INT64"), ("city", "BYTES")):
            values = rows[name].to_numpy()
            values = values.astype(object) if datatype == "BYTES" else values
            tensor = grpcclient.InferInput(name, [len(rows)], datatype)
            tensor.set_data_from_numpy(values)
            tensors.append(tensor)
        member = grpcclient.InferInput("member", [len(rows), 1], "BOOL")
        member.set_data_from_numpy(rows["member"].to_numpy().reshape(-1, 1))
        tensors.append(member)
        result = client.infer("people", tensors, parameters={"content_type": "pd"})
    finally:
        client.close()
    np.testing.assert_array_equal(result.as_numpy("label")[:, 0], models.people.predict(rows))


def test_concurrent_requests_are_batched_by_column(server: Server, models: Models) -> None:
    """Requests of [N, 1] and [N] columns gathered into one batch each get their own rows."""
    slices = [FRAME.iloc[i : i + 7] for i in range(0, 70, 7)]
    with ThreadPoolExecutor(len(slices)) as pool:
        answers = list(
            pool.map(
                lambda item: infer(server, "people", mlserver_body(item[1], flat=item[0] % 2 == 1)),
                enumerate(slices),
            )
        )
    for rows, answer in zip(slices, answers, strict=True):
        np.testing.assert_array_equal(outputs(answer)["label"][:, 0], models.people.predict(rows))


def test_a_missing_column_is_named(server: Server) -> None:
    body = mlserver_body(FRAME.iloc[:3].drop(columns=["city"]))
    response = infer(server, "people", body)
    assert response.status_code == 400, response.text
    assert "missing input 'city'" in response.json()["error"]


def test_an_unmarked_request_keeps_exact_datatypes(server: Server) -> None:
    body = mlserver_body(FRAME.iloc[:3])
    del body["parameters"]
    response = infer(server, "people", body)
    assert response.status_code == 400, response.text
    assert "'visits' has datatype INT64, expected FP64" in response.json()["error"]


# ------------------------------------------------------------------ the one matrix, as before


def test_models_fitted_without_names_keep_the_matrix(server: Server, models: Models) -> None:
    meta = httpx.get(f"{server.base}/v2/models/matrix", timeout=10).json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 2]}]
    x = FRAME[["age", "visits"]].to_numpy(dtype=np.float32)[:10]
    body = {
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [10, 2], "data": x.ravel().tolist()}
        ]
    }
    got = outputs(infer(server, "matrix", body))
    np.testing.assert_array_equal(got["label"][:, 0], models.matrix.predict(x))


def test_the_bundled_example_still_answers(server: Server) -> None:
    from sklearn.datasets import load_breast_cancer

    x = load_breast_cancer().data[:4].astype(np.float32)
    meta = httpx.get(f"{server.base}/v2/models/breast_cancer", timeout=10).json()
    (spec,) = meta["inputs"]
    body = {
        "inputs": [
            {"name": spec["name"], "datatype": "FP32", "shape": [4, 30], "data": x.ravel().tolist()}
        ]
    }
    response = infer(server, "breast_cancer", body)
    assert response.status_code == 200, response.text


# ------------------------------------------------------------------ MLflow


def test_mlflow_column_signature(server: Server, models: Models) -> None:
    meta = httpx.get(f"{server.base}/v2/models/people_mlflow", timeout=10)
    if meta.status_code == 404:
        pytest.skip("mlflow is not installed")
    # MLflow's own column types: visits is a long column.
    assert meta.json()["inputs"] == [
        {"name": "age", "datatype": "FP64", "shape": [-1, 1]},
        {"name": "visits", "datatype": "INT64", "shape": [-1, 1]},
        {"name": "city", "datatype": "BYTES", "shape": [-1, 1]},
        {"name": "member", "datatype": "BOOL", "shape": [-1, 1]},
    ]
    rows = FRAME.iloc[::3]
    got = outputs(infer(server, "people_mlflow", mlserver_body(rows)))
    (name,) = got
    np.testing.assert_array_equal(got[name][:, 0], models.people.predict(rows))
