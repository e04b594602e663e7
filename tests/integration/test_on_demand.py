"""Models on demand through the real server: idle unload, cold start, one shared load."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Server, start_server, stop_server
from tests.integration.models import add_sub_model

pytestmark = pytest.mark.integration

IDLE_S = 1
A = [0.5 * i for i in range(16)]
B = [0.25 * i - 1.0 for i in range(16)]
REQUEST = {
    "inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": A},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": B},
    ]
}
#: One model per test, so each test sees its own model go idle.
SLEEPY = ("cold_http", "cold_grpc", "cold_many", "cold_operator", "cold_broken")


def _model(root: Path, name: str, config: str) -> None:
    path = root / name / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    onnx.save(add_sub_model(), str(path))
    (root / name / "config.yaml").write_text(config)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("ondemand")
    for name in SLEEPY:
        _model(root, name, f"modelport: {{idle_unload_s: {IDLE_S}}}\n")
    _model(root, "always", f"modelport: {{idle_unload_s: {IDLE_S}, keep_loaded: true}}\n")
    srv = start_server(root, root / "server.log", "--strict-readiness", "false")
    yield srv
    stop_server(srv)


def _index(server: Server) -> dict[str, tuple[str, str]]:
    r = httpx.post(f"{server.base}/v2/repository/index", json={}, timeout=10)
    assert r.status_code == 200, r.text
    return {e["name"]: (e.get("state", ""), e.get("reason", "")) for e in r.json()}


def _wait_for(server: Server, name: str, state: tuple[str, str], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _index(server).get(name) == state:
            return
        time.sleep(0.1)
    raise AssertionError(f"{name} never reached {state}: {_index(server).get(name)}")


def _metric(server: Server, name: str, model: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("model") == model:
                return float(sample.value)
    return 0.0


def _inputs(module: Any) -> list[Any]:
    a = module.InferInput("INPUT0", [1, 16], "FP32")
    b = module.InferInput("INPUT1", [1, 16], "FP32")
    a.set_data_from_numpy(np.array([A], dtype=np.float32))
    b.set_data_from_numpy(np.array([B], dtype=np.float32))
    return [a, b]


IDLE = ("UNAVAILABLE", "unloaded: idle")


def test_an_idle_model_is_unloaded_and_the_next_request_loads_it(server: Server) -> None:
    _wait_for(server, "cold_http", IDLE)
    with httpclient.InferenceServerClient(server.http_url) as client:
        result = client.infer("cold_http", _inputs(httpclient))
        assert result.get_response()["parameters"] == {"cold_start": True}
        np.testing.assert_allclose(result.as_numpy("OUTPUT0")[0], np.add(A, B), rtol=1e-6)
        again = client.infer("cold_http", _inputs(httpclient))
        assert "cold_start" not in again.get_response().get("parameters", {})
    assert _index(server)["cold_http"] == ("READY", "")
    assert _metric(server, "modelport_cold_starts_total", "cold_http") == 1
    assert _metric(server, "modelport_idle_unloads_total", "cold_http") >= 1
    history = httpx.get(f"{server.base}/api/v1/models/cold_http/history", timeout=10)
    assert history.status_code == 200, history.text
    assert "unloaded: idle" in history.text, history.text


def test_grpc_clients_see_the_cold_start_too(server: Server) -> None:
    _wait_for(server, "cold_grpc", IDLE)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        result = client.infer("cold_grpc", _inputs(grpcclient))
        assert result.get_response().parameters["cold_start"].bool_param is True
        np.testing.assert_allclose(result.as_numpy("OUTPUT1")[0], np.subtract(A, B), rtol=1e-6)
    finally:
        client.close()


def test_concurrent_cold_requests_share_one_load(server: Server) -> None:
    loads = _metric(server, "modelport_model_load_duration_seconds_count", "cold_many")
    _wait_for(server, "cold_many", IDLE)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base, timeout=60) as client:
            url = "/v2/models/cold_many/infer"
            return await asyncio.gather(*(client.post(url, json=REQUEST) for _ in range(32)))

    answers = asyncio.run(burst())
    assert [r.status_code for r in answers] == [200] * 32, [
        r.text for r in answers if r.status_code != 200
    ]
    assert any(r.json().get("parameters", {}).get("cold_start") for r in answers)
    after = _metric(server, "modelport_model_load_duration_seconds_count", "cold_many")
    assert after == loads + 1
    assert _metric(server, "modelport_cold_starts_total", "cold_many") == 1


def test_an_operator_unload_stays_unloaded_under_traffic(server: Server) -> None:
    r = httpx.post(f"{server.base}/v2/repository/models/cold_operator/unload", timeout=10)
    assert r.status_code == 200, r.text
    for _ in range(3):
        r = httpx.post(f"{server.base}/v2/models/cold_operator/infer", json=REQUEST, timeout=10)
        assert r.status_code == 503 and "unloaded" in r.json()["error"]
    time.sleep(IDLE_S + 0.5)
    assert _index(server)["cold_operator"] == ("UNAVAILABLE", "unloaded")
    assert _metric(server, "modelport_cold_starts_total", "cold_operator") == 0


def test_a_model_broken_while_unloaded_fails_held_requests_with_the_reason(
    server: Server,
) -> None:
    _wait_for(server, "cold_broken", IDLE)
    (server.repository / "cold_broken" / "1" / "model.onnx").write_bytes(b"not onnx")

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base, timeout=60) as client:
            url = "/v2/models/cold_broken/infer"
            return await asyncio.gather(*(client.post(url, json=REQUEST) for _ in range(4)))

    answers = asyncio.run(burst())
    assert [r.status_code for r in answers] == [503] * 4
    errors = {r.json()["error"] for r in answers}
    assert len(errors) == 1 and "failed to load" in errors.pop()
    state, reason = _index(server)["cold_broken"]
    assert state == "UNAVAILABLE" and reason and reason != "unloaded: idle"
    assert _metric(server, "modelport_cold_starts_total", "cold_broken") == 1


def test_keep_loaded_is_never_unloaded(server: Server) -> None:
    time.sleep(IDLE_S * 2 + 0.5)
    assert _index(server)["always"] == ("READY", "")
    assert _metric(server, "modelport_idle_unloads_total", "always") == 0


def test_the_servers_idle_unload_applies_to_models_without_their_own(
    tmp_path: Path,
) -> None:
    _model(tmp_path, "plain", "max_batch_size: 8\n")
    _model(tmp_path, "kept", "modelport: {keep_loaded: true}\n")
    _model(tmp_path, "slower", "modelport: {idle_unload_s: 600}\n")
    srv = start_server(tmp_path, tmp_path / "server.log", "--idle-unload", "1")
    try:
        _wait_for(srv, "plain", IDLE)
        time.sleep(1)
        index = _index(srv)
        assert index["kept"] == ("READY", "") and index["slower"] == ("READY", "")
        r = httpx.post(f"{srv.base}/v2/models/plain/infer", json=REQUEST, timeout=30)
        assert r.status_code == 200 and r.json()["parameters"] == {"cold_start": True}
    finally:
        stop_server(srv)
