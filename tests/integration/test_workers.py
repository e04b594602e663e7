"""``--workers N``: several processes on the same ports, acting as one server.

Every request here opens a new connection, so the kernel picks a worker for
each; a promise that held on one worker only would fail some of them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from modelport.examples import repository_path, samples_path
from tests.integration.conftest import Server, start_server, stop_server
from tests.integration.models import _save
from tests.integration.test_sequences import ACCUMULATOR, accumulator_model

pytestmark = pytest.mark.integration

MODELPORT = [sys.executable, "-m", "modelport"]

WORKERS = 2
#: Fresh connections per check: with two workers, the chance that all land on one is 2**-19.
CONNECTIONS = 20
#: y = 2x and the pid of the process that computed it.
POOLED_MODEL = """
import os

import numpy as np


class Model:
    def predict(self, inputs):
        x = inputs["x"]
        return {"y": x * 2, "pid": np.full((x.shape[0], 1), os.getpid(), dtype=np.int64)}
"""
POOLED_CONFIG = """
backend: python
max_batch_size: 8
input: [{name: x, data_type: TYPE_FP32, dims: [2]}]
output:
- {name: y, data_type: TYPE_FP32, dims: [2]}
- {name: pid, data_type: TYPE_INT64, dims: [1]}
instance_group: [{count: 1, kind: KIND_CPU}]
modelport: {instance_process: true}
"""
LIMIT = "\nmodelport:\n  rate_limit: {rate: 0.01, burst: 6}\n"


def _copy(repo: Path, name: str, versions: tuple[int, ...] = (1,), extra: str = "") -> None:
    source = repository_path() / "breast_cancer"
    target = repo / name
    target.mkdir()
    config = (source / "config.yaml").read_text().replace("num_versions: 1", "num_versions: 2")
    (target / "config.yaml").write_text(config + extra)
    for version in versions:
        shutil.copytree(source / "1", target / str(version))


def _body() -> dict[str, Any]:
    body: dict[str, Any] = json.loads((samples_path() / "breast_cancer.json").read_text())
    return body


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    repo = tmp_path_factory.mktemp("repo")
    _copy(repo, "scorer", (1, 2))
    _copy(repo, "spare")
    _copy(repo, "capped", extra=LIMIT)
    _copy(repo, "counted")
    _copy(repo, "judged", (1, 2))
    _copy(repo, "deferred")
    (repo / "pooled" / "1").mkdir(parents=True)
    (repo / "pooled" / "1" / "model.py").write_text(POOLED_MODEL)
    (repo / "pooled" / "config.yaml").write_text(POOLED_CONFIG)
    _save(accumulator_model(), repo / "accumulator" / "1" / "model.onnx")
    (repo / "accumulator" / "config.pbtxt").write_text(ACCUMULATOR)
    logs = tmp_path_factory.mktemp("node")
    srv = start_server(repo, logs / "node.log", "--workers", str(WORKERS))
    # Ready answers once one worker serves; the node serves once all do.
    _until(lambda: "node serving" in srv.log(), "the node never served")
    yield srv
    assert stop_server(srv) == 0, srv.log()


def _until(check: Callable[[], bool], why: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(why)


def _fresh(server: Server, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request on a connection of its own."""
    with httpx.Client(base_url=server.base, timeout=60) as client:
        return client.request(method, path, **kwargs)


def _every(server: Server, method: str, path: str, **kwargs: Any) -> list[httpx.Response]:
    return [_fresh(server, method, path, **kwargs) for _ in range(CONNECTIONS)]


def _workers(server: Server) -> list[int]:
    """The worker processes' ids: the node process's children that serve."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == server.process.pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def _state(entries: list[dict[str, Any]], name: str) -> set[tuple[str, str]]:
    return {(e["state"], e.get("reason", "")) for e in entries if e["name"] == name}


def test_one_node_answers_on_every_connection(node: Server) -> None:
    assert len(_workers(node)) == WORKERS
    answers = _every(node, "POST", "/v2/models/scorer/infer", json=_body())
    assert [a.status_code for a in answers] == [200] * CONNECTIONS
    with grpcclient.InferenceServerClient(node.grpc_url) as client:
        assert client.is_server_ready()
        assert client.is_model_ready("scorer")


def test_a_repository_unload_holds_on_every_worker(node: Server) -> None:
    assert _fresh(node, "POST", "/v2/repository/models/spare/unload").status_code == 200
    for answer in _every(node, "POST", "/v2/repository/index", json={}):
        assert _state(answer.json(), "spare") == {("UNAVAILABLE", "unloaded")}
    with httpclient.InferenceServerClient(node.http_url) as client:
        client.load_model("spare")  # answers once every worker has it READY
    for answer in _every(node, "GET", "/v2/models/spare/ready"):
        assert answer.status_code == 200


def test_a_traffic_policy_holds_on_every_worker(node: Server) -> None:
    url = "/api/v1/models/scorer/traffic"
    current = _fresh(node, "GET", url).json()["revision"]
    put = _fresh(
        node,
        "PUT",
        url,
        json={"routes": [{"version": "1", "weight": 100}]},
        headers={"If-Match": str(current)},
    )
    assert put.status_code == 200, put.text
    for answer in _every(node, "POST", "/v2/models/scorer/infer", json=_body()):
        assert answer.json()["model_version"] == "1"
    put = _fresh(
        node,
        "PUT",
        url,
        json={"routes": [{"version": "2", "weight": 100}]},
        headers={"If-Match": str(put.json()["revision"])},
    )
    assert put.status_code == 200, put.text
    for answer in _every(node, "POST", "/v2/models/scorer/infer", json=_body()):
        assert answer.json()["model_version"] == "2"


def test_a_canary_is_judged_on_every_workers_requests(node: Server) -> None:
    first = _fresh(
        node,
        "PUT",
        "/api/v1/models/judged/traffic",
        json={"routes": [{"version": "1", "weight": 100}]},
        headers={"If-Match": "0"},
    )
    assert first.status_code == 200, first.text
    spec = {"version": "2", "steps": [100], "interval_s": 0.3, "min_requests": CONNECTIONS}
    spec["evidence_timeout_s"] = 120
    began = _fresh(node, "POST", "/api/v1/models/judged/canary", json=spec)
    assert began.status_code == 201, began.text
    for answer in _every(node, "POST", "/v2/models/judged/infer", json=_body()):
        assert answer.json()["model_version"] == "2"
    # No further request: only the windows of both workers added up reach min_requests.
    _until(
        lambda: _fresh(node, "GET", "/api/v1/models/judged/canary").json()["state"] == "promoted",
        "the canary was not promoted on the node's requests",
        timeout=20,
    )


def test_a_shared_memory_region_is_registered_on_every_worker(node: Server) -> None:
    key = f"/mpnode_{os.getpid()}"
    features = np.asarray(_body()["inputs"][0]["data"], dtype=np.float32).reshape(1, 30)
    segment = Path("/dev/shm") / key.lstrip("/")
    segment.write_bytes(features.tobytes())
    try:
        register = {"key": key, "offset": 0, "byte_size": features.nbytes}
        done = _fresh(node, "POST", "/v2/systemsharedmemory/region/feats/register", json=register)
        assert done.status_code == 200, done.text
        request = {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 30],
                    "datatype": "FP32",
                    "parameters": {
                        "shared_memory_region": "feats",
                        "shared_memory_byte_size": features.nbytes,
                    },
                }
            ]
        }
        expected = _fresh(node, "POST", "/v2/models/scorer/infer", json=_body()).json()
        for answer in _every(node, "POST", "/v2/models/scorer/infer", json=request):
            assert answer.status_code == 200, answer.text
            assert answer.json()["outputs"] == expected["outputs"]
        gone = _fresh(node, "POST", "/v2/systemsharedmemory/region/feats/unregister")
        assert gone.status_code == 200
        for answer in _every(node, "GET", "/v2/systemsharedmemory/status"):
            assert answer.json() == []
    finally:
        segment.unlink()


def _step(node: Server, sid: int | str, value: float, **flags: bool) -> float:
    body = {
        "inputs": [{"name": "INPUT", "shape": [1, 1], "datatype": "FP32", "data": [value]}],
        "parameters": {"sequence_id": sid, **flags},
    }
    answer = _fresh(node, "POST", "/v2/models/accumulator/infer", json=body)
    assert answer.status_code == 200, answer.text
    return float(answer.json()["outputs"][0]["data"][0])


def test_a_sequence_keeps_its_state_whichever_worker_each_request_reaches(node: Server) -> None:
    sequences: list[int | str] = [11, 12, 13, 14, "basket-a", "basket-b"]
    sums = dict.fromkeys(sequences, 0.0)
    for step in range(6):
        for n, sid in enumerate(sequences):
            value = float(n + 1)
            flags = {"sequence_start": True} if step == 0 else {}
            if step == 5:
                flags["sequence_end"] = True
            sums[sid] += value
            assert _step(node, sid, value, **flags) == sums[sid]
    with grpcclient.InferenceServerClient(node.grpc_url) as client:
        for step in range(4):
            tensor = grpcclient.InferInput("INPUT", [1, 1], "FP32")
            tensor.set_data_from_numpy(np.array([[2.0]], dtype=np.float32))
            out = client.infer("accumulator", [tensor], sequence_id=99, sequence_start=step == 0)
            assert float(out.as_numpy("OUTPUT")[0, 0]) == 2.0 * (step + 1)


def test_a_model_with_process_instances_is_hosted_once_per_node(node: Server) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.5, -2]}]}
    pids = set()
    for answer in _every(node, "POST", "/v2/models/pooled/infer", json=body):
        assert answer.status_code == 200, answer.text
        outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
        assert outputs["y"] == [3.0, -4.0]
        pids.update(outputs["pid"])
    # One instance process in the node computed every answer, whichever worker took it.
    assert len(pids) == 1, pids
    config = _fresh(node, "GET", "/v2/models/pooled/config").json()
    assert config["modelport"]["instance_process"] is True
    stats = _fresh(node, "GET", "/v2/models/pooled/stats").json()["model_stats"]
    assert stats[0]["inference_stats"]["success"]["count"] == CONNECTIONS


def test_jobs_submitted_to_any_worker_each_run_once(node: Server) -> None:
    expected = _fresh(node, "POST", "/v2/models/deferred/infer", json=_body()).content
    locations = []
    for answer in _every(
        node, "POST", "/v2/models/deferred/infer", json=_body(), headers={"Prefer": "respond-async"}
    ):
        assert answer.status_code == 202, answer.text
        locations.append(answer.headers["location"])
    assert len(set(locations)) == CONNECTIONS

    def finished() -> bool:
        states = [_fresh(node, "GET", where).json()["state"] for where in locations]
        assert "failed" not in states and "cancelled" not in states, states
        return states == ["succeeded"] * CONNECTIONS

    _until(finished, "the node's jobs did not all succeed")
    for where in locations:
        assert _fresh(node, "GET", f"{where}/result").content == expected


def test_log_settings_hold_on_every_worker(node: Server) -> None:
    changed = _fresh(node, "POST", "/v2/logging", json={"log_verbose_level": 2})
    assert changed.status_code == 200, changed.text
    for answer in _every(node, "GET", "/v2/logging"):
        assert answer.json()["log_verbose_level"] == 2
    assert _fresh(node, "POST", "/v2/logging", json={"log_verbose_level": 0}).status_code == 200


def _counter(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (name, f"{name}_total") and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                total += sample.value
    return total


def test_metrics_and_statistics_count_the_whole_node(node: Server) -> None:
    answers = _every(node, "POST", "/v2/models/counted/infer", json=_body())
    assert [a.status_code for a in answers] == [200] * CONNECTIONS
    for _ in range(4):  # whichever worker answers the scrape
        text = _fresh(node, "GET", "/metrics").text
        assert _counter(text, "modelport_inference_requests_total", model="counted") == CONNECTIONS
        assert _counter(text, "nv_inference_request_success", model="counted") == CONNECTIONS
        scraped = httpx.get(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=30).text
        count = _counter(scraped, "modelport_request_duration_seconds_count", model="counted")
        assert count == CONNECTIONS
        stats = _fresh(node, "GET", "/v2/models/counted/stats").json()["model_stats"]
        assert [s["inference_stats"]["success"]["count"] for s in stats] == [CONNECTIONS]
    with grpcclient.InferenceServerClient(node.grpc_url) as client:
        stats = client.get_inference_statistics("counted", as_json=True)["model_stats"]
        assert [int(s["inference_stats"]["success"]["count"]) for s in stats] == [CONNECTIONS]


def test_a_rate_limit_is_the_nodes(node: Server) -> None:
    codes = [a.status_code for a in _every(node, "POST", "/v2/models/capped/infer", json=_body())]
    # burst 6 and a token every 100 s: six pass in the whole node, not six per worker.
    assert codes.count(200) == 6, codes
    assert codes.count(429) == CONNECTIONS - 6


def test_a_killed_worker_is_replaced_and_takes_the_nodes_state(node: Server) -> None:
    assert _fresh(node, "POST", "/v2/repository/models/spare/unload").status_code == 200
    clients = 8
    stop = threading.Event()
    answered = [0] * clients
    failures: list[str] = []

    def load(n: int) -> None:
        # One keep-alive connection per caller, so each stays with one worker; a caller
        # whose worker dies loses at most its one request in flight, then reconnects.
        with httpx.Client(base_url=node.base, timeout=60) as client:
            while not stop.is_set():
                try:
                    answer = client.post("/v2/models/scorer/infer", json=_body())
                except httpx.TransportError as exc:
                    failures.append(type(exc).__name__)
                    continue
                if answer.status_code == 200:
                    answered[n] += 1
                else:
                    failures.append(str(answer.status_code))

    callers = [threading.Thread(target=load, args=(n,)) for n in range(clients)]
    for caller in callers:
        caller.start()
    try:
        _until(lambda: all(answered), "the load never reached every caller")
        victim = _workers(node)[0]
        os.kill(victim, signal.SIGKILL)
        _until(
            lambda: len(_workers(node)) == WORKERS and victim not in _workers(node),
            f"no worker took the killed one's place:\n{node.log()[-3000:]}",
        )
        _until(lambda: "serving again" in node.log(), "the new worker never served")
        before = sum(answered)
        _until(lambda: sum(answered) > before + 50, "the load did not go on")
    finally:
        stop.set()
        for caller in callers:
            caller.join()
    # Only requests in flight on the killed worker failed, and none with an error status.
    assert len(failures) <= clients, failures
    assert all(not f.isdigit() for f in failures), failures
    for answer in _every(node, "POST", "/v2/repository/index", json={}):
        assert _state(answer.json(), "spare") == {("UNAVAILABLE", "unloaded")}
    for answer in _every(node, "POST", "/v2/models/scorer/infer", json=_body()):
        assert answer.status_code == 200
    assert _fresh(node, "POST", "/v2/repository/models/spare/load").status_code == 200


def test_the_leader_lease_moves_when_its_holder_dies(node: Server) -> None:
    def leaders() -> int:
        return node.log().count("leading the node")

    before = leaders()
    holder = _leader_pid(node)
    os.kill(holder, signal.SIGKILL)
    _until(lambda: leaders() > before, "no worker took the lease", timeout=10)


def _leader_pid(node: Server) -> int:
    """The pid of the worker that logged it leads last."""
    leading = [line for line in node.log().splitlines() if "leading the node" in line]
    worker = json.loads(leading[-1])["worker"]
    started = [
        json.loads(line)
        for line in node.log().splitlines()
        if '"worker started"' in line or "worker started" in line
    ]
    pids = [s["pid"] for s in started if s.get("worker") == worker]
    return int(pids[-1])


def test_the_audit_chain_stays_valid(node: Server) -> None:
    args = [str(a) for a in node.process.args]  # type: ignore[union-attr]
    state = args[args.index("--data-dir") + 1]
    verify = subprocess.run(
        [sys.executable, "-m", "modelport", "audit", "verify", "--data-dir", state],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


# ------------------------------------------------------------------ start and stop


def _serve(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelport", "serve", *args],
        capture_output=True,
        check=False,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_a_bad_worker_count_is_refused_naming_the_flag(value: str) -> None:
    done = _serve("--workers", value)
    assert done.returncode == 2
    assert "--workers" in done.stderr


def test_a_taken_port_stops_the_node_before_any_worker_starts(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        done = _serve("--workers", "2", "--http-port", str(port), "--data-dir", str(tmp_path))
    finally:
        taken.close()
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port} (HTTP)" in done.stderr
    assert "worker started" not in done.stderr


def test_sigterm_drains_every_worker(tmp_path: Path) -> None:
    srv = start_server(None, tmp_path / "node.log", "--workers", "2")
    _until(lambda: "node serving" in srv.log(), "the node never served")
    workers = _workers(srv)
    with httpclient.InferenceServerClient(srv.http_url) as client:
        request = httpclient.InferInput("input", [1, 30], "FP32")
        request.set_data_from_numpy(np.zeros((1, 30), dtype=np.float32))
        assert client.infer("breast_cancer", [request]).as_numpy("label") is not None
    assert stop_server(srv) == 0
    assert srv.log().count("stopped") >= 3  # each worker, then the node
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)


def test_keys_and_blocking_hold_on_every_worker(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    created = subprocess.run(
        [*MODELPORT, "keys", "create", "--role", "invoker", "--models", "*", "--data-dir", state],
        capture_output=True,
        check=True,
        text=True,
        timeout=60,
    )
    token = re.search(r"mpk_[\w-]+", created.stdout)
    assert token is not None, created.stdout
    key = token.group(0)
    #: Failed authentications a peer may make: those of the revoked key's 20 checks
    #: and 4 more. Over the detector's threshold (20 in 10 s) for the node, not for a
    #: worker seeing about half of them.
    burst = CONNECTIONS + 4
    # A failure's token comes back after 100 s, not 1 s: no refill during the test.
    settings = tmp_path / "server.yaml"
    settings.write_text("auth_failure_rate: 0.01\n")
    srv = start_server(
        None,
        tmp_path / "node.log",
        *("--workers", "2", "--require-auth", "--data-dir", state, "--config", str(settings)),
        *("--auth-failure-burst", str(burst), "--metrics-open"),
    )
    try:
        _until(lambda: "node serving" in srv.log(), "the node never served")
        good = {"Authorization": f"Bearer {key}"}
        for answer in _every(srv, "GET", "/v2/models/breast_cancer/ready", headers=good):
            assert answer.status_code == 200
        # A key created while the node runs works on every worker at once.
        later = subprocess.run(
            [
                *MODELPORT,
                "keys",
                "create",
                "--role",
                "viewer",
                "--models",
                "*",
                "--data-dir",
                state,
            ],
            capture_output=True,
            check=True,
            text=True,
            timeout=60,
        )
        found = re.search(r"mpk_[\w-]+", later.stdout)
        assert found is not None, later.stdout
        newer = {"Authorization": f"Bearer {found.group(0)}"}
        for answer in _every(srv, "GET", "/v2/models/breast_cancer/ready", headers=newer):
            assert answer.status_code == 200
        revoked = subprocess.run(
            [*MODELPORT, "keys", "revoke", key.split("_")[1], "--data-dir", str(state)],
            capture_output=True,
            check=False,
            text=True,
            timeout=60,
        )
        assert revoked.returncode == 0, revoked.stderr
        time.sleep(1.2)  # the identity cache holds an answer for at most a second
        for answer in _every(srv, "GET", "/v2/models/breast_cancer/ready", headers=good):
            assert answer.status_code == 401
        # The burst of failures is the node's: once the revoked key's and these bad
        # tokens' failures used it up, every worker refuses the address. Per worker,
        # each would have allowed a burst of its own.
        bad = {"Authorization": "Bearer mpk_nothing_wrong"}
        codes = [
            a.status_code
            for _ in range(3)
            for a in _every(srv, "GET", "/v2/models/breast_cancer/ready", headers=bad)
        ]
        assert codes == [401] * 4 + [429] * (3 * CONNECTIONS - 4), codes

        # 24 failures in a few seconds, about 12 per worker: a burst (over 20 in 10 s)
        # only for detectors that see the whole node, and reported once.
        def bursts() -> float:
            url = f"http://127.0.0.1:{srv.metrics_port}/metrics"
            text = httpx.get(url, timeout=30).text
            return _counter(text, "modelport_security_events", kind="security.auth_failure_burst")

        _until(lambda: bursts() >= 1, "no burst of failures was detected", timeout=10)
        time.sleep(1)  # every worker has reported by now
        assert bursts() == 1
    finally:
        assert stop_server(srv) == 0


def test_a_change_the_poller_finds_holds_on_every_worker(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _copy(repo, "first")
    srv = start_server(repo, tmp_path / "node.log", "--workers", "2", "--poll-interval", "0.5")
    try:
        _until(lambda: "node serving" in srv.log(), "the node never served")
        _copy(repo, "arrived")
        # One worker polls; the others apply what it found as soon as it tells them.
        _until(
            lambda: _fresh(srv, "GET", "/v2/models/arrived/ready").status_code == 200,
            "the poller never found the new model",
        )
        time.sleep(1)
        for answer in _every(srv, "GET", "/v2/models/arrived/ready"):
            assert answer.status_code == 200
        assert srv.log().count("leading the node") == 1
    finally:
        assert stop_server(srv) == 0
