"""What ``fleet up`` would start, decided before anything starts (deploy/local.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelport.deploy.local import GatewayPorts, plan, start_time
from modelport.errors import ConfigError
from modelport.gateway.fleet import parse_fleet
from tests.tls_certs import issue, make_ca


def spec(tmp_path: Path, **extra: object):  # type: ignore[no-untyped-def]
    data: dict[str, object] = {
        "regions": ["ae-dxb", "eu-west"],
        "groups": {"main": {"models": ["digits"]}},
        "nodes": [
            {"name": "a", "http": "127.0.0.1:9100", "grpc": "127.0.0.1:9101", "region": "ae-dxb"},
            {"name": "b", "http": "localhost:9110", "region": "eu-west"},
        ],
    }
    data.update(extra)
    return parse_fleet(data, "fleet.yaml", tmp_path)


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_each_node_runs_serve_with_its_ports_region_and_the_shared_store(tmp_path: Path) -> None:
    launches = plan(spec(tmp_path), tmp_path / "fleet.yaml", tmp_path / "st", None, python="py")
    assert [launch.name for launch in launches] == ["a", "b"]
    a, b = launches
    assert a.argv[:4] == ["py", "-m", "modelport", "serve"]
    assert (flag(a.argv, "--http-port"), flag(a.argv, "--grpc-port")) == ("9100", "9101")
    assert flag(b.argv, "--grpc-port") == "0"  # no gRPC address named: any free port
    assert (flag(a.argv, "--region"), flag(b.argv, "--region")) == ("ae-dxb", "eu-west")
    store = f"sqlite:///{(tmp_path / 'st' / 'state.db').resolve()}"
    assert flag(a.argv, "--state-url") == flag(b.argv, "--state-url") == store
    assert flag(a.argv, "--data-dir") != flag(b.argv, "--data-dir")
    assert "--redis-url" not in a.argv
    assert a.ready_url == "http://127.0.0.1:9100/v2/health/ready"


def test_the_files_store_and_redis_and_the_gateway_come_last(tmp_path: Path) -> None:
    fleet = spec(tmp_path, state_url="postgresql://db/fleet", redis_url="redis://r:6379/0")
    launches = plan(fleet, tmp_path / "fleet.yaml", tmp_path, GatewayPorts(1, 2, 3), python="py")
    assert [launch.kind for launch in launches] == ["node", "node", "gateway"]
    assert flag(launches[0].argv, "--state-url") == "postgresql://db/fleet"
    assert flag(launches[0].argv, "--redis-url") == "redis://r:6379/0"
    gateway = launches[-1].argv
    assert gateway[3] == "gateway"
    assert [flag(gateway, f) for f in ("--http-port", "--grpc-port", "--admin-port")] == [
        "1",
        "2",
        "3",
    ]
    assert launches[-1].ready_url == "http://127.0.0.1:1/v2/health/ready"


def test_a_group_repository_is_served_and_a_missing_one_refused(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    fleet = spec(tmp_path, groups={"main": {"repository": "models"}})
    launches = plan(fleet, tmp_path / "fleet.yaml", tmp_path, None)
    assert launches[0].argv[4] == str(tmp_path / "models")
    with pytest.raises(ConfigError, match=r"groups\.main\.repository: .* is not a folder"):
        plan(spec(tmp_path, groups={"main": {"repository": "gone"}}), tmp_path, tmp_path, None)


@pytest.mark.parametrize("address", ["10.0.0.5:8000", "example.com:8000", "[2001:db8::1]:80"])
def test_only_loopback_nodes_are_started(tmp_path: Path, address: str) -> None:
    fleet = spec(tmp_path, nodes=[{"name": "x", "http": address, "region": "ae-dxb"}])
    with pytest.raises(ConfigError, match=r"fleet.yaml: nodes\[0\]\.http: fleet up starts"):
        plan(fleet, tmp_path / "fleet.yaml", tmp_path, None)


def test_a_fleet_without_nodes_has_nothing_to_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nodes: fleet up needs at least one node"):
        plan(spec(tmp_path, nodes=[]), tmp_path / "fleet.yaml", tmp_path, None)


def test_start_time_tells_a_live_process_from_none() -> None:
    import os

    assert start_time(os.getpid()) is not None
    assert start_time(2**22 + 12345) is None


def certificates(folder: Path) -> dict[str, str]:
    """A fleet CA, and the gateway's client, server and the nodes' pairs it signed."""
    ca = make_ca()
    (folder / "ca.pem").write_bytes(ca.cert_pem)
    issue(ca, "gateway.fleet.internal").write(folder / "gw.pem", folder / "gw.key")
    issue(ca, "localhost", server=True).write(folder / "srv.pem", folder / "srv.key")
    issue(ca, "node", server=True).write(folder / "node.pem", folder / "node.key")
    return {
        "ca": "ca.pem",
        "cert": "gw.pem",
        "key": "gw.key",
        "server_cert": "srv.pem",
        "server_key": "srv.key",
        "node_cert": "node.pem",
        "node_key": "node.key",
    }


def test_with_fleet_certificates_nodes_take_only_the_fleet_and_trust_the_gateway(
    tmp_path: Path,
) -> None:
    fleet = spec(tmp_path, tls=certificates(tmp_path))
    launches = plan(fleet, tmp_path / "fleet.yaml", tmp_path, GatewayPorts(1, 2, 3), python="py")
    for node in launches[:-1]:
        assert flag(node.argv, "--tls-cert") == str(tmp_path / "node.pem")
        assert flag(node.argv, "--tls-key") == str(tmp_path / "node.key")
        assert flag(node.argv, "--tls-client-ca") == str(tmp_path / "ca.pem")
        # The name nodes know the gateway's client certificate by: its common name.
        assert flag(node.argv, "--trusted-proxy-identity") == "gateway.fleet.internal"
        assert node.ready_url.startswith("https://")
    assert launches[-1].ready_url == "https://127.0.0.1:1/v2/health/ready"


def test_without_a_gateway_certificate_nodes_serve_tls_but_ask_for_none(tmp_path: Path) -> None:
    tls = {k: v for k, v in certificates(tmp_path).items() if k not in ("cert", "key")}
    launches = plan(spec(tmp_path, tls=tls), tmp_path / "fleet.yaml", tmp_path, None)
    assert "--tls-cert" in launches[0].argv
    assert "--tls-client-ca" not in launches[0].argv
    assert "--trusted-proxy-identity" not in launches[0].argv


def test_fleet_certificates_without_the_nodes_pair_are_refused(tmp_path: Path) -> None:
    tls = {k: v for k, v in certificates(tmp_path).items() if not k.startswith("node_")}
    with pytest.raises(ConfigError, match=r"fleet.yaml: tls\.node_cert: fleet up needs"):
        plan(spec(tmp_path, tls=tls), tmp_path / "fleet.yaml", tmp_path, None)
    # TLS to clients alone asks nothing of the nodes.
    to_clients = {k: v for k, v in tls.items() if k.startswith("server_")}
    launches = plan(spec(tmp_path, tls=to_clients), tmp_path / "fleet.yaml", tmp_path, None)
    assert "--tls-cert" not in launches[0].argv
