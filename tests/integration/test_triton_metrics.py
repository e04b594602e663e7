"""Triton's metric names on /metrics after real inferences, by tritonclient and raw HTTP."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import Server, start_server, stop_server
from tests.integration.models import add_sub_model
from tests.integration.test_auth import bearer, create_key

CONFIGS = {
    "plain": {"max_batch_size": 8},
    "cached": {"max_batch_size": 8, "response_cache": {"enable": True}},
    # Holds a lone request 0.6 s for company: it waits in the queue meanwhile.
    "slow_fill": {
        "max_batch_size": 8,
        "dynamic_batching": {"max_queue_delay_microseconds": 600000},
    },
}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _repository(root: Path) -> Path:
    for name, config in CONFIGS.items():
        (root / name / "1").mkdir(parents=True)
        onnx.save(add_sub_model(), str(root / name / "1" / "model.onnx"))
        (root / name / "config.yaml").write_text(json.dumps(config))
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("nv")
    srv = start_server(_repository(root / "repo"), root / "server.log", "--cache-size", "1000000")
    yield srv
    stop_server(srv)


def _inputs(module: object, rows: int, seed: int = 0) -> list[object]:
    rng = np.random.default_rng(seed)
    made = []
    for name in ("INPUT0", "INPUT1"):
        tensor = module.InferInput(name, [rows, 16], "FP32")  # type: ignore[attr-defined]
        tensor.set_data_from_numpy(rng.standard_normal((rows, 16)).astype(np.float32))
        made.append(tensor)
    return made


def scrape(url: str, **kwargs: object) -> Samples:
    text = httpx.get(url, **kwargs).raise_for_status().text  # type: ignore[arg-type]
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            # The parser names counter samples with _total; the exposition does not.
            name = s.name.removesuffix("_total") if family.type == "counter" else s.name
            out[(name, tuple(sorted(s.labels.items())))] = s.value
    return out


def nv(samples: Samples, name: str, model: str, **labels: str) -> float:
    return samples[(name, tuple(sorted({"model": model, "version": "1", **labels}.items())))]


def test_counts_and_durations_follow_the_requests(server: Server) -> None:
    http = httpclient.InferenceServerClient(server.http_url)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    http.infer("plain", _inputs(httpclient, 1))
    http.infer("plain", _inputs(httpclient, 3))
    grpc.infer("plain", _inputs(grpcclient, 2))
    body = {
        "inputs": [
            {"name": n, "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}
            for n in ("INPUT0", "INPUT1")
        ]
    }
    assert httpx.post(f"{server.base}/v2/models/plain/infer", json=body).status_code == 200
    stats = http.get_inference_statistics("plain")["model_stats"][0]
    http.close()
    grpc.close()

    got = scrape(f"http://127.0.0.1:{server.metrics_port}/metrics")
    assert nv(got, "nv_inference_request_success", "plain") == 4
    assert nv(got, "nv_inference_count", "plain") == 7  # rows: 1 + 3 + 2 + 1
    assert nv(got, "nv_inference_exec_count", "plain") == 4  # one after another: no batching
    assert nv(got, "nv_inference_pending_request_count", "plain") == 0
    for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER"):
        assert nv(got, "nv_inference_request_failure", "plain", reason=reason) == 0
    # The same numbers as Triton's statistics extension, in microseconds.
    inference = stats["inference_stats"]
    for metric, field in [
        ("nv_inference_request_duration_us", "success"),
        ("nv_inference_queue_duration_us", "queue"),
        ("nv_inference_compute_input_duration_us", "compute_input"),
        ("nv_inference_compute_infer_duration_us", "compute_infer"),
        ("nv_inference_compute_output_duration_us", "compute_output"),
    ]:
        assert nv(got, metric, "plain") == int(inference[field]["ns"]) // 1000
    assert nv(got, "nv_inference_compute_infer_duration_us", "plain") > 0
    # The host's series.
    assert 0.0 <= got[("nv_cpu_utilization", ())] <= 1.0
    assert 0 < got[("nv_cpu_memory_used_bytes", ())] <= got[("nv_cpu_memory_total_bytes", ())]
    # modelport's own series stay beside them, on the REST port's /metrics too.
    same = scrape(f"{server.base}/metrics")
    assert nv(same, "nv_inference_request_success", "plain") == 4
    assert any(name == "modelport_inference_requests" for name, _ in same)


def test_cache_hits_and_misses(server: Server) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    for _ in range(3):
        client.infer("cached", _inputs(httpclient, 1, seed=7))
    client.close()
    got = scrape(f"http://127.0.0.1:{server.metrics_port}/metrics")
    assert nv(got, "nv_cache_num_misses_per_model", "cached") == 1
    assert nv(got, "nv_cache_num_hits_per_model", "cached") == 2
    assert nv(got, "nv_inference_request_success", "cached") == 3  # hits included
    assert nv(got, "nv_inference_count", "cached") == 1  # hits excluded
    assert ("nv_cache_num_hits_per_model", (("model", "plain"), ("version", "1"))) not in got


def test_a_waiting_request_is_pending_and_one_that_expires_is_rejected(server: Server) -> None:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    done = threading.Event()

    def wait_for_batch() -> None:
        client = httpclient.InferenceServerClient(server.http_url)
        client.infer("slow_fill", _inputs(httpclient, 1))
        client.close()
        done.set()

    waiting = threading.Thread(target=wait_for_batch)
    waiting.start()
    pending = []
    while not done.is_set() and len(pending) < 200:
        pending.append(nv(scrape(url), "nv_inference_pending_request_count", "slow_fill"))
        time.sleep(0.005)
    waiting.join()
    assert 1 in pending
    assert nv(scrape(url), "nv_inference_pending_request_count", "slow_fill") == 0

    client = httpclient.InferenceServerClient(server.http_url)
    with pytest.raises(InferenceServerException, match="timed out"):
        client.infer("slow_fill", _inputs(httpclient, 1), timeout=50_000)
    client.close()
    got = scrape(url)
    assert nv(got, "nv_inference_request_failure", "slow_fill", reason="REJECTED") == 1
    assert nv(got, "nv_inference_request_success", "slow_fill") == 1


def test_no_triton_metrics_drops_the_nv_names(tmp_path: Path) -> None:
    srv = start_server(_repository(tmp_path / "repo"), tmp_path / "s.log", "--no-triton-metrics")
    try:
        client = httpclient.InferenceServerClient(srv.http_url)
        client.infer("plain", _inputs(httpclient, 1))
        client.close()
        for url in (f"http://127.0.0.1:{srv.metrics_port}/metrics", f"{srv.base}/metrics"):
            text = httpx.get(url).text
            assert "nv_" not in text
            assert 'modelport_inference_requests_total{model="plain"' in text
    finally:
        stop_server(srv)


def test_a_caller_sees_the_nv_series_of_its_own_models(tmp_path: Path) -> None:
    data = tmp_path / "data"
    viewer = create_key(data, "--role", "viewer", "--models", "plain")
    srv = start_server(_repository(tmp_path / "repo"), tmp_path / "s.log", "--data-dir", str(data))
    try:
        text = httpx.get(f"{srv.base}/metrics", headers=bearer(viewer)).text
        assert 'nv_inference_request_success{model="plain",version="1"} 0' in text
        assert 'model="cached"' not in text and 'model="slow_fill"' not in text
        assert "nv_cpu_utilization " in text
    finally:
        stop_server(srv)
