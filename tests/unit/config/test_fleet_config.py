"""The fleet settings of a node: what is accepted, and the errors that name the flag."""

from __future__ import annotations

import pytest

from modelport.config.server import load_server_config
from modelport.errors import ConfigError

PG = "postgresql://postgres@127.0.0.1/fleet"


def test_advertise_needs_a_state_url_and_says_which_flag() -> None:
    with pytest.raises(ConfigError) as raised:
        load_server_config(None, {}, {"advertise": "http://10.0.0.5:8000"})
    assert "--advertise needs --state-url" in raised.value.message
    assert "\n" not in raised.value.message


def test_an_advertised_node_keeps_its_settings() -> None:
    config = load_server_config(
        None,
        {"MODELPORT_DRAIN_SECONDS": "5"},
        {
            "advertise": "https://node-1.internal:8443/",
            "advertise_grpc": "[::1]:8001",
            "state_url": PG,
            "node_name": "node-1",
            "group": "blue",
            "node_weight": 3,
        },
    )
    assert config.advertise == "https://node-1.internal:8443"
    assert (config.advertise_grpc, config.node_name, config.group) == (
        "[::1]:8001",
        "node-1",
        "blue",
    )
    assert (config.node_weight, config.drain_seconds) == (3, 5.0)


def test_drain_seconds_defaults_to_two() -> None:
    assert load_server_config(None, {}, {}).drain_seconds == 2.0


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("advertise", "ftp://10.0.0.5", "--advertise"),
        ("advertise", "http://10.0.0.5:8000/v2", "--advertise"),
        ("advertise", "10.0.0.5:8000", "--advertise"),
        ("advertise_grpc", "10.0.0.5", "--advertise-grpc"),
        ("node_name", "no spaces", "--node-name"),
        ("node_weight", 10_001, "--node-weight"),
        ("drain_seconds", -1, "--drain-seconds"),
    ],
)
def test_a_bad_fleet_flag_is_named(field: str, value: object, flag: str) -> None:
    flags = {"advertise": "http://10.0.0.5:8000", "state_url": PG, field: value}
    with pytest.raises(ConfigError) as raised:
        load_server_config(None, {}, flags)
    assert flag in raised.value.message


def test_a_trusted_proxy_needs_mutual_tls() -> None:
    with pytest.raises(ConfigError) as raised:
        load_server_config(None, {}, {"trusted_proxy_identities": ["gateway"]})
    assert "--trusted-proxy-identity" in raised.value.message
