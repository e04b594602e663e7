"""What the running gateway's Envoy reports: node health, membership, residency refusals.

Everything comes from Envoy's admin port, so ``modelport gateway status``
needs nothing but that port and shows what Envoy actually routes by, not
what the gateway meant to tell it. Node facts (group, models, region) travel
as endpoint metadata in the fleet-wide cluster's EDS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from modelport.gateway.topology import FLEET_CLUSTER, is_restricted_cluster


@dataclass
class NodeStatus:
    name: str
    address: str
    region: str
    group: str
    weight: int
    models: list[str]
    health: str = "unknown"


@dataclass
class GatewayStatus:
    nodes: list[NodeStatus] = field(default_factory=list)
    refusals: int = 0

    @property
    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for node in self.nodes:
            out.setdefault(node.group, []).append(node.name)
        return out


def residency_refusals(stats: Any) -> int:
    """Requests refused for residency: no healthy node in the restricted clusters."""
    total = 0
    for stat in stats.get("stats", []) if isinstance(stats, dict) else []:
        name = str(stat.get("name", ""))
        if not name.endswith(".upstream_cx_none_healthy") or not name.startswith("cluster."):
            continue
        cluster = name.removeprefix("cluster.").removesuffix(".upstream_cx_none_healthy")
        if is_restricted_cluster(cluster):
            total += int(stat.get("value", 0))
    return total


def _health(host: dict[str, Any]) -> str:
    flags = host.get("health_status", {})
    if flags.get("failed_active_health_check"):
        return "unhealthy (health check)"
    if flags.get("failed_outlier_check"):
        return "ejected (errors)"
    if flags.get("pending_active_hc"):
        return "new (first health check)"
    eds = flags.get("eds_health_status", "HEALTHY")
    if eds == "UNHEALTHY":
        return "unreachable (gateway poll)"
    return "healthy" if eds == "HEALTHY" else eds.lower()


def _nodes_from_config(dump: dict[str, Any]) -> list[NodeStatus]:
    nodes: list[NodeStatus] = []
    entries: list[dict[str, Any]] = []
    for config in dump.get("configs", []):
        # With ?resource= each config is one entry; without, a dump holding a list.
        entries += config.get("dynamic_endpoint_configs", [config])
    for entry in entries:
        assignment = entry.get("endpoint_config", {})
        if assignment.get("cluster_name") != FLEET_CLUSTER:
            continue
        for locality in assignment.get("endpoints", []):
            for lb in locality.get("lb_endpoints", []):
                meta = lb.get("metadata", {}).get("filter_metadata", {}).get("modelport", {})
                socket = lb.get("endpoint", {}).get("address", {}).get("socket_address", {})
                nodes.append(
                    NodeStatus(
                        name=str(meta.get("node", "?")),
                        address=f"{socket.get('address')}:{socket.get('port_value')}",
                        region=str(meta.get("region", "")),
                        group=str(meta.get("group", "")),
                        weight=int(lb.get("load_balancing_weight", 1)),
                        models=[str(m) for m in meta.get("models", [])],
                    )
                )
    return nodes


def read_status(admin_port: int, timeout: float = 3.0) -> GatewayStatus:
    """Ask Envoy's admin port; raises httpx.HTTPError when it does not answer."""
    base = f"http://127.0.0.1:{admin_port}"
    with httpx.Client(timeout=timeout) as client:
        dump = client.get(
            f"{base}/config_dump",
            params={"resource": "dynamic_endpoint_configs", "include_eds": ""},
        )
        dump.raise_for_status()
        clusters = client.get(f"{base}/clusters", params={"format": "json"})
        clusters.raise_for_status()
        stats = client.get(
            f"{base}/stats", params={"format": "json", "filter": "upstream_cx_none_healthy"}
        )
        stats.raise_for_status()
    status = GatewayStatus(_nodes_from_config(dump.json()), residency_refusals(stats.json()))
    health: dict[str, str] = {}
    for cluster in clusters.json().get("cluster_statuses", []):
        if cluster.get("name") != FLEET_CLUSTER:
            continue
        for host in cluster.get("host_statuses", []):
            socket = host.get("address", {}).get("socket_address", {})
            health[f"{socket.get('address')}:{socket.get('port_value')}"] = _health(host)
    for node in status.nodes:
        node.health = health.get(node.address, "unknown")
    return status


def format_status(status: GatewayStatus) -> str:
    lines = []
    for group, names in sorted(status.groups.items()):
        lines.append(f"group {group}: {', '.join(sorted(names))}")
    lines.append("")
    lines.append(
        f"{'NODE':<16} {'ADDRESS':<22} {'REGION':<12} {'GROUP':<10} {'WEIGHT':>6}  "
        f"{'HEALTH':<26} READY MODELS"
    )
    for node in sorted(status.nodes, key=lambda n: n.name):
        lines.append(
            f"{node.name:<16} {node.address:<22} {node.region or '-':<12} {node.group:<10} "
            f"{node.weight:>6}  {node.health:<26} {', '.join(node.models) or '-'}"
        )
    lines.append("")
    lines.append(f"residency refusals: {status.refusals}")
    return "\n".join(lines)
