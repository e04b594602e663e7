"""Authorization as a table: role, model patterns and tenant → allow or deny."""

from __future__ import annotations

import pytest

from modelport.dataplane.admission.authorize import allows, denial
from modelport.dataplane.admission.identity import parse_role
from modelport.types import Identity, Role

TENANTS = {"fraud-1": "acme", "fraud-2": "globex", "churn": None}


def tenant_of(name: str) -> str | None:
    return TENANTS.get(name)


def ident(role: Role, models: tuple[str, ...] = ("*",), tenant: str | None = None) -> Identity:
    return Identity("key:x", "x", role, models, tenant)


@pytest.mark.parametrize(
    ("identity", "need", "model", "allowed"),
    [
        (ident(Role.VIEWER), Role.VIEWER, "churn", True),
        (ident(Role.VIEWER), Role.INVOKER, "churn", False),
        (ident(Role.INVOKER), Role.INVOKER, "churn", True),
        (ident(Role.INVOKER), Role.OPERATOR, "churn", False),
        (ident(Role.OPERATOR), Role.INVOKER, "churn", True),
        (ident(Role.OPERATOR), Role.ADMIN, None, False),
        (ident(Role.ADMIN), Role.ADMIN, None, True),
        (ident(Role.NONE), Role.VIEWER, None, False),
        (ident(Role.INVOKER, ("fraud-*",)), Role.INVOKER, "fraud-1", True),
        (ident(Role.INVOKER, ("fraud-*",)), Role.INVOKER, "churn", False),
        (ident(Role.INVOKER, ("fraud-*",)), Role.INVOKER, "Fraud-1", False),
        (ident(Role.INVOKER, ("fraud-*",)), Role.INVOKER, "..", False),
        (ident(Role.INVOKER, ()), Role.INVOKER, "fraud-1", False),
        (ident(Role.INVOKER, ("fraud-*",), "acme"), Role.INVOKER, "fraud-1", True),
        (ident(Role.INVOKER, ("fraud-*",), "acme"), Role.INVOKER, "fraud-2", False),
        (ident(Role.INVOKER, ("*",), "acme"), Role.INVOKER, "churn", False),
        (ident(Role.INVOKER, ("*",), "acme"), Role.INVOKER, "no-such-model", False),
        (ident(Role.INVOKER, ("fraud-*",)), Role.VIEWER, None, True),
    ],
)
def test_allows(identity: Identity, need: Role, model: str | None, allowed: bool) -> None:
    assert allows(identity, need, model, tenant_of) is allowed


def test_denial_names_only_what_was_sent() -> None:
    # The same words for a model that exists and one that does not.
    assert denial(Role.INVOKER, "fraud-2").message == denial(Role.INVOKER, "fraud-2").message
    assert "fraud-2" in denial(Role.INVOKER, "fraud-2").message
    assert "exist" not in denial(Role.INVOKER, "nope").message


def test_parse_role() -> None:
    assert parse_role(" Operator ") is Role.OPERATOR
    with pytest.raises(ValueError, match="viewer, invoker, operator, admin"):
        parse_role("none")
