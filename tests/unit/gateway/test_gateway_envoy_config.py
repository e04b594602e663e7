"""Envoy's configuration as the gateway renders it: the shapes routing depends on."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from modelport.gateway.envoy_config import (
    CDS_FILE,
    LDS_FILE,
    RDS_FILES,
    RESIDENCY_REFUSAL,
    Listen,
    XdsWriter,
    bootstrap,
    render,
)
from modelport.gateway.fleet import FleetSpec, parse_fleet
from modelport.gateway.views import NodeView, view_of_spec
from modelport.regions import region_allowed

XDS = Path("/run/gw/xds")


def spec(policy: str = "round_robin", **group: Any) -> FleetSpec:
    return parse_fleet(
        {
            "regions": ["ae-dxb", "ae-auh", "eu-west"],
            "groups": {
                "main": {"models": ["digits"], "policy": policy, **group},
                "batch": {"models": ["big"]},
            },
            "nodes": [
                {"name": "dxb-1", "http": "10.0.0.1:8000", "grpc": "10.0.0.1:8001",
                 "region": "ae-dxb", "weight": 3},
                {"name": "auh-1", "http": "10.0.0.2:8000", "region": "ae-auh"},
                {"name": "eu-1", "http": "10.0.0.3:8000", "grpc": "10.0.0.3:8001",
                 "region": "eu-west"},
                {"name": "big-1", "http": "10.0.0.4:8000", "region": "eu-west",
                 "group": "batch"},
            ],
            "retries": {"attempts": 3, "budget_percent": 15.0},
        },
        "fleet.yaml",
        Path("/"),
    )  # fmt: skip


def views(
    fleet: FleetSpec, ready: dict[str, dict[str, tuple[str, ...]]] | None = None
) -> list[NodeView]:
    out = [view_of_spec(fleet, n) for n in fleet.nodes]
    return [replace(v, models=(ready or {}).get(v.name, {})) for v in out]


def rendered(fleet: FleetSpec, nodes: list[NodeView]) -> dict[str, Any]:
    return render(fleet, nodes, XDS, Listen())[1]


def cluster(files: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in files[CDS_FILE]["resources"] if c["name"] == name]
    assert found, sorted(c["name"] for c in files[CDS_FILE]["resources"])
    return found[0]


def endpoints(files: dict[str, Any], name: str) -> list[tuple[int, str, int]]:
    """(priority, node, weight) of a cluster's endpoints."""
    assignment = next(
        f["resources"][0]
        for k, f in files.items()
        if k.startswith("eds/") and f["resources"][0]["cluster_name"] == name
    )
    return sorted(
        (locality["priority"], lb["endpoint"]["hostname"], lb["load_balancing_weight"])
        for locality in assignment["endpoints"]
        for lb in locality["lb_endpoints"]
    )


def routes(files: dict[str, Any], protocol: str = "http") -> list[dict[str, Any]]:
    return files[RDS_FILES[protocol]]["resources"][0]["virtual_hosts"][0]["routes"]


def header_value_matches(route: dict[str, Any], headers: dict[str, str]) -> bool:
    """A small model of Envoy's header matching, enough for these routes."""
    for matcher in route["match"].get("headers", []):
        value = headers.get(matcher["name"])
        if "present_match" in matcher:
            ok = value is not None
        elif "safe_regex" in matcher.get("string_match", {}):
            pattern = matcher["string_match"]["safe_regex"]["regex"]
            ok = value is not None and re.fullmatch(pattern, value) is not None
        elif "exact" in matcher.get("string_match", {}):
            ok = value == matcher["string_match"]["exact"]
        else:
            ok = value is not None and matcher["string_match"]["contains"] in value.lower()
        if ok == matcher.get("invert_match", False):
            return False
    return True


def route_for(files: dict[str, Any], path: str, headers: dict[str, str]) -> dict[str, Any]:
    for route in routes(files):
        match = route["match"]
        if "safe_regex" in match and not re.fullmatch(match["safe_regex"]["regex"], path):
            continue
        if "prefix" in match and not path.startswith(match["prefix"]):
            continue
        if "path" in match and path != match["path"]:
            continue
        if header_value_matches(route, headers):
            return route
    raise AssertionError(f"no route for {path} {headers}")


@pytest.mark.parametrize(
    ("policy", "lb"),
    [
        ("round_robin", "ROUND_ROBIN"),
        ("weighted", "ROUND_ROBIN"),
        ("least_request", "LEAST_REQUEST"),
        ("ring_hash", "RING_HASH"),
        ("random", "RANDOM"),
    ],
)
def test_group_policy_is_envoys_lb_policy(policy: str, lb: str) -> None:
    files = rendered(spec(policy), views(spec(policy)))
    digits = cluster(files, "model~digits~http")
    assert digits["lb_policy"] == lb
    if policy == "least_request":
        assert digits["least_request_lb_config"] == {"choice_count": 2}
    # Sequences always hash, whatever the group's policy.
    assert cluster(files, "model~digits~http~seq")["lb_policy"] == "RING_HASH"


def test_ring_hash_hashes_on_the_groups_header() -> None:
    fleet = spec("ring_hash", hash_header="X-User-Id")
    route = route_for(rendered(fleet, views(fleet)), "/v2/models/digits/infer", {})
    assert route["route"]["hash_policy"] == [{"header": {"header_name": "x-user-id"}}]


def test_priority_is_the_region_rank_and_weights_apply() -> None:
    fleet = spec()
    files = rendered(fleet, views(fleet))
    # No node has digits ready yet: every node of its group may load it.
    assert endpoints(files, "model~digits~http") == [
        (0, "dxb-1", 3), (1, "auh-1", 1), (2, "eu-1", 1)
    ]  # fmt: skip
    eds = next(f for k, f in files.items() if "model~digits~http.json" in k)
    assert eds["resources"][0]["policy"]["overprovisioning_factor"] >= 10000
    assert cluster(files, "model~digits~http")["common_lb_config"] == {
        "healthy_panic_threshold": {"value": 0.0},
        "update_merge_window": "0s",
    }


def test_ready_nodes_only_once_any_has_the_model_ready() -> None:
    fleet = spec()
    files = rendered(fleet, views(fleet, {"eu-1": {"digits": ()}}))
    # Priorities are renumbered: the only level present is 0.
    assert endpoints(files, "model~digits~http") == [(0, "eu-1", 1)]


def test_models_of_no_group_go_to_the_default_group() -> None:
    fleet = spec()
    files = rendered(fleet, views(fleet))
    route = route_for(files, "/v2/models/other/infer", {})
    assert route["route"]["cluster"] == "group~main~http"
    assert route_for(files, "/v2/models/big/versions/2/infer", {})["route"]["cluster"] == (
        "model~big~http"
    )
    assert endpoints(files, "model~big~http") == [(0, "big-1", 1)]


@pytest.mark.parametrize("path", ["/api/v1/jobs", "/v2", "/v2/health/ready", "/metrics",
                                  "/v2/repository/index"])  # fmt: skip
def test_fleet_wide_paths_go_to_every_node(path: str) -> None:
    fleet = spec()
    files = rendered(fleet, views(fleet))
    assert route_for(files, path, {})["route"]["cluster"] == "fleet~all~http"
    assert len(endpoints(files, "fleet~all~http")) == 4


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        ("ae", {"ae-dxb", "ae-auh"}),
        ("ae-auh", {"ae-auh"}),
        ("eu-west, ae-dxb", {"ae-dxb", "eu-west"}),
        ("us", set()),
        ("ae-dxb-1", set()),
    ],
)
def test_residency_header_picks_a_variant_inside_its_regions(
    header: str, allowed: set[str]
) -> None:
    fleet = spec()
    files = rendered(fleet, views(fleet))
    route = route_for(files, "/v2/models/digits/infer", {"x-data-residency": header})
    name = route["route"]["cluster"]
    assert "typed_per_filter_config" in route  # marked: its no-healthy reply is the refusal
    if not allowed:
        assert name == "none~http"
        assert endpoints(files, name) == []
        return
    got = endpoints(files, name)
    assert {n for _, n, _ in got} == {
        v.name for v in views(fleet) if v.group == "main" and v.region in allowed
    }
    for view in views(fleet):
        if view.name in {n for _, n, _ in got}:
            assert region_allowed(view.region, [e.strip() for e in header.split(",")])
    assert sorted({p for p, _, _ in got}) == list(range(len({p for p, _, _ in got})))


def test_a_model_with_a_residency_is_always_restricted() -> None:
    fleet = spec()
    nodes = views(fleet, {"dxb-1": {"digits": ("ae",)}, "eu-1": {"digits": ("ae",)}})
    files = rendered(fleet, nodes)
    route = route_for(files, "/v2/models/digits/infer", {})
    assert route["route"]["cluster"] == "model~digits~http~in~ae-auh+ae-dxb"
    assert endpoints(files, route["route"]["cluster"]) == [(0, "dxb-1", 3)]
    eu = route_for(files, "/v2/models/digits/infer", {"x-data-residency": "eu"})
    assert eu["route"]["cluster"] == "none~http"


def test_retry_policies() -> None:
    fleet = spec()
    files = rendered(fleet, views(fleet))
    plain = route_for(files, "/v2/models/digits/infer", {})["route"]["retry_policy"]
    assert plain["retry_on"] == "connect-failure,reset,retriable-headers"
    assert plain["num_retries"] == 3
    assert plain["retriable_headers"] == [
        {"name": "modelport-retriable", "string_match": {"exact": "true"}}
    ]
    for headers in ({"modelport-sequence-id": "7"}, {"prefer": "respond-async"}):
        route = route_for(files, "/v2/models/digits/infer", headers)
        assert route["route"]["retry_policy"]["retry_on"] == "connect-failure"
    budget = cluster(files, "model~digits~http")["circuit_breakers"]["thresholds"][0]
    assert budget["retry_budget"]["budget_percent"] == {"value": 15.0}
    assert budget["retry_budget"]["min_retry_concurrency"] == 10


def test_sequences_route_to_the_hashing_variant() -> None:
    fleet = spec()
    files = rendered(fleet, views(fleet))
    route = route_for(files, "/v2/models/digits/infer", {"modelport-sequence-id": "7"})
    assert route["route"]["cluster"] == "model~digits~http~seq"
    assert route["route"]["hash_policy"] == [{"header": {"header_name": "modelport-sequence-id"}}]


def test_grpc_routes_on_the_model_metadata_and_checks_health_on_the_http_port() -> None:
    fleet = spec()
    files = rendered(fleet, views(fleet))
    grpc = routes(files, "grpc")
    plain = [
        r for r in grpc if [h["name"] for h in r["match"].get("headers", [])] == ["modelport-model"]
    ]
    assert {r["match"]["headers"][0]["string_match"]["exact"]: r["route"]["cluster"]
            for r in plain} == {"big": "model~big~grpc", "digits": "model~digits~grpc"}  # fmt: skip
    assert grpc[-1]["route"]["cluster"] == "group~main~grpc"
    assert grpc[-1]["route"]["max_stream_duration"] == {"grpc_timeout_header_max": "0s"}
    digits = cluster(files, "model~digits~grpc")
    assert "http2_protocol_options" in json.dumps(digits)
    eds = next(f for k, f in files.items() if k.endswith("/model~digits~grpc.json"))
    hosts = [lb["endpoint"] for loc in eds["resources"][0]["endpoints"] for loc_lb in [loc]
             for lb in loc_lb["lb_endpoints"]]  # fmt: skip
    # auh-1 has no gRPC port: it is not in gRPC clusters.
    assert [(h["hostname"], h["address"]["socket_address"]["port_value"],
             h["health_check_config"]["port_value"]) for h in hosts] == [
        ("dxb-1", 8001, 8000), ("eu-1", 8001, 8000)
    ]  # fmt: skip


def test_health_checks_and_outlier_detection() -> None:
    fleet = spec()
    digits = cluster(rendered(fleet, views(fleet)), "model~digits~http")
    check = digits["health_checks"][0]
    assert check["http_health_check"]["path"] == "/v2/health/live"
    assert (check["interval"], check["unhealthy_threshold"]) == ("1.000s", 3)
    outlier = digits["outlier_detection"]
    assert outlier["split_external_local_origin_errors"] is True
    assert outlier["consecutive_local_origin_failure"] >= 1


def test_unreachable_nodes_are_marked_unhealthy() -> None:
    fleet = spec()
    nodes = views(fleet)
    nodes[0] = replace(nodes[0], reachable=False)
    eds = next(f for k, f in rendered(fleet, nodes).items() if k.endswith("/fleet~all~http.json"))
    status = {
        lb["endpoint"]["hostname"]: lb["health_status"]
        for loc in eds["resources"][0]["endpoints"]
        for lb in loc["lb_endpoints"]
    }
    assert status["dxb-1"] == "UNHEALTHY" and status["eu-1"] == "HEALTHY"


def test_listeners_deadline_copy_and_refusal_body() -> None:
    fleet = spec()
    files = rendered(fleet, views(fleet))
    listeners = files[LDS_FILE]["resources"]
    assert [(x["name"], x["address"]["socket_address"]["port_value"]) for x in listeners] == [
        ("http", 8080), ("grpc", 8081)
    ]  # fmt: skip
    manager = listeners[0]["filter_chains"][0]["filters"][0]["typed_config"]
    mutation = manager["http_filters"][0]["typed_config"]["mutations"]["request_mutations"][0]
    assert mutation["append"]["header"] == {
        "key": "x-envoy-upstream-rq-timeout-ms",
        "value": "%REQ(modelport-timeout-ms)%",
    }
    assert manager["local_reply_config"]["mappers"][0]["body"]["inline_string"] == (
        RESIDENCY_REFUSAL
    )
    boot = bootstrap(XDS, Listen(admin_port=9999))
    assert boot["admin"]["address"]["socket_address"] == {
        "address": "127.0.0.1", "port_value": 9999
    }  # fmt: skip
    assert boot["dynamic_resources"]["lds_config"]["path_config_source"] == {
        "path": str(XDS / LDS_FILE),
        "watched_directory": {"path": str(XDS)},
    }


def test_same_input_same_files_and_the_writer_rewrites_only_changes(tmp_path: Path) -> None:
    fleet = spec()
    first = render(fleet, views(fleet), tmp_path, Listen())[1]
    assert first == render(fleet, views(fleet), tmp_path, Listen())[1]
    writer = XdsWriter(tmp_path)
    assert len(writer.write(first)) == len(first)
    assert writer.write(first) == []
    changed = views(fleet)
    changed[2] = replace(changed[2], reachable=False)
    written = writer.write(render(fleet, changed, tmp_path, Listen())[1])
    assert written and all(name.startswith("eds/") for name in written)
    assert not list(tmp_path.rglob(".*.tmp"))
