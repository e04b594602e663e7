"""Fleet nodes: real servers registering in a real PostgreSQL, as the gateway reads them.

Each test runs against a database of its own (created here, dropped after),
so nodes of one test never see another's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnx
import psycopg
import pytest
import tritonclient.grpc as tritongrpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from modelport.controlplane.store import AuditLog, Database, NodeRecord, NodeStore
from tests.integration.conftest import Server, start_server, stop_server
from tests.integration.models import add_sub_model
from tests.integration.test_tls import Pki
from tests.integration.test_tls import _client_context as tls_context
from tests.integration.test_tls import _start as start_tls
from tests.integration.test_traffic import build as build_traffic_model

pytestmark = pytest.mark.integration

ADMIN = "postgresql://postgres@127.0.0.1:5432/test"

CONFIG = """
backend: python
max_batch_size: 0
input:
- {{name: x, data_type: TYPE_FP32, dims: [1]}}
output:
- {{name: y, data_type: TYPE_FP32, dims: [1]}}
modelport: {{residency: {residency}}}
"""

MODEL = """
import time
import numpy as np

class Model:
    def load(self, version_dir, config):
        pass

    def predict(self, inputs):
        x = inputs["x"]
        time.sleep(float(x.reshape(-1)[0]))
        return {"y": (x + 1).astype(np.float32)}
"""


#: Holds requests 1 s for company: two fill its queue, a third is refused before its body.
TINY_QUEUE = {
    "max_batch_size": 8,
    "dynamic_batching": {
        "max_queue_delay_microseconds": 1000000,
        "default_queue_policy": {"max_queue_size": 2},
    },
}


def build(root: Path, name: str, residency: list[str]) -> None:
    version = root / name / "1"
    version.mkdir(parents=True)
    (root / name / "config.yaml").write_text(CONFIG.format(residency=residency))
    (version / "model.py").write_text(textwrap.dedent(MODEL))


@pytest.fixture
def state_url() -> Iterator[str]:
    """A PostgreSQL database of this test's own."""
    name = f"modelport_fleet_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL on 127.0.0.1:5432 is not reachable")
        pytest.skip("PostgreSQL on 127.0.0.1:5432 is not reachable")
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def nodes(state_url: str) -> Iterator[NodeStore]:
    """The store as the gateway reads it."""
    with Database.open(state_url) as database:
        yield NodeStore(database)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fleet-repo")
    build(root, "anywhere", [])
    build(root, "gulf", ["ae"])
    build(root, "elsewhere", ["us"])
    return root


def live(nodes: NodeStore) -> dict[str, NodeRecord]:
    return {record.name: record for record in nodes.live(time.time(), 3.0)}


def wait_for(check: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``check`` holds; fails after ``timeout``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - start


def infer(server: Server, model: str, sleep_s: float = 0.0) -> int:
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [sleep_s]}]}
    return httpx.post(f"{server.base}/v2/models/{model}/infer", json=body, timeout=30).status_code


def advertised(repo: Path, tmp_path: Path, state_url: str, *extra: str) -> Server:
    return start_server(
        repo,
        tmp_path / "node.log",
        "--state-url", state_url,
        "--advertise", "http://node-a.test:8100",
        "--region", "ae-dxb-1",
        *extra,
    )  # fmt: skip


def test_a_node_registers_itself_and_its_ready_models(
    repo: Path, tmp_path: Path, state_url: str, nodes: NodeStore
) -> None:
    server = advertised(
        repo, tmp_path, state_url,
        "--advertise-grpc", "node-a.test:8101",
        "--node-name", "alpha",
        "--group", "blue",
        "--node-weight", "7",
    )  # fmt: skip
    try:
        wait_for(lambda: "alpha" in live(nodes), 5)
        record = live(nodes)["alpha"]
        assert record.http_url == "http://node-a.test:8100"
        assert record.grpc_address == "node-a.test:8101"
        assert (record.region, record.group, record.weight) == ("ae-dxb-1", "blue", 7)
        # "elsewhere" may not run in the ae jurisdiction: not loaded, not advertised.
        assert record.models == {"anywhere": [], "gulf": ["ae"]}
        assert record.draining is False
        first = record.heartbeat
        wait_for(lambda: live(nodes)["alpha"].heartbeat > first, 2.5)
    finally:
        stop_server(server)


def test_load_and_unload_show_in_the_record_within_a_second(
    repo: Path, tmp_path: Path, state_url: str, nodes: NodeStore
) -> None:
    server = advertised(repo, tmp_path, state_url, "--node-name", "beta")
    try:
        wait_for(lambda: "beta" in live(nodes), 5)
        assert "gulf" in live(nodes)["beta"].models
        r = httpx.post(f"{server.base}/v2/repository/models/gulf/unload", timeout=30)
        assert r.status_code == 200, r.text
        gone = wait_for(lambda: "gulf" not in live(nodes)["beta"].models, 1.0)
        r = httpx.post(f"{server.base}/v2/repository/models/gulf/load", timeout=60)
        assert r.status_code == 200, r.text
        back = wait_for(lambda: "gulf" in live(nodes)["beta"].models, 1.0)
        print(f"unload seen after {gone:.3f} s, load after {back:.3f} s")
    finally:
        stop_server(server)


def test_sigterm_drains_then_withdraws_and_requests_in_flight_finish(
    repo: Path, tmp_path: Path, state_url: str, nodes: NodeStore
) -> None:
    server = advertised(repo, tmp_path, state_url, "--node-name", "gamma", "--drain-seconds", "2")
    try:
        wait_for(lambda: "gamma" in live(nodes), 5)
        statuses: list[int] = []
        slow = threading.Thread(target=lambda: statuses.append(infer(server, "anywhere", 1.5)))
        slow.start()
        time.sleep(0.2)
        stopped_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        wait_for(lambda: live(nodes)["gamma"].draining, 1.0)
        # Draining: still serving new requests while the gateway moves away.
        assert infer(server, "anywhere") == 200
        wait_for(lambda: "gamma" not in live(nodes), 4.0)
        withdrawn_after = time.monotonic() - stopped_at
        assert withdrawn_after >= 1.8, withdrawn_after
        slow.join(10)
        assert statuses == [200]
        assert server.process.wait(timeout=30) == 0
        assert nodes.get("gamma") is None
    finally:
        stop_server(server)


def test_one_worker_of_a_node_heartbeats_for_the_whole_node(
    repo: Path, tmp_path: Path, state_url: str, nodes: NodeStore
) -> None:
    server = advertised(repo, tmp_path, state_url, "--node-name", "delta", "--workers", "2")
    try:
        wait_for(lambda: "delta" in live(nodes), 10)
        assert live(nodes)["delta"].models == {"anywhere": [], "gulf": ["ae"]}
        time.sleep(1.5)
        writers = {
            line.split('"worker": ')[1].split(",")[0].split("}")[0]
            for line in server.log().splitlines()
            if '"message": "advertised"' in line
        }
        assert len(writers) == 1, server.log()
    finally:
        stop_server(server)
    assert "delta" not in live(nodes)


# ---------------------------------------------------------------- the retriable marker


@pytest.fixture(scope="module")
def queue_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("retriable")
    (root / "tiny_queue" / "1").mkdir(parents=True)
    onnx.save(add_sub_model(), str(root / "tiny_queue" / "1" / "model.onnx"))
    (root / "tiny_queue" / "config.yaml").write_text(json.dumps(TINY_QUEUE))
    (root / "broken" / "1").mkdir(parents=True)  # no model file: fails to load
    (root / "broken" / "config.yaml").write_text(json.dumps({"backend": "onnxruntime"}))
    server = start_server(root, root / "server.log", "--strict-readiness", "false")
    yield server
    stop_server(server)


def rest_body(rows: int = 1) -> dict[str, object]:
    data = [0.5] * (16 * rows)
    return {"inputs": [
        {"name": "INPUT0", "shape": [rows, 16], "datatype": "FP32", "data": data},
        {"name": "INPUT1", "shape": [rows, 16], "datatype": "FP32", "data": data},
    ]}  # fmt: skip


def fill_queue(server: Server) -> list[threading.Thread]:
    """Two requests waiting in tiny_queue's queue (for about a second)."""
    url = f"{server.base}/v2/models/tiny_queue/infer"
    threads = [
        threading.Thread(
            target=httpx.post, args=(url,), kwargs={"json": rest_body(), "timeout": 30}
        )
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    return threads


def test_a_refusal_before_the_body_is_marked_retriable_over_rest(queue_server: Server) -> None:
    threads = fill_queue(queue_server)
    refused = httpx.post(
        f"{queue_server.base}/v2/models/tiny_queue/infer", json=rest_body(), timeout=30
    )
    for thread in threads:
        thread.join(30)
    assert refused.status_code == 503, refused.text
    assert "queue full" in refused.json()["error"]
    assert refused.headers.get("modelport-retriable") == "true"
    served = httpx.post(f"{queue_server.base}/v2/models/tiny_queue/infer", json=rest_body())
    assert served.status_code == 200
    assert "modelport-retriable" not in served.headers


def grpc_request(model: str) -> Any:
    request = service_pb2.ModelInferRequest(model_name=model)
    raw = np.full((1, 16), 0.5, dtype=np.float32).tobytes()
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="FP32", shape=[1, 16])
        request.raw_input_contents.append(raw)
    return request


def test_a_refusal_before_the_message_is_marked_retriable_over_grpc(queue_server: Server) -> None:
    with grpc.insecure_channel(queue_server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        answer, call = stub.ModelInfer.with_call(grpc_request("tiny_queue"), timeout=30)
        assert answer.model_name == "tiny_queue"
        assert "modelport-retriable" not in dict(call.trailing_metadata())
        threads = fill_queue(queue_server)
        try:
            with pytest.raises(grpc.RpcError) as raised:
                stub.ModelInfer(grpc_request("tiny_queue"), timeout=30)
        finally:
            for thread in threads:
                thread.join(30)
        error: Any = raised.value
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
        assert dict(error.trailing_metadata()).get("modelport-retriable") == "true"
        with pytest.raises(grpc.RpcError) as missing:
            stub.ModelInfer(grpc_request("broken"), timeout=30)
        error = missing.value
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
        assert "modelport-retriable" not in dict(error.trailing_metadata())


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v2/models/broken/infer", 503),  # not ready: not a refusal of this request's load
        ("/v2/models/missing/infer", 404),
        ("/v2/models/tiny_queue/infer", 400),  # a bad body, read and refused
    ],
)
def test_other_answers_are_not_marked_retriable(
    queue_server: Server, path: str, status: int
) -> None:
    body = rest_body() if "tiny_queue" not in path else {"inputs": []}
    answer = httpx.post(f"{queue_server.base}{path}", json=body, timeout=30)
    assert answer.status_code == status, answer.text
    assert "modelport-retriable" not in answer.headers


# ---------------------------------------------------------------- fleet-wide changes

VERSIONED = """
backend: python
max_batch_size: 0
version_policy: {all: {}}
input:
- {name: x, data_type: TYPE_FP32, dims: [1]}
output:
- {name: y, data_type: TYPE_FP32, dims: [1]}
"""

ANSWERS_ITS_VERSION = """
import numpy as np

class Model:
    def load(self, version_dir, config):
        self.version = float(version_dir.name)

    def predict(self, inputs):
        return {"y": (inputs["x"] * 0 + self.version).astype(np.float32)}
"""


@pytest.fixture(scope="module")
def versioned_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("versioned")
    for version in (1, 2):
        (root / "scorer" / str(version)).mkdir(parents=True)
        (root / "scorer" / str(version) / "model.py").write_text(ANSWERS_ITS_VERSION)
    (root / "scorer" / "config.yaml").write_text(VERSIONED)
    return root


def version_answering(server: Server, headers: dict[str, str] | None = None) -> int:
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0.0]}]}
    r = httpx.post(f"{server.base}/v2/models/scorer/infer", json=body, headers=headers)
    assert r.status_code == 200, r.text
    return int(r.json()["outputs"][0]["data"][0])


def leaders(*servers: Server) -> list[Server]:
    return [s for s in servers if "leading the fleet's canaries" in s.log()]


def test_a_policy_set_on_one_node_holds_on_every_node_within_two_seconds(
    versioned_repo: Path, tmp_path: Path, state_url: str
) -> None:
    a = start_server(versioned_repo, tmp_path / "a.log", "--state-url", state_url)
    b = start_server(versioned_repo, tmp_path / "b.log", "--state-url", state_url)
    try:
        assert version_answering(b) == 2  # no policy: the latest version
        policy = {"routes": [{"version": "1", "weight": 100}]}
        r = httpx.put(
            f"{a.base}/api/v1/models/scorer/traffic",
            json=policy,
            headers={"If-Match": "0"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        took = wait_for(lambda: version_answering(b) == 1, 2.0)
        print(f"policy in effect on the other node after {took:.3f} s")
        assert all(version_answering(b) == 1 for _ in range(10))
        r = httpx.delete(
            f"{b.base}/api/v1/models/scorer/traffic", headers={"If-Match": "1"}, timeout=30
        )
        assert r.status_code in (200, 204), r.text
        wait_for(lambda: version_answering(a) == 2, 2.0)
        # One canary controller for the fleet.
        wait_for(lambda: len(leaders(a, b)) == 1, 5.0)
        (leader,) = leaders(a, b)
        follower = b if leader is a else a
        leader.process.kill()
        leader.process.wait(10)
        took = wait_for(lambda: leaders(follower) == [follower], 5.0)
        print(f"canary leadership moved after {took:.3f} s")
    finally:
        stop_server(a)
        stop_server(b)


def test_a_key_revoked_is_refused_by_every_node_within_two_seconds(
    versioned_repo: Path, tmp_path: Path, state_url: str
) -> None:
    made = subprocess.run(
        [sys.executable, "-m", "modelport", "keys", "create", "--state-url", state_url,
         "--role", "invoker", "--models", "*"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    auth = {"Authorization": f"Bearer {token}"}
    a = start_server(versioned_repo, tmp_path / "a.log", "--state-url", state_url, "--require-auth")
    b = start_server(versioned_repo, tmp_path / "b.log", "--state-url", state_url, "--require-auth")
    try:
        assert version_answering(a, auth) == 2
        assert version_answering(b, auth) == 2
        revoked = subprocess.run(
            [sys.executable, "-m", "modelport", "keys", "revoke", token.split("_")[1],
             "--state-url", state_url],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert revoked.returncode == 0, revoked.stderr
        body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0.0]}]}

        def refused() -> bool:
            r = httpx.post(f"{b.base}/v2/models/scorer/infer", json=body, headers=auth)
            return r.status_code == 401

        took = wait_for(refused, 2.0)
        print(f"revoked key refused on the other node after {took:.3f} s")
    finally:
        stop_server(a)
        stop_server(b)


# ---------------------------------------------------------------- the trusted proxy

BAD_TOKEN = {"Authorization": "Bearer mpk_nope_nope"}


def https(server: Server, pki: Pki, cert: tuple[Path, Path]) -> httpx.Client:
    return httpx.Client(
        base_url=f"https://127.0.0.1:{server.http_port}",
        verify=tls_context(pki.ca_path, cert),
        timeout=10,
    )


def failed_login(client: httpx.Client, forwarded: str) -> int:
    headers = {**BAD_TOKEN, "X-Forwarded-For": forwarded}
    return client.get("/v2/models/scorer", headers=headers).status_code


def grpc_client(server: Server, pki: Pki, cert: tuple[Path, Path]) -> Any:
    return tritongrpc.InferenceServerClient(
        server.grpc_url,
        ssl=True,
        root_certificates=str(pki.ca_path),
        private_key=str(cert[1]),
        certificate_chain=str(cert[0]),
    )


def grpc_failed_login(client: Any, forwarded: str) -> str:
    headers = {"authorization": BAD_TOKEN["Authorization"], "x-forwarded-for": forwarded}
    with pytest.raises(InferenceServerException) as refused:
        client.get_model_metadata("scorer", headers=headers)
    return str(refused.value.status()).removeprefix("StatusCode.")


def test_only_the_trusted_proxy_names_the_caller(versioned_repo: Path, tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    gateway, stranger = pki.client("gateway"), pki.client("stranger")
    data = tmp_path / "data"
    server = start_tls(
        versioned_repo,
        tmp_path / "node.log",
        tls_context(pki.ca_path, gateway),
        *pki.flags(),
        "--tls-client-ca", str(pki.ca_path),
        "--trusted-proxy-identity", "gateway",
        "--require-auth",
        "--auth-failure-burst", "2",
        "--data-dir", str(data),
    )  # fmt: skip
    try:
        with https(server, pki, gateway) as proxy:
            # The rightmost address is the one the proxy appended; the rest is the caller's.
            assert failed_login(proxy, "203.0.113.1, 198.51.100.7") == 401
            assert failed_login(proxy, "198.51.100.7") == 401
            assert failed_login(proxy, "198.51.100.7") == 429  # that caller is blocked
            assert failed_login(proxy, "198.51.100.8") == 401  # another caller is not
            assert failed_login(proxy, "not an address") == 401  # the proxy's own address
        gateway_grpc = grpc_client(server, pki, gateway)
        try:
            # The same over gRPC: x-forwarded-for metadata from the trusted proxy.
            assert grpc_failed_login(gateway_grpc, "198.51.100.20") == "UNAUTHENTICATED"
            assert grpc_failed_login(gateway_grpc, "198.51.100.20") == "UNAUTHENTICATED"
            assert grpc_failed_login(gateway_grpc, "198.51.100.20") == "RESOURCE_EXHAUSTED"
            assert grpc_failed_login(gateway_grpc, "198.51.100.21") == "UNAUTHENTICATED"
        finally:
            gateway_grpc.close()
        with https(server, pki, stranger) as direct:
            # Anyone else's header is ignored: every failure counts against 127.0.0.1,
            # which the proxy's unusable header above already charged once.
            assert failed_login(direct, "192.0.2.1") == 401
            assert failed_login(direct, "192.0.2.2") == 429
    finally:
        stop_server(server)
    with Database.open(Database.sqlite_url(data)) as database:
        peers = [
            event.detail.get("peer")
            for event in AuditLog(database).history("*", limit=100)
            if event.action == "auth.failure"
        ]
    assert {"198.51.100.7", "198.51.100.8", "198.51.100.20", "198.51.100.21"} <= set(peers)
    assert "203.0.113.1" not in peers and "192.0.2.1" not in peers
    assert "127.0.0.1" in peers


def test_the_canary_leader_judges_on_every_nodes_requests(tmp_path: Path, state_url: str) -> None:
    repo = tmp_path / "repo"
    build_traffic_model(repo, "scorer", {1: False, 2: False, 3: True})
    a = start_server(repo, tmp_path / "a.log", "--state-url", state_url)
    b = start_server(repo, tmp_path / "b.log", "--state-url", state_url)
    try:
        wait_for(lambda: len(leaders(a, b)) == 1, 5.0)
        (leader,) = leaders(a, b)
        follower = b if leader is a else a
        r = httpx.put(
            f"{leader.base}/api/v1/models/scorer/traffic",
            json={"routes": [{"version": "2", "weight": 100}]},
            headers={"If-Match": "0"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        spec = {
            "version": "3",
            "steps": [50, 100],
            "interval_s": 600,  # no step ends by time: only evidence moves it
            "min_requests": 10,
            "slo": {"max_error_rate": 0.1},
        }
        started = httpx.post(f"{leader.base}/api/v1/models/scorer/canary", json=spec, timeout=60)
        assert started.status_code == 201, started.text
        # Only the follower sees the failing requests; the leader sees none at all.
        body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [-5.0]}]}

        def split_reached_follower() -> bool:
            return (
                httpx.post(f"{follower.base}/v2/models/scorer/infer", json=body).status_code != 200
            )

        wait_for(split_reached_follower, 5.0)
        failures = sum(
            httpx.post(f"{follower.base}/v2/models/scorer/infer", json=body).status_code != 200
            for _ in range(60)
        )
        assert failures > 0  # the rollback may stop them before the 60 are sent

        def rolled_back() -> bool:
            state = httpx.get(f"{leader.base}/api/v1/models/scorer/canary").json()
            return bool(state["state"] == "rolled_back")

        took = wait_for(rolled_back, 10.0)
        print(f"rolled back on the follower's evidence after {took:.3f} s")
    finally:
        stop_server(a)
        stop_server(b)
