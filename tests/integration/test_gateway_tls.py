"""Fleet certificates end to end: real Envoy, a real node that takes only mutual TLS.

The node is started as docs/gateway.md says: its own certificate, the fleet
CA as its client CA, and the gateway's client certificate name as its one
trusted proxy; it requires authentication, so every failed login lands in
its audit log with the peer it believed. The gateway has the fleet CA, its
client pair, and a server pair for its clients.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent.ssl
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from modelport.controlplane.store import AuditLog, Database
from tests.integration.conftest import free_port
from tests.integration.test_gateway import MODEL, Gateway, Node
from tests.tls_certs import issue, make_ca

pytestmark = pytest.mark.integration

GATEWAY_NAME = "gateway.fleet.internal"

#: The caller's own address: loopback, but not the one the gateway's connections come from.
CALLER = "127.0.0.2"


@dataclass
class Pki:
    ca: Path
    node: tuple[Path, Path]
    gateway: tuple[Path, Path]
    server: tuple[Path, Path]
    stranger: tuple[Path, Path]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("fleet_pki")
    ca, other = make_ca("fleet CA"), make_ca("someone else's CA")
    (root / "ca.pem").write_bytes(ca.cert_pem)

    def pair(name: str, issued: Any) -> tuple[Path, Path]:
        paths = (root / f"{name}.pem", root / f"{name}.key")
        issued.write(*paths)
        return paths

    return Pki(
        ca=root / "ca.pem",
        node=pair("node", issue(ca, "node-1", server=True)),
        gateway=pair("gateway", issue(ca, GATEWAY_NAME)),
        server=pair("server", issue(ca, "gateway.example", server=True)),
        stranger=pair("stranger", issue(other, GATEWAY_NAME)),
    )


def modelport(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    done = subprocess.run(
        [sys.executable, "-m", "modelport", *args],
        check=True, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    return done.stdout.split()[0]


class MtlsNode(Node):
    """A node that accepts only clients the fleet CA signed, and trusts the gateway's XFF."""

    pki: Pki
    key: str = ""

    def start(self) -> None:
        repo = self.folder / "repo"
        if not repo.exists():
            (repo / MODEL / "1").mkdir(parents=True)
            (repo / MODEL / "config.yaml").write_text(
                "max_batch_size: 8\ninput:\n- {name: x, data_type: TYPE_FP32, dims: [2]}\n"
                "output:\n- {name: y, data_type: TYPE_FP32, dims: [2]}\n"
            )
            (repo / MODEL / "1" / "model.py").write_text(
                "class Model:\n    def predict(self, inputs):\n        return {'y': inputs['x']}\n"
            )
        state = self.folder / "state"
        self.key = modelport(
            "keys", "create", "--data-dir", str(state), "--role", "admin", "--models", "*"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
        args = [
            sys.executable, "-m", "modelport", "serve", str(repo),
            "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
            "--metrics-port", str(self.metrics_port), "--region", self.region,
            "--data-dir", str(state), "--require-auth",
            "--tls-cert", str(self.pki.node[0]), "--tls-key", str(self.pki.node[1]),
            "--tls-client-ca", str(self.pki.ca),
            "--trusted-proxy-identity", GATEWAY_NAME,
        ]  # fmt: skip
        log = (self.folder / "node.log").open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)

    def client(self, cert: tuple[Path, Path] | None) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        if cert is not None:
            context.load_cert_chain(*cert)
        return httpx.Client(
            base_url=f"https://127.0.0.1:{self.http_port}", verify=context, timeout=5
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        headers = {"authorization": f"Bearer {self.key}"}
        while time.monotonic() < deadline:
            assert self.alive(), (self.folder / "node.log").read_text()
            try:
                with self.client(self.pki.gateway) as client:
                    if client.get(f"/v2/models/{MODEL}/ready", headers=headers).status_code == 200:
                        return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"node {self.name} not ready")

    def audited_peers(self) -> set[str]:
        """Peers of the failed logins the node recorded."""
        with Database.open(Database.sqlite_url(self.folder / "state")) as database:
            return {
                str(event.detail.get("peer"))
                for event in AuditLog(database).history("*", limit=100)
                if event.action == "auth.failure"
            }


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[MtlsNode]:
    made = MtlsNode("dxb-1", "ae-dxb", tmp_path_factory.mktemp("mtls_node"))
    made.pki = pki
    made.start()
    try:
        made.wait_ready()
        yield made
    finally:
        made.stop()


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, node: MtlsNode, pki: Pki
) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("mtls_gateway")
    fleet = {
        "regions": ["ae-dxb"],
        "groups": {"main": {"models": [MODEL]}},
        "nodes": [
            {
                "name": node.name,
                "http": f"127.0.0.1:{node.http_port}",
                "grpc": f"127.0.0.1:{node.grpc_port}",
                "region": node.region,
            }
        ],
        "health": {"interval": 0.5, "unhealthy_threshold": 2, "healthy_threshold": 1},
        "tls": {
            "ca": str(pki.ca),
            "cert": str(pki.gateway[0]),
            "key": str(pki.gateway[1]),
            "server_cert": str(pki.server[0]),
            "server_key": str(pki.server[1]),
        },
    }
    (folder / "fleet.yaml").write_text(json.dumps(fleet))
    (folder / "node.key").write_text(node.key)
    ports = free_port(), free_port(), free_port()
    out, err = folder / "gateway.out", folder / "gateway.err"
    args = [
        sys.executable, "-m", "modelport", "gateway", "--fleet", str(folder / "fleet.yaml"),
        "--http-port", str(ports[0]), "--grpc-port", str(ports[1]),
        "--admin-port", str(ports[2]), "--access-log", str(folder / "access.log"),
        "--node-key-file", str(folder / "node.key"),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    process = subprocess.Popen(args, stdout=out.open("wb"), stderr=err.open("wb"), env=env)
    started = Gateway(process, *ports, out, err)
    try:
        deadline = time.monotonic() + 30
        while "gateway ready" not in out.read_text():
            assert process.poll() is None, started.log()
            assert time.monotonic() < deadline, started.log()
            time.sleep(0.05)
        # Healthy only if Envoy's health checks got through the node's mutual TLS.
        started.wait_healthy(f"model~{MODEL}~http", {node.http_port})
        yield started
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=20)


def https_client(gateway: Gateway, pki: Pki, source: str = CALLER) -> httpx.Client:
    transport = httpx.HTTPTransport(
        verify=ssl.create_default_context(cafile=str(pki.ca)), local_address=source
    )
    return httpx.Client(
        base_url=f"https://127.0.0.1:{gateway.http_port}", transport=transport, timeout=10
    )


def test_the_gateway_says_it_serves_tls(gateway: Gateway) -> None:
    assert f"REST https://127.0.0.1:{gateway.http_port}" in gateway.out.read_text()
    # Plain HTTP to the TLS port gets no HTTP answer.
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{gateway.http_port}/v2/health/live", timeout=5)


def test_tritonclient_http_over_tls_through_the_gateway(
    gateway: Gateway, node: MtlsNode, pki: Pki
) -> None:
    client = httpclient.InferenceServerClient(
        f"127.0.0.1:{gateway.http_port}",
        ssl=True,
        ssl_context_factory=lambda: gevent.ssl.create_default_context(cafile=str(pki.ca)),
    )
    data = np.array([[2.0, 3.0]], dtype=np.float32)
    try:
        inp = httpclient.InferInput("x", [1, 2], "FP32")
        inp.set_data_from_numpy(data)
        headers = {"authorization": f"Bearer {node.key}"}
        result = client.infer(MODEL, [inp], headers=headers)
        assert result.as_numpy("y").tolist() == data.tolist()
    finally:
        client.close()


def test_tritonclient_grpc_over_tls_through_the_gateway(
    gateway: Gateway, node: MtlsNode, pki: Pki
) -> None:
    gateway.wait_healthy(f"model~{MODEL}~grpc", {node.grpc_port})
    client = grpcclient.InferenceServerClient(
        f"127.0.0.1:{gateway.grpc_port}", ssl=True, root_certificates=str(pki.ca)
    )
    data = np.array([[4.0, 5.0]], dtype=np.float32)
    try:
        inp = grpcclient.InferInput("x", [1, 2], "FP32")
        inp.set_data_from_numpy(data)
        headers = {"modelport-model": MODEL, "authorization": f"Bearer {node.key}"}
        result = client.infer(MODEL, [inp], headers=headers)
        assert result.as_numpy("y").tolist() == data.tolist()
    finally:
        client.close()


def test_a_client_without_the_fleets_certificate_is_refused_by_the_node(
    node: MtlsNode, pki: Pki
) -> None:
    headers = {"authorization": f"Bearer {node.key}"}
    for cert in (None, pki.stranger):
        with node.client(cert) as direct, pytest.raises(httpx.TransportError):
            direct.get(f"/v2/models/{MODEL}/ready", headers=headers)
    # The fleet's own certificate is let in (the gateway's, here).
    with node.client(pki.gateway) as direct:
        assert direct.get(f"/v2/models/{MODEL}/ready", headers=headers).status_code == 200


def test_the_node_sees_the_real_caller_behind_the_gateway(
    gateway: Gateway, node: MtlsNode, pki: Pki
) -> None:
    bad = {"authorization": "Bearer mpk_0123456789ab_" + "A" * 43}
    with https_client(gateway, pki) as client:
        # What the caller writes into X-Forwarded-For itself counts for nothing.
        forged = {**bad, "x-forwarded-for": "203.0.113.9"}
        assert client.get(f"/v2/models/{MODEL}", headers=forged).status_code == 401
    deadline = time.monotonic() + 5
    while CALLER not in node.audited_peers() and time.monotonic() < deadline:
        time.sleep(0.1)
    peers = node.audited_peers()
    assert CALLER in peers, peers
    assert "203.0.113.9" not in peers and "127.0.0.1" not in peers, peers
