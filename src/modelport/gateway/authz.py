"""Where a request's data may go: the client's residency joined with its tenant's.

The gateway never decides whether a request is allowed (the node does, with
the same credentials); it only narrows where the request may be sent. Every
constraint can only narrow: the client's ``X-Data-Residency``, then the
caller's tenant residency from the fleet file. A caller whose tenant cannot
be established (a token no key matches, a JWT the gateway cannot verify, a
store that does not answer) might belong to a restricted tenant, so its data
stays in the first region: the only place every residency the fleet file
names is assumed to accept.

The decision travels to Envoy's routes as an explicit list of allowed
regions, so routing needs no knowledge of tenants or jurisdictions. The
Envoy pieces that ask for it (the filters and the service's cluster) are
here too, beside the headers they agree on with the service.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from modelport.gateway.fleet import FleetSpec
from modelport.gateway.views import NodeView
from modelport.regions import region_allowed

#: A residency value no region matches: routes send it to the refusal (503).
NO_REGION = "(none)"

#: The header the decision travels in (the one routes match on).
RESIDENCY_HEADER = "x-data-residency"

#: The cluster of the gateway's own check service.
AUTHZ_CLUSTER = "modelport~authz"

#: Seconds Envoy waits for the check before treating it as failed.
AUTHZ_TIMEOUT = "0.5s"

#: Set on every request before the authorization check and removed by a
#: successful one: a request still carrying it was not checked, and its routes
#: keep it in the first region.
UNCHECKED_HEADER = "x-modelport-residency-unchecked"


class Caller(Enum):
    """What the store said of the caller's credentials."""

    ANONYMOUS = "anonymous"
    """No bearer token: no tenant to restrict by (the node decides if that is allowed)."""
    KEY = "key"
    """A valid API key; its tenant (or none) is known."""
    UNKNOWN = "unknown"
    """A token that no live key matches, or one the gateway cannot verify."""
    UNREACHABLE = "unreachable"
    """The store did not answer."""


@dataclass(frozen=True)
class TenantLookup:
    """The caller as far as the gateway can tell; ``tenant`` only with ``Caller.KEY``."""

    caller: Caller
    tenant: str | None = None


def authz_enabled(spec: FleetSpec) -> bool:
    """Whether requests go through the check: only a fleet with tenants or keys needs it."""
    return bool(spec.tenant_residency) or spec.state_url is not None


def client_entries(value: str) -> tuple[str, ...]:
    """The entries of an ``X-Data-Residency`` value, as the routes read them."""
    return tuple(entry.strip() for entry in value.split(",") if entry.strip())


def allowed_regions(
    regions: Sequence[str],
    tenant_residency: Mapping[str, Sequence[str]],
    client_value: str | None,
    lookup: TenantLookup,
) -> frozenset[str] | None:
    """Regions satisfying every constraint; None when nothing constrains the request.

    ``regions[0]`` is the first region, where undeterminable callers stay.
    """
    allowed: set[str] | None = None

    def narrow(here: set[str]) -> None:
        nonlocal allowed
        allowed = here if allowed is None else allowed & here

    if client_value is not None:
        entries = client_entries(client_value)
        # A header naming nothing allows nothing: routing reads it the same way.
        narrow({r for r in regions if entries and region_allowed(r, entries)})
    if lookup.caller in (Caller.UNKNOWN, Caller.UNREACHABLE):
        narrow(set(regions[:1]))
    elif lookup.caller is Caller.KEY and lookup.tenant is not None:
        residency = tenant_residency.get(lookup.tenant)
        if residency:
            narrow({r for r in regions if region_allowed(r, residency)})
    return None if allowed is None else frozenset(allowed)


def residency_value(regions: Sequence[str], allowed: frozenset[str] | None) -> str | None:
    """The ``x-data-residency`` value routing must see; None: leave the request unrestricted."""
    if allowed is None:
        return None
    listed = [r for r in regions if r in allowed]
    return ",".join(listed) if listed else NO_REGION


def decide(
    regions: Sequence[str],
    tenant_residency: Mapping[str, Sequence[str]],
    client_value: str | None,
    lookup: TenantLookup,
) -> str | None:
    """The header value for this request (None: no constraint, leave it unset)."""
    allowed = allowed_regions(regions, tenant_residency, client_value, lookup)
    return residency_value(regions, allowed)


def fleet_regions(spec: FleetSpec, views: Sequence[NodeView]) -> list[str]:
    """Every region a node may be in now: the fleet file's in order, then registered ones."""
    extra = {v.region for v in views if v.region is not None} - set(spec.regions)
    return [*spec.regions, *sorted(extra)]


def unchecked_mark() -> list[dict[str, Any]]:
    """Marks every request unchecked before any route is chosen (and so before the check).

    Early: a route chosen before the mark would be kept when the check fails,
    since only a successful check makes Envoy choose the route again.
    """
    return [
        {
            "name": "modelport.residency_unchecked",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.http.early_header_mutation."
                "header_mutation.v3.HeaderMutation",
                "mutations": [
                    {
                        "append": {
                            "header": {"key": UNCHECKED_HEADER, "value": "1"},
                            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                        }
                    }
                ],
            },
        }
    ]


def authz_filters(socket_path: str | None) -> list[dict[str, Any]]:
    """The HTTP filter that asks the check; none without a check service."""
    if socket_path is None:
        return []
    check = {
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            # A check that fails lets the request on still marked unchecked; its
            # routes keep it in the first region. The node still authenticates it.
            "failure_mode_allow": True,
            # The route is chosen again once the check changed the headers.
            "clear_route_cache": True,
            "allowed_headers": {
                "patterns": [{"exact": "authorization"}, {"exact": RESIDENCY_HEADER}]
            },
            "http_service": {
                "server_uri": {
                    # Only the Host header: the cluster's address is the socket.
                    "uri": "http://modelport-authz",
                    "cluster": AUTHZ_CLUSTER,
                    "timeout": AUTHZ_TIMEOUT,
                },
                "path_prefix": "/check",
                "authorization_response": {
                    "allowed_upstream_headers": {"patterns": [{"exact": RESIDENCY_HEADER}]}
                },
            },
        },
    }
    return [check]


def authz_cluster(socket_path: str) -> dict[str, Any]:
    """The check service: this process, on its private Unix socket."""
    return {
        "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": AUTHZ_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "0.25s",
        "load_assignment": {
            "cluster_name": AUTHZ_CLUSTER,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": socket_path}}}}]}
            ],
        },
    }
