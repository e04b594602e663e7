from __future__ import annotations

from pathlib import Path

import pytest

from modelport.config.server import cores, load_server_config, machine_memory
from modelport.errors import ConfigError


def test_defaults_bind_loopback() -> None:
    config = load_server_config(None, {}, {})
    assert config.host == "127.0.0.1"
    assert (config.http_port, config.grpc_port, config.metrics_port) == (8000, 8001, 8002)
    assert config.max_body_bytes == 64 * 1024 * 1024


def test_flags_override_environment_override_file(tmp_path: Path) -> None:
    file = tmp_path / "server.yaml"
    file.write_text("http_port: 9000\ngrpc_port: 9001\nlog_level: debug\n")
    env = {"MODELPORT_HTTP_PORT": "9100", "MODELPORT_GRPC_PORT": "9101", "OTHER": "x"}
    config = load_server_config(file, env, {"http_port": 9200, "grpc_port": None})
    assert config.http_port == 9200
    assert config.grpc_port == 9101
    assert config.log_level == "debug"


def test_errors_name_the_source_and_field(tmp_path: Path) -> None:
    file = tmp_path / "server.yaml"
    file.write_text("http_port: seventy\n")
    with pytest.raises(ConfigError) as info:
        load_server_config(file, {}, {})
    assert info.value.source == str(file)
    assert info.value.field == "http_port"
    with pytest.raises(ConfigError) as env_info:
        load_server_config(None, {"MODELPORT_LOG_LEVEL": "loud"}, {})
    assert env_info.value.field == "MODELPORT_LOG_LEVEL"
    file.write_text("colour: blue\n")
    with pytest.raises(ConfigError, match="colour: unknown setting"):
        load_server_config(file, {}, {})


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    file = tmp_path / "server.yaml"
    file.write_text("http_port: [\n")
    with pytest.raises(ConfigError, match=r"server\.yaml: invalid YAML"):
        load_server_config(file, {}, {})


def test_strict_readiness_is_on_unless_turned_off() -> None:
    assert load_server_config(None, {}, {}).strict_readiness is True
    env = {"MODELPORT_STRICT_READINESS": "false"}
    assert load_server_config(None, env, {}).strict_readiness is False
    assert load_server_config(None, env, {"strict_readiness": "true"}).strict_readiness is True
    with pytest.raises(ConfigError, match="command line: --strict-readiness"):
        load_server_config(None, {}, {"strict_readiness": "sometimes"})


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("2GiB", 2 * 1024**3),
        ("512MB", 512 * 10**6),
        ("1.5G", int(1.5 * 1024**3)),  # a bare letter is binary, as `docker run -m` reads it
        ("1000000", 1_000_000),
        ("64 mib", 64 * 1024**2),
    ],
)
def test_memory_budget_sizes(text: str, size: int) -> None:
    assert load_server_config(None, {}, {"memory_budget": text}).memory_budget == size


def test_memory_budget_as_a_share_of_the_machine() -> None:
    half = load_server_config(None, {}, {"memory_budget": "50%"}).memory_budget
    assert half == machine_memory() // 2


@pytest.mark.parametrize("text", ["2x", "-1G", "0%", "101%", "0"])
def test_a_bad_memory_budget_names_the_flag(text: str) -> None:
    with pytest.raises(ConfigError, match="command line: --memory-budget"):
        load_server_config(None, {}, {"memory_budget": text})


@pytest.mark.parametrize("text", ["0", "-1", "many"])
def test_a_bad_worker_count_names_the_flag(text: str) -> None:
    with pytest.raises(ConfigError, match="command line: --workers"):
        load_server_config(None, {}, {"workers": text})


def test_auto_workers_is_one_per_core_this_process_may_use() -> None:
    assert load_server_config(None, {}, {"workers": "auto"}).workers == cores()
