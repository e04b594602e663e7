"""Fleet nodes: real servers registering in a real PostgreSQL, as the gateway reads them.

Each test runs against a database of its own (created here, dropped after),
so nodes of one test never see another's.
"""

from __future__ import annotations

import os
import signal
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from modelport.controlplane.store import Database, NodeRecord, NodeStore
from tests.integration.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.integration

ADMIN = "postgresql://postgres@127.0.0.1:5432/test"

CONFIG = """
backend: python
max_batch_size: 0
input:
- {{name: x, data_type: TYPE_FP32, dims: [1]}}
output:
- {{name: y, data_type: TYPE_FP32, dims: [1]}}
modelport: {{residency: {residency}}}
"""

MODEL = """
import time
import numpy as np

class Model:
    def load(self, version_dir, config):
        pass

    def predict(self, inputs):
        x = inputs["x"]
        time.sleep(float(x.reshape(-1)[0]))
        return {"y": (x + 1).astype(np.float32)}
"""


def build(root: Path, name: str, residency: list[str]) -> None:
    version = root / name / "1"
    version.mkdir(parents=True)
    (root / name / "config.yaml").write_text(CONFIG.format(residency=residency))
    (version / "model.py").write_text(textwrap.dedent(MODEL))


@pytest.fixture
def state_url() -> Iterator[str]:
    """A PostgreSQL database of this test's own."""
    name = f"modelport_fleet_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL on 127.0.0.1:5432 is not reachable")
        pytest.skip("PostgreSQL on 127.0.0.1:5432 is not reachable")
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def nodes(state_url: str) -> Iterator[NodeStore]:
    """The store as the gateway reads it."""
    with Database.open(state_url) as database:
        yield NodeStore(database)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fleet-repo")
    build(root, "anywhere", [])
    build(root, "gulf", ["ae"])
    build(root, "elsewhere", ["us"])
    return root


def live(nodes: NodeStore) -> dict[str, NodeRecord]:
    return {record.name: record for record in nodes.live(time.time(), 3.0)}


def wait_for(check: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``check`` holds; fails after ``timeout``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - start


def infer(server: Server, model: str, sleep_s: float = 0.0) -> int:
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [sleep_s]}]}
    return httpx.post(f"{server.base}/v2/models/{model}/infer", json=body, timeout=30).status_code


def advertised(repo: Path, tmp_path: Path, state_url: str, *extra: str) -> Server:
    return start_server(
        repo,
        tmp_path / "node.log",
        "--state-url", state_url,
        "--advertise", "http://node-a.test:8100",
        "--region", "ae-dxb-1",
        *extra,
    )  # fmt: skip


def test_a_node_registers_itself_and_its_ready_models(
    repo: Path, tmp_path: Path, state_url: str, nodes: NodeStore
) -> None:
    server = advertised(
        repo, tmp_path, state_url,
        "--advertise-grpc", "node-a.test:8101",
        "--node-name", "alpha",
        "--group", "blue",
        "--node-weight", "7",
    )  # fmt: skip
    try:
        wait_for(lambda: "alpha" in live(nodes), 5)
        record = live(nodes)["alpha"]
        assert record.http_url == "http://node-a.test:8100"
        assert record.grpc_address == "node-a.test:8101"
        assert (record.region, record.group, record.weight) == ("ae-dxb-1", "blue", 7)
        # "elsewhere" may not run in the ae jurisdiction: not loaded, not advertised.
        assert record.models == {"anywhere": [], "gulf": ["ae"]}
        assert record.draining is False
        first = record.heartbeat
        wait_for(lambda: live(nodes)["alpha"].heartbeat > first, 2.5)
    finally:
        stop_server(server)


def test_load_and_unload_show_in_the_record_within_a_second(
    repo: Path, tmp_path: Path, state_url: str, nodes: NodeStore
) -> None:
    server = advertised(repo, tmp_path, state_url, "--node-name", "beta")
    try:
        wait_for(lambda: "beta" in live(nodes), 5)
        assert "gulf" in live(nodes)["beta"].models
        r = httpx.post(f"{server.base}/v2/repository/models/gulf/unload", timeout=30)
        assert r.status_code == 200, r.text
        gone = wait_for(lambda: "gulf" not in live(nodes)["beta"].models, 1.0)
        r = httpx.post(f"{server.base}/v2/repository/models/gulf/load", timeout=60)
        assert r.status_code == 200, r.text
        back = wait_for(lambda: "gulf" in live(nodes)["beta"].models, 1.0)
        print(f"unload seen after {gone:.3f} s, load after {back:.3f} s")
    finally:
        stop_server(server)


def test_sigterm_drains_then_withdraws_and_requests_in_flight_finish(
    repo: Path, tmp_path: Path, state_url: str, nodes: NodeStore
) -> None:
    server = advertised(repo, tmp_path, state_url, "--node-name", "gamma", "--drain-seconds", "2")
    try:
        wait_for(lambda: "gamma" in live(nodes), 5)
        statuses: list[int] = []
        slow = threading.Thread(target=lambda: statuses.append(infer(server, "anywhere", 1.5)))
        slow.start()
        time.sleep(0.2)
        stopped_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        wait_for(lambda: live(nodes)["gamma"].draining, 1.0)
        # Draining: still serving new requests while the gateway moves away.
        assert infer(server, "anywhere") == 200
        wait_for(lambda: "gamma" not in live(nodes), 4.0)
        withdrawn_after = time.monotonic() - stopped_at
        assert withdrawn_after >= 1.8, withdrawn_after
        slow.join(10)
        assert statuses == [200]
        assert server.process.wait(timeout=30) == 0
        assert nodes.get("gamma") is None
    finally:
        stop_server(server)


def test_one_worker_of_a_node_heartbeats_for_the_whole_node(
    repo: Path, tmp_path: Path, state_url: str, nodes: NodeStore
) -> None:
    server = advertised(repo, tmp_path, state_url, "--node-name", "delta", "--workers", "2")
    try:
        wait_for(lambda: "delta" in live(nodes), 10)
        assert live(nodes)["delta"].models == {"anywhere": [], "gulf": ["ae"]}
        time.sleep(1.5)
        writers = {
            line.split('"worker": ')[1].split(",")[0].split("}")[0]
            for line in server.log().splitlines()
            if '"message": "advertised"' in line
        }
        assert len(writers) == 1, server.log()
    finally:
        stop_server(server)
    assert "delta" not in live(nodes)
