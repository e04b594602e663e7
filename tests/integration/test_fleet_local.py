"""``modelport fleet up|ps|down``: a fleet of real nodes on this machine, started and stopped.

Each test runs the CLI as a user would, in a temporary folder holding the
fleet file, and checks what the nodes answer over HTTP. The gateway is
left out here (``--no-gateway``); the gateway's own tests drive it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration


def modelport(folder: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    return subprocess.run(
        [sys.executable, "-m", "modelport", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def write_fleet(folder: Path, nodes: list[dict[str, object]]) -> Path:
    lines = ["regions: [ae-dxb, eu-west]", "groups:", "  main: {policy: round_robin}", "nodes:"]
    lines += [f"  - {json.dumps(node)}" for node in nodes]
    path = folder / "fleet.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[tuple[Path, list[int]]]:
    ports = [free_port() for _ in range(4)]
    write_fleet(
        tmp_path,
        [
            {"name": "dxb-1", "http": f"127.0.0.1:{ports[0]}", "grpc": f"127.0.0.1:{ports[1]}",
             "region": "ae-dxb"},
            {"name": "euw-1", "http": f"127.0.0.1:{ports[2]}", "grpc": f"127.0.0.1:{ports[3]}",
             "region": "eu-west"},
        ],
    )  # fmt: skip
    yield tmp_path, ports
    modelport(tmp_path, "fleet", "down")  # whatever a failed test left running


def test_up_starts_every_node_sharing_one_store_and_down_stops_them(
    two_nodes: tuple[Path, list[int]],
) -> None:
    folder, ports = two_nodes
    up = modelport(folder, "fleet", "up", "fleet.yaml", "--no-gateway")
    assert up.returncode == 0, up.stderr
    assert "dxb-1 ready" in up.stdout and "euw-1 ready" in up.stdout
    assert "fleet up: 2 processes" in up.stdout

    dxb, euw = f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[2]}"
    for base in (dxb, euw):
        assert httpx.get(f"{base}/v2/models/digits/ready").status_code == 200
    # One state store: a policy written through one node is the other's policy.
    put = httpx.put(
        f"{dxb}/api/v1/models/digits/traffic",
        headers={"If-Match": "0"},
        json={"routes": [{"version": "1", "weight": 100}], "reason": "fleet test"},
    )
    assert put.status_code in (200, 201), put.text
    seen = httpx.get(f"{euw}/api/v1/models/digits/traffic")
    assert seen.status_code == 200, seen.text
    assert seen.json()["revision"] == put.json()["revision"]

    ps = modelport(folder, "fleet", "ps")
    assert ps.returncode == 0
    rows = [line.split() for line in ps.stdout.splitlines()[2:]]
    assert {(r[0], r[2], r[-1]) for r in rows} == {
        ("dxb-1", "ae-dxb", "running"),
        ("euw-1", "eu-west", "running"),
    }
    pids = [int(r[4]) for r in rows]

    again = modelport(folder, "fleet", "up", "fleet.yaml", "--no-gateway")
    assert again.returncode == 1
    assert "still running" in again.stderr

    down = modelport(folder, "fleet", "down")
    assert down.returncode == 0, down.stderr
    assert "fleet down: 2 processes stopped" in down.stdout
    for port in (ports[0], ports[2]):
        assert not port_open(port)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    assert not (folder / ".modelport" / "fleet" / "fleet.json").exists()
    nothing = modelport(folder, "fleet", "down")
    assert nothing.returncode == 1
    assert "no fleet is recorded" in nothing.stderr


def test_a_node_that_cannot_start_stops_the_others_and_names_itself(
    two_nodes: tuple[Path, list[int]],
) -> None:
    folder, ports = two_nodes
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports[2]))
        taken.listen()
        up = modelport(folder, "fleet", "up", "fleet.yaml", "--no-gateway", "--timeout", "60")
    assert up.returncode == 1
    assert "euw-1" in up.stderr and "euw-1.log" in up.stderr
    assert str(ports[2]) in up.stderr  # the node's own one-line reason
    assert not port_open(ports[0])  # dxb-1, which had started, was stopped
    assert not (folder / ".modelport" / "fleet" / "fleet.json").exists()


def test_a_node_off_loopback_is_refused_naming_the_field(tmp_path: Path) -> None:
    write_fleet(tmp_path, [{"name": "far", "http": "10.1.2.3:8000", "region": "ae-dxb"}])
    up = modelport(tmp_path, "fleet", "up", "fleet.yaml", "--no-gateway")
    assert up.returncode == 2
    assert up.stderr.strip().splitlines() == [
        "error: fleet.yaml: nodes[0].http: fleet up starts nodes on this "
        "machine only, on loopback addresses; '10.1.2.3:8000' is not one"
    ]


def test_a_bad_fleet_file_and_a_bad_port_flag_are_one_line_each(tmp_path: Path) -> None:
    write_fleet(
        tmp_path,
        [{"name": "a", "http": "127.0.0.1:1", "region": "mars"}],
    )
    bad = modelport(tmp_path, "fleet", "up", "fleet.yaml")
    assert bad.returncode == 2
    assert "nodes[0].region" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    flag = modelport(tmp_path, "fleet", "up", "fleet.yaml", "--http-port", "70000")
    assert flag.returncode == 2
    assert flag.stderr.strip() == "command line: --http-port: 70000 is not a port (1 to 65535)"


def test_up_with_the_gateway_serves_through_it_in_the_first_region(
    two_nodes: tuple[Path, list[int]],
) -> None:
    import numpy as np
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    folder, ports = two_nodes
    gw_http, gw_grpc, gw_admin = free_port(), free_port(), free_port()
    up = modelport(
        folder,
        "fleet", "up", "fleet.yaml",
        "--http-port", str(gw_http), "--grpc-port", str(gw_grpc), "--admin-port", str(gw_admin),
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert "gateway ready" in up.stdout
    assert "gateway routes 2 models" in up.stdout

    image = np.zeros((1, 64), dtype=np.float32)
    image[0, 20:40] = 8.0
    http = httpclient.InferenceServerClient(f"127.0.0.1:{gw_http}")
    rest_in = httpclient.InferInput("image", [1, 64], "FP32")
    rest_in.set_data_from_numpy(image)
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{gw_grpc}")
    grpc_in = grpcclient.InferInput("image", [1, 64], "FP32")
    grpc_in.set_data_from_numpy(image)
    direct = httpclient.InferenceServerClient(f"127.0.0.1:{ports[2]}")
    want = direct.infer("digits", [rest_in]).as_numpy("probabilities")
    for _ in range(10):
        got = http.infer("digits", [rest_in]).as_numpy("probabilities")
        assert np.allclose(got, want)
        answer = grpc.infer("digits", [grpc_in], headers={"modelport-model": "digits"})
        assert np.allclose(answer.as_numpy("probabilities"), want)

    # Both regions are up: every request stayed in the first one (ae-dxb).
    def served(port: int) -> int:
        stats = httpx.get(f"http://127.0.0.1:{port}/v2/models/digits/stats").json()
        return sum(s["inference_stats"]["success"]["count"] for s in stats["model_stats"])

    assert served(ports[0]) == 20
    assert served(ports[2]) == 1  # only the direct request above

    status = modelport(folder, "gateway", "status", "--admin-port", str(gw_admin))
    assert status.returncode == 0, status.stderr
    assert "dxb-1" in status.stdout and "euw-1" in status.stdout

    down = modelport(folder, "fleet", "down")
    assert down.returncode == 0, down.stderr
    assert "fleet down: 3 processes stopped" in down.stdout
    for port in (gw_http, gw_grpc, ports[0], ports[2]):
        assert not port_open(port)


def test_up_with_fleet_certificates_serves_tls_through_a_gateway_the_nodes_alone_accept(
    tmp_path: Path,
) -> None:
    import ssl

    from tests.tls_certs import issue, make_ca

    ca = make_ca()
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    issue(ca, "gateway.fleet.internal").write(tmp_path / "gw.pem", tmp_path / "gw.key")
    issue(ca, "localhost", server=True).write(tmp_path / "srv.pem", tmp_path / "srv.key")
    issue(ca, "node", server=True).write(tmp_path / "node.pem", tmp_path / "node.key")
    node_http, node_grpc = free_port(), free_port()
    gw_http, gw_grpc, gw_admin = free_port(), free_port(), free_port()
    fleet = {
        "regions": ["ae-dxb"],
        "groups": {"main": {}},
        "nodes": [{"name": "dxb-1", "http": f"127.0.0.1:{node_http}",
                   "grpc": f"127.0.0.1:{node_grpc}", "region": "ae-dxb"}],
        "tls": {"ca": "ca.pem", "cert": "gw.pem", "key": "gw.key", "server_cert": "srv.pem",
                "server_key": "srv.key", "node_cert": "node.pem", "node_key": "node.key"},
    }  # fmt: skip
    (tmp_path / "fleet.yaml").write_text(json.dumps(fleet))
    try:
        up = modelport(
            tmp_path,
            "fleet", "up", "fleet.yaml",
            "--http-port", str(gw_http), "--grpc-port", str(gw_grpc), "--admin-port", str(gw_admin),
        )  # fmt: skip
        assert up.returncode == 0, up.stderr
        assert "gateway routes" in up.stdout

        trust = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 64],
                            "data": [0.0] * 64}]}  # fmt: skip
        answer = httpx.post(
            f"https://127.0.0.1:{gw_http}/v2/models/digits/infer", json=body, verify=trust
        )
        assert answer.status_code == 200, answer.text
        # The node is TLS only, and only for clients the fleet CA signed (the gateway).
        with pytest.raises(httpx.TransportError):
            httpx.get(f"https://127.0.0.1:{node_http}/v2/health/live", verify=trust, timeout=5)
    finally:
        down = modelport(tmp_path, "fleet", "down")
    assert down.returncode == 0, down.stderr
    assert not port_open(gw_http) and not port_open(node_http)
