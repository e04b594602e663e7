"""Envoy route tables (RDS): which cluster variant a request goes to, and its retries.

Route order is the policy: residency first (a request carrying
``X-Data-Residency`` only ever matches routes to clusters inside what it
allows), then sequence affinity, then asynchronous requests, then the rest.
"""

from __future__ import annotations

import re
from typing import Any

from modelport.gateway.authz import RESIDENCY_HEADER, UNCHECKED_HEADER, authz_enabled
from modelport.gateway.fleet import SEQUENCE_HEADER, FleetSpec
from modelport.gateway.topology import Target, Topology, region_subsets
from modelport.regions import jurisdiction_of

ROUTE_CONFIG_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
HEADER_MUTATION = "envoy.filters.http.header_mutation"
HEADER_MUTATION_ROUTE_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute"
)

MODEL_HEADER = "modelport-model"
RETRIABLE_HEADER = "modelport-retriable"
#: Set by restricted routes only, so the local reply for "no healthy node" can tell them apart.
RESTRICTED_MARK = "x-modelport-restricted-route"

#: Paths every node answers the same way: management, health, repository, metrics.
FLEET_PREFIXES = ("/api/v1/", "/v2/health/", "/v2/repository/")
FLEET_PATHS = ("/v2", "/metrics", "/api/v1")

FULL_RETRY = "connect-failure,reset,retriable-headers"
#: A sequence step or an accepted async job may have run already: retry only what never left.
CONNECT_ONLY = "connect-failure"


def _allows(region: str) -> str:
    """RE2 pattern: a comma-separated residency list holding ``region`` or its jurisdiction."""
    entries = "|".join(re.escape(e) for e in dict.fromkeys([region, jurisdiction_of(region)]))
    return rf"^(.*,)?\s*({entries})\s*(,.*)?$"


def _residency_headers(regions: tuple[str, ...], allowed: frozenset[str]) -> list[dict[str, Any]]:
    headers: list[dict[str, Any]] = [{"name": RESIDENCY_HEADER, "present_match": True}]
    for region in regions:
        headers.append(
            {
                "name": RESIDENCY_HEADER,
                "string_match": {"safe_regex": {"regex": _allows(region)}},
                "invert_match": region not in allowed,
            }
        )
    return headers


def _retry_policy(spec: FleetSpec, retry_on: str) -> dict[str, Any]:
    policy: dict[str, Any] = {
        "retry_on": retry_on,
        "num_retries": spec.retries.attempts,
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.retry.host."
                    "previous_hosts.v3.PreviousHostsPredicate"
                },
            }
        ],
        "host_selection_retry_max_attempts": 5,
        "retry_back_off": {"base_interval": "0.01s", "max_interval": "0.1s"},
    }
    if "retriable-headers" in retry_on:
        policy["retriable_headers"] = [
            {"name": RETRIABLE_HEADER, "string_match": {"exact": "true"}}
        ]
    return policy


def _action(
    spec: FleetSpec, cluster: str, target: Target, sequence: bool, retry_on: str
) -> dict[str, Any]:
    action: dict[str, Any] = {
        "cluster": cluster,
        # No fixed deadline: the caller's (grpc-timeout, modelport-timeout-ms) applies.
        "timeout": "0s",
        "retry_policy": _retry_policy(spec, retry_on),
    }
    if target.protocol == "grpc":
        action["max_stream_duration"] = {"grpc_timeout_header_max": "0s"}
    hash_header = SEQUENCE_HEADER if sequence else target.hash_header
    if sequence or target.policy == "ring_hash":
        action["hash_policy"] = [{"header": {"header_name": hash_header}}]
    return action


def _route(
    match: dict[str, Any], action: dict[str, Any], restricted: bool, name: str
) -> dict[str, Any]:
    route: dict[str, Any] = {"name": name, "match": match, "route": action}
    if restricted:
        route["typed_per_filter_config"] = {
            HEADER_MUTATION: {
                "@type": HEADER_MUTATION_ROUTE_TYPE,
                "mutations": {
                    "request_mutations": [
                        {
                            "append": {
                                "header": {"key": RESTRICTED_MARK, "value": "1"},
                                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                            }
                        }
                    ]
                },
            }
        }
    return route


def _with_headers(match: dict[str, Any], headers: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(match)
    out["headers"] = [*match.get("headers", []), *headers]
    return out


def _variant_routes(
    spec: FleetSpec,
    topology: Topology,
    match: dict[str, Any],
    target: Target,
    allowed: frozenset[str] | None,
    label: str,
) -> list[dict[str, Any]]:
    restricted = allowed is not None or target.residency is not None
    seq_cluster = topology.variant(target, allowed, sequence=True)
    cluster = topology.variant(target, allowed, sequence=False)
    sequence_match = _with_headers(match, [{"name": SEQUENCE_HEADER, "present_match": True}])
    async_match = _with_headers(
        match,
        [{"name": "prefer", "string_match": {"contains": "respond-async", "ignore_case": True}}],
    )
    return [
        _route(
            sequence_match,
            _action(spec, seq_cluster, target, True, CONNECT_ONLY),
            restricted,
            f"{label}:sequence",
        ),
        _route(
            async_match,
            _action(spec, cluster, target, False, CONNECT_ONLY),
            restricted,
            f"{label}:async",
        ),
        _route(match, _action(spec, cluster, target, False, FULL_RETRY), restricted, label),
    ]


def _unchecked_routes(
    spec: FleetSpec, topology: Topology, match: dict[str, Any], target: Target, label: str
) -> list[dict[str, Any]]:
    """Requests the residency check did not answer for: the first region, if the client allows."""
    first = frozenset({spec.primary_region}) & frozenset(topology.regions)
    unchecked: dict[str, Any] = {"name": UNCHECKED_HEADER, "present_match": True}
    no_header: dict[str, Any] = {
        "name": RESIDENCY_HEADER,
        "present_match": True,
        "invert_match": True,
    }
    allows_first: dict[str, Any] = {
        "name": RESIDENCY_HEADER,
        "string_match": {"safe_regex": {"regex": _allows(spec.primary_region)}},
    }
    cases: list[tuple[list[dict[str, Any]], frozenset[str]]] = [
        ([unchecked, no_header], first),
        ([unchecked, allows_first], first),
        ([unchecked], frozenset()),
    ]
    routes: list[dict[str, Any]] = []
    for index, (headers, allowed) in enumerate(cases):
        in_label = f"{label}:unchecked{index}"
        routes += _variant_routes(
            spec, topology, _with_headers(match, headers), target, allowed, in_label
        )
    return routes


def target_routes(
    spec: FleetSpec, topology: Topology, match: dict[str, Any], target: Target
) -> list[dict[str, Any]]:
    """Every route of one target: each residency the header can express, then none."""
    label = f"{target.kind}:{target.name}"
    routes: list[dict[str, Any]] = []
    if authz_enabled(spec):
        routes += _unchecked_routes(spec, topology, match, target, label)
    for allowed in [*region_subsets(topology.regions), frozenset()]:
        headers = _residency_headers(topology.regions, allowed)
        in_label = f"{label}:in:{'+'.join(sorted(allowed)) or 'none'}"
        routes += _variant_routes(
            spec, topology, _with_headers(match, headers), target, allowed, in_label
        )
    routes += _variant_routes(spec, topology, match, target, None, label)
    return routes


def model_path_regex(model: str) -> str:
    return rf"^/v2/models/{re.escape(model)}(/.*)?$"


def _targets(topology: Topology, kind: str, protocol: str) -> list[Target]:
    return [t for t in topology.targets if t.kind == kind and t.protocol == protocol]


def http_routes(spec: FleetSpec, topology: Topology) -> dict[str, Any]:
    routes: list[dict[str, Any]] = []
    for target in _targets(topology, "model", "http"):
        match = {"safe_regex": {"regex": model_path_regex(target.name)}}
        routes += target_routes(spec, topology, match, target)
    fleet = _targets(topology, "fleet", "http")[0]
    for prefix in FLEET_PREFIXES:
        routes += target_routes(spec, topology, {"prefix": prefix}, fleet)
    for path in FLEET_PATHS:
        routes += target_routes(spec, topology, {"path": path}, fleet)
    main = next(t for t in _targets(topology, "group", "http") if t.name == spec.main_group)
    routes += target_routes(spec, topology, {"prefix": "/"}, main)
    return _route_config("http", routes)


def grpc_routes(spec: FleetSpec, topology: Topology) -> dict[str, Any]:
    routes: list[dict[str, Any]] = []
    for target in _targets(topology, "model", "grpc"):
        match = {
            "prefix": "/",
            "headers": [{"name": MODEL_HEADER, "string_match": {"exact": target.name}}],
        }
        routes += target_routes(spec, topology, match, target)
    main = next(t for t in _targets(topology, "group", "grpc") if t.name == spec.main_group)
    routes += target_routes(spec, topology, {"prefix": "/"}, main)
    return _route_config("grpc", routes)


def _route_config(name: str, routes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "@type": ROUTE_CONFIG_TYPE,
        "name": name,
        "virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}],
    }
