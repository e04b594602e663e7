"""What the gateway currently knows of each node: the input of every config function.

A view joins what the fleet file says (address, region, group, weight) with
what was last observed (reachable, which models are ready where), so that
the Envoy configuration is a pure function of (fleet spec, views) and two
equal inputs always give byte-equal files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from modelport.gateway.fleet import FleetSpec, NodeSpec, parse_address


@dataclass(frozen=True)
class NodeView:
    """One node as routing sees it."""

    name: str
    http: tuple[str, int]
    grpc: tuple[str, int] | None
    region: str | None
    group: str
    weight: int = 1
    #: Ready model name -> the model's residency (empty: anywhere).
    models: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: False when the last readiness poll could not reach it (Envoy is told it is down).
    reachable: bool = True
    draining: bool = False


def view_of_spec(spec: FleetSpec, node: NodeSpec) -> NodeView:
    """A fleet-file node before its first poll: reachable, nothing known ready."""
    return NodeView(
        name=node.name,
        http=parse_address(node.http),
        grpc=parse_address(node.grpc) if node.grpc else None,
        region=node.region,
        group=spec.group_of_node(node),
        weight=node.weight,
    )


def region_order(spec: FleetSpec, views: list[NodeView]) -> list[str]:
    """Regions that hold nodes, in priority order (the fleet file's, then others by name)."""
    present = {v.region for v in views if v.region is not None}
    listed = [r for r in spec.regions if r in present]
    return listed + sorted(present - set(listed))


def priority_of(region: str | None, order: list[str]) -> int:
    """A node's priority level: its region's index; nodes of no region come last."""
    if region is None or region not in order:
        return len(order)
    return order.index(region)
