"""Nodes that join and leave the fleet through the shared store, behind real gateways.

The nodes run in a network namespace standing for region ae-dxb
(tests/integration/netns.py) and register themselves (``serve --advertise``)
in a PostgreSQL database of this module's own, reached through PostgreSQL's
Unix socket (a path works from any namespace), and share their rate-limit
buckets in Redis through a bridge on the region's link. The fleet file names no node: the gateways
learn every node from the store. Which node served what is read from the
nodes' own statistics.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from modelport.controlplane.store import Database, NodeStore
from tests.integration.conftest import free_port
from tests.integration.netns import (
    MODEL,
    Gateway,
    Node,
    Region,
    TcpBridge,
    infer_body,
    netns_unavailable,
    new_run,
    start_gateway,
    write_work_model,
)

pytestmark = pytest.mark.integration

ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
SOCKET_DIR = "/var/run/postgresql"
REDIS = ("127.0.0.1", 6379)

#: A rate-limited model, its name this run's own: its Redis bucket is then this run's alone.
LIMITED = f"limited_{uuid.uuid4().hex[:8]}"
BURST = 10
SERVED = {MODEL, LIMITED}

#: Seconds each request of the steady load spends in the model: always some in flight.
HOLD_S = 0.2


@dataclass
class Fleet:
    region: Region
    repository: Path
    state_url: str
    redis_url: str
    fleet_file: Path
    root: Path
    seed: Node
    gateway: Gateway
    store: NodeStore

    def start_node(self, name: str) -> Node:
        return advertised_node(self.region, self.root, self.repository, self.state_url,
                               self.redis_url, name)  # fmt: skip


def advertised_node(
    region: Region, root: Path, repository: Path, state_url: str, redis_url: str, name: str
) -> Node:
    """A node that joins the fleet by itself: ``serve --advertise`` into the shared store."""
    node = region.node(name, root / name)
    node.start(
        repository,
        "--state-url", state_url,
        "--redis-url", redis_url,
        "--advertise", node.base,
        "--advertise-grpc", node.grpc,
        "--node-name", name,
        "--group", "main",
        "--drain-seconds", "2",
    )  # fmt: skip
    return node


def models_of(store: NodeStore, name: str) -> set[str] | None:
    """The models the node's live registration lists (None: not registered)."""
    live = {r.name: r for r in store.live(time.time(), 5.0)}
    return set(live[name].models) if name in live else None


def wait_for(check: Callable[[], bool], within: float, what: str) -> float:
    """Seconds until ``check`` holds; fails naming ``what`` after ``within``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > within:
            pytest.fail(f"{what}: not within {within} s")
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A database of this module's own, as every namespace reaches it: the Unix socket."""
    if (why := netns_unavailable()) is not None:
        pytest.skip(f"regions as namespaces: {why}")
    if not Path(SOCKET_DIR, ".s.PGSQL.5432").exists():
        pytest.skip(f"no PostgreSQL socket in {SOCKET_DIR}")
    name = f"modelport_gw_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL on 127.0.0.1:5432 is not reachable")
        pytest.skip("PostgreSQL on 127.0.0.1:5432 is not reachable")
    try:
        yield f"postgresql://postgres@/{name}?host={SOCKET_DIR}"
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def fleet(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet_store")
    repository = write_work_model(root / "repo")
    write_work_model(
        repository, LIMITED, f"modelport: {{rate_limit: {{rate: 0.01, burst: {BURST}}}}}\n"
    )
    region = Region.make(new_run(), 0, "ae-dxb")
    gateway: Gateway | None = None
    try:
        with (
            Database.open(database) as db,
            TcpBridge((region.outside, free_port()), REDIS) as redis,
        ):
            redis_url = f"redis://{redis.listen[0]}:{redis.listen[1]}/0"
            spec = {
                "regions": ["ae-dxb", "eu-west"],
                "groups": {"main": {"models": [MODEL]}},
                "state_url": database,
                "redis_url": redis_url,
                "health": {"interval": 0.5, "unhealthy_threshold": 2, "healthy_threshold": 1},
            }
            fleet_file = root / "fleet.yaml"
            fleet_file.write_text(json.dumps(spec))
            store = NodeStore(db)
            seed = advertised_node(region, root, repository, database, redis_url, "seed")
            seed.wait_ready()
            wait_for(lambda: models_of(store, "seed") == SERVED, 10, "seed registered")
            ports = (free_port(), free_port(), free_port())
            gateway = start_gateway(fleet_file, root / "gateway", ports)
            gateway.wait_routable({seed.http}, within=20)
            gateway.wait_serving(within=10)
            made = Fleet(
                region, repository, database, redis_url, fleet_file, root, seed, gateway, store
            )
            yield made
    finally:
        if gateway is not None:
            gateway.stop()
        for node in region.nodes:
            node.stop(wait=20)
        region.remove()


class Load:
    """Steady traffic through a gateway from a few clients, counting every failure."""

    def __init__(self, base: str, clients: int = 3) -> None:
        self.base = base
        self.sent = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                try:
                    answer = client.post(
                        f"{self.base}/v2/models/{MODEL}/infer", json=infer_body(HOLD_S)
                    )
                    if answer.status_code != 200:
                        self.failures.append(f"{answer.status_code} {answer.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                self.sent += 1


def test_a_node_that_registers_is_in_rotation_within_two_seconds(fleet: Fleet) -> None:
    with Load(fleet.gateway.base) as load:
        late = fleet.start_node("joining")
        try:
            registered = wait_for(
                lambda: models_of(fleet.store, "joining") == SERVED, 60, "joining registered"
            )
            start = time.monotonic()
            while late.served() == 0:
                assert time.monotonic() - start < 10, fleet.gateway.log()
                time.sleep(0.02)
            joined = time.monotonic() - start
        finally:
            late.stop()
    assert load.failures == [], f"{len(load.failures)} of {load.sent}: {load.failures[:3]}"
    print(f"in rotation {joined:.2f} s after it registered ({registered:.1f} s after its start)")
    assert joined < 2.0


def test_a_node_stopped_with_sigterm_drains_without_a_failed_request(fleet: Fleet) -> None:
    gateway = fleet.gateway
    leaving = fleet.start_node("leaving")
    try:
        leaving.wait_ready()
        gateway.wait_routable({fleet.seed.http, leaving.http}, within=10)
        with Load(gateway.base) as load:
            wait_for(lambda: leaving.served() > 3, 10, "leaving serves through the gateway")
            # Slow requests through the gateway, some of them on the node as it is told to stop.
            burst: list[int] = []

            def slow() -> None:
                with httpx.Client(timeout=30) as client:
                    answer = client.post(
                        f"{gateway.base}/v2/models/{MODEL}/infer", json=infer_body(1.0)
                    )
                    burst.append(answer.status_code)

            threads = [threading.Thread(target=slow) for _ in range(6)]
            for thread in threads:
                thread.start()
            time.sleep(0.3)
            before = leaving.served()
            leaving.signal(signal.SIGTERM)
            stopped = time.monotonic()
            left = gateway.wait_routable({fleet.seed.http}, within=2.0)
            for thread in threads:
                thread.join(30)
            # Finished on the node after SIGTERM: what it had in flight.
            finished = leaving.served() - before
            assert leaving.process is not None
            exit_code = leaving.process.wait(timeout=30)
            gone = time.monotonic() - stopped
            sent = load.sent
            wait_for(lambda: load.sent > sent + 10, 10, "load goes on after the node exits")
    finally:
        leaving.stop()
    assert burst == [200] * 6
    assert finished > 0
    assert exit_code == 0, leaving.log()[-2000:]
    assert gone >= 2.0  # served on, marked draining, for --drain-seconds before it went
    assert models_of(fleet.store, "leaving") is None
    assert load.failures == [], f"{len(load.failures)} of {load.sent}: {load.failures[:3]}"
    print(f"{load.sent} requests, none failed; out of rotation {left:.2f} s after SIGTERM")


def test_two_gateways_over_one_fleet_both_serve_and_one_killed_leaves_the_other_serving(
    fleet: Fleet, tmp_path: Path
) -> None:
    started: list[Gateway] = []
    extra: Node | None = None
    try:
        for name in ("first", "second"):
            ports = (free_port(), free_port(), free_port())
            started.append(start_gateway(fleet.fleet_file, tmp_path / name, ports))
            started[-1].wait_routable({fleet.seed.http}, within=20)
            started[-1].wait_serving(within=10)
        first, second = started
        before = fleet.seed.served()
        with httpx.Client(timeout=30) as client:
            for gateway in (first, second) * 10:
                answer = client.post(f"{gateway.base}/v2/models/{MODEL}/infer", json=infer_body())
                assert answer.status_code == 200, answer.text
        assert fleet.seed.served() - before == 20

        with Load(second.base) as load:
            wait_for(lambda: load.sent > 5, 10, "load through the second gateway")
            first.process.kill()
            first.process.wait(timeout=30)
            # The second goes on following the fleet: a node joining now gets its traffic.
            extra = joined = fleet.start_node("extra")
            joined.wait_ready()
            wait_for(lambda: joined.served() > 0, 10, "extra served through the second gateway")
            sent = load.sent
            wait_for(lambda: load.sent > sent + 10, 10, "load goes on")
        assert load.failures == [], f"{len(load.failures)} of {load.sent}: {load.failures[:3]}"
    finally:
        for gateway in started:
            gateway.stop()
        if extra is not None:
            extra.stop()


def test_a_gateway_killed_outright_leaves_no_envoy_holding_its_ports(
    fleet: Fleet, tmp_path: Path
) -> None:
    ports = (free_port(), free_port(), free_port())
    killed = start_gateway(fleet.fleet_file, tmp_path / "killed", ports)
    restarted: Gateway | None = None
    try:
        killed.wait_serving(within=10)
        assert killed.envoy_alive()
        killed.process.kill()
        killed.process.wait(timeout=30)
        deadline = time.monotonic() + 10
        while killed.envoy_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not killed.envoy_alive(), "the killed gateway's Envoy still runs"
        # What a supervisor does next: start the gateway again on the same ports.
        restarted = start_gateway(fleet.fleet_file, tmp_path / "restarted", ports)
        restarted.wait_serving(within=10)
    finally:
        killed.stop()
        if restarted is not None:
            restarted.stop()


def test_a_rate_limit_is_one_bucket_for_the_fleet_through_the_bridged_redis(
    fleet: Fleet,
) -> None:
    peer = fleet.start_node("peer")
    try:
        peer.wait_ready()
        wait_for(lambda: models_of(fleet.store, "peer") == SERVED, 10, "peer registered")
        both = {fleet.seed.http, peer.http}
        wait_for(lambda: fleet.gateway.routable(f"model~{LIMITED}~http") == both, 10, "both")
        # Envoy balances onto a new node a moment after it shows it: wait for that on work.
        with httpx.Client(timeout=30) as client:

            def peer_served() -> bool:
                answer = client.post(f"{fleet.gateway.base}/v2/models/{MODEL}/infer",
                                     json=infer_body())  # fmt: skip
                assert answer.status_code == 200, answer.text
                return peer.served() > 0

            wait_for(peer_served, 10, "peer served through the gateway")
        before = {n.name: n.served(LIMITED) for n in (fleet.seed, peer)}
        statuses: list[int] = []
        with httpx.Client(timeout=30) as client:
            for _ in range(3 * BURST):
                answer = client.post(
                    f"{fleet.gateway.base}/v2/models/{LIMITED}/infer", json=infer_body()
                )
                statuses.append(answer.status_code)
        served = {n.name: n.served(LIMITED) - before[n.name] for n in (fleet.seed, peer)}
    finally:
        peer.stop()
    # One bucket in Redis for both nodes: the burst once, not once per node.
    assert statuses.count(200) == BURST, statuses
    assert statuses.count(429) == 2 * BURST, statuses
    assert sum(served.values()) == BURST and all(served.values()), served
