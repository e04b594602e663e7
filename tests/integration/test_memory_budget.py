"""--memory-budget through the real server: four models in room for two, a kept one, RSS.

Each heavy model holds 40 MiB of weights, so it costs at least that (a
version's cost is never read below its files) and about 45 MiB measured.
A budget of 120 MiB beside a small kept model then holds two heavy models
and never three, whatever the noise of a shared machine does to a measure.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.integration.conftest import Server, start_server, stop_server
from tests.integration.models import add_sub_model

pytestmark = pytest.mark.integration

MIB = 1 << 20
HEAVY = ("a", "b", "c", "d")
BUDGET = 120 * MIB
#: What the process may hold above its base and the budget: the allocator's own
#: bookkeeping and request buffers, far less than one heavy model (about 45 MiB).
SLACK = 16 * MIB
ROW = [0.5 * i for i in range(16)]


def heavy_model(columns: int = 655_360) -> onnx.ModelProto:
    """A model with ``16 x columns`` float weights (40 MiB by default) and a one-number answer."""
    weights = np.random.default_rng(0).random((16, columns), dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["X", "W"], ["H"]),
            helper.make_node("ReduceSum", ["H"], ["Y"], keepdims=1),
        ],
        "heavy",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 1])],
        [numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _save(root: Path, name: str, model: onnx.ModelProto, config: str = "") -> None:
    path = root / name / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    onnx.save(model, str(path))
    if config:
        (root / name / "config.yaml").write_text(config)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("budget")
    heavy = heavy_model()
    for name in HEAVY:
        _save(root, name, heavy)
    _save(root, "kept", add_sub_model(), "modelport: {keep_loaded: true}\n")
    srv = start_server(root, root / "server.log", "--memory-budget", f"{BUDGET}")
    yield srv
    stop_server(srv)


def _index(server: Server) -> dict[str, tuple[str, str]]:
    r = httpx.post(f"{server.base}/v2/repository/index", json={}, timeout=30)
    assert r.status_code == 200, r.text
    return {e["name"]: (e.get("state", ""), e.get("reason", "")) for e in r.json()}


def _series(server: Server, family: str) -> dict[str, float]:
    """``family``'s samples by model (server-wide ones under "")."""
    text = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30).text
    found: dict[str, float] = {}
    pattern = rf"^{family}(?:\{{([^}}]*)\}})? (\S+)$"
    for labels, value in re.findall(pattern, text, re.M):
        model = re.search(r'model="([^"]*)"', labels)
        found[model.group(1) if model else ""] = float(value)
    return found


def _rss(server: Server) -> int:
    with open(f"/proc/{server.process.pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * 4096


def _infer(client: httpx.Client, name: str) -> httpx.Response:
    body = {"inputs": [{"name": "X", "shape": [1, 16], "datatype": "FP32", "data": ROW}]}
    return client.post(f"/v2/models/{name}/infer", json=body)


def test_round_robin_traffic_over_four_models_in_room_for_two(server: Server) -> None:
    # The base: the process without its models, as measured at their loads.
    sizes = _series(server, "modelport_model_memory_bytes")
    base = _rss(server) - int(sum(sizes.values()))
    assert _series(server, "modelport_memory_budget_bytes") == {"": BUDGET}
    assert all(sizes[name] >= 40 * MIB for name in sizes if name != "kept"), sizes

    errors: list[str] = []
    peak = [0]

    def client(offset: int) -> None:
        with httpx.Client(base_url=server.base, timeout=120) as http:
            for i in range(12):
                name = HEAVY[(i + offset) % len(HEAVY)]
                answer = _infer(http, name)
                if answer.status_code != 200:
                    errors.append(f"{name}: {answer.status_code} {answer.text}")
                peak[0] = max(peak[0], _rss(server))

    threads = [threading.Thread(target=client, args=(k,)) for k in (0, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []

    index = _index(server)
    assert index["kept"] == ("READY", "")
    ready = [name for name in HEAVY if index[name][0] == "READY"]
    assert len(ready) <= 2, index
    assert ("UNAVAILABLE", "unloaded: memory") in [index[name] for name in HEAVY], index
    evicted = _series(server, "modelport_evictions_total")
    assert sum(evicted.values()) >= 4 and "kept" not in evicted, evicted
    history = httpx.get(f"{server.base}/api/v1/models/a/history", timeout=30)
    assert history.status_code == 200, history.text
    assert "unloaded: memory" in history.text, history.text

    # What the process holds: its base, the budget, and slack far below one more model.
    # Without the budget four heavy models would take about 180 MiB above the base.
    assert peak[0] <= base + BUDGET + SLACK, (peak[0] / MIB, base / MIB)
    loaded = _series(server, "modelport_model_memory_bytes")
    assert sum(loaded.values()) <= BUDGET, loaded


def test_an_evicted_model_answers_the_next_request(server: Server) -> None:
    with httpx.Client(base_url=server.base, timeout=120) as http:
        answers = [_infer(http, name) for name in HEAVY]
        assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
        # a and b made room for c and d; a answers again, loaded on demand.
        assert _index(server)["a"] == ("UNAVAILABLE", "unloaded: memory")
        again = _infer(http, "a")
    assert again.status_code == 200, again.text
    assert again.json()["parameters"] == {"cold_start": True}
    first, second = (r.json()["outputs"][0]["data"] for r in (answers[0], again))
    np.testing.assert_allclose(second, first, rtol=1e-6)
    assert _index(server)["a"] == ("READY", "")


def test_a_budget_too_small_for_a_kept_model_names_the_budget(tmp_path: Path) -> None:
    # 120 MiB of weights against 90 MiB: the kept model can never fit, while the small
    # one fits whichever loads first (the first load also carries ONNX Runtime's
    # one-time set-up, some 30 MiB).
    _save(tmp_path, "big", heavy_model(3 * 655_360), "modelport: {keep_loaded: true}\n")
    _save(tmp_path, "small", add_sub_model())
    srv = start_server(tmp_path, tmp_path / "server.log", "--memory-budget", "90MiB")
    try:
        state, reason = _index(srv)["big"]
        assert state == "UNAVAILABLE"
        assert "the memory budget 90 MiB" in reason and "nothing can be evicted" in reason
        body = {
            "inputs": [
                {"name": n, "shape": [1, 16], "datatype": "FP32", "data": ROW}
                for n in ("INPUT0", "INPUT1")
            ]
        }
        answer = httpx.post(f"{srv.base}/v2/models/small/infer", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        refused = httpx.post(f"{srv.base}/v2/repository/models/big/load", timeout=60)
        assert refused.status_code == 503, refused.text
        assert "memory budget" in refused.text
    finally:
        stop_server(srv)


def test_a_node_of_two_workers_shares_one_budget(tmp_path: Path) -> None:
    heavy = heavy_model()
    for name in ("a", "b"):
        _save(tmp_path, name, heavy)
    # Each worker accounts against half: 100 MiB, room for its copies of both models
    # (about 45 MiB each, the first a worker loads more: the runtime's own set-up).
    srv = start_server(
        tmp_path, tmp_path / "node.log", "--workers", "2", "--memory-budget", "200MiB"
    )
    try:
        # The node's merged metrics add the workers' gauges: the whole budget, every copy.
        assert _series(srv, "modelport_memory_budget_bytes") == {"": 200 * MIB}
        with httpx.Client(base_url=srv.base, timeout=120) as http:
            for _ in range(6):
                for name in ("a", "b"):
                    answer = _infer(http, name)
                    assert answer.status_code == 200, answer.text
        sizes = _series(srv, "modelport_model_memory_bytes")
        assert 2 * 40 * MIB <= sum(sizes.values()) <= 200 * MIB, sizes
    finally:
        stop_server(srv)
