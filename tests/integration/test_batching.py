"""Scheduling through the real server: batching, admission, deadlines, cache, warm-up."""

from __future__ import annotations

import concurrent.futures
import json
import socket
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
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import Server, start_server, stop_server
from tests.integration.models import add_sub_model

pytestmark = pytest.mark.integration

CONFIGS = {
    # Waits up to 50 ms to fill a batch, so concurrent callers share executions.
    "batched": {"max_batch_size": 32, "dynamic_batching": {"max_queue_delay_microseconds": 50000}},
    # Holds requests 1 s for company: two fill the queue, a third is refused.
    "tiny_queue": {
        "max_batch_size": 8,
        "dynamic_batching": {
            "max_queue_delay_microseconds": 1000000,
            "default_queue_policy": {"max_queue_size": 2},
        },
    },
    # Holds requests 0.6 s: a request with a shorter timeout expires in the queue.
    "slow_fill": {
        "max_batch_size": 8,
        "dynamic_batching": {"max_queue_delay_microseconds": 600000},
    },
    "cached": {"max_batch_size": 8, "response_cache": {"enable": True}},
    "warmed": {
        "max_batch_size": 8,
        "model_warmup": [
            {
                "name": "zeros",
                "batch_size": 4,
                "count": 2,
                "inputs": {
                    "INPUT0": {"data_type": "TYPE_FP32", "dims": [16], "zero_data": True},
                    "INPUT1": {"data_type": "TYPE_FP32", "dims": [16], "random_data": True},
                },
            }
        ],
    },
    "bad_warmup": {
        "max_batch_size": 8,
        "model_warmup": [
            {
                "name": "wrong",
                "batch_size": 1,
                "inputs": {"NOPE": {"data_type": "TYPE_FP32", "dims": [16], "zero_data": True}},
            }
        ],
    },
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("sched")
    for name, config in CONFIGS.items():
        (root / name / "1").mkdir(parents=True)
        onnx.save(add_sub_model(), str(root / name / "1" / "model.onnx"))
        (root / name / "config.yaml").write_text(json.dumps(config))
    srv = start_server(root, root / "server.log", "--cache-size", "1000000")
    yield srv
    stop_server(srv)


def pair(seed: int, rows: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((rows, 16)).astype(np.float32),
        rng.standard_normal((rows, 16)).astype(np.float32),
    )


def http_infer(url: str, model: str, a: np.ndarray, b: np.ndarray, **kw: object) -> object:
    client = httpclient.InferenceServerClient(url)
    inputs = [httpclient.InferInput("INPUT0", list(a.shape), "FP32"),
              httpclient.InferInput("INPUT1", list(b.shape), "FP32")]  # fmt: skip
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    try:
        return client.infer(model, inputs, **kw)
    finally:
        client.close()


def stats(server: Server, model: str) -> dict[str, object]:
    return httpx.get(f"{server.base}/v2/models/{model}/stats").json()["model_stats"][0]


def http_inputs(a: np.ndarray, b: np.ndarray) -> list[object]:
    inputs = [httpclient.InferInput("INPUT0", list(a.shape), "FP32"),
              httpclient.InferInput("INPUT1", list(b.shape), "FP32")]  # fmt: skip
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs


def rest_body(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """The REST infer body for one [1, 16] pair."""
    return {"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": a.ravel().tolist()},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": b.ravel().tolist()},
    ]}  # fmt: skip


def test_concurrent_http_and_grpc_callers_get_their_own_rows(server: Server) -> None:
    # tritonclient.http runs concurrent requests as greenlets of one client on
    # this thread (its clients must not be made on threads that later exit);
    # tritonclient.grpc callers run on threads meanwhile.

    def over_grpc(i: int) -> None:
        a, b = pair(1000 + i, rows=1 + i % 2)
        client = grpcclient.InferenceServerClient(server.grpc_url)
        inputs = [grpcclient.InferInput("INPUT0", list(a.shape), "FP32"),
                  grpcclient.InferInput("INPUT1", list(b.shape), "FP32")]  # fmt: skip
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        result = client.infer("batched", inputs, request_id=str(i))
        assert result.get_response().id == str(i)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
        client.close()

    client = httpclient.InferenceServerClient(server.http_url, concurrency=24)
    try:
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            jobs = [pool.submit(over_grpc, i) for i in range(48)]
            pairs = [pair(i, rows=1 + i % 3) for i in range(48)]
            pending = [
                client.async_infer("batched", http_inputs(a, b), request_id=str(i))
                for i, (a, b) in enumerate(pairs)
            ]
            for i, ((a, b), request) in enumerate(zip(pairs, pending, strict=True)):
                result = request.get_result()
                assert result.get_response()["id"] == str(i)
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
                np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
            for job in jobs:
                job.result()
    finally:
        client.close()
    s = stats(server, "batched")
    assert s["inference_stats"]["success"]["count"] == 96
    assert s["execution_count"] < 96
    assert max(b["batch_size"] for b in s["batch_stats"]) > 1


def test_full_queue_answers_503_at_once(server: Server) -> None:
    a, b = pair(1)

    def held_request() -> httpx.Response:
        return httpx.post(f"{server.base}/v2/models/tiny_queue/infer", json=body, timeout=30)

    body = rest_body(a, b)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        held = [pool.submit(held_request) for _ in range(2)]
        counter = (
            'modelport_inference_requests_total{model="tiny_queue",protocol="http",version="1"}'
        )
        deadline = time.monotonic() + 5
        while f"{counter} 2.0" not in httpx.get(f"{server.base}/metrics").text:
            assert time.monotonic() < deadline, "the two held requests never arrived"
            time.sleep(0.02)
        assert not any(h.done() for h in held)
        started = time.monotonic()
        r = httpx.post(f"{server.base}/v2/models/tiny_queue/infer", json=body, timeout=10)
        assert r.status_code == 503
        assert "queue full" in r.json()["error"]
        assert time.monotonic() - started < 0.5
        for h in held:
            answer = h.result()
            assert answer.status_code == 200, answer.text
            out = {o["name"]: o["data"] for o in answer.json()["outputs"]}
            np.testing.assert_allclose(out["OUTPUT0"], (a + b).ravel(), rtol=1e-6)


def test_request_timeout_expires_in_the_queue_with_504(server: Server) -> None:
    a, b = pair(2)
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as info:
        http_infer(server.http_url, "slow_fill", a, b, timeout=50_000)
    assert "timed out" in str(info.value)
    assert time.monotonic() - started < 0.5
    assert stats(server, "slow_fill")["execution_count"] == 0
    body = rest_body(a, b) | {"parameters": {"timeout": 20_000}}
    r = httpx.post(f"{server.base}/v2/models/slow_fill/infer", json=body, timeout=10)
    assert r.status_code == 504
    # Without a timeout the same request waits for its batch and succeeds.
    result = http_infer(server.http_url, "slow_fill", a, b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)


def test_client_that_disconnects_has_its_queued_work_dropped(server: Server) -> None:
    a, b = pair(3)
    body = json.dumps(rest_body(a, b)).encode()
    before = stats(server, "slow_fill")["execution_count"]
    with socket.create_connection(("127.0.0.1", server.http_port)) as sock:
        sock.sendall(
            b"POST /v2/models/slow_fill/infer HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        time.sleep(0.1)
    time.sleep(0.9)  # past the 0.6 s batching delay: the batch would have run by now
    assert stats(server, "slow_fill")["execution_count"] == before
    assert server.alive()


def test_response_cache_answers_repeats_without_computing(server: Server) -> None:
    a, b = pair(4)
    first = http_infer(server.http_url, "cached", a, b)
    second = http_infer(server.http_url, "cached", a, b)
    np.testing.assert_array_equal(first.as_numpy("OUTPUT0"), second.as_numpy("OUTPUT0"))
    other = http_infer(server.http_url, "cached", b, a)
    np.testing.assert_array_equal(other.as_numpy("OUTPUT1"), b - a)
    s = stats(server, "cached")
    assert s["execution_count"] == 2
    assert s["inference_stats"]["cache_hit"]["count"] == 1
    assert s["inference_stats"]["cache_miss"]["count"] == 2
    metrics = httpx.get(f"{server.base}/metrics").text
    assert 'modelport_response_cache_total{model="cached",result="hit",version="1"} 1.0' in metrics


def test_warm_up_runs_before_ready_and_a_failing_one_names_the_reason(server: Server) -> None:
    log = Path(server.log_path).read_text()
    warmed = [json.loads(line) for line in log.splitlines() if '"warmup_runs"' in line]
    assert any(e["model"] == "warmed" and e["warmup_runs"] == 2 for e in warmed)
    index = httpx.post(f"{server.base}/v2/repository/index").json()
    bad = next(e for e in index if e["name"] == "bad_warmup")
    assert bad["state"] == "UNAVAILABLE"
    assert "warm-up failed" in bad["reason"]


def test_config_shows_the_scheduling_in_effect(server: Server) -> None:
    config = httpx.get(f"{server.base}/v2/models/tiny_queue/config").json()
    assert config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 2
    greedy = httpx.get(f"{server.base}/v2/models/cached/config").json()
    assert greedy["dynamic_batching"]["max_queue_delay_microseconds"] == 0
    assert greedy["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 256


def test_rest_deadline_header_expires_in_the_queue_with_504(server: Server) -> None:
    a, b = pair(4)
    body = rest_body(a, b)
    url = f"{server.base}/v2/models/slow_fill/infer"
    before = stats(server, "slow_fill")["execution_count"]
    started = time.monotonic()
    r = httpx.post(url, json=body, headers={"modelport-timeout-ms": "50"}, timeout=10)
    assert r.status_code == 504, r.text
    assert "timed out" in r.json()["error"]
    assert time.monotonic() - started < 0.5
    assert stats(server, "slow_fill")["execution_count"] == before
    # KServe v1 takes the same header.
    r = httpx.post(
        f"{server.base}/v1/models/slow_fill:predict",
        json={"inputs": {"INPUT0": a.tolist(), "INPUT1": b.tolist()}},
        headers={"modelport-timeout-ms": "50"},
        timeout=10,
    )
    assert r.status_code == 504, r.text
    # A deadline the server cannot read is refused, not ignored.
    r = httpx.post(url, json=body, headers={"modelport-timeout-ms": "soon"}, timeout=10)
    assert r.status_code == 400
    assert "modelport-timeout-ms" in r.json()["error"]


def test_grpc_deadline_expires_in_the_queue(server: Server) -> None:
    a, b = pair(5)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "FP32"),
              grpcclient.InferInput("INPUT1", [1, 16], "FP32")]  # fmt: skip
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    before = stats(server, "slow_fill")["execution_count"]
    started = time.monotonic()
    try:
        with pytest.raises(InferenceServerException) as info:
            client.infer("slow_fill", inputs, client_timeout=0.1)
    finally:
        client.close()
    assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert time.monotonic() - started < 0.5
    time.sleep(0.7)  # past the 0.6 s batching delay: the batch would have run by now
    assert stats(server, "slow_fill")["execution_count"] == before


def test_full_queue_answers_grpc_unavailable_at_once(server: Server) -> None:
    a, b = pair(6)

    def held_request() -> httpx.Response:
        return httpx.post(f"{server.base}/v2/models/tiny_queue/infer", json=body, timeout=30)

    body = rest_body(a, b)
    counter = 'modelport_inference_requests_total{model="tiny_queue",protocol="http",version="1"}'
    metrics = httpx.get(f"{server.base}/metrics").text
    seen = next(
        (float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(counter)), 0.0
    )
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "FP32"),
              grpcclient.InferInput("INPUT1", [1, 16], "FP32")]  # fmt: skip
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            held = [pool.submit(held_request) for _ in range(2)]
            deadline = time.monotonic() + 5
            while f"{counter} {seen + 2}" not in httpx.get(f"{server.base}/metrics").text:
                assert time.monotonic() < deadline, "the two held requests never arrived"
                time.sleep(0.02)
            started = time.monotonic()
            with pytest.raises(InferenceServerException) as info:
                client.infer("tiny_queue", inputs)
            # The same refusal REST answers with 503, mapped by the gRPC error table.
            assert info.value.status() == "StatusCode.UNAVAILABLE"
            assert "queue full" in str(info.value)
            assert time.monotonic() - started < 0.5
            for h in held:
                assert h.result().status_code == 200
    finally:
        client.close()
    # Refused before decoding: the request never reached the pipeline, which counts each.
    grpc_counter = 'modelport_inference_requests_total{model="tiny_queue",protocol="grpc"'
    assert grpc_counter not in httpx.get(f"{server.base}/metrics").text
