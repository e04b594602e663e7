"""Per-model rate limits on the real server: 429 with Retry-After over HTTP,
RESOURCE_EXHAUSTED with ``retry-after`` over gRPC, other models untouched, and
one limit shared by two servers through Redis.

Every limited model has ``rate: 1, burst: 3`` and each test fires its ten
requests back to back, far quicker than the one second a token takes to refill.
"""

from __future__ import annotations

import json
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from modelport.examples import repository_path, samples_path
from tests.integration.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.integration

EXAMPLE = "breast_cancer"
LIMIT = "\nmodelport:\n  rate_limit: {rate: 1, burst: 3}\n"
REDIS_URL = "redis://127.0.0.1:6379/0"


def _add_model(repo: Path, name: str, limited: bool) -> None:
    """The bundled example under a new name, with the rate limit block when asked."""
    target = repo / name
    shutil.copytree(repository_path() / EXAMPLE, target)
    if limited:
        config = target / "config.yaml"
        config.write_text(config.read_text() + LIMIT)


def _body() -> dict[str, Any]:
    body: dict[str, Any] = json.loads((samples_path() / f"{EXAMPLE}.json").read_text())
    return body


def _fire(server: Server, model: str, count: int) -> list[httpx.Response]:
    with httpx.Client(base_url=server.base) as client:
        return [client.post(f"/v2/models/{model}/infer", json=_body()) for _ in range(count)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    repo = tmp_path_factory.mktemp("repo")
    for name, limited in (("capped_http", True), ("capped_grpc", True), ("open", False)):
        _add_model(repo, name, limited)
    srv = start_server(repo, tmp_path_factory.mktemp("log") / "server.log")
    yield srv
    stop_server(srv)


def test_http_allows_the_burst_then_answers_429_with_retry_after(server: Server) -> None:
    responses = _fire(server, "capped_http", 10)
    assert [r.status_code for r in responses] == [200] * 3 + [429] * 7
    for refused in responses[3:]:
        assert int(refused.headers["retry-after"]) >= 1
        message = refused.json()["error"]
        assert "model 'capped_http' is over its rate limit of 1 requests/s (burst 3)" in message
    assert "retry-after" not in responses[0].headers
    # KServe v1 answers through the router's error handler: same status and header.
    row = _body()["inputs"][0]["data"]
    v1 = httpx.post(f"{server.base}/v1/models/capped_http:predict", json={"instances": [row]})
    assert v1.status_code == 429
    assert int(v1.headers["retry-after"]) >= 1
    assert "over its rate limit" in v1.json()["error"]
    metrics = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics").text
    assert 'modelport_rate_limited_total{model="capped_http"} 8.0' in metrics


def test_a_model_without_a_limit_is_unaffected(server: Server) -> None:
    assert [r.status_code for r in _fire(server, "open", 10)] == [200] * 10


def _grpc_request(model: str) -> Any:
    data = np.asarray(_body()["inputs"][0]["data"], np.float32).reshape(1, 30)
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="FP32", shape=[1, 30])
    request.raw_input_contents.append(data.tobytes())
    return request


def test_grpc_answers_resource_exhausted_with_retry_after(server: Server) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    data = np.asarray(_body()["inputs"][0]["data"], np.float32).reshape(1, 30)
    inputs = [grpcclient.InferInput("input", [1, 30], "FP32")]
    inputs[0].set_data_from_numpy(data)
    outcomes: list[str] = []
    try:
        for _ in range(6):
            try:
                client.infer("capped_grpc", inputs)
                outcomes.append("ok")
            except InferenceServerException as exc:
                assert "over its rate limit of 1 requests/s (burst 3)" in exc.message()
                outcomes.append(str(exc.status()))
    finally:
        client.close()
    assert outcomes == ["ok"] * 3 + ["StatusCode.RESOURCE_EXHAUSTED"] * 3
    # The standard client hides trailing metadata; the raw stub shows the wait.
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(_grpc_request("capped_grpc"))
    call: Any = info.value
    assert call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert int(dict(call.trailing_metadata())["retry-after"]) >= 1


def _redis_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not _redis_reachable(), reason="no Redis at 127.0.0.1:6379 to share")
def test_two_servers_sharing_redis_enforce_one_limit(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # A model name of this run's own, so its bucket in Redis is new.
    name = f"shared_{uuid.uuid4().hex[:12]}"
    repo = tmp_path_factory.mktemp("shared-repo")
    _add_model(repo, name, limited=True)
    logs = tmp_path_factory.mktemp("shared-log")
    first = start_server(repo, logs / "a.log", "--redis-url", REDIS_URL)
    try:
        second = start_server(repo, logs / "b.log", "--redis-url", REDIS_URL)
        try:
            statuses = [
                r.status_code for _ in range(5) for s in (first, second) for r in _fire(s, name, 1)
            ]
        finally:
            stop_server(second)
    finally:
        stop_server(first)
    assert statuses.count(200) == 3
    assert statuses.count(429) == 7
