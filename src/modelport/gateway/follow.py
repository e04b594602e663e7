"""Following the nodes: which are reachable and which models each has ready.

Fleet-file nodes are polled (the repository index says which models are
READY); nodes that register themselves in the shared store are read from it.
Either way the result is a list of NodeView, and the gateway rewrites Envoy's
files only when that list changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import httpx

from modelport.gateway.fleet import FleetSpec, parse_address
from modelport.gateway.fleet_tls import poll_context
from modelport.gateway.views import NodeView, view_of_spec

log = logging.getLogger("modelport.gateway")

#: Seconds between readiness polls of fleet-file nodes.
POLL_INTERVAL = 0.5

#: A registration older than this is a node that stopped without saying so.
STALE_AFTER = 10.0


def ready_models(index: Any) -> dict[str, tuple[str, ...]]:
    """The READY models in a repository index answer (anything else in it is ignored)."""
    ready: dict[str, tuple[str, ...]] = {}
    if not isinstance(index, list):
        return ready
    for entry in index:
        if (
            isinstance(entry, dict)
            and entry.get("state") == "READY"
            and isinstance(entry.get("name"), str)
        ):
            ready[entry["name"]] = ()
    return ready


async def poll_node(client: httpx.AsyncClient, view: NodeView, scheme: str = "http") -> NodeView:
    """The view after asking the node; unreachable when it does not answer in time."""
    host, port = view.http
    shown = f"[{host}]" if ":" in host else host
    try:
        answer = await client.post(f"{scheme}://{shown}:{port}/v2/repository/index", json={})
    except httpx.HTTPError:
        return replace(view, reachable=False, models={})
    if answer.status_code != 200:
        if view.reachable:
            log.warning(
                "node %s answered %s to the repository index", view.name, answer.status_code
            )
        return replace(view, reachable=True, models={})
    try:
        models = ready_models(answer.json())
    except ValueError:
        models = {}
    return replace(view, reachable=True, models=models)


def view_of_record(spec: FleetSpec, record: Any) -> NodeView:
    """A self-registered node's view; ValueError says why its record is unusable."""
    try:
        parts = urlsplit(record.http_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or not parts.port:
            raise ValueError(f"http_url {record.http_url!r} is not http://host:port")
        grpc = parse_address(record.grpc_address) if record.grpc_address else None
        group = record.group or spec.main_group
        if group not in spec.groups:
            raise ValueError(f"group {group!r} is not in the fleet file")
        weight = int(record.weight)
        if weight <= 0:
            raise ValueError(f"weight {weight} is not positive")
        models = {str(m): tuple(str(r) for r in res) for m, res in dict(record.models).items()}
    except (TypeError, AttributeError) as exc:
        raise ValueError(f"malformed record: {exc}") from None
    return NodeView(
        name=str(record.name),
        http=(parts.hostname, parts.port),
        grpc=grpc,
        region=record.region,
        group=group,
        weight=weight,
        models=models,
        reachable=True,
        draining=bool(record.draining),
    )


class Follower:
    """Keeps the current views of every node, fleet-file and registered."""

    def __init__(
        self,
        spec: FleetSpec,
        token: str | None = None,
        store_reader: Callable[[], list[Any]] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.spec = spec
        self._static = [view_of_spec(spec, node) for node in spec.nodes]
        headers = {"authorization": f"Bearer {token}"} if token else {}
        # Over the same TLS as Envoy's: a node that requires the gateway's certificate
        # would otherwise look unreachable to the poller alone.
        tls = poll_context(spec.tls)
        self._scheme = "http" if tls is None else "https"
        self._client = httpx.AsyncClient(
            timeout=POLL_INTERVAL * 2,
            headers=headers,
            transport=transport,
            verify=tls if tls is not None else True,
        )
        self._store_reader = store_reader
        self._registered_last: list[NodeView] = []
        self._ignored: set[str] = set()

    def initial(self) -> list[NodeView]:
        return list(self._static)

    async def poll(self) -> list[NodeView]:
        polls = (poll_node(self._client, v, self._scheme) for v in self._static)
        views = list(await asyncio.gather(*polls))
        if self._store_reader is not None:
            views += await asyncio.to_thread(self._registered, {v.name for v in views})
        return views

    def _registered(self, taken: set[str]) -> list[NodeView]:
        assert self._store_reader is not None
        try:
            records = self._store_reader()
        except Exception as exc:
            # The store being briefly away must not empty the fleet: keep the last list.
            log.warning("cannot read the node registrations: %s", exc)
            return self._registered_last
        views = []
        for record in records:
            if record.name in taken:
                continue
            try:
                views.append(view_of_record(self.spec, record))
            except ValueError as exc:
                problem = f"{getattr(record, 'name', '?')}: {exc}"
                if problem not in self._ignored:
                    # Once per problem: the record is read again every poll.
                    log.warning("ignoring node %s", problem)
                    self._ignored.add(problem)
        self._registered_last = views
        return views

    async def close(self) -> None:
        await self._client.aclose()


def store_reader(url: str) -> Callable[[], list[Any]]:
    """Reads live registrations from the shared store (imported only when used)."""
    from modelport.controlplane.store.database import Database
    from modelport.controlplane.store.nodes import NodeStore

    store = NodeStore(Database.open(url))

    def read() -> list[Any]:
        return list(store.live(time.time(), STALE_AFTER))

    return read
