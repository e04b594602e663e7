"""The fleet file: what it accepts, and the one-line refusals at start."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modelport.errors import ConfigError
from modelport.gateway.fleet import load_fleet

GOOD = """\
regions: [ae-dxb, ae-auh, eu-west]
default_group: main
groups:
  main:
    models: [digits, iris]
    policy: round_robin
    repository: ./models
  sticky:
    models: [seq]
    policy: ring_hash
    hash_header: X-User-Id
nodes:
  - {name: dxb-1, http: "127.0.0.1:8100", grpc: "127.0.0.1:8101", region: ae-dxb, group: main}
  - {name: auh-1, http: "127.0.0.1:8200", region: ae-auh, group: sticky, weight: 3}
health: {interval: 0.5, unhealthy_threshold: 2, healthy_threshold: 1}
retries: {attempts: 3, budget_percent: 25.0}
tenant_residency: {acme: [ae]}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    return path


def refusal(tmp_path: Path, change: dict[str, object] | None = None, **top: object) -> str:
    data = yaml.safe_load(GOOD)
    data.update(top)
    for dotted, value in (change or {}).items():
        target = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            target = target[int(part)] if part.isdigit() else target[part]
        last = parts[-1]
        target[int(last) if last.isdigit() else last] = value
    path = write(tmp_path, yaml.safe_dump(data))
    with pytest.raises(ConfigError) as caught:
        load_fleet(path)
    message = caught.value.message
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message.removeprefix(f"{path}: ")


def test_a_good_file_loads_with_paths_resolved_against_its_folder(tmp_path: Path) -> None:
    spec = load_fleet(write(tmp_path, GOOD))
    assert spec.primary_region == "ae-dxb"
    assert spec.groups["main"].repository == tmp_path / "models"
    assert spec.tls is None  # test_gateway_tls.py has the fleet's certificates
    assert spec.groups["sticky"].hash_header == "x-user-id"
    assert spec.groups["main"].hash_header == "modelport-sequence-id"
    assert [n.weight for n in spec.nodes] == [1, 3]
    assert spec.group_of_model("seq") == "sticky"
    assert spec.group_of_model("unlisted") == "main"
    assert spec.retries.budget_percent == 25.0


def test_the_default_group_is_the_first_group_when_unnamed(tmp_path: Path) -> None:
    spec = load_fleet(write(tmp_path, "regions: [eu]\ngroups: {b: {}, a: {}}\n"))
    assert spec.main_group == "b"
    assert spec.nodes == []


def test_unknown_policy(tmp_path: Path) -> None:
    assert refusal(tmp_path, {"groups.main.policy": "fastest"}) == (
        "groups.main.policy: unknown policy 'fastest' "
        "(one of round_robin, least_request, weighted, ring_hash, random)"
    )


def test_node_region_missing_from_regions(tmp_path: Path) -> None:
    assert refusal(tmp_path, {"nodes.1.region": "us-east"}) == (
        "nodes[1].region: region 'us-east' is not in regions (ae-dxb, ae-auh, eu-west)"
    )


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.1:http", ":8100", "h:70000", "a b:1"])
def test_node_address_that_does_not_parse(tmp_path: Path, address: str) -> None:
    message = refusal(tmp_path, {"nodes.0.http": address})
    assert message.startswith("nodes[0].http: ")
    assert address in message


def test_bad_grpc_address(tmp_path: Path) -> None:
    assert refusal(tmp_path, {"nodes.0.grpc": "nowhere"}).startswith("nodes[0].grpc: ")


def test_duplicate_node_names(tmp_path: Path) -> None:
    assert refusal(tmp_path, {"nodes.1.name": "dxb-1"}) == (
        "nodes[1].name: duplicate node name 'dxb-1'"
    )


@pytest.mark.parametrize("weight", [0, -2])
def test_weight_not_positive(tmp_path: Path, weight: int) -> None:
    assert refusal(tmp_path, {"nodes.0.weight": weight}).startswith("nodes[0].weight: ")


def test_model_in_two_groups(tmp_path: Path) -> None:
    assert refusal(tmp_path, {"groups.sticky.models": ["seq", "iris"]}) == (
        "groups.sticky.models: model 'iris' is already in group 'main' "
        "(a model may be in at most one group)"
    )


def test_node_naming_an_unknown_group(tmp_path: Path) -> None:
    assert refusal(tmp_path, {"nodes.0.group": "gpu"}) == "nodes[0].group: unknown group 'gpu'"


def test_unknown_default_group(tmp_path: Path) -> None:
    assert refusal(tmp_path, default_group="gpu") == "default_group: unknown group 'gpu'"


def test_extra_fields_are_refused(tmp_path: Path) -> None:
    assert refusal(tmp_path, {"health.timeout": 3}) == "health.timeout: unknown field"
    assert refusal(tmp_path, listeners=[]) == "listeners: unknown field"


def test_unreadable_and_non_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"fleet\.yaml: cannot read"):
        load_fleet(tmp_path / "fleet.yaml")
    with pytest.raises(ConfigError, match="not valid YAML at line 3"):
        load_fleet(write(tmp_path, "regions: [a]\ngroups: {a: [\n"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_fleet(write(tmp_path, "- a\n"))
