"""A python model whose instances are worker processes, served by the real server."""

from __future__ import annotations

import os
import signal
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import CLIENTS, Server, client_for, start_server, stop_server

pytestmark = pytest.mark.integration

#: y = 2x, and the pid of the process that computed it. x[0, 0] steers it:
#: -1 waits until two batches are in flight at once (one per instance), and
#: below -1 sleeps that long after leaving its pid in marks/busy.
MODEL = """
    import os
    import time
    from pathlib import Path

    import numpy as np


    class Model:
        def load(self, version_dir, config):
            self.marks = Path(config.parameter("marks"))

        def predict(self, inputs):
            x = inputs["x"]
            first = float(x[0, 0])
            if first == -1:
                meet = self.marks / "meet"
                (meet / str(os.getpid())).write_text("here")
                deadline = time.monotonic() + 60
                while len(list(meet.iterdir())) < 2 and time.monotonic() < deadline:
                    time.sleep(0.01)
            elif first < -1:
                (self.marks / "busy" / str(os.getpid())).write_text("busy")
                time.sleep(-first)
            pid = np.full((x.shape[0], 1), os.getpid(), dtype=np.int64)
            return {"y": x * 2, "pid": pid}
"""

CONFIG = """
backend: python
max_batch_size: 8
input:
- {{name: x, data_type: TYPE_FP32, dims: [2]}}
output:
- {{name: y, data_type: TYPE_FP32, dims: [2]}}
- {{name: pid, data_type: TYPE_INT64, dims: [1]}}
instance_group: [{{count: 2, kind: KIND_CPU}}]
parameters: {{marks: {{string_value: "{marks}"}}}}
modelport: {{instance_process: true, batching: false}}
"""


@pytest.fixture(scope="module")
def marks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("process_marks")
    (root / "meet").mkdir()
    (root / "busy").mkdir()
    return root


def our_segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("mport_*")}


def repository(root: Path, marks: Path) -> Path:
    (root / "gil" / "1").mkdir(parents=True)
    (root / "gil" / "1" / "model.py").write_text(textwrap.dedent(MODEL))
    (root / "gil" / "config.yaml").write_text(CONFIG.format(marks=marks))
    # A timeout needs a process to stop: on threads it is refused, not ignored.
    (root / "threads" / "1").mkdir(parents=True)
    (root / "threads" / "1" / "model.py").write_text(textwrap.dedent(MODEL))
    threads = CONFIG.format(marks=marks).replace("instance_process: true", "instance_timeout_s: 5")
    (root / "threads" / "config.yaml").write_text(threads)
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, marks: Path) -> Iterator[Server]:
    root = repository(tmp_path_factory.mktemp("process_repo"), marks)
    srv = start_server(root, tmp_path_factory.mktemp("process_log") / "server.log")
    yield srv
    stop_server(srv)


def infer(kind: str, http: Any, grpc: Any, x: np.ndarray) -> Any:
    client, module = client_for(kind, http, grpc)
    tensor = module.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    outputs = [module.InferRequestedOutput("y"), module.InferRequestedOutput("pid")]
    return client.infer("gil", [tensor], outputs=outputs)


def busy_pid(marks: Path) -> int:
    """The pid of the worker running the slow batch (it leaves a file named so)."""
    busy = marks / "busy"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = list(busy.iterdir())
        if found:
            found[0].unlink()
            return int(found[0].name)
        time.sleep(0.01)
    raise AssertionError("no worker started the slow batch")


def kill_busy_worker(marks: Path) -> int:
    pid = busy_pid(marks)
    os.kill(pid, signal.SIGKILL)
    return pid


def unavailable(kind: str, exc: InferenceServerException) -> bool:
    return str(exc.status()) == ("503" if kind == "http" else "StatusCode.UNAVAILABLE")


@pytest.mark.parametrize("kind", CLIENTS)
def test_answers_from_a_worker_process(kind: str, server: Server, http: Any, grpc: Any) -> None:
    x = np.arange(1, 9, dtype=np.float32).reshape(4, 2)
    result = infer(kind, http, grpc, x)
    np.testing.assert_array_equal(result.as_numpy("y"), x * 2)
    pid = int(result.as_numpy("pid")[0, 0])
    assert pid != server.process.pid
    assert f'"pid": {pid}' in server.log()  # "instance process ready" names it


def test_config_shows_instance_process(http: Any) -> None:
    config = http.get_model_config("gil")
    assert config["modelport"]["instance_process"] is True
    assert config["instance_group"][0]["count"] == 2


def test_instance_timeout_without_processes_is_a_config_error(server: Server) -> None:
    entries = httpx.post(f"{server.base}/v2/repository/index", json={}, timeout=10).json()
    entry = next(e for e in entries if e["name"] == "threads")
    assert entry["state"] == "UNAVAILABLE"
    assert "modelport.instance_timeout_s" in entry["reason"]
    assert "instance_process: true" in entry["reason"]


def test_two_instances_compute_at_once_in_two_processes(http: Any, grpc: Any, marks: Path) -> None:
    # tritonclient.http runs on gevent, which is bound to this thread: the
    # second request goes from a thread, over gRPC.
    x = np.array([[-1, 1]], dtype=np.float32)
    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(infer, "grpc", http, grpc, x)
        results = [infer("http", http, grpc, x), other.result(timeout=60)]
    for f in (marks / "meet").iterdir():
        f.unlink()
    pids = {int(r.as_numpy("pid")[0, 0]) for r in results}
    assert len(pids) == 2


@pytest.mark.parametrize("kind", CLIENTS)
def test_killed_worker_is_503_and_the_server_keeps_serving(
    kind: str, server: Server, http: Any, grpc: Any, marks: Path
) -> None:
    slow = np.array([[-120, 1]], dtype=np.float32)
    with ThreadPoolExecutor(1) as pool:
        killed = pool.submit(kill_busy_worker, marks)
        with pytest.raises(InferenceServerException) as info:
            infer(kind, http, grpc, slow)  # answered long before the 120 s sleep ends
        pid = killed.result(timeout=60)
    assert unavailable(kind, info.value), info.value
    assert "SIGKILL" in str(info.value)
    assert server.alive()
    x = np.array([[1, 2], [3, 4]], dtype=np.float32)
    seen: set[int] = set()
    for client in CLIENTS * 2:
        result = infer(client, http, grpc, x)
        np.testing.assert_array_equal(result.as_numpy("y"), x * 2)
        seen.add(int(result.as_numpy("pid")[0, 0]))
    assert pid not in seen
    ready = httpx.get(f"{server.base}/v2/models/gil/ready", timeout=10)
    assert ready.status_code == 200


def json_body(first: float) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [first, 1]}]}


def test_raw_http_503_body_names_the_failure(server: Server, marks: Path) -> None:
    url = f"{server.base}/v2/models/gil/infer"
    with ThreadPoolExecutor(1) as pool:
        killed = pool.submit(kill_busy_worker, marks)
        r = httpx.post(url, json=json_body(-120), timeout=60)
        killed.result(timeout=60)
    assert r.status_code == 503
    assert set(r.json()) == {"error"}
    assert "instance process" in r.json()["error"]
    answer = httpx.post(url, json=json_body(5), timeout=30)
    assert answer.json()["outputs"][0]["data"] == [10, 2]


def test_stopping_the_server_stops_workers_and_frees_shared_memory(
    tmp_path: Path, marks: Path
) -> None:
    before = our_segments()
    srv = start_server(repository(tmp_path / "repo", marks), tmp_path / "server.log")
    try:
        r = httpx.post(f"{srv.base}/v2/models/gil/infer", json=json_body(5), timeout=30)
        pid = {o["name"]: o["data"] for o in r.json()["outputs"]}["pid"][0]
        assert our_segments() - before, "the batch went through shared memory"
    finally:
        code = stop_server(srv)
    assert code == 0, srv.log()
    assert our_segments() <= before
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
