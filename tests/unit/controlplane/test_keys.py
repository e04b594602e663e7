"""API keys over the state store: create, hash not the key, verify, expire, revoke."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from modelport.controlplane.keys import KeyService, parse_expiry
from modelport.errors import InvalidRequest, Unauthenticated
from modelport.types import Role
from tests.unit.controlplane.stores import Stores


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_create_verify_and_store_only_a_hash(store: Stores) -> None:
    service = KeyService(store.keys)
    key, token = service.create(
        role="invoker", models=["fraud-*"], actor="cli:test", tenant="acme", rate=5, burst=10
    )
    assert token.startswith(f"mpk_{key.id}_")
    secret = token.split("_", 2)[2]
    stored = store.keys.get(key.id)
    assert stored is not None
    assert secret not in (stored.secret_hash, stored.salt)
    assert token not in repr(store.keys.list_all())
    identity = service.verify(token)
    assert (identity.id, identity.role, identity.models, identity.tenant) == (
        f"key:{key.id}",
        Role.INVOKER,
        ("fraud-*",),
        "acme",
    )
    assert (identity.rate, identity.burst) == (5, 10)
    # Creation is audited without the secret.
    (event,) = [e for e in store.audit.history() if e.action == "key.create"]
    assert event.actor == "cli:test" and event.detail["id"] == key.id
    assert secret not in str(event.detail)


def test_equal_roles_get_different_salts(store: Stores) -> None:
    service = KeyService(store.keys)
    a, _ = service.create(role="viewer", models=["*"], actor="t")
    b, _ = service.create(role="viewer", models=["*"], actor="t")
    assert a.salt != b.salt and a.id != b.id


@pytest.mark.parametrize(
    "token",
    [
        "mpk_",
        "mpk_zzzzzzzzzzzz_" + "a" * 43,
        "mpk_0123456789ab_short",
        "mpk_0123456789ab_" + "a" * 43 + "\n",
        "mpk_0123456789ab_" + "a" * 43,  # well formed, unknown id
    ],
)
def test_malformed_and_unknown_tokens(store: Stores, token: str) -> None:
    with pytest.raises(Unauthenticated):
        KeyService(store.keys).verify(token)


def test_a_real_key_with_anything_after_it_is_refused(store: Stores) -> None:
    service = KeyService(store.keys)
    _, token = service.create(role="admin", models=["*"], actor="t")
    assert service.verify(token).role is Role.ADMIN
    for suffix in ("\n", " ", "\r\n", "x"):
        with pytest.raises(Unauthenticated, match="malformed API key"):
            service.verify(token + suffix)


def test_wrong_secret_with_the_right_id(store: Stores) -> None:
    service = KeyService(store.keys)
    key, token = service.create(role="admin", models=["*"], actor="t")
    forged = f"mpk_{key.id}_" + ("A" * 43 if not token.endswith("A" * 43) else "B" * 43)
    with pytest.raises(Unauthenticated, match="invalid API key"):
        service.verify(forged)


def test_revoke(store: Stores) -> None:
    service = KeyService(store.keys)
    key, token = service.create(role="viewer", models=["*"], actor="t")
    assert service.revoke(key.id, actor="cli:ops", reason="leaked")
    assert not service.revoke(key.id, actor="cli:ops")
    with pytest.raises(Unauthenticated):
        service.verify(token)
    assert any(e.action == "key.revoke" and e.reason == "leaked" for e in store.audit.history())
    assert store.keys.count_active() == 0


def test_expiry(url: str) -> None:
    clock = Clock()
    with Stores.open(url, clock=clock) as store:
        service = KeyService(store.keys, clock)
        _, token = service.create(role="viewer", models=["*"], actor="t", expires="1d")
        assert service.verify(token).expires_at is not None
        assert store.keys.count_active() == 1
        clock.now += timedelta(days=1, seconds=1)
        with pytest.raises(Unauthenticated, match="expired"):
            service.verify(token)
        assert store.keys.count_active() == 0


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ({"role": "root", "models": ["*"]}, "--role"),
        ({"role": "viewer", "models": []}, "--models"),
        ({"role": "viewer", "models": ["*"], "rate": 1.0}, "--rate and --burst"),
        ({"role": "viewer", "models": ["*"], "rate": -1.0, "burst": 2}, "--rate/--burst"),
        ({"role": "viewer", "models": ["*"], "expires": "yesterday"}, "--expires"),
        ({"role": "viewer", "models": ["*"], "expires": "2001-01-01"}, "in the past"),
    ],
)
def test_bad_create_arguments(store: Stores, args: dict[str, object], problem: str) -> None:
    with pytest.raises(InvalidRequest, match=problem):
        KeyService(store.keys).create(actor="t", **args)  # type: ignore[arg-type]


def test_parse_expiry() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_expiry("30d", now) == now + timedelta(days=30)
    assert parse_expiry("2027-01-01", now) == datetime(2027, 1, 1, tzinfo=UTC)
