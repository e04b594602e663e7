"""Envoy clusters (CDS) and their endpoints (EDS) from the topology.

Endpoints live in per-cluster EDS files so that a node becoming ready,
unready or unreachable rewrites one small file and never re-creates a
cluster (which would reset its health and outlier state).
"""

from __future__ import annotations

from typing import Any

from modelport.gateway.fleet import FleetSpec
from modelport.gateway.fleet_tls import to_nodes
from modelport.gateway.topology import FLEET_CLUSTER, ClusterPlan, Topology
from modelport.gateway.views import NodeView, priority_of

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINTS_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

#: Keeps all traffic in the first priority (region) that has any healthy node:
#: Envoy spills to the next priority only when health% x factor / 100 < 100.
OVERPROVISIONING_FACTOR = 100000

LB_POLICIES = {
    "round_robin": "ROUND_ROBIN",
    "weighted": "ROUND_ROBIN",
    "least_request": "LEAST_REQUEST",
    "ring_hash": "RING_HASH",
    "random": "RANDOM",
}

#: Where Envoy finds the EDS files; bootstrap and writer agree on it.
EDS_FOLDER = "eds"


def eds_file_name(cluster: str) -> str:
    """A file name for a cluster name (cluster names may hold characters paths may not)."""
    safe = "".join(c if c.isalnum() or c in "-_.+~" else "_" for c in cluster)
    if safe != cluster:
        import hashlib

        safe += "-" + hashlib.sha256(cluster.encode()).hexdigest()[:8]
    return f"{safe}.json"


def _seconds(value: float) -> str:
    return f"{value:.3f}s"


def _any_address(plan: ClusterPlan) -> str:
    """The wildcard source address of the nodes' family (binding sets the socket option)."""
    hosts = [e.http[0] for e in plan.endpoints] + [e.grpc[0] for e in plan.endpoints if e.grpc]
    return "::" if any(":" in host for host in hosts) else "0.0.0.0"


def cluster_config(spec: FleetSpec, plan: ClusterPlan, xds_dir: str) -> dict[str, Any]:
    """One cluster: load balancing, health checks, outlier detection, retry budget."""
    health = spec.health
    cluster: dict[str, Any] = {
        "@type": CLUSTER_TYPE,
        "name": plan.name,
        "type": "EDS",
        "eds_cluster_config": {
            "eds_config": {
                "resource_api_version": "V3",
                "path_config_source": {
                    "path": f"{xds_dir}/{EDS_FOLDER}/{eds_file_name(plan.name)}",
                    "watched_directory": {"path": f"{xds_dir}/{EDS_FOLDER}"},
                },
            }
        },
        "connect_timeout": "1s",
        # A node whose link goes down answers nothing and sends no reset: without
        # these a request already written to it would wait forever. Unacknowledged
        # data gives up after 2 s (TCP_USER_TIMEOUT), an idle pooled connection after
        # three missed keepalives, and the request is then retried elsewhere.
        "upstream_connection_options": {
            "tcp_keepalive": {
                "keepalive_probes": 2,
                "keepalive_time": 1,
                "keepalive_interval": 1,
            }
        },
        "upstream_bind_config": {
            "source_address": {"address": _any_address(plan), "port_value": 0},
            "socket_options": [
                {
                    "description": "TCP_USER_TIMEOUT",
                    "level": 6,  # IPPROTO_TCP
                    "name": 18,  # TCP_USER_TIMEOUT
                    "int_value": 2000,
                    "state": "STATE_PREBIND",
                }
            ],
        },
        "lb_policy": LB_POLICIES[plan.policy],
        # Below 50% healthy Envoy would otherwise spread load over unhealthy
        # nodes too ("panic"); a dead node must never get traffic.
        # Health changes reach the load balancer at once, not batched for 1 s.
        "common_lb_config": {
            "healthy_panic_threshold": {"value": 0.0},
            "update_merge_window": "0s",
        },
        "health_checks": [
            {
                "timeout": _seconds(max(health.interval, 0.5)),
                "interval": _seconds(health.interval),
                # Idle clusters (most residency variants) check a down node as
                # often as busy ones, so it is back at once when it returns,
                # and a healthy one seldom: there are many clusters per node.
                "no_traffic_interval": _seconds(health.interval),
                "no_traffic_healthy_interval": _seconds(max(health.interval * 5, 5.0)),
                "unhealthy_threshold": health.unhealthy_threshold,
                "healthy_threshold": health.healthy_threshold,
                "reuse_connection": True,
                "http_health_check": {"path": "/v2/health/live", "codec_client_type": "HTTP1"},
            }
        ],
        "outlier_detection": {
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": 2,
            "consecutive_5xx": 5,
            "interval": "0.5s",
            "base_ejection_time": "3s",
            "max_ejection_time": "30s",
            "max_ejection_percent": 100,
        },
        "circuit_breakers": {
            "thresholds": [
                {
                    "priority": "DEFAULT",
                    "max_connections": 100000,
                    "max_pending_requests": 100000,
                    "max_requests": 100000,
                    "retry_budget": {
                        "budget_percent": {"value": spec.retries.budget_percent},
                        "min_retry_concurrency": spec.retries.min_concurrent,
                    },
                }
            ]
        },
        "ignore_health_on_host_removal": True,
    }
    if plan.policy == "least_request":
        cluster["least_request_lb_config"] = {"choice_count": 2}
    if plan.policy == "ring_hash":
        cluster["ring_hash_lb_config"] = {"minimum_ring_size": 1024}
    # Requests and health checks alike: the node sees only the gateway's certificate.
    tls = to_nodes(spec.tls, "h2" if plan.target.protocol == "grpc" else "http/1.1")
    if tls is not None:
        cluster["transport_socket"] = tls
    if plan.target.protocol == "grpc":
        cluster["typed_extension_protocol_options"] = {
            PROTOCOL_OPTIONS: {
                "@type": f"type.googleapis.com/{PROTOCOL_OPTIONS}",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def _endpoint(view: NodeView, protocol: str, describe: bool) -> dict[str, Any]:
    host, port = view.grpc if protocol == "grpc" and view.grpc else view.http
    endpoint: dict[str, Any] = {
        "address": {"socket_address": {"address": host, "port_value": port}},
        "hostname": view.name,
    }
    if protocol == "grpc":
        # Health is the node's, checked on its HTTP port whatever the traffic.
        endpoint["health_check_config"] = {"port_value": view.http[1]}
    lb: dict[str, Any] = {
        "endpoint": endpoint,
        "load_balancing_weight": view.weight,
        "health_status": "HEALTHY" if view.reachable else "UNHEALTHY",
    }
    if describe:
        # What `gateway status` shows of the node; Envoy only carries it.
        # of it only in the fleet-wide cluster, so readiness changes touch one file.
        lb["metadata"] = {
            "filter_metadata": {
                "modelport": {
                    "node": view.name,
                    "group": view.group,
                    "region": view.region or "",
                    "models": sorted(view.models),
                    "reachable": view.reachable,
                }
            }
        }
    return lb


def load_assignment(plan: ClusterPlan, topology: Topology) -> dict[str, Any]:
    """Endpoints grouped by region; priority = the region's rank among those allowed."""
    allowed_order = [r for r in topology.regions if plan.allowed is None or r in plan.allowed]
    present = {priority_of(v.region, allowed_order) for v in plan.endpoints}
    # Envoy wants priorities without gaps: renumber the levels actually present.
    rank = {level: i for i, level in enumerate(sorted(present))}
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for view in plan.endpoints:
        key = (rank[priority_of(view.region, allowed_order)], view.region or "")
        groups.setdefault(key, []).append(
            _endpoint(view, plan.target.protocol, plan.name == FLEET_CLUSTER)
        )
    localities = []
    for (priority, region), endpoints in sorted(groups.items()):
        locality: dict[str, Any] = {"lb_endpoints": endpoints, "priority": priority}
        if region:
            locality["locality"] = {"region": region}
        localities.append(locality)
    return {
        "@type": ENDPOINTS_TYPE,
        "cluster_name": plan.name,
        "endpoints": localities,
        "policy": {"overprovisioning_factor": OVERPROVISIONING_FACTOR},
    }
