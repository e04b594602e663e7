"""Tenant residency through the gateway: real Envoy, real nodes, a real PostgreSQL store.

Three nodes (eu-west, the first region; ae-dxb; ae-auh) serve a model of
tenant acme and verify API keys against one shared store, which the gateway
reads too. The fleet file says acme's data stays in ``ae``. Every claim about
where a request went is checked where it landed: the nodes' own statistics,
or the access log's upstream for requests the node refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psycopg
import pytest
import tritonclient.grpc as grpcclient

from modelport.gateway.envoy_config import RESIDENCY_REFUSAL
from tests.integration.test_gateway import MODEL, SIGNATURE, SOURCE, Gateway, Node, start_gateway

pytestmark = pytest.mark.integration

ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
TENANT_CONFIG = SIGNATURE + "parameters: {tenant: {string_value: acme}}\n"
ALL = f"model~{MODEL}~http"
GULF = f"model~{MODEL}~http~in~ae-auh+ae-dxb"


def modelport(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    return subprocess.run(
        [sys.executable, "-m", "modelport", *args],
        check=True, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip


class StoreNode(Node):
    """A node of tenant acme's model whose API keys are in the shared store."""

    state_url: str = ""
    observer: str = ""

    def start(self) -> None:
        repo = self.folder / "repo"
        if not repo.exists():
            (repo / MODEL / "1").mkdir(parents=True)
            (repo / MODEL / "config.yaml").write_text(TENANT_CONFIG)
            (repo / MODEL / "1" / "model.py").write_text(textwrap.dedent(SOURCE.format(delay=0)))
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
        args = [
            sys.executable, "-m", "modelport", "serve", str(repo),
            "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
            "--metrics-port", str(self.metrics_port), "--region", self.region,
            "--data-dir", str(self.folder / "state"), "--state-url", self.state_url,
        ]  # fmt: skip
        log = (self.folder / "node.log").open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.alive(), (self.folder / "node.log").read_text()
            try:
                if httpx.get(f"{self.base}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"node {self.name} not ready")

    def served(self) -> int:
        headers = {"authorization": f"Bearer {self.observer}"}
        answer = httpx.get(f"{self.base}/v2/models/{MODEL}/stats", headers=headers, timeout=5)
        assert answer.status_code == 200, answer.text
        return int(answer.json()["model_stats"][0]["inference_stats"]["success"]["count"])


@pytest.fixture(scope="module")
def state_url() -> Iterator[str]:
    """A PostgreSQL database of this module's own, dropped afterwards."""
    name = f"modelport_tenants_{uuid.uuid4().hex[:10]}"
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


@pytest.fixture(scope="module")
def keys(state_url: str) -> dict[str, str]:
    """Tokens made the way an operator makes them: ``modelport keys create``."""

    def create(*extra: str) -> str:
        made = modelport("keys", "create", "--state-url", state_url, "--models", "*", *extra)
        return made.stdout.split()[0]

    return {
        "acme": create("--role", "invoker", "--tenant", "acme"),
        "plain": create("--role", "invoker"),
        "observer": create("--role", "admin"),
    }


@pytest.fixture(scope="module")
def nodes(
    tmp_path_factory: pytest.TempPathFactory, state_url: str, keys: dict[str, str]
) -> Iterator[dict[str, StoreNode]]:
    root = tmp_path_factory.mktemp("tenant_nodes")
    made = {
        "eu": StoreNode("eu", "eu-west", root / "eu"),
        "dxb": StoreNode("dxb", "ae-dxb", root / "dxb"),
        "auh": StoreNode("auh", "ae-auh", root / "auh"),
    }
    for node in made.values():
        node.state_url = state_url
        node.observer = keys["observer"]
        node.folder.mkdir()
        node.start()
    try:
        for node in made.values():
            node.wait_ready()
        yield made
    finally:
        for node in made.values():
            node.stop()


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, nodes: dict[str, StoreNode], state_url: str
) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("tenant_gateway")
    fleet = {
        "regions": ["eu-west", "ae-dxb", "ae-auh"],
        "groups": {"main": {"models": [MODEL]}},
        "nodes": [
            {
                "name": n.name,
                "http": f"127.0.0.1:{n.http_port}",
                "grpc": f"127.0.0.1:{n.grpc_port}",
                "region": n.region,
            }
            for n in nodes.values()
        ],
        "health": {"interval": 0.5, "unhealthy_threshold": 2, "healthy_threshold": 1},
        "state_url": state_url,
        "tenant_residency": {"acme": ["ae"]},
    }
    started: list[Gateway] = []
    try:
        yield start_gateway(folder, started, fleet, {n.http_port for n in nodes.values()})
    finally:
        for gw in started:
            if gw.process.poll() is None:
                os.kill(gw.process.pid, signal.SIGCONT)
                gw.process.send_signal(signal.SIGTERM)
                gw.process.wait(timeout=20)


@pytest.fixture
def fleet(nodes: dict[str, StoreNode], gateway: Gateway) -> Iterator[dict[str, StoreNode]]:
    """The module's nodes, each brought back (and seen healthy) after a test that killed it."""
    yield nodes
    for node in nodes.values():
        if not node.alive():
            node.start()
    for node in nodes.values():
        node.wait_ready()
    gateway.wait_healthy(ALL, {n.http_port for n in nodes.values()})


def send(
    gateway: Gateway, token: str | None, residency: str | None = None, request_id: str = ""
) -> httpx.Response:
    headers = {"x-request-id": request_id or str(uuid.uuid4())}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    if residency is not None:
        headers["x-data-residency"] = residency
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 0.0]}]}
    url = f"{gateway.base}/v2/models/{MODEL}/infer"
    return httpx.post(url, json=body, headers=headers, timeout=10)


def landed(
    nodes: dict[str, StoreNode],
    gateway: Gateway,
    count: int,
    token: str,
    residency: str | None = None,
) -> dict[str, int]:
    """Sends ``count`` requests that must succeed; how many each live node served."""
    before = {name: node.served() for name, node in nodes.items() if node.alive()}
    for _ in range(count):
        answer = send(gateway, token, residency)
        assert answer.status_code == 200, answer.text
    return {name: node.served() - before[name] for name, node in nodes.items() if node.alive()}


def upstream_port(gateway: Gateway, request_id: str) -> int:
    """The node port Envoy sent a request to, from the access log (flushed every few seconds)."""
    access = gateway.out.parent / "access.log"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for line in access.read_text().splitlines() if access.exists() else []:
            entry = json.loads(line)
            if entry["request_id"] == request_id:
                return int(entry["upstream_host"].rpartition(":")[2])
        time.sleep(0.1)
    raise AssertionError(f"request {request_id} is not in the access log")


def test_a_tenant_key_stays_in_its_regions_and_fails_over_only_among_them(
    fleet: dict[str, StoreNode], gateway: Gateway, keys: dict[str, str]
) -> None:
    acme = keys["acme"]
    # The first region is eu-west, but acme's data goes to the first ae region.
    assert landed(fleet, gateway, 20, acme) == {"eu": 0, "dxb": 20, "auh": 0}

    fleet["dxb"].kill()
    gateway.wait_healthy(GULF, {fleet["auh"].http_port}, within=5.0)
    assert landed(fleet, gateway, 10, acme) == {"eu": 0, "auh": 10}

    fleet["auh"].kill()
    gateway.wait_healthy(GULF, set(), within=5.0)
    before = fleet["eu"].served()
    for _ in range(5):
        answer = send(gateway, acme)
        assert answer.status_code == 503
        assert answer.json() == json.loads(RESIDENCY_REFUSAL)
    assert fleet["eu"].served() == before


def test_a_key_without_tenant_residency_is_unrestricted_and_the_client_narrows(
    fleet: dict[str, StoreNode], gateway: Gateway, keys: dict[str, str]
) -> None:
    plain, acme = keys["plain"], keys["acme"]
    assert landed(fleet, gateway, 10, plain) == {"eu": 10, "dxb": 0, "auh": 0}
    assert landed(fleet, gateway, 10, plain, "ae-auh") == {"eu": 0, "dxb": 0, "auh": 10}
    # The client's header narrows the tenant's regions, and can never widen them.
    assert landed(fleet, gateway, 10, acme, "ae-auh, eu-west") == {"eu": 0, "dxb": 0, "auh": 10}
    for widen in ("eu", "eu-west", "us"):
        answer = send(gateway, acme, widen)
        assert answer.status_code == 503
        assert answer.json() == json.loads(RESIDENCY_REFUSAL)

    fleet["eu"].kill()
    gateway.wait_healthy(ALL, {fleet["dxb"].http_port, fleet["auh"].http_port}, within=5.0)
    assert landed(fleet, gateway, 10, plain) == {"dxb": 10, "auh": 0}


def test_an_unknown_token_stays_in_the_first_region_and_the_node_refuses_it(
    fleet: dict[str, StoreNode], gateway: Gateway, keys: dict[str, str]
) -> None:
    unknown = "mpk_0123456789ab_" + "A" * 43
    for index, token in enumerate((unknown, "not.a.jwt", "garbage")):
        request_id = f"unknown-{uuid.uuid4()}-{index}"
        assert send(gateway, token, request_id=request_id).status_code == 401
        assert upstream_port(gateway, request_id) == fleet["eu"].http_port

    # Even the node's verdict aside, an unknown caller never fails over out of it.
    fleet["eu"].kill()
    gateway.wait_healthy(ALL, {fleet["dxb"].http_port, fleet["auh"].http_port}, within=5.0)
    answer = send(gateway, unknown)
    assert answer.status_code == 503
    assert answer.json() == json.loads(RESIDENCY_REFUSAL)


def test_with_the_check_unreachable_requests_stay_in_the_first_region(
    fleet: dict[str, StoreNode], gateway: Gateway, keys: dict[str, str]
) -> None:
    acme, plain = keys["acme"], keys["plain"]
    # Stopping the gateway's own process stops its check service; Envoy runs on.
    os.kill(gateway.process.pid, signal.SIGSTOP)
    try:
        assert landed(fleet, gateway, 4, acme) == {"eu": 4, "dxb": 0, "auh": 0}
        assert landed(fleet, gateway, 4, plain) == {"eu": 4, "dxb": 0, "auh": 0}
        # The client's own header still applies: ae and the first region share nothing.
        answer = send(gateway, plain, "ae")
        assert answer.status_code == 503
        assert answer.json() == json.loads(RESIDENCY_REFUSAL)
    finally:
        os.kill(gateway.process.pid, signal.SIGCONT)
    assert landed(fleet, gateway, 4, acme) == {"eu": 0, "dxb": 4, "auh": 0}


def test_grpc_calls_are_checked_the_same_way(
    fleet: dict[str, StoreNode], gateway: Gateway, keys: dict[str, str]
) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{gateway.grpc_port}")
    gateway.wait_healthy(f"model~{MODEL}~grpc", {n.grpc_port for n in fleet.values()})

    def call(token: str, count: int) -> dict[str, int]:
        before = {name: node.served() for name, node in fleet.items()}
        for _ in range(count):
            x = grpcclient.InferInput("x", [1, 2], "FP32")
            x.set_data_from_numpy(np.array([[1.0, 0.0]], dtype=np.float32))
            headers = {"modelport-model": MODEL, "authorization": f"Bearer {token}"}
            client.infer(MODEL, [x], headers=headers)
        return {name: node.served() - before[name] for name, node in fleet.items()}

    try:
        assert call(keys["acme"], 6) == {"eu": 0, "dxb": 6, "auh": 0}
        assert call(keys["plain"], 6) == {"eu": 6, "dxb": 0, "auh": 0}
    finally:
        client.close()


def listening_tcp_ports(pid: int) -> set[int]:
    """TCP ports a process listens on, from /proc: its socket inodes in LISTEN state."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


def test_only_envoy_gets_an_answer_from_the_residency_check(
    fleet: dict[str, StoreNode], gateway: Gateway, keys: dict[str, str]
) -> None:
    # Envoy still asks it: acme's data goes to the Gulf, as the tests above show in full.
    assert landed(fleet, gateway, 2, keys["acme"]) == {"eu": 0, "dxb": 2, "auh": 0}
    # The gateway's own process offers no TCP port a local program could ask instead.
    assert listening_tcp_ports(gateway.process.pid) == set()
    dump = httpx.get(
        f"http://127.0.0.1:{gateway.admin_port}/config_dump",
        params={"resource": "dynamic_active_clusters"},
        timeout=5,
    ).json()
    (authz,) = [c["cluster"] for c in dump["configs"] if c["cluster"]["name"] == "modelport~authz"]
    path = authz["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "pipe"
    ]["path"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    # Another local program, even one of the same user, is cut off before any answer.
    client = httpx.Client(transport=httpx.HTTPTransport(uds=path), timeout=5)
    with client, pytest.raises(httpx.TransportError):
        client.get(
            "http://authz/check/v2/models/work/infer",
            headers={"authorization": f"Bearer {keys['acme']}"},
        )
    assert "dropped a connection from process" in gateway.log()
