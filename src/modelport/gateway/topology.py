"""Which Envoy clusters exist and which nodes each holds.

Clusters are per model (and per group, and one for the whole fleet), so a
node that breaks one model is ejected only from that model's cluster. Each
has variants: a ring-hash one for sequences, and one per set of regions a
residency allows (endpoints outside it removed, priorities renumbered), so a
restricted request can never be sent outside its regions however many nodes
fail: the variant simply has no other node to fail over to.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from modelport.gateway.fleet import FleetSpec
from modelport.gateway.views import NodeView, region_order
from modelport.regions import region_allowed

Protocol = Literal["http", "grpc"]
Kind = Literal["model", "group", "fleet"]

#: The clusters with no endpoint at all: where a residency no node satisfies is sent.
NONE_CLUSTER = "none"

#: Every node over HTTP: management paths, and where status reads node facts from.
FLEET_CLUSTER = "fleet~all~http"


@dataclass(frozen=True)
class Target:
    """A family of clusters: one model's, one group's or the fleet's, over one protocol."""

    kind: Kind
    name: str
    protocol: Protocol
    policy: str
    hash_header: str
    members: tuple[NodeView, ...]
    #: Regions the model's own residency allows (None: no residency of its own).
    residency: frozenset[str] | None = None


@dataclass(frozen=True)
class ClusterPlan:
    name: str
    target: Target
    allowed: frozenset[str] | None
    sequence: bool
    endpoints: tuple[NodeView, ...]

    @property
    def restricted(self) -> bool:
        return self.allowed is not None

    @property
    def policy(self) -> str:
        return "ring_hash" if self.sequence else self.target.policy


@dataclass(frozen=True)
class Topology:
    """The clusters for one (spec, views) input, and how routes pick among them."""

    regions: tuple[str, ...]
    targets: tuple[Target, ...]
    clusters: dict[str, ClusterPlan]

    def variant(self, target: Target, allowed: frozenset[str] | None, sequence: bool) -> str:
        """The cluster a request for ``target`` goes to, given what residency allows."""
        if target.residency is not None:
            allowed = target.residency if allowed is None else allowed & target.residency
        if allowed is not None and not allowed:
            return f"{NONE_CLUSTER}~{target.protocol}"
        name = cluster_name(target, allowed, sequence)
        return name


def cluster_name(target: Target, allowed: frozenset[str] | None, sequence: bool) -> str:
    name = f"{target.kind}~{target.name}~{target.protocol}"
    if sequence:
        name += "~seq"
    if allowed is not None:
        name += "~in~" + "+".join(sorted(allowed))
    return name


def is_restricted_cluster(name: str) -> bool:
    """Whether a cluster's refusals are residency refusals (the count ``status`` shows)."""
    return name.startswith(f"{NONE_CLUSTER}~") or "~in~" in name


def _serving(views: Iterable[NodeView], protocol: Protocol) -> tuple[NodeView, ...]:
    return tuple(v for v in views if not v.draining and (protocol == "http" or v.grpc is not None))


def model_residency(model: str, views: list[NodeView], regions: list[str]) -> frozenset[str] | None:
    """Regions a model may run in, from its registrations (all of them must allow it)."""
    allowed: frozenset[str] | None = None
    for view in views:
        residency = view.models.get(model)
        if residency:
            here = frozenset(r for r in regions if region_allowed(r, residency))
            allowed = here if allowed is None else allowed & here
    return allowed


def known_models(spec: FleetSpec, views: list[NodeView]) -> list[str]:
    names = {m for group in spec.groups.values() for m in group.models}
    names.update(m for v in views for m in v.models)
    return sorted(names)


def _targets(spec: FleetSpec, views: list[NodeView], regions: list[str]) -> list[Target]:
    targets: list[Target] = []
    for protocol in ("http", "grpc"):
        proto: Protocol = "http" if protocol == "http" else "grpc"
        serving = _serving(views, proto)
        for model in known_models(spec, views):
            group_name = spec.group_of_model(model)
            group = spec.groups[group_name]
            ready = tuple(v for v in serving if model in v.models)
            members = ready or tuple(v for v in serving if v.group == group_name)
            targets.append(
                Target(
                    "model",
                    model,
                    proto,
                    group.policy,
                    group.hash_header,
                    members,
                    model_residency(model, views, regions),
                )
            )
        for group_name, group in spec.groups.items():
            members = tuple(v for v in serving if v.group == group_name)
            targets.append(
                Target("group", group_name, proto, group.policy, group.hash_header, members)
            )
    targets.append(Target("fleet", "all", "http", "round_robin", "", _serving(views, "http")))
    return targets


def build_topology(spec: FleetSpec, views: list[NodeView]) -> Topology:
    regions = region_order(spec, views)
    targets = _targets(spec, views, regions)
    topology = Topology(tuple(regions), tuple(targets), {})
    clusters: dict[str, ClusterPlan] = {}
    for protocol in ("http", "grpc"):
        name = f"{NONE_CLUSTER}~{protocol}"
        none_target = Target(
            "fleet", NONE_CLUSTER, "http" if protocol == "http" else "grpc", "round_robin", "", ()
        )
        clusters[name] = ClusterPlan(name, none_target, frozenset(), False, ())
    for target in targets:
        for allowed in [None, *region_subsets(regions)]:
            for sequence in (False, True):
                name = topology.variant(target, allowed, sequence)
                if name in clusters:
                    continue
                effective = _effective(target, allowed)
                members = target.members
                if effective is not None:
                    members = tuple(v for v in members if v.region in effective)
                clusters[name] = ClusterPlan(name, target, effective, sequence, members)
    topology.clusters.update(clusters)
    return topology


def _effective(target: Target, allowed: frozenset[str] | None) -> frozenset[str] | None:
    if target.residency is None:
        return allowed
    return target.residency if allowed is None else allowed & target.residency


def region_subsets(regions: list[str] | tuple[str, ...]) -> list[frozenset[str]]:
    """Every non-empty set of regions a residency header can allow, largest first."""
    subsets: list[frozenset[str]] = []
    count = len(regions)
    for mask in range(1, 1 << count):
        subsets.append(frozenset(r for i, r in enumerate(regions) if mask >> i & 1))
    return sorted(subsets, key=lambda s: (-len(s), sorted(s)))
