"""Fuzzing the real server's HTTP API: no input may produce a 500 or stop the server.

/api/v1 is driven by schemathesis from the OpenAPI document the server
publishes; /v2 by hypothesis strategies of our own (random JSON of the
protocol's shape, and random bytes) aimed at the inference and repository
routes.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelport.examples import repository_path
from tests.integration.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.integration

#: CI runs the same examples every time (a red build must be reproducible);
#: MODELPORT_FUZZ_RANDOM=1 explores new ones, as a fuzzing session should.
FIXED = os.environ.get("MODELPORT_FUZZ_RANDOM") != "1"

PYTHON_MODEL = """
import numpy as np

class Model:
    def predict(self, inputs):
        return {"y": inputs["x"] * 2}
"""

PYTHON_CONFIG = """
backend: python
max_batch_size: 4
version_policy: {all: {}}
input:
- {name: x, data_type: TYPE_FP32, dims: [2]}
output:
- {name: y, data_type: TYPE_FP32, dims: [2]}
"""


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("fuzz-repo")
    shutil.copytree(repository_path() / "breast_cancer", root / "breast_cancer")
    model = root / "double"
    for version in (1, 2):
        (model / str(version)).mkdir(parents=True)
        (model / str(version) / "model.py").write_text(textwrap.dedent(PYTHON_MODEL))
    (model / "config.yaml").write_text(PYTHON_CONFIG)
    logs = tmp_path_factory.mktemp("fuzz-logs")
    server = start_server(root, logs / "server.log")
    yield server
    stop_server(server)


def test_management_api_never_fails_with_500(fuzz_server: Server) -> None:
    """Every operation of the published OpenAPI document, with generated inputs."""
    api = f"{fuzz_server.base}/api/v1"
    schema = schemathesis.openapi.from_url(f"{api}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10

    for operation in operations:

        @settings(
            max_examples=20,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=FIXED,
        )
        @given(case=operation.as_strategy())
        def call(case: Any) -> None:
            response = case.call(base_url=api, timeout=30)
            where = (case.method, case.formatted_path)
            assert response.status_code < 500, (where, response.text)
            assert response.status_code != 422, where
            if response.status_code >= 400:
                body = response.json()
                assert set(body) >= {"error", "code"}, (where, body)

        call()
    assert fuzz_server.alive()


# --------------------------------------------------------------------- /v2

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)
datatypes = st.sampled_from(["FP32", "FP64", "INT64", "BOOL", "BYTES", "UINT8", "FP16", "XX"])
shapes = st.lists(st.integers(min_value=-3, max_value=2**40), max_size=4)
tensor = st.fixed_dictionaries(
    {"name": st.sampled_from(["x", "input", "y", ""]), "datatype": datatypes, "shape": shapes},
    optional={
        "data": json_value,
        "parameters": st.dictionaries(st.text(max_size=12), json_leaf, max_size=3),
    },
)
infer_body = st.fixed_dictionaries(
    {"inputs": st.lists(tensor, max_size=3)},
    optional={
        "id": json_leaf,
        "outputs": st.lists(st.fixed_dictionaries({"name": st.text(max_size=5)}), max_size=2),
        "parameters": st.dictionaries(
            st.sampled_from(["timeout", "priority", "binary_data_output", "sequence_id", "k"]),
            json_leaf,
            max_size=3,
        ),
    },
)
paths = st.sampled_from(
    [
        "/v2/models/double/infer",
        "/v2/models/double/versions/1/infer",
        "/v2/models/double/versions/9/infer",
        "/v2/models/breast_cancer/infer",
        "/v2/models/..%2Fdouble/infer",
        "/v2/models/nope/infer",
        "/v2/repository/index",
        "/v2/repository/models/double/load",
        "/v1/models/double:predict",
    ]
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=FIXED
)
@given(path=paths, body=infer_body)
def test_inference_json_never_fails_with_500(fuzz_server: Server, path: str, body: Any) -> None:
    response = httpx.post(f"{fuzz_server.base}{path}", content=json.dumps(body), timeout=30)
    assert response.status_code < 500 or response.status_code == 503, response.text
    if response.status_code >= 400:
        assert "error" in response.json()


@settings(
    max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), derandomize=FIXED
)
@given(
    path=paths,
    raw=st.binary(max_size=512),
    header_length=st.one_of(st.none(), st.integers(min_value=-5, max_value=2**40).map(str)),
)
def test_inference_bytes_never_fail_with_500(
    fuzz_server: Server, path: str, raw: bytes, header_length: str | None
) -> None:
    headers = {"Content-Type": "application/octet-stream"}
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = header_length
    response = httpx.post(f"{fuzz_server.base}{path}", content=raw, headers=headers, timeout=30)
    assert response.status_code < 500 or response.status_code == 503, response.text


def test_server_still_answers_correctly_after_fuzzing(fuzz_server: Server) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.5, -2.0]}]}
    response = httpx.post(f"{fuzz_server.base}/v2/models/double/versions/1/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [3.0, -4.0]
    assert fuzz_server.alive()


def test_integers_beyond_the_database_range_are_refused(fuzz_server: Server) -> None:
    """Found by the fuzzer: an id past 2**63 once reached the database and failed there."""
    api = f"{fuzz_server.base}/api/v1"
    for path in ("/history", "/models/double/history"):
        reply = httpx.get(f"{api}{path}", params={"before": str(2**63)})
        assert reply.status_code == 400, reply.text
        assert reply.json()["code"] == "invalid_request"
    assert httpx.get(f"{api}/history", params={"before": str(2**63 - 1)}).status_code == 200
