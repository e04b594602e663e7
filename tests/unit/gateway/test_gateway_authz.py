"""The residency decision: what the gateway's check writes into ``x-data-residency``."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelport.gateway.authz import (
    NO_REGION,
    Caller,
    TenantLookup,
    allowed_regions,
    authz_enabled,
    decide,
)
from modelport.gateway.fleet import parse_fleet

REGIONS = ("ae-dxb", "ae-auh", "eu-west", "us-east")
TENANTS = {"acme": ["ae"], "globex": ["eu-west", "us"], "open": []}

ANON = TenantLookup(Caller.ANONYMOUS)
UNKNOWN = TenantLookup(Caller.UNKNOWN)
DOWN = TenantLookup(Caller.UNREACHABLE)


def key(tenant: str | None) -> TenantLookup:
    return TenantLookup(Caller.KEY, tenant)


def test_no_constraint_leaves_the_request_unrestricted() -> None:
    assert decide(REGIONS, TENANTS, None, ANON) is None
    assert decide(REGIONS, TENANTS, None, key(None)) is None
    # A tenant the fleet file does not name, or names with no residency, is not restricted.
    assert decide(REGIONS, TENANTS, None, key("initech")) is None
    assert decide(REGIONS, TENANTS, None, key("open")) is None


def test_tenant_residency_lists_the_regions_it_allows() -> None:
    assert decide(REGIONS, TENANTS, None, key("acme")) == "ae-dxb,ae-auh"
    assert decide(REGIONS, TENANTS, None, key("globex")) == "eu-west,us-east"


def test_the_client_header_only_narrows_the_tenant() -> None:
    assert decide(REGIONS, TENANTS, "ae-auh", key("acme")) == "ae-auh"
    assert decide(REGIONS, TENANTS, " ae-auh , eu-west", key("acme")) == "ae-auh"
    # Widening is impossible: the tenant forbids eu, so the client's eu allows nothing.
    assert decide(REGIONS, TENANTS, "eu", key("acme")) == NO_REGION


def test_the_client_header_alone_is_made_explicit() -> None:
    assert decide(REGIONS, TENANTS, "eu,ae-dxb", ANON) == "ae-dxb,eu-west"
    assert decide(REGIONS, TENANTS, "eu", key(None)) == "eu-west"


@pytest.mark.parametrize("value", ["", " , ", "ae-dxb-9", "xx", "ae-dx"])
def test_a_header_naming_no_region_allows_none(value: str) -> None:
    assert decide(REGIONS, TENANTS, value, ANON) == NO_REGION


@pytest.mark.parametrize("lookup", [UNKNOWN, DOWN])
def test_an_undeterminable_caller_stays_in_the_first_region(lookup: TenantLookup) -> None:
    assert decide(REGIONS, TENANTS, None, lookup) == "ae-dxb"
    assert decide(REGIONS, TENANTS, "ae", lookup) == "ae-dxb"
    assert decide(REGIONS, TENANTS, "eu", lookup) == NO_REGION


def test_allowed_regions_is_the_set_of_regions() -> None:
    assert allowed_regions(REGIONS, TENANTS, None, key("acme")) == {"ae-dxb", "ae-auh"}
    assert allowed_regions(REGIONS, TENANTS, "us", key("acme")) == frozenset()
    assert allowed_regions(REGIONS, TENANTS, None, ANON) is None


def test_no_region_matches_no_fleet_region() -> None:
    assert allowed_regions(REGIONS, {}, NO_REGION, ANON) == frozenset()


def test_the_check_runs_only_for_fleets_with_tenants_or_a_store() -> None:
    def fleet(**extra: object) -> bool:
        return authz_enabled(parse_fleet({"regions": ["ae-dxb"], **extra}, "f", Path("/")))

    assert not fleet()
    assert fleet(tenant_residency={"acme": ["ae"]})
    assert fleet(state_url="sqlite:////tmp/state.db")
