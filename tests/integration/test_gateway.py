"""The fleet gateway end to end: real Envoy in front of real modelport nodes.

Three nodes (two in ae-dxb, one in eu-west) serve a Python model ``work``
that echoes its input after sleeping the node's own delay (plus the seconds
the request asks for). Each node's own statistics count what it served, so
every routing claim is checked where the requests landed, not where the
gateway meant to send them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from modelport.gateway.envoy_config import RESIDENCY_REFUSAL
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration

MODEL = "work"

SIGNATURE = """
max_batch_size: 8
input:
- {name: x, data_type: TYPE_FP32, dims: [2]}
output:
- {name: y, data_type: TYPE_FP32, dims: [2]}
"""

SOURCE = """
import time

class Model:
    def predict(self, inputs):
        x = inputs["x"]
        time.sleep({delay} + max(0.0, float(x[0][1])))
        return {{"y": x}}
"""


@dataclass
class Node:
    name: str
    region: str
    folder: Path
    delay: float = 0.0
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        repo = self.folder / "repo"
        if not repo.exists():
            (repo / MODEL / "1").mkdir(parents=True)
            (repo / MODEL / "config.yaml").write_text(SIGNATURE)
            (repo / MODEL / "1" / "model.py").write_text(
                textwrap.dedent(SOURCE.format(delay=self.delay))
            )
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
        args = [
            sys.executable, "-m", "modelport", "serve", str(repo),
            "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
            "--metrics-port", str(self.metrics_port), "--region", self.region,
            "--data-dir", str(self.folder / "state"),
        ]  # fmt: skip
        log = (self.folder / "node.log").open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.alive(), (self.folder / "node.log").read_text()
            try:
                if httpx.get(f"{self.base}/v2/models/{MODEL}/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"node {self.name} not ready")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def served(self) -> int:
        """Inferences this node itself counts as done."""
        stats = httpx.get(f"{self.base}/v2/models/{MODEL}/stats", timeout=5).json()
        return int(stats["model_stats"][0]["inference_stats"]["success"]["count"])


@dataclass
class Gateway:
    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    admin_port: int
    out: Path
    err: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log(self) -> str:
        return self.err.read_text(errors="replace")

    def healthy(self, cluster: str) -> set[int]:
        """Ports of the hosts Envoy would route to in ``cluster`` now."""
        answer = httpx.get(f"http://127.0.0.1:{self.admin_port}/clusters?format=json", timeout=2)
        ports: set[int] = set()
        for status in answer.json().get("cluster_statuses", []):
            if status["name"] != cluster:
                continue
            for host in status.get("host_statuses", []):
                flags = host.get("health_status", {})
                bad = (
                    flags.get("failed_active_health_check")
                    or flags.get("failed_outlier_check")
                    or flags.get("pending_active_hc")
                )
                if not bad and flags.get("eds_health_status", "HEALTHY") == "HEALTHY":
                    ports.add(host["address"]["socket_address"]["port_value"])
        return ports

    def wait_healthy(self, cluster: str, ports: set[int], within: float = 15.0) -> float:
        start = time.monotonic()
        while time.monotonic() - start < within:
            if self.healthy(cluster) == ports:
                return time.monotonic() - start
            time.sleep(0.05)
        raise AssertionError(f"{cluster}: healthy {self.healthy(cluster)}, wanted {ports}")


def fleet_yaml(nodes: list[Node], policy: str = "round_robin", **extra: Any) -> dict[str, Any]:
    return {
        "regions": ["ae-dxb", "eu-west"],
        "groups": {"main": {"models": [MODEL], "policy": policy}},
        "nodes": [
            {
                "name": n.name,
                "http": f"127.0.0.1:{n.http_port}",
                "grpc": f"127.0.0.1:{n.grpc_port}",
                "region": n.region,
                "weight": extra.get("weights", {}).get(n.name, 1),
            }
            for n in nodes
        ],
        "health": {"interval": 0.5, "unhealthy_threshold": 2, "healthy_threshold": 1},
        **{k: v for k, v in extra.items() if k != "weights"},
    }


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Node]]:
    root = tmp_path_factory.mktemp("gateway_nodes")
    made = {
        "a": Node("a", "ae-dxb", root / "a"),
        "b": Node("b", "ae-dxb", root / "b"),
        "c": Node("c", "eu-west", root / "c", delay=0.1),
    }
    for node in made.values():
        node.folder.mkdir()
        node.start()
    try:
        for node in made.values():
            node.wait_ready()
        yield made
    finally:
        for node in made.values():
            node.stop()


@pytest.fixture
def fleet(nodes: dict[str, Node]) -> Iterator[dict[str, Node]]:
    """The module's nodes, each brought back after a test that killed it."""
    yield nodes
    for node in nodes.values():
        if not node.alive():
            node.start()
    for node in nodes.values():
        node.wait_ready()


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[list[Gateway]]:
    started: list[Gateway] = []
    yield started
    for gateway in started:
        if gateway.process.poll() is None:
            gateway.process.send_signal(signal.SIGTERM)
            gateway.process.wait(timeout=20)


def start_gateway(
    tmp_path: Path, gateways: list[Gateway], fleet: dict[str, Any], healthy: set[int]
) -> Gateway:
    path = tmp_path / "fleet.yaml"
    path.write_text(json.dumps(fleet))
    http_port, grpc_port, admin_port = free_port(), free_port(), free_port()
    out, err = tmp_path / "gateway.out", tmp_path / "gateway.err"
    args = [
        sys.executable, "-m", "modelport", "gateway", "--fleet", str(path),
        "--http-port", str(http_port), "--grpc-port", str(grpc_port),
        "--admin-port", str(admin_port), "--access-log", str(tmp_path / "access.log"),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    process = subprocess.Popen(args, stdout=out.open("wb"), stderr=err.open("wb"), env=env)
    gateway = Gateway(process, http_port, grpc_port, admin_port, out, err)
    gateways.append(gateway)
    deadline = time.monotonic() + 30
    while "gateway ready" not in out.read_text():
        assert process.poll() is None, gateway.log()
        assert time.monotonic() < deadline, gateway.log()
        time.sleep(0.05)
    gateway.wait_healthy(f"model~{MODEL}~http", healthy)
    return gateway


def infer(
    client: httpx.Client, base: str, headers: dict[str, str] | None = None, sleep: float = 0.0
) -> httpx.Response:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, sleep]}]}
    return client.post(f"{base}/v2/models/{MODEL}/infer", json=body, headers=headers or {})


def counts(nodes: dict[str, Node]) -> dict[str, int]:
    return {name: node.served() for name, node in nodes.items() if node.alive()}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before.get(name, 0) for name in after}


def test_round_robin_spreads_evenly_over_three_nodes(
    fleet: dict[str, Node], gateways: list[Gateway], tmp_path: Path
) -> None:
    same_region = {**fleet_yaml(list(fleet.values())), "regions": ["ae-dxb", "eu-west"]}
    for node in same_region["nodes"]:
        node["region"] = "ae-dxb"
    gateway = start_gateway(tmp_path, gateways, same_region, {n.http_port for n in fleet.values()})
    before = counts(fleet)
    with httpx.Client(timeout=10) as client:
        for _ in range(300):
            assert infer(client, gateway.base).status_code == 200
    spread = delta(before, counts(fleet))
    assert sum(spread.values()) == 300
    assert all(80 <= n <= 120 for n in spread.values()), spread


def test_weighted_three_to_one(
    fleet: dict[str, Node], gateways: list[Gateway], tmp_path: Path
) -> None:
    two = [fleet["a"], fleet["b"]]
    spec = fleet_yaml(two, "weighted", weights={"a": 3, "b": 1})
    gateway = start_gateway(tmp_path, gateways, spec, {n.http_port for n in two})
    before = counts(fleet)
    with httpx.Client(timeout=10) as client:
        for _ in range(400):
            assert infer(client, gateway.base).status_code == 200
    spread = delta(before, counts(fleet))
    assert spread["c"] == 0
    assert 2.4 <= spread["a"] / spread["b"] <= 3.6, spread


def test_sequences_stay_on_one_node(
    fleet: dict[str, Node], gateways: list[Gateway], tmp_path: Path
) -> None:
    two = [fleet["a"], fleet["b"]]
    gateway = start_gateway(tmp_path, gateways, fleet_yaml(two), {n.http_port for n in two})
    nodes_used: set[str] = set()
    with httpx.Client(timeout=10) as client:
        for sequence in range(12):
            before = counts(fleet)
            for _ in range(6):
                headers = {"modelport-sequence-id": f"seq-{sequence}"}
                assert infer(client, gateway.base, headers).status_code == 200
            landed = {k: v for k, v in delta(before, counts(fleet)).items() if v}
            assert list(landed.values()) == [6], landed
            nodes_used |= landed.keys()
    assert nodes_used == {"a", "b"}


def test_least_request_avoids_a_slow_node(
    fleet: dict[str, Node], gateways: list[Gateway], tmp_path: Path
) -> None:
    # c sleeps 0.1 s per request, a not at all; both in the primary region here.
    pair = [fleet["a"], fleet["c"]]
    spec = fleet_yaml(pair, "least_request")
    for node in spec["nodes"]:
        node["region"] = "ae-dxb"
    gateway = start_gateway(tmp_path, gateways, spec, {n.http_port for n in pair})
    before = counts(fleet)
    clients = [httpx.Client(timeout=10) for _ in range(6)]

    def work(index: int) -> None:
        assert infer(clients[index % len(clients)], gateway.base).status_code == 200

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(work, range(240)))
    for client in clients:
        client.close()
    spread = delta(before, counts(fleet))
    assert spread["a"] + spread["c"] == 240
    # Round robin would split 120/120. Envoy's least_request compares two
    # random picks (which may be the same node), so the slow node keeps
    # about a quarter to a third; well under half is the claim.
    assert 0 < spread["c"] < 0.42 * 240, spread


def test_killed_node_leaves_rotation_without_failed_requests_and_comes_back(
    fleet: dict[str, Node], gateways: list[Gateway], tmp_path: Path
) -> None:
    two = [fleet["a"], fleet["b"]]
    gateway = start_gateway(tmp_path, gateways, fleet_yaml(two), {n.http_port for n in two})
    failures: list[str] = []
    done = threading.Event()
    sent = [0]

    def load() -> None:
        with httpx.Client(timeout=10) as client:
            while not done.is_set():
                answer = infer(client, gateway.base)
                sent[0] += 1
                if answer.status_code != 200:
                    failures.append(f"{answer.status_code} {answer.text}")
                time.sleep(0.005)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        fleet["a"].kill()
        out_after = gateway.wait_healthy(f"model~{MODEL}~http", {fleet["b"].http_port}, within=3.0)
        before_b = fleet["b"].served()
        time.sleep(0.5)
        assert fleet["b"].served() > before_b
        fleet["a"].start()
        fleet["a"].wait_ready()
        gateway.wait_healthy(f"model~{MODEL}~http", {n.http_port for n in two}, within=5.0)
        before_a = fleet["a"].served()
        back = time.monotonic() + 3.0
        while fleet["a"].served() == before_a:
            assert time.monotonic() < back, "the restarted node gets no traffic"
            time.sleep(0.1)
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert failures == [], failures[:3]
    assert sent[0] > 50
    print(f"killed node out of rotation after {out_after:.2f} s")


def test_primary_region_down_fails_over_but_residency_never_leaves_its_region(
    fleet: dict[str, Node], gateways: list[Gateway], tmp_path: Path
) -> None:
    gateway = start_gateway(
        tmp_path, gateways, fleet_yaml(list(fleet.values())), {n.http_port for n in fleet.values()}
    )
    with httpx.Client(timeout=10) as client:
        before = counts(fleet)
        for _ in range(20):
            assert infer(client, gateway.base).status_code == 200
        for _ in range(10):
            answer = infer(client, gateway.base, {"X-Data-Residency": "eu-west"})
            assert answer.status_code == 200
        spread = delta(before, counts(fleet))
        # Unrestricted traffic stays in the primary region; eu-only traffic goes to eu.
        assert spread["c"] == 10 and spread["a"] + spread["b"] == 20, spread

        fleet["a"].kill()
        fleet["b"].kill()
        gateway.wait_healthy(f"model~{MODEL}~http", {fleet["c"].http_port}, within=3.0)
        before_c = fleet["c"].served()
        for _ in range(10):
            assert infer(client, gateway.base).status_code == 200
        for value in ("ae", "ae-dxb", "us, ae"):
            answer = infer(client, gateway.base, {"X-Data-Residency": value})
            assert answer.status_code == 503
            assert answer.text == RESIDENCY_REFUSAL
        assert fleet["c"].served() - before_c == 10
    command = ["gateway", "status", "--admin-port", str(gateway.admin_port)]
    status = subprocess.run(
        [sys.executable, "-m", "modelport", *command],
        check=False, capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert "residency refusals: 3" in status.stdout
    rows = {
        line.split()[0]: line
        for line in status.stdout.splitlines()
        if line.split()[:1] in (["a"], ["b"], ["c"])
    }
    assert "group main: a, b, c" in status.stdout
    assert re.search(r"eu-west\s+main\s+1\s+healthy\s+work$", rows["c"]), rows["c"]
    for name in ("a", "b"):
        assert re.search(r"ae-dxb\s+main\s+1\s+(unhealthy|unreachable|ejected)", rows[name])
    deadline = time.monotonic() + 3
    while "residency refusals: 3" not in gateway.log():
        assert time.monotonic() < deadline, gateway.log()
        time.sleep(0.1)


def test_caller_deadline_bounds_the_upstream_request(
    fleet: dict[str, Node], gateways: list[Gateway], tmp_path: Path
) -> None:
    one = [fleet["a"]]
    gateway = start_gateway(tmp_path, gateways, fleet_yaml(one), {fleet["a"].http_port})
    with httpx.Client(timeout=10) as client:
        start = time.monotonic()
        answer = infer(client, gateway.base, {"modelport-timeout-ms": "400"}, sleep=3.0)
        took = time.monotonic() - start
        assert answer.status_code == 504, answer.text
        assert answer.text == "upstream request timeout"  # Envoy's, not the node's
        assert 0.35 <= took < 1.5, took
        assert infer(client, gateway.base, {"modelport-timeout-ms": "3000"}).status_code == 200


def test_tritonclient_http_and_grpc_through_the_gateway(
    fleet: dict[str, Node], gateways: list[Gateway], tmp_path: Path
) -> None:
    one = [fleet["a"], fleet["c"]]
    gateway = start_gateway(tmp_path, gateways, fleet_yaml(one), {n.http_port for n in one})
    data = np.array([[2.0, 0.0]], dtype=np.float32)
    http = httpclient.InferenceServerClient(f"127.0.0.1:{gateway.http_port}")
    try:
        inp = httpclient.InferInput("x", [1, 2], "FP32")
        inp.set_data_from_numpy(data)
        result = http.infer(MODEL, [inp])
        assert result.as_numpy("y").tolist() == data.tolist()
    finally:
        http.close()
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{gateway.grpc_port}")
    try:
        headers = {"modelport-model": MODEL, "x-data-residency": "eu"}
        before = fleet["c"].served()
        inp = grpcclient.InferInput("x", [1, 2], "FP32")
        inp.set_data_from_numpy(data)
        result = grpc.infer(MODEL, [inp], headers=headers)
        assert result.as_numpy("y").tolist() == data.tolist()
        assert fleet["c"].served() == before + 1
        assert grpc.is_server_live()
    finally:
        grpc.close()


def test_followed_registrations_propagate_within_two_seconds(
    fleet: dict[str, Node], gateways: list[Gateway], tmp_path: Path
) -> None:
    from modelport.controlplane.store import Database, NodeRecord, NodeStore

    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = NodeStore(Database.open(url))
    spec = fleet_yaml([fleet["a"]], state_url=url)
    gateway = start_gateway(tmp_path, gateways, spec, {fleet["a"].http_port})
    b = fleet["b"]
    record = NodeRecord(
        name="b", http_url=b.base, grpc_address=f"127.0.0.1:{b.grpc_port}", region="ae-dxb",
        group="main", weight=1, models={MODEL: []}, draining=False, heartbeat=time.time(),
    )  # fmt: skip
    store.upsert(record)
    both = {fleet["a"].http_port, b.http_port}
    added = gateway.wait_healthy(f"model~{MODEL}~http", both, within=2.0)
    with httpx.Client(timeout=10) as client:
        before = b.served()
        for _ in range(20):
            assert infer(client, gateway.base).status_code == 200
        assert b.served() > before
    store.remove("b")
    removed = gateway.wait_healthy(f"model~{MODEL}~http", {fleet["a"].http_port}, within=2.0)
    print(f"registration reached Envoy in {added:.2f} s, removal in {removed:.2f} s")
    assert "node b joined" in gateway.log()


def test_sigterm_stops_envoy_and_exits_zero(
    fleet: dict[str, Node], gateways: list[Gateway], tmp_path: Path
) -> None:
    gateway = start_gateway(tmp_path, gateways, fleet_yaml([fleet["a"]]), {fleet["a"].http_port})
    with httpx.Client(timeout=10) as client:
        assert infer(client, gateway.base).status_code == 200
    prometheus = httpx.get(f"http://127.0.0.1:{gateway.admin_port}/stats/prometheus", timeout=5)
    assert 'envoy_cluster_upstream_rq_total{envoy_cluster_name="model~work~http"}' in (
        prometheus.text
    )
    gateway.process.send_signal(signal.SIGTERM)
    assert gateway.process.wait(timeout=20) == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{gateway.base}/v2/health/live", timeout=1)


def envoy_child(gateway: Gateway) -> int:
    """The pid of the gateway's Envoy (its only child process)."""
    children = Path(f"/proc/{gateway.process.pid}/task/{gateway.process.pid}/children")
    pids = [int(p) for p in children.read_text().split()]
    assert len(pids) == 1, pids
    return pids[0]


def test_a_dead_envoy_is_restarted_and_requests_are_logged_as_json(
    fleet: dict[str, Node], gateways: list[Gateway], tmp_path: Path
) -> None:
    gateway = start_gateway(tmp_path, gateways, fleet_yaml([fleet["a"]]), {fleet["a"].http_port})
    first = envoy_child(gateway)
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 10
    with httpx.Client(timeout=5) as client:
        while True:
            assert time.monotonic() < deadline, gateway.log()
            try:
                answer = infer(client, gateway.base, {"x-request-id": "req-123"})
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            if answer.status_code == 200:
                break
            time.sleep(0.1)
    assert envoy_child(gateway) != first
    assert "restarting it" in gateway.log()
    deadline = time.monotonic() + 5
    access = tmp_path / "access.log"
    while "req-123" not in (access.read_text() if access.exists() else ""):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    line = next(json.loads(x) for x in access.read_text().splitlines() if "req-123" in x)
    assert line["method"] == "POST"
    assert line["path"] == f"/v2/models/{MODEL}/infer"
    assert line["status"] == 200
    assert line["upstream_host"] == f"127.0.0.1:{fleet['a'].http_port}"
    assert isinstance(line["duration_ms"], int)
