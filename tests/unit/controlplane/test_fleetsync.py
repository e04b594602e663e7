"""The fleet's change channel: what a payload may say, and who applies it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from modelport.controlplane.fleetsync import FleetSync, decode, encode, is_postgres, libpq_url
from modelport.controlplane.store import Database
from modelport.errors import InvalidRequest


def test_a_payload_round_trips() -> None:
    assert decode(encode("traffic", "fraud", "host:1")) == ("traffic", "fraud", "host:1")


@pytest.mark.parametrize(
    "payload",
    [
        "not json",
        "[1, 2]",
        '{"op": "repository.load", "model": "m", "origin": "o"}',
        '{"op": "traffic", "model": "", "origin": "o"}',
        '{"op": "traffic", "model": "m"}',
        '{"op": "canary", "model": 7, "origin": "o"}',
    ],
)
def test_anything_else_is_refused(payload: str) -> None:
    with pytest.raises(InvalidRequest):
        decode(payload)


def test_only_postgresql_stores_carry_the_channel() -> None:
    assert is_postgres("postgresql://u@db/x")
    assert is_postgres("postgresql+psycopg://u@db/x")
    assert not is_postgres("sqlite:////tmp/state.db")
    assert not is_postgres(None)
    assert libpq_url("postgresql+psycopg://u:pw@db:5433/x") == "postgresql://u:pw@db:5433/x"


def test_a_node_applies_what_others_sent_and_skips_its_own(tmp_path: Path) -> None:
    applied: list[tuple[str, str]] = []

    async def apply(op: str, model: str) -> None:
        applied.append((op, model))

    async def resync() -> None:
        return None

    async def scenario() -> None:
        with Database.open(Database.sqlite_url(tmp_path / "d")) as database:
            sync = FleetSync(database, "postgresql://u@db/x", "me", apply, resync)
            await sync._heard(encode("traffic", "a", "me"))
            await sync._heard(encode("canary", "b", "other"))
            await sync._heard("garbage")

    asyncio.run(scenario())
    assert applied == [("canary", "b")]


def test_a_change_announced_here_is_told_locally_first(tmp_path: Path) -> None:
    told: list[str] = []
    notified: list[tuple[str, str]] = []

    async def local(op: str, body: dict[str, object]) -> None:
        told.append(op)

    async def scenario() -> None:
        with Database.open(Database.sqlite_url(tmp_path / "d")) as database:
            sync = FleetSync(database, "postgresql://u@db/x", "me", local, local)  # type: ignore[arg-type]

            async def notify(op: str, model: str) -> None:
                notified.append((op, model))

            sync.notify = notify  # type: ignore[method-assign]
            both = sync.announce(local)
            await both("traffic", {"model": "m"})
            await both("repository.load", {"model": "m"})

    asyncio.run(scenario())
    assert told == ["traffic", "repository.load"]
    assert notified == [("traffic", "m")]
