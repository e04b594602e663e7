"""Fleet certificates: the ``tls`` section's refusals, and TLS on both of the gateway's hops."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from modelport.cli.main import app
from modelport.errors import ConfigError
from modelport.gateway.envoy_config import CDS_FILE, LDS_FILE, Listen, render
from modelport.gateway.fleet import FleetSpec, load_fleet
from modelport.gateway.follow import Follower
from tests.tls_certs import issue, make_ca
from tests.unit.gateway.test_gateway_envoy_config import XDS, views

FIELDS = ("ca", "cert", "key", "server_cert", "server_key")


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A fleet CA, the gateway's client pair, a server pair for clients, under certs/."""
    folder = tmp_path / "certs"
    folder.mkdir()
    ca = make_ca()
    (folder / "ca.pem").write_bytes(ca.cert_pem)
    issue(ca, "gateway").write(folder / "gw.pem", folder / "gw.key")
    issue(ca, "gateway.example", server=True).write(folder / "srv.pem", folder / "srv.key")
    issue(ca, "node", server=True).write(folder / "node.pem", folder / "node.key")
    return {p.stem + p.suffix.replace(".", "_"): p for p in folder.iterdir()}


TLS = {
    "ca": "certs/ca.pem",
    "cert": "certs/gw.pem",
    "key": "certs/gw.key",
    "server_cert": "certs/srv.pem",
    "server_key": "certs/srv.key",
}


def fleet_file(tmp_path: Path, tls: dict[str, Any]) -> Path:
    data = {
        "regions": ["ae-dxb", "ae-auh", "eu-west"],
        "groups": {"main": {"models": ["digits"]}},
        "nodes": [
            {"name": "dxb-1", "http": "10.0.0.1:8000", "grpc": "10.0.0.1:8001",
             "region": "ae-dxb"},
        ],
        "tls": tls,
    }  # fmt: skip
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def refusal(tmp_path: Path, tls: dict[str, Any]) -> str:
    path = fleet_file(tmp_path, tls)
    with pytest.raises(ConfigError) as caught:
        load_fleet(path)
    message = caught.value.message
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message.removeprefix(f"{path}: ")


def test_paths_are_relative_to_the_fleet_file(tmp_path: Path, pki: dict[str, Path]) -> None:
    spec = load_fleet(fleet_file(tmp_path, TLS))
    assert spec.tls is not None
    assert spec.tls.ca == tmp_path / "certs" / "ca.pem"
    assert spec.tls.server_key == tmp_path / "certs" / "srv.key"


@pytest.mark.parametrize("field", FIELDS)
def test_a_missing_file_names_the_field_and_the_file(
    tmp_path: Path, pki: dict[str, Path], field: str
) -> None:
    tls = {**TLS, field: "certs/gone.pem"}
    assert refusal(tmp_path, tls) == (
        f"tls.{field}: {tmp_path / 'certs' / 'gone.pem'}: cannot read: No such file or directory"
    )


@pytest.mark.parametrize(
    ("drop", "problem"),
    [
        ("key", "tls.key: needed with tls.cert (its private key)"),
        ("cert", "tls.cert: needed with tls.key (the key's certificate)"),
        ("ca", "tls.ca: needed with tls.cert: the gateway verifies the nodes against it"),
        ("server_key", "tls.server_key: needed with tls.server_cert (its private key)"),
    ],
)
def test_halves_of_a_pair_are_refused(
    tmp_path: Path, pki: dict[str, Path], drop: str, problem: str
) -> None:
    assert refusal(tmp_path, {k: v for k, v in TLS.items() if k != drop}) == problem


def test_a_key_of_another_certificate_is_refused(tmp_path: Path, pki: dict[str, Path]) -> None:
    message = refusal(tmp_path, {**TLS, "key": "certs/srv.key"})
    assert message.startswith("tls.key: ") and "does not belong to the certificate" in message


def test_a_ca_that_is_no_certificate_and_an_empty_section_are_refused(
    tmp_path: Path, pki: dict[str, Path]
) -> None:
    assert refusal(tmp_path, {**TLS, "ca": "certs/gw.key"}) == (
        f"tls.ca: {tmp_path / 'certs' / 'gw.key'}: holds no PEM certificate"
    )
    assert refusal(tmp_path, {}).startswith("tls: name ca (with cert and key)")
    assert refusal(tmp_path, {**TLS, "client_ca": "x"}) == "tls.client_ca: unknown field"


def test_one_hop_alone_is_allowed(tmp_path: Path, pki: dict[str, Path]) -> None:
    to_clients = {"server_cert": TLS["server_cert"], "server_key": TLS["server_key"]}
    assert load_fleet(fleet_file(tmp_path, to_clients)).tls is not None
    assert load_fleet(fleet_file(tmp_path, {"ca": TLS["ca"]})).tls is not None


def test_the_gateway_command_refuses_a_missing_certificate_with_exit_2(
    tmp_path: Path, pki: dict[str, Path]
) -> None:
    path = fleet_file(tmp_path, {**TLS, "cert": "certs/gone.pem"})
    result = CliRunner().invoke(app, ["gateway", "--fleet", str(path)])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"error: {path}: tls.cert: {tmp_path / 'certs' / 'gone.pem'}: "
        "cannot read: No such file or directory"
    )


# What Envoy is told.


def rendered(spec: FleetSpec) -> dict[str, Any]:
    return render(spec, views(spec), XDS, Listen())[1]


def common(socket: dict[str, Any]) -> dict[str, Any]:
    assert socket["name"] == "envoy.transport_sockets.tls"
    context: dict[str, Any] = socket["typed_config"]["common_tls_context"]
    return context


def test_every_cluster_speaks_mutual_tls_to_the_nodes(tmp_path: Path, pki: dict[str, Path]) -> None:
    files = rendered(load_fleet(fleet_file(tmp_path, TLS)))
    clusters = {c["name"]: c for c in files[CDS_FILE]["resources"]}
    assert "model~digits~http" in clusters and "model~digits~grpc" in clusters
    for name, cluster in clusters.items():
        socket = cluster["transport_socket"]
        assert socket["typed_config"]["@type"].endswith("UpstreamTlsContext")
        context = common(socket)
        assert context["validation_context"]["trusted_ca"]["filename"] == str(pki["ca_pem"])
        (pair,) = context["tls_certificates"]
        assert pair["certificate_chain"]["filename"] == str(pki["gw_pem"])
        assert pair["private_key"]["filename"] == str(pki["gw_key"])
        assert context["tls_params"]["tls_minimum_protocol_version"] == "TLSv1_2"
        # gRPC needs HTTP/2 negotiated; health checks share the cluster's socket.
        assert context["alpn_protocols"] == (["h2"] if "~grpc" in name else ["http/1.1"])


def test_both_listeners_serve_the_users_certificate(tmp_path: Path, pki: dict[str, Path]) -> None:
    files = rendered(load_fleet(fleet_file(tmp_path, TLS)))
    for listener in files[LDS_FILE]["resources"]:
        (chain,) = listener["filter_chains"]
        socket = chain["transport_socket"]
        assert socket["typed_config"]["@type"].endswith("DownstreamTlsContext")
        context = common(socket)
        (pair,) = context["tls_certificates"]
        assert pair["certificate_chain"]["filename"] == str(pki["srv_pem"])
        assert context["alpn_protocols"] == ["h2", "http/1.1"]


def test_without_tls_both_hops_stay_plain_and_callers_are_still_named(
    tmp_path: Path, pki: dict[str, Path]
) -> None:
    spec = load_fleet(fleet_file(tmp_path, {"server_cert": TLS["server_cert"],
                                            "server_key": TLS["server_key"]}))  # fmt: skip
    files = rendered(spec)
    assert all("transport_socket" not in c for c in files[CDS_FILE]["resources"])
    files = rendered(spec.model_copy(update={"tls": None}))
    for listener in files[LDS_FILE]["resources"]:
        (chain,) = listener["filter_chains"]
        assert "transport_socket" not in chain
        # Envoy appends the caller's address to X-Forwarded-For for the nodes.
        assert chain["filters"][0]["typed_config"]["use_remote_address"] is True


# The gateway's own readiness polls.


class Index(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.dumps([{"name": "digits", "state": "READY"}]).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def mtls_node(pki: dict[str, Path]) -> Iterator[int]:
    """A node stand-in answering the repository index only to a client the CA signed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki["node_pem"], pki["node_key"])
    context.load_verify_locations(pki["ca_pem"])
    context.verify_mode = ssl.CERT_REQUIRED
    server = ThreadingHTTPServer(("127.0.0.1", 0), Index)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def poll_once(spec: FleetSpec) -> Any:
    async def run() -> Any:
        follower = Follower(spec)
        try:
            return (await follower.poll())[0]
        finally:
            await follower.close()

    return asyncio.run(run())


def test_polls_use_the_gateways_certificate(
    tmp_path: Path, pki: dict[str, Path], mtls_node: int
) -> None:
    path = fleet_file(tmp_path, TLS)
    path.write_text(path.read_text().replace("10.0.0.1:8000", f"127.0.0.1:{mtls_node}"))
    spec = load_fleet(path)
    # A poll is given one second; on a loaded test machine a handshake may miss it once.
    view = next((v for v in (poll_once(spec) for _ in range(3)) if v.reachable), None)
    assert view is not None and set(view.models) == {"digits"}
    # Without the client certificate the same node will not talk to the poller.
    assert spec.tls is not None
    anonymous = spec.model_copy(update={"tls": spec.tls.model_copy(update={"cert": None})})
    assert not poll_once(anonymous).reachable


def test_polls_refuse_a_node_the_fleet_ca_did_not_sign(
    tmp_path: Path, pki: dict[str, Path], mtls_node: int
) -> None:
    stranger = tmp_path / "other-ca.pem"
    stranger.write_bytes(make_ca("another CA").cert_pem)
    path = fleet_file(tmp_path, {**TLS, "ca": str(stranger)})
    path.write_text(path.read_text().replace("10.0.0.1:8000", f"127.0.0.1:{mtls_node}"))
    assert not poll_once(load_fleet(path)).reachable
