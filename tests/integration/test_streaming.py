"""Decoupled (streaming) python models end to end: gRPC streams, REST generate, cancellation."""

from __future__ import annotations

import json
import queue
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.integration

TOKENS_CONFIG = """
backend: python
max_batch_size: 0
model_transaction_policy: {{decoupled: true}}
parameters: {{marker_dir: {{string_value: "{markers}"}}}}
input:
- {{name: count, data_type: TYPE_INT32, dims: [1]}}
- {{name: delay_ms, data_type: TYPE_INT32, dims: [1]}}
- {{name: run, data_type: TYPE_STRING, dims: [1]}}
output:
- {{name: index, data_type: TYPE_INT32, dims: [1]}}
- {{name: text_output, data_type: TYPE_STRING, dims: [1]}}
"""

# Each yielded response leaves a marker file: the test counts what was computed.
TOKENS = """
    import time
    from pathlib import Path

    import numpy as np


    class Model:
        def load(self, version_dir, config):
            self.markers = Path(config.parameter("marker_dir"))

        def predict(self, inputs):
            count = int(inputs["count"][0])
            delay = int(inputs["delay_ms"][0]) / 1000
            run = self.markers / inputs["run"][0].decode()
            run.mkdir(exist_ok=True)
            for i in range(count):
                time.sleep(delay)
                (run / str(i)).touch()
                yield {
                    "index": np.array([i], dtype=np.int32),
                    "text_output": np.array([f"tok{i}".encode()], dtype=object),
                }
"""

ECHO_CONFIG = """
backend: python
max_batch_size: 0
input:
- {name: text_input, data_type: TYPE_STRING, dims: [1]}
output:
- {name: text_output, data_type: TYPE_STRING, dims: [1]}
"""

ECHO = """
    class Model:
        def predict(self, inputs):
            return {"text_output": inputs["text_input"]}
"""

# A generator predict without the decoupled policy, and the policy without a generator.
NOT_DECOUPLED = """
    class Model:
        def predict(self, inputs):
            yield {"text_output": inputs["text_input"]}
"""


def write_model(root: Path, name: str, config: str, source: str) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.yaml").write_text(config)
    (root / name / "1" / "model.py").write_text(textwrap.dedent(source))


@pytest.fixture(scope="module")
def markers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("markers")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, markers: Path) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("stream_repo")
    write_model(root, "tokens", TOKENS_CONFIG.format(markers=markers), TOKENS)
    write_model(root, "echo", ECHO_CONFIG, ECHO)
    write_model(root, "yields_undeclared", ECHO_CONFIG, NOT_DECOUPLED)
    decoupled_echo = ECHO_CONFIG.replace(
        "max_batch_size: 0", "max_batch_size: 0\nmodel_transaction_policy: {decoupled: true}"
    )
    write_model(root, "returns_decoupled", decoupled_echo, ECHO)
    srv = start_server(root, tmp_path_factory.mktemp("stream_log") / "server.log")
    yield srv
    stop_server(srv)


def token_inputs(count: int, delay_ms: int, run: str) -> list[Any]:
    tensors = []
    for name, datatype, value in (
        ("count", "INT32", np.array([count], dtype=np.int32)),
        ("delay_ms", "INT32", np.array([delay_ms], dtype=np.int32)),
        ("run", "BYTES", np.array([run.encode()], dtype=object)),
    ):
        tensor = grpcclient.InferInput(name, [1], datatype)
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)
    return tensors


def computed(markers: Path, run: str) -> int:
    folder = markers / run
    return len(list(folder.iterdir())) if folder.exists() else 0


def collect(results: queue.Queue[Any], until_final: bool, count: int) -> list[Any]:
    got: list[Any] = []
    while True:
        item = results.get(timeout=20)
        got.append(item)
        if isinstance(item, InferenceServerException):
            return got
        final = item.get_response().parameters.get("triton_final_response")
        if until_final and final is not None and final.bool_param:
            return got
        if not until_final and len(got) == count:
            return got


def final_flag(result: Any) -> bool | None:
    flag = result.get_response().parameters.get("triton_final_response")
    return None if flag is None else bool(flag.bool_param)


def test_grpc_stream_sends_each_response_then_the_empty_final(server: Server) -> None:
    results: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: results.put(error or result))
    try:
        client.async_stream_infer(
            "tokens",
            token_inputs(4, 20, "grpc-final"),
            request_id="r1",
            enable_empty_final_response=True,
        )
        got = collect(results, until_final=True, count=5)
    finally:
        client.stop_stream()
        client.close()
    assert len(got) == 5, got
    data, last = got[:4], got[4]
    assert [int(r.as_numpy("index")[0]) for r in data] == [0, 1, 2, 3]
    assert [r.as_numpy("text_output")[0] for r in data] == [b"tok0", b"tok1", b"tok2", b"tok3"]
    assert [final_flag(r) for r in data] == [False] * 4
    assert all(r.get_response().id == "r1" for r in got)
    assert final_flag(last) is True
    assert last.as_numpy("index") is None  # the final response is empty


def test_grpc_stream_without_empty_final_sends_only_the_responses(server: Server) -> None:
    results: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: results.put(error or result))
    try:
        client.async_stream_infer("tokens", token_inputs(3, 10, "grpc-plain"))
        got = collect(results, until_final=False, count=3)
        time.sleep(0.5)
        assert results.empty()  # nothing follows the last response
    finally:
        client.stop_stream()
        client.close()
    assert [int(r.as_numpy("index")[0]) for r in got] == [0, 1, 2]


def test_grpc_stream_of_an_ordinary_model_flags_its_one_response_final(server: Server) -> None:
    results: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: results.put(error or result))
    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"hi"], dtype=object))
    try:
        client.async_stream_infer("echo", [text], enable_empty_final_response=True)
        got = collect(results, until_final=True, count=1)
    finally:
        client.stop_stream()
        client.close()
    assert len(got) == 1
    assert got[0].as_numpy("text_output")[0] == b"hi"
    assert final_flag(got[0]) is True


def test_cancelled_grpc_stream_stops_the_generator(server: Server, markers: Path) -> None:
    results: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: results.put(error or result))
    client.async_stream_infer("tokens", token_inputs(100, 50, "grpc-cancel"))
    collect(results, until_final=False, count=2)
    client.stop_stream(cancel_requests=True)
    client.close()
    time.sleep(0.5)
    settled = computed(markers, "grpc-cancel")
    time.sleep(1.0)
    assert computed(markers, "grpc-cancel") == settled
    assert settled < 20


def test_unary_infer_of_a_decoupled_model_is_refused(server: Server) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as refused:
        client.infer("tokens", token_inputs(2, 0, "unary"))
    assert "decoupled" in str(refused.value)
    assert "ModelStreamInfer" in str(refused.value)
    body = {
        "inputs": [
            {"name": "count", "datatype": "INT32", "shape": [1], "data": [2]},
            {"name": "delay_ms", "datatype": "INT32", "shape": [1], "data": [0]},
            {"name": "run", "datatype": "BYTES", "shape": [1], "data": ["unary"]},
        ]
    }
    r = httpx.post(f"{server.base}/v2/models/tokens/infer", json=body, timeout=10)
    assert r.status_code == 400
    assert "generate_stream" in r.json()["error"]


def test_generate_stream_sends_events_as_they_are_computed(server: Server) -> None:
    body = {"count": 5, "delay_ms": 300, "run": "sse-timing", "parameters": {"note": "x"}}
    arrivals: list[float] = []
    events: list[dict[str, Any]] = []
    start = time.monotonic()
    with httpx.stream(
        "POST", f"{server.base}/v2/models/tokens/generate_stream", json=body, timeout=20
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic() - start)
                events.append(json.loads(line[len("data: ") :]))
    assert [e["index"] for e in events] == [0, 1, 2, 3, 4]
    assert events[0] == {
        "model_name": "tokens",
        "model_version": "1",
        "index": 0,
        "text_output": "tok0",
    }
    # The first event came long before the last one was computed.
    assert arrivals[-1] - arrivals[0] > 0.8


def test_generate_answers_one_json_object(server: Server) -> None:
    r = httpx.post(
        f"{server.base}/v2/models/echo/generate", json={"text_input": "hello"}, timeout=10
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"model_name": "echo", "model_version": "1", "text_output": "hello"}
    one = {"count": 1, "delay_ms": 0, "run": "generate-one"}
    r = httpx.post(f"{server.base}/v2/models/tokens/generate", json=one, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["text_output"] == "tok0"
    many = {"count": 3, "delay_ms": 0, "run": "generate-many"}
    r = httpx.post(f"{server.base}/v2/models/tokens/generate", json=many, timeout=10)
    assert r.status_code == 400
    assert "generate_stream" in r.json()["error"]


def test_generate_stream_of_an_ordinary_model_is_one_event(server: Server) -> None:
    r = httpx.post(
        f"{server.base}/v2/models/echo/generate_stream", json={"text_input": "hey"}, timeout=10
    )
    assert r.status_code == 200
    events = [json.loads(x[6:]) for x in r.text.splitlines() if x.startswith("data: ")]
    assert events == [{"model_name": "echo", "model_version": "1", "text_output": "hey"}]


def test_generate_refusals_are_json_errors(server: Server) -> None:
    r = httpx.post(f"{server.base}/v2/models/nope/generate_stream", json={}, timeout=10)
    assert r.status_code == 404
    assert set(r.json()) == {"error"}
    r = httpx.post(
        f"{server.base}/v2/models/echo/generate", json={"text_input": ["a", "b"]}, timeout=10
    )
    assert r.status_code == 400
    assert "text_input" in r.json()["error"]


def test_closed_sse_connection_stops_the_generator(server: Server, markers: Path) -> None:
    body = {"count": 100, "delay_ms": 50, "run": "sse-cut"}
    with httpx.stream(
        "POST", f"{server.base}/v2/models/tokens/generate_stream", json=body, timeout=20
    ) as r:
        seen = 0
        for line in r.iter_lines():
            if line.startswith("data: "):
                seen += 1
                if seen == 2:
                    break
    time.sleep(0.5)
    settled = computed(markers, "sse-cut")
    time.sleep(1.0)
    assert computed(markers, "sse-cut") == settled
    assert settled < 20


def test_streaming_mismatches_are_refused_at_load_naming_the_file(server: Server) -> None:
    entries = httpx.post(f"{server.base}/v2/repository/index", json={}, timeout=10).json()
    by_name = {e["name"]: e for e in entries}
    undeclared = by_name["yields_undeclared"]
    assert undeclared["state"] == "UNAVAILABLE"
    assert "yields_undeclared/1/model.py" in undeclared["reason"]
    assert "model_transaction_policy" in undeclared["reason"]
    returns = by_name["returns_decoupled"]
    assert returns["state"] == "UNAVAILABLE"
    assert "returns_decoupled/1/model.py" in returns["reason"]
    assert "model_transaction_policy.decoupled" in returns["reason"]


def test_generate_is_an_advertised_extension(server: Server) -> None:
    http = httpclient.InferenceServerClient(server.http_url)
    assert "generate" in http.get_server_metadata()["extensions"]


def test_the_config_shows_the_transaction_policy(server: Server) -> None:
    http = httpclient.InferenceServerClient(server.http_url)
    assert http.get_model_config("tokens")["model_transaction_policy"] == {"decoupled": True}
    assert http.get_model_config("echo").get("model_transaction_policy") is None
