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
regions, so routing needs no knowledge of tenants or jurisdictions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from modelport.gateway.fleet import FleetSpec
from modelport.regions import region_allowed

#: A residency value no region matches: routes send it to the refusal (503).
NO_REGION = "(none)"

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
