"""Instance autoscaling on a real server: load adds instances, quiet removes them.

The model multiplies a 256x256 input by a chain of 256x256 matrices, a few
milliseconds a request, so 16 callers keep one instance's queue long and the
``modelport_instances`` gauge on /metrics shows the count follow the load.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Server, start_server, stop_server

SIZE = 256
LAYERS = 6
CALLERS = 16

AUTOSCALING = {
    "min_instances": 1,
    "max_instances": 3,
    "target_in_flight_per_instance": 2,
    "upscale_delay_s": 1,
    "downscale_delay_s": 2,
}


def weights() -> np.ndarray:
    rng = np.random.default_rng(3)
    # Orthogonal: the values keep their size through the chain.
    q, _ = np.linalg.qr(rng.standard_normal((SIZE, SIZE)))
    return q.astype(np.float32)


def matmul_chain() -> onnx.ModelProto:
    """y = x W^LAYERS for one [256, 256] input."""
    f = TensorProto.FLOAT
    nodes = []
    previous = "x"
    for i in range(LAYERS):
        out = "y" if i == LAYERS - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [previous, "w"], [out]))
        previous = out
    graph = helper.make_graph(
        nodes,
        "matmul_chain",
        [helper.make_tensor_value_info("x", f, [SIZE, SIZE])],
        [helper.make_tensor_value_info("y", f, [SIZE, SIZE])],
        initializer=[numpy_helper.from_array(weights(), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("autoscaling")
    version = root / "repo" / "busy" / "1"
    version.mkdir(parents=True)
    onnx.save(matmul_chain(), str(version / "model.onnx"))
    config = {"max_batch_size": 0, "modelport": {"autoscaling": AUTOSCALING}}
    (version.parent / "config.yaml").write_text(json.dumps(config))
    srv = start_server(root / "repo", root / "server.log")
    yield srv
    stop_server(srv)


def instances(server: Server) -> int | None:
    text = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "modelport_instances" and s.labels == {"model": "busy", "version": "1"}:
                return int(s.value)
    return None


def expected(x: np.ndarray) -> np.ndarray:
    w = weights()
    for _ in range(LAYERS):
        x = x @ w
    return x


def test_instances_follow_the_load_with_no_failed_request(server: Server) -> None:
    assert instances(server) == 1, "no modelport_instances gauge: server.py starts no Autoscaler"
    stop = threading.Event()
    errors: list[str] = []
    answered = [0] * CALLERS
    x = np.random.default_rng(5).standard_normal((SIZE, SIZE)).astype(np.float32)
    want = expected(x)

    def caller(i: int) -> None:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        tensor = grpcclient.InferInput("x", [SIZE, SIZE], "FP32")
        tensor.set_data_from_numpy(x)
        try:
            while not stop.is_set():
                try:
                    y = client.infer("busy", [tensor]).as_numpy("y")
                    np.testing.assert_allclose(y, want, rtol=1e-3, atol=1e-3)
                    answered[i] += 1
                except Exception as exc:
                    errors.append(repr(exc)[:300])
        finally:
            client.close()

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(CALLERS)]
    started = time.monotonic()
    for t in threads:
        t.start()
    seen: list[tuple[float, int | None]] = []
    try:
        while time.monotonic() - started < 5:
            seen.append((time.monotonic() - started, instances(server)))
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    quiet = time.monotonic()
    rose = [at for at, n in seen if n is not None and n > 1]
    assert rose, f"instances never rose above 1 under load: {seen}"
    assert rose[0] <= 3.5, f"instances rose only after {rose[0]:.1f} s: {seen}"
    assert max(n or 0 for _, n in seen) <= 3
    assert errors == []
    assert min(answered) > 0

    while time.monotonic() - quiet < 8 and instances(server) != 1:
        time.sleep(0.2)
    assert instances(server) == 1, "instances stayed above 1 after the load stopped"

    changes = [
        json.loads(line) for line in server.log().splitlines() if '"instance count changed"' in line
    ]
    assert changes[0]["model"] == "busy" and changes[0]["version"] == "1"
    assert changes[0]["from"] == 1 and changes[0]["to"] > 1
    assert "overload" in changes[0]["reason"]
    assert changes[-1]["to"] == 1 and "underload" in changes[-1]["reason"]
    # Closed-loop callers also wait in the transport, so the count may come
    # down part of the way while they still run, but never sooner than the
    # downscale delay after the change before.
    for before, after in itertools.pairwise(changes):
        if after["to"] < after["from"]:
            assert seconds(after["time"]) - seconds(before["time"]) >= 2


def seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
