"""Fleet nodes: each node's registration, written by the node, read by the gateway.

A node started with ``--advertise`` upserts its record every heartbeat and
removes it when it stops; the gateway reads the live ones. Records are
checked on the way in (a bad one is refused with InvalidRequest) and again
on the way out: the table is shared by every node and release of the
fleet, so a row this code cannot trust (a garbage URL, an unknown region) is
skipped with a log line rather than routed to or allowed to stop the reader.

Heartbeats are not audited: one write a second per node would drown the
audit log, and a registration is a fact about a process, not a change
anyone made.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, and_, delete, insert, select, update

from modelport.config import fleet
from modelport.controlplane.store import checks
from modelport.controlplane.store.database import Database
from modelport.controlplane.store.tables import nodes
from modelport.errors import Conflict, InvalidRequest

log = logging.getLogger("modelport.fleet")

#: Highest weight a node may advertise.
MAX_WEIGHT = 10_000

#: Most ready models one record may list.
MAX_MODELS = 10_000

#: Seconds a record stays its node's after its last heartbeat; the gateway
#: stops routing to it after the same time (``gateway/follow.py``).
LIVE_S = 10.0


@dataclass(frozen=True)
class NodeRecord:
    """One node as the gateway sees it."""

    name: str
    http_url: str
    """The node's HTTP origin, ``http://host:port`` (``https`` when it has TLS)."""
    grpc_address: str | None
    """``host:port`` of its gRPC port, when it advertises one."""
    region: str | None
    group: str | None
    weight: int
    models: dict[str, list[str]]
    """Each ready model's name → that model's residency (empty: anywhere)."""
    draining: bool
    """Stopping: finishing what it has, to be taken out of rotation."""
    heartbeat: float
    """Wall-clock seconds (``time.time()``) of the last heartbeat."""


class NodeStore:
    """The fleet's node registrations in the state store."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def upsert(self, record: NodeRecord) -> None:
        """Write the node's record, creating it the first time.

        A name is one node's while its record is live: a second node started
        with the same name at another address is refused (Conflict) instead of
        overwriting the first one's record at every heartbeat, which would make
        the gateway route the first node's traffic to whichever wrote last. It
        may take the name once the other record has gone stale.
        """
        values = _values(check_record(record))
        name = values.pop("name")
        with self._db.transaction(write=True) as conn:
            held = _row(conn, name)
            if held is None:
                conn.execute(insert(nodes).values(name=name, **values))
                return
            if held.http_url != record.http_url and held.heartbeat >= record.heartbeat - LIVE_S:
                raise Conflict(
                    f"node name {name!r} is taken by the live node at {held.http_url}; "
                    "give this node another --node-name"
                )
            conn.execute(update(nodes).where(nodes.c.name == name).values(**values))

    def remove(self, name: str, http_url: str | None = None) -> None:
        """Forget the node; nothing happens when it is not registered.

        With ``http_url``, only a record of the node at that address goes: a node
        stopping never removes another node's record that took its name since.
        """
        name = _invalid_as_request(fleet.check_name, name, "node name")
        which = nodes.c.name == name
        if http_url is not None:
            which = and_(which, nodes.c.http_url == http_url)
        with self._db.transaction(write=True) as conn:
            conn.execute(delete(nodes).where(which))

    def live(self, now: float, stale_after: float) -> list[NodeRecord]:
        """Records whose heartbeat is within ``stale_after`` seconds of ``now``, by name.

        A row that fails the record checks is left out and logged.
        """
        if not (math.isfinite(now) and math.isfinite(stale_after) and stale_after >= 0):
            raise InvalidRequest(f"now ({now}) and stale_after ({stale_after}) must be finite")
        with self._db.transaction() as conn:
            rows = conn.execute(
                select(nodes).where(nodes.c.heartbeat >= now - stale_after).order_by(nodes.c.name)
            ).all()
        return [record for record in map(_read_row, rows) if record is not None]

    def get(self, name: str) -> NodeRecord | None:
        """One node's record whatever its age; None when absent or unreadable."""
        name = _invalid_as_request(fleet.check_name, name, "node name")
        with self._db.transaction() as conn:
            row = _row(conn, name)
        return None if row is None else _read_row(row)


def check_record(record: NodeRecord) -> NodeRecord:
    """The record with its fields checked (URL normalised); InvalidRequest when it is bad."""
    try:
        return _checked(record)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"node record {record.name!r}: {exc}") from None


def _checked(record: NodeRecord) -> NodeRecord:
    if not isinstance(record.name, str):
        raise TypeError("the name must be a string")
    fleet.check_name(record.name, "node name")
    if not isinstance(record.http_url, str):
        raise TypeError("http_url must be a string")
    http_url = fleet.check_http_url(record.http_url)
    if record.grpc_address is not None:
        if not isinstance(record.grpc_address, str):
            raise TypeError("grpc_address must be a string")
        fleet.check_grpc_address(record.grpc_address)
    if record.region is not None:
        if not isinstance(record.region, str):
            raise TypeError("region must be a string")
        fleet.check_region(record.region)
    if record.group is not None:
        if not isinstance(record.group, str):
            raise TypeError("group must be a string")
        fleet.check_name(record.group, "group")
    weight = record.weight
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
        raise ValueError(f"weight {weight!r} must be an integer from 0 to {MAX_WEIGHT}")
    if not isinstance(record.draining, bool):
        raise TypeError(f"draining must be true or false, got {record.draining!r}")
    heartbeat = record.heartbeat
    if (
        isinstance(heartbeat, bool)
        or not isinstance(heartbeat, (int, float))
        or not math.isfinite(heartbeat)
        or heartbeat < 0
    ):
        raise ValueError(f"heartbeat {heartbeat!r} must be a finite, non-negative number")
    return NodeRecord(
        name=record.name,
        http_url=http_url,
        grpc_address=record.grpc_address,
        region=record.region,
        group=record.group,
        weight=weight,
        models=_checked_models(record.models),
        draining=record.draining,
        heartbeat=float(heartbeat),
    )


def _checked_models(models: object) -> dict[str, list[str]]:
    if not isinstance(models, Mapping):
        raise TypeError("models must map model names to residency lists")
    if len(models) > MAX_MODELS:
        raise ValueError(f"{len(models)} models; the limit is {MAX_MODELS}")
    checked: dict[str, list[str]] = {}
    for model, residency in models.items():
        try:
            checks.check_model(model)
        except InvalidRequest as exc:
            raise ValueError(str(exc)) from None
        if not isinstance(residency, (list, tuple)):
            raise TypeError(f"the residency of model {model!r} must be a list")
        entries: list[str] = []
        for entry in residency:
            if not isinstance(entry, str):
                raise TypeError(f"residency entry {entry!r} of model {model!r} is not a string")
            entries.append(fleet.check_region(entry, f"residency entry of model {model!r}"))
        checked[model] = entries
    return checked


def _invalid_as_request(check: Any, value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{what} must be a string, got {value!r}")
    try:
        result: str = check(value, what)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    return result


def _values(record: NodeRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "http_url": record.http_url,
        "grpc_address": record.grpc_address,
        "region": record.region,
        "node_group": record.group,
        "weight": record.weight,
        "models": record.models,
        "draining": record.draining,
        "heartbeat": record.heartbeat,
    }


def _row(conn: Connection, name: str) -> Row[Any] | None:
    return conn.execute(select(nodes).where(nodes.c.name == name)).first()


def _read_row(row: Row[Any]) -> NodeRecord | None:
    """The row as a checked record, or None (logged) when it cannot be trusted."""
    try:
        return check_record(
            NodeRecord(
                name=row.name,
                http_url=row.http_url,
                grpc_address=row.grpc_address,
                region=row.region,
                group=row.node_group,
                weight=row.weight,
                models=row.models,
                draining=row.draining,
                heartbeat=row.heartbeat,
            )
        )
    except InvalidRequest as exc:
        log.warning("skipping the stored registration of node %r: %s", row.name, exc)
        return None
