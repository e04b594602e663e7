"""Triton's model-repository extension through both standard clients.

These tests load and unload models, so they run against a server of their
own, over a copy of the repository, leaving the session server alone. Each
test puts back what it changed.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import Server, start_server, stop_server
from tests.integration.models import ONNX_TYPES, build_repository

pytestmark = pytest.mark.integration

EXPECTED_MODELS = {
    "add_sub",
    "add_sub_pbtxt",
    "bad_config",
    "breast_cancer",
    "broken",
    "digits",
    "two_configs",
    *(f"identity_{t.lower()}" for t in ONNX_TYPES),
}
BROKEN = {"broken", "bad_config", "two_configs"}
ADDED_PREFIX = "added_"  # models a test copies into the repository while the server runs


@pytest.fixture(scope="module")
def ops_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    repo = build_repository(tmp_path_factory.mktemp("ops_repo"))
    # Broken models on purpose: readiness here means "started" (see test_readiness.py).
    srv = start_server(
        repo, tmp_path_factory.mktemp("ops_log") / "server.log", "--strict-readiness", "false"
    )
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def http(ops_server: Server) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(ops_server.http_url, network_timeout=60.0)
    yield c
    c.close()


@pytest.fixture(scope="module")
def grpc_client(ops_server: Server) -> Iterator[Any]:
    c = grpcclient.InferenceServerClient(ops_server.grpc_url)
    yield c
    c.close()


# ------------------------------------------------------------------- helpers


def identity_request(datatype: str, batch: int = 2) -> tuple[np.ndarray, list[Any], list[Any]]:
    dtype = {
        "INT8": np.int8,
        "INT16": np.int16,
        "INT32": np.int32,
        "UINT8": np.uint8,
        "UINT16": np.uint16,
        "UINT32": np.uint32,
        "FP32": np.float32,
        "FP64": np.float64,
    }[datatype]
    data = (np.arange(batch * 4) % 100).astype(dtype).reshape(batch, 4)
    h = httpclient.InferInput("INPUT0", [batch, 4], datatype)
    h.set_data_from_numpy(data)
    g = grpcclient.InferInput("INPUT0", [batch, 4], datatype)
    g.set_data_from_numpy(data)
    return data, [h], [g]


def original(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if not e["name"].startswith(ADDED_PREFIX)]


def http_index(server: Server, ready: bool | None = None) -> list[dict[str, Any]]:
    body = {} if ready is None else {"ready": ready}
    r = httpx.post(f"{server.base}/v2/repository/index", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return original(r.json())


def grpc_index(server: Server, ready: bool) -> list[tuple[str, str, str, str]]:
    """RepositoryIndex with the ``ready`` flag, which tritonclient does not expose."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        reply = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=ready), timeout=30)
    return [
        (m.name, m.version, m.state, m.reason)
        for m in reply.models
        if not m.name.startswith(ADDED_PREFIX)
    ]


def states(entries: list[dict[str, Any]], name: str) -> dict[str, str]:
    return {e["version"]: e["state"] for e in entries if e["name"] == name}


def reason_of(entries: list[dict[str, Any]], name: str) -> str:
    reasons = [e.get("reason", "") for e in entries if e["name"] == name]
    assert reasons, f"{name} is not in the index"
    return " ".join(reasons)


# --------------------------------------------------------------------- index


def test_index_lists_every_model(http: httpclient.InferenceServerClient) -> None:
    entries = original(http.get_model_repository_index())
    assert {e["name"] for e in entries} == EXPECTED_MODELS
    for e in entries:
        assert e["state"] in ("READY", "UNAVAILABLE"), e
        if e["name"] in BROKEN:
            assert e["state"] == "UNAVAILABLE", e
            assert e.get("reason"), e
        else:
            assert e["state"] == "READY", e
            assert not e.get("reason"), e
    assert states(entries, "add_sub") == {"1": "READY", "2": "READY"}
    assert states(entries, "add_sub_pbtxt") == {"1": "READY"}


def test_index_reasons_name_the_problem(http: httpclient.InferenceServerClient) -> None:
    entries = http.get_model_repository_index()
    assert "batch_key" in reason_of(entries, "bad_config")
    both = reason_of(entries, "two_configs")
    assert "config.yaml" in both
    assert "config.pbtxt" in both
    assert "ONNX" in reason_of(entries, "broken")


def test_index_over_grpc_matches_http(
    ops_server: Server, http: httpclient.InferenceServerClient, grpc_client: Any
) -> None:
    reply = grpc_client.get_model_repository_index()
    over_grpc = sorted((m.name, m.version, m.state, m.reason) for m in reply.models)
    over_http = sorted(
        (e["name"], e["version"], e["state"], e.get("reason", ""))
        for e in http.get_model_repository_index()
    )
    assert over_grpc == over_http
    as_json = grpc_client.get_model_repository_index(as_json=True)
    assert {m["name"] for m in original(as_json["models"])} == EXPECTED_MODELS
    assert "batch_key" in " ".join(
        m.get("reason", "") for m in as_json["models"] if m["name"] == "bad_config"
    )


def test_index_ready_filter(ops_server: Server) -> None:
    ready = http_index(ops_server, ready=True)
    assert {e["name"] for e in ready} == EXPECTED_MODELS - BROKEN
    assert all(e["state"] == "READY" for e in ready)
    assert states(ready, "add_sub") == {"1": "READY", "2": "READY"}
    everything = http_index(ops_server, ready=False)
    assert {e["name"] for e in everything} == EXPECTED_MODELS
    assert http_index(ops_server) == everything

    ready_grpc = grpc_index(ops_server, ready=True)
    assert {name for name, *_ in ready_grpc} == EXPECTED_MODELS - BROKEN
    assert all(state == "READY" for _, _, state, _ in ready_grpc)
    assert {name for name, *_ in grpc_index(ops_server, ready=False)} == EXPECTED_MODELS


def test_index_ready_must_be_boolean(ops_server: Server) -> None:
    r = httpx.post(f"{ops_server.base}/v2/repository/index", json={"ready": "yes"}, timeout=30)
    assert r.status_code == 400
    assert "ready" in r.json()["error"]


# ------------------------------------------------------------- unload / load


def test_unload_and_load_over_http(
    ops_server: Server, http: httpclient.InferenceServerClient
) -> None:
    name = "identity_int8"
    data, inputs, _ = identity_request("INT8")
    np.testing.assert_array_equal(http.infer(name, inputs).as_numpy("OUTPUT0"), data)

    http.unload_model(name)
    try:
        assert http.is_model_ready(name) is False
        with pytest.raises(InferenceServerException, match=name) as info:
            http.infer(name, inputs)
        assert info.value.status() == "503"
        entries = http.get_model_repository_index()
        assert states(entries, name) == {"1": "UNAVAILABLE"}
        assert "unloaded" in reason_of(entries, name)
        assert name not in {e["name"] for e in http_index(ops_server, ready=True)}
        # The rest of the server is unaffected.
        assert http.is_server_ready() is True
        assert http.is_model_ready("identity_int16") is True
    finally:
        http.load_model(name)

    assert http.is_model_ready(name) is True
    np.testing.assert_array_equal(http.infer(name, inputs).as_numpy("OUTPUT0"), data)
    assert states(http.get_model_repository_index(), name) == {"1": "READY"}


def test_unload_and_load_over_grpc(grpc_client: Any) -> None:
    name = "identity_int16"
    data, _, inputs = identity_request("INT16")
    np.testing.assert_array_equal(grpc_client.infer(name, inputs).as_numpy("OUTPUT0"), data)

    grpc_client.unload_model(name)
    try:
        assert grpc_client.is_model_ready(name) is False
        with pytest.raises(InferenceServerException, match=name) as info:
            grpc_client.infer(name, inputs)
        assert str(info.value.status()) == "StatusCode.UNAVAILABLE"
        index = grpc_client.get_model_repository_index()
        entry = next(m for m in index.models if m.name == name)
        assert (entry.version, entry.state) == ("1", "UNAVAILABLE")
    finally:
        grpc_client.load_model(name)

    assert grpc_client.is_model_ready(name) is True
    np.testing.assert_array_equal(grpc_client.infer(name, inputs).as_numpy("OUTPUT0"), data)


def test_unload_and_load_every_version(http: httpclient.InferenceServerClient) -> None:
    http.unload_model("add_sub")
    try:
        assert http.is_model_ready("add_sub", "1") is False
        assert http.is_model_ready("add_sub", "2") is False
        assert states(http.get_model_repository_index(), "add_sub") == {
            "1": "UNAVAILABLE",
            "2": "UNAVAILABLE",
        }
    finally:
        http.load_model("add_sub")
    assert http.is_model_ready("add_sub", "1") is True
    assert http.is_model_ready("add_sub", "2") is True
    assert states(http.get_model_repository_index(), "add_sub") == {"1": "READY", "2": "READY"}


def test_reload_of_a_loaded_model_keeps_it_serving(
    http: httpclient.InferenceServerClient,
) -> None:
    name = "identity_int32"
    data, inputs, _ = identity_request("INT32")
    http.load_model(name)
    assert http.is_model_ready(name) is True
    np.testing.assert_array_equal(http.infer(name, inputs).as_numpy("OUTPUT0"), data)


def test_load_with_config_override_over_http(http: httpclient.InferenceServerClient) -> None:
    name = "identity_uint8"
    assert http.get_model_config(name)["max_batch_size"] == 64
    http.load_model(name, config=json.dumps({"max_batch_size": 4}))
    try:
        config = http.get_model_config(name)
        assert config["max_batch_size"] == 4
        assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
            ("INPUT0", "TYPE_UINT8", [4])
        ]
        data, inputs, _ = identity_request("UINT8", batch=4)
        np.testing.assert_array_equal(http.infer(name, inputs).as_numpy("OUTPUT0"), data)
        _, too_many, _ = identity_request("UINT8", batch=5)
        with pytest.raises(InferenceServerException, match="max_batch_size"):
            http.infer(name, too_many)
    finally:
        # Loading without a config goes back to the repository's own.
        http.load_model(name)
    assert http.get_model_config(name)["max_batch_size"] == 64
    data, inputs, _ = identity_request("UINT8", batch=5)
    np.testing.assert_array_equal(http.infer(name, inputs).as_numpy("OUTPUT0"), data)


def test_load_with_config_override_over_grpc(grpc_client: Any) -> None:
    name = "identity_uint16"
    grpc_client.load_model(name, config=json.dumps({"max_batch_size": 4}))
    try:
        config = grpc_client.get_model_config(name, as_json=True)["config"]
        assert config["max_batch_size"] == 4
        _, _, too_many = identity_request("UINT16", batch=5)
        with pytest.raises(InferenceServerException, match="max_batch_size"):
            grpc_client.infer(name, too_many)
    finally:
        grpc_client.load_model(name)
    assert grpc_client.get_model_config(name).config.max_batch_size == 64


def test_load_with_invalid_config_override_is_refused(
    http: httpclient.InferenceServerClient,
) -> None:
    name = "identity_uint32"
    with pytest.raises(InferenceServerException, match="batch_key"):
        http.load_model(name, config=json.dumps({"batch_key": 1}))
    with pytest.raises(InferenceServerException, match="config"):
        http.load_model(name, config="{not json")
    # A refused override leaves the model serving as before.
    data, inputs, _ = identity_request("UINT32")
    try:
        np.testing.assert_array_equal(http.infer(name, inputs).as_numpy("OUTPUT0"), data)
        assert http.get_model_config(name)["max_batch_size"] == 64
    finally:
        http.load_model(name)


@pytest.mark.parametrize(("name", "needle"), [("broken", "ONNX"), ("bad_config", "batch_key")])
def test_load_broken_model_fails_with_reason(
    http: httpclient.InferenceServerClient, grpc_client: Any, name: str, needle: str
) -> None:
    with pytest.raises(InferenceServerException, match=needle) as info:
        http.load_model(name)
    assert name in str(info.value.message())
    assert http.is_model_ready(name) is False
    with pytest.raises(InferenceServerException, match=needle):
        grpc_client.load_model(name)
    assert grpc_client.is_model_ready(name) is False
    entries = http.get_model_repository_index()
    assert set(states(entries, name).values()) == {"UNAVAILABLE"}
    assert needle in reason_of(entries, name)


def test_load_two_configs_fails(http: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        http.load_model("two_configs")
    message = str(info.value.message())
    assert "config.yaml" in message
    assert "config.pbtxt" in message


def test_load_unknown_model_names_it(
    http: httpclient.InferenceServerClient, grpc_client: Any
) -> None:
    with pytest.raises(InferenceServerException, match="no_such_model"):
        http.load_model("no_such_model")
    with pytest.raises(InferenceServerException, match="no_such_model"):
        grpc_client.load_model("no_such_model")


def test_unload_unknown_model_names_it(
    http: httpclient.InferenceServerClient, grpc_client: Any
) -> None:
    with pytest.raises(InferenceServerException, match="no_such_model"):
        http.unload_model("no_such_model")
    with pytest.raises(InferenceServerException, match="no_such_model"):
        grpc_client.unload_model("no_such_model")


def test_load_refuses_path_traversal(ops_server: Server) -> None:
    r = httpx.post(f"{ops_server.base}/v2/repository/models/..%2F..%2Fetc/load", timeout=30)
    assert r.status_code in (400, 404)
    assert "error" in r.json()


def test_load_with_files_is_refused_clearly(http: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match=r"file:1/model\.onnx") as info:
        http.load_model(
            "identity_fp64",
            config=json.dumps({"max_batch_size": 2}),
            files={"file:1/model.onnx": b"not a model"},
        )
    assert info.value.status() == "400"
    assert http.get_model_config("identity_fp64")["max_batch_size"] == 64


# ---------------------------------------------------- under concurrent load


class Requests:
    """Threads sending add_sub requests until stopped; every outcome is kept."""

    def __init__(self, server: Server, threads: int = 3) -> None:
        self.url = f"{server.base}/v2/models/add_sub/infer"
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        a = np.arange(16, dtype=np.float32)
        body = {
            "inputs": [
                {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": a.tolist()},
                {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": a.tolist()},
            ]
        }
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                try:
                    r = client.post(self.url, json=body)
                except httpx.HTTPError as exc:
                    with self.lock:
                        self.errors.append(repr(exc))
                    continue
                with self.lock:
                    self.statuses[r.status_code] += 1
                    if r.status_code == 200:
                        out = {o["name"]: o["data"] for o in r.json()["outputs"]}
                        if out != {"OUTPUT0": (2 * a).tolist(), "OUTPUT1": [0.0] * 16}:
                            self.errors.append(f"wrong values: {out}")
                    elif r.status_code != 503 or "error" not in r.json():
                        self.errors.append(f"{r.status_code}: {r.text}")

    def total(self) -> int:
        with self.lock:
            return sum(self.statuses.values())

    def __enter__(self) -> Requests:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


def _wait_for_more(requests: Requests, more: int, timeout: float = 20.0) -> None:
    target = requests.total() + more
    deadline = time.monotonic() + timeout
    while requests.total() < target:
        assert time.monotonic() < deadline, "requests stopped being answered"
        time.sleep(0.01)


def test_reload_under_load_never_fails_a_request(
    ops_server: Server, http: httpclient.InferenceServerClient
) -> None:
    with Requests(ops_server) as requests:
        _wait_for_more(requests, 20)
        for _ in range(3):
            http.load_model("add_sub")
            _wait_for_more(requests, 20)
    assert requests.errors == []
    assert set(requests.statuses) == {200}, requests.statuses


def test_unload_under_load_answers_503_then_load_recovers(
    ops_server: Server, http: httpclient.InferenceServerClient
) -> None:
    with Requests(ops_server) as requests:
        _wait_for_more(requests, 20)
        http.unload_model("add_sub", unload_dependents=True)
        try:
            _wait_for_more(requests, 20)
            with requests.lock:
                refused_while_unloaded = requests.statuses[503]
        finally:
            http.load_model("add_sub")
        _wait_for_more(requests, 20)
    # Requests in flight finish; later ones get a JSON 503, never a 500 or a reset.
    assert requests.errors == []
    assert set(requests.statuses) <= {200, 503}
    assert refused_while_unloaded >= 20
    assert http.is_model_ready("add_sub") is True


def test_load_picks_up_a_model_added_to_disk(
    ops_server: Server, http: httpclient.InferenceServerClient
) -> None:
    name = "added_late"
    assert http.is_model_ready(name) is False
    shutil.copytree(ops_server.repository / "add_sub", ops_server.repository / name)
    http.load_model(name)
    assert http.is_model_ready(name, "1") is True
    assert http.is_model_ready(name, "2") is True
    data = np.ones((1, 16), dtype=np.float32)
    inputs = [
        httpclient.InferInput("INPUT0", [1, 16], "FP32"),
        httpclient.InferInput("INPUT1", [1, 16], "FP32"),
    ]
    inputs[0].set_data_from_numpy(data)
    inputs[1].set_data_from_numpy(data)
    result = http.infer(name, inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data + data)
    http.unload_model(name)
    assert http.is_model_ready(name) is False
