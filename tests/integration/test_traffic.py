"""Versions in production through /api/v1: policies, splits, stickiness, shadow, canaries.

The repository holds custom Python models whose answer tells which version
computed it (y = x + version); version 3 of ``scorer`` fails on negative
inputs, so a test controls its error rate exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from modelport.dataplane.routing import Route, TrafficPolicy, choose_version
from tests.integration.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.integration

CONFIG = """
backend: python
max_batch_size: 0
version_policy: {latest: {num_versions: 1}}
input:
- {name: x, data_type: TYPE_FP32, dims: [1]}
output:
- {name: y, data_type: TYPE_FP32, dims: [1]}
"""

MODEL = """
import numpy as np

class Model:
    def load(self, version_dir, config):
        self.offset = float(version_dir.name)

    def predict(self, inputs):
        x = inputs["x"]
        if {fails} and float(x.reshape(-1)[0]) < 0:
            raise ValueError("negative input")
        return {{"y": (x + self.offset).astype(np.float32)}}
"""


def build(root: Path, name: str, versions: dict[int, bool]) -> None:
    model = root / name
    model.mkdir(parents=True)
    (model / "config.yaml").write_text(CONFIG)
    for version, fails in versions.items():
        vdir = model / str(version)
        vdir.mkdir()
        (vdir / "model.py").write_text(textwrap.dedent(MODEL.format(fails=fails)))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("traffic-repo")
    build(root, "scorer", {1: False, 2: False, 3: True})
    build(root, "healthy", {1: False, 2: False})
    build(root, "cli", {1: False, 2: False})
    return root


@pytest.fixture(scope="module")
def srv(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    logs = tmp_path_factory.mktemp("traffic-logs")
    server = start_server(repo, logs / "server.log")
    yield server
    stop_server(server)


def api(server: Server) -> str:
    return f"{server.base}/api/v1"


def infer(
    server: Server, model: str, x: float, headers: dict[str, str] | None = None, **params: Any
) -> tuple[str, float]:
    body: dict[str, Any] = {
        "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [x]}]
    }
    if params:
        body["parameters"] = params
    r = httpx.post(f"{server.base}/v2/models/{model}/infer", json=body, headers=headers)
    assert r.status_code == 200, r.text
    answer = r.json()
    y = answer["outputs"][0]["data"][0]
    # The answer itself proves which version computed it.
    assert y - x == pytest.approx(float(answer["model_version"]))
    return answer["model_version"], y


def put_policy(server: Server, model: str, body: dict[str, Any], revision: int) -> httpx.Response:
    return httpx.put(
        f"{api(server)}/models/{model}/traffic",
        json=body,
        headers={"If-Match": str(revision)},
        timeout=60,
    )


def metric(server: Server, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = httpx.get(f"{server.base}/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def wait_for(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_models_list_versions_and_states(srv: Server) -> None:
    r = httpx.get(f"{api(srv)}/models")
    assert r.status_code == 200
    scorer = next(m for m in r.json()["models"] if m["name"] == "scorer")
    states = {v["version"]: v["state"] for v in scorer["versions"]}
    assert states == {"1": "UNAVAILABLE", "2": "UNAVAILABLE", "3": "READY"}
    assert scorer["traffic_revision"] == 0


def test_policy_errors_leave_state_unchanged(srv: Server) -> None:
    url = f"{api(srv)}/models/scorer/traffic"
    good = {"routes": [{"version": "1", "weight": 100}]}
    missing = httpx.put(url, json=good)
    assert missing.status_code == 428
    assert set(missing.json()) >= {"error", "code"}
    cases = [
        ({"routes": [{"version": "1", "weight": 60}, {"version": "2", "weight": 30}]}, "sum"),
        ({"routes": [{"version": "9", "weight": 100}]}, "9"),
        ({"routes": [{"version": "1", "weight": 100}], "bogus": 1}, "bogus"),
        ({"routes": []}, "routes"),
    ]
    for body, word in cases:
        r = put_policy(srv, "scorer", body, 0)
        assert r.status_code == 400, r.text
        assert r.json()["code"] == "invalid_request"
        assert word in r.json()["error"]
        assert "detail" not in r.json()
    json_type = {"If-Match": "0", "Content-Type": "application/json"}
    bad_json = httpx.put(url, content=b"{not json", headers=json_type)
    assert bad_json.status_code == 400
    assert httpx.get(url).json()["revision"] == 0
    unknown = put_policy(srv, "nope", good, 0)
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"


def _no_draw() -> float:
    raise AssertionError("a sticky key must not draw a random number")


def test_weighted_split_sticky_and_explicit_versions(srv: Server) -> None:
    body = {
        "routes": [{"version": "1", "weight": 80}, {"version": "2", "weight": 20}],
        "sticky_key": "X-User-Id",
        "reason": "A/B test of version 2",
    }
    r = put_policy(srv, "scorer", body, 0)
    assert r.status_code == 200, r.text
    assert r.json()["revision"] == 1
    assert r.headers["etag"] == '"1"'
    # Versions the policy names were loaded although version_policy selects only 3.
    states = {
        v["version"]: (v["state"], v["weight"])
        for v in httpx.get(f"{api(srv)}/models/scorer").json()["versions"]
    }
    assert states == {"1": ("READY", 80), "2": ("READY", 20), "3": ("READY", None)}

    stale = put_policy(srv, "scorer", {"routes": [{"version": "2", "weight": 100}]}, 0)
    assert stale.status_code == 409
    assert stale.json()["current"]["revision"] == 1

    # Without a key both versions answer. The shares themselves are checked in
    # tests/unit/dataplane/test_routing_choose.py; 60 draws at 80/20 all land on
    # one version with a probability below 2e-6.
    seen = Counter(infer(srv, "scorer", 1.0)[0] for _ in range(60))
    assert set(seen) == {"1", "2"}, seen

    # With a key: each user gets the version the split's hash gives it, every time.
    split = TrafficPolicy((Route("1", 80), Route("2", 20)), sticky_key="X-User-Id")
    users = [f"u{i}" for i in range(30)]
    wanted = {u: choose_version("scorer", split, u, _no_draw) for u in users}
    assert set(wanted.values()) == {"1", "2"}
    assert {u: infer(srv, "scorer", 0.5, {"X-User-Id": u})[0] for u in users} == wanted
    for user in ("alice", "bob", "carol"):
        got = {infer(srv, "scorer", 2.0, {"X-User-Id": user})[0] for _ in range(5)}
        assert len(got) == 1
    # The key may also come as a request parameter.
    by_param = {infer(srv, "scorer", 2.0, **{"X-User-Id": "alice"})[0] for _ in range(5)}
    assert by_param == {infer(srv, "scorer", 2.0, {"X-User-Id": "alice"})[0]}

    # Naming a version always gets that version.
    assert {infer_version(srv, "scorer", "3") for _ in range(5)} == {"3"}

    # gRPC follows the same policy, sticky key in metadata.
    client = grpcclient.InferenceServerClient(srv.grpc_url)
    try:
        inp = grpcclient.InferInput("x", [1], "FP32")
        inp.set_data_from_numpy(np.array([4.0], dtype=np.float32))
        versions = set()
        for _ in range(10):
            result = client.infer("scorer", [inp], headers={"x-user-id": "alice"})
            versions.add(result.get_response().model_version)
        assert versions == {infer(srv, "scorer", 1.0, {"X-User-Id": "alice"})[0]}
    finally:
        client.close()

    # /metrics splits by version, so the A/B comparison can be read off it.
    requests = metric(srv, "modelport_inference_requests_total")
    by_version = Counter()
    for labels, value in requests.items():
        d = dict(labels)
        if d["model"] == "scorer":
            by_version[d["version"]] += value
    assert by_version["1"] > by_version["2"] > 0

    # A referenced version cannot be unloaded.
    refused = httpx.post(f"{api(srv)}/models/scorer/versions/1/unload")
    assert refused.status_code == 409
    assert "traffic policy" in refused.json()["error"]

    history = httpx.get(f"{api(srv)}/models/scorer/history").json()["events"]
    update = next(e for e in history if e["action"] == "traffic.update")
    assert update["actor"] == "local"
    assert update["reason"] == "A/B test of version 2"
    assert update["detail"]["revision"] == 1


def infer_version(server: Server, model: str, version: str) -> str:
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    r = httpx.post(f"{server.base}/v2/models/{model}/versions/{version}/infer", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["outputs"][0]["data"][0] == 1.0 + int(version)
    return str(answer["model_version"])


def test_shadow_never_reaches_the_caller(srv: Server) -> None:
    current = httpx.get(f"{api(srv)}/models/scorer/traffic").json()["revision"]
    body = {
        "routes": [{"version": "2", "weight": 100}],
        "shadow": {"version": "3", "fraction": 1.0},
    }
    r = put_policy(srv, "scorer", body, current)
    assert r.status_code == 200, r.text
    # Version 3 raises on negative inputs: callers never see it.
    for i in range(30):
        version, y = infer(srv, "scorer", -1.0 - i)
        assert version == "2"
        assert y == pytest.approx(1.0 - i)

    def counted() -> dict[str, float]:
        results: dict[str, float] = Counter()
        for labels, value in metric(srv, "modelport_shadow_requests_total").items():
            d = dict(labels)
            if d["model"] == "scorer" and d["version"] == "3":
                results[d["result"]] += value
        return results if results["error"] >= 30 else {}

    assert wait_for(counted)["error"] >= 30
    window = httpx.get(f"{api(srv)}/models/scorer/traffic").json()["windows"]["3"]
    assert window["errors"] >= 30


def test_canary_with_errors_rolls_back(srv: Server) -> None:
    current = httpx.get(f"{api(srv)}/models/scorer/traffic").json()["revision"]
    r = put_policy(srv, "scorer", {"routes": [{"version": "2", "weight": 100}]}, current)
    assert r.status_code == 200, r.text
    spec = {
        "version": "3",
        "steps": [50, 100],
        "interval_s": 600,
        "min_requests": 10,
        "slo": {"max_error_rate": 0.1},
    }
    started = httpx.post(f"{api(srv)}/models/scorer/canary", json=spec)
    assert started.status_code == 201, started.text
    assert started.json()["state"] == "running"
    # An operator's PUT cannot fight the canary over the policy.
    revision = httpx.get(f"{api(srv)}/models/scorer/traffic").json()["revision"]
    fight = put_policy(srv, "scorer", {"routes": [{"version": "1", "weight": 100}]}, revision)
    assert fight.status_code == 409
    # Half the traffic reaches version 3, which fails on these inputs.
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [-5.0]}]}
    failures = 0
    for _ in range(60):
        resp = httpx.post(f"{srv.base}/v2/models/scorer/infer", json=body)
        failures += resp.status_code != 200
    assert failures > 0

    def rolled_back() -> dict[str, Any] | None:
        state = httpx.get(f"{api(srv)}/models/scorer/canary").json()
        return state if state["state"] == "rolled_back" else None

    state = wait_for(rolled_back)
    assert "error rate" in state["spec"]["reason"]
    policy = httpx.get(f"{api(srv)}/models/scorer/traffic").json()["policy"]
    assert policy["routes"] == [{"version": "2", "weight": 100}]
    assert {infer(srv, "scorer", -5.0)[0] for _ in range(10)} == {"2"}
    actions = [e["action"] for e in httpx.get(f"{api(srv)}/models/scorer/history").json()["events"]]
    assert "canary.rollback" in actions


def test_healthy_canary_promotes(srv: Server) -> None:
    spec = {
        "version": "2",
        "steps": [30, 100],
        "interval_s": 0.3,
        "min_requests": 5,
        "evidence_timeout_s": 30,
    }
    # The model has no policy: the stable version is the highest ready one but 2.
    start = httpx.post(f"{api(srv)}/models/healthy/canary", json=spec)
    assert start.status_code == 409, start.text  # only version 2 is loaded
    assert httpx.post(f"{api(srv)}/models/healthy/versions/1/load").status_code == 200
    start = httpx.post(f"{api(srv)}/models/healthy/canary", json=spec)
    assert start.status_code == 201, start.text
    assert start.json()["spec"]["stable"] == "1"

    def promoted() -> bool:
        infer(srv, "healthy", 1.0)
        return httpx.get(f"{api(srv)}/models/healthy/canary").json()["state"] == "promoted"

    wait_for(promoted)
    policy = httpx.get(f"{api(srv)}/models/healthy/traffic").json()["policy"]
    assert policy["routes"] == [{"version": "2", "weight": 100}]
    assert {infer(srv, "healthy", 1.0)[0] for _ in range(10)} == {"2"}


def test_bad_canaries_are_refused(srv: Server) -> None:
    url = f"{api(srv)}/models/scorer/canary"
    for spec, word in [
        ({"version": "3", "steps": [50, 40, 100]}, "steps"),
        ({"version": "3", "steps": [10, 50]}, "100"),
        ({"version": "8"}, "version"),
        ({"version": "3", "interval_s": -1}, "interval_s"),
    ]:
        r = httpx.post(url, json=spec)
        assert r.status_code == 400, r.text
        assert word in r.json()["error"]
    assert httpx.post(f"{api(srv)}/models/scorer/canary/pause").status_code == 409


def test_openapi_document_and_docs(srv: Server) -> None:
    doc = httpx.get(f"{api(srv)}/openapi.json").json()
    assert "/models/{model}/traffic" in doc["paths"]
    assert httpx.get(f"{srv.base}/docs").status_code == 200
    missing = httpx.get(f"{api(srv)}/nothing-here")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


def test_canary_resumes_after_restart(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    build(repo, "m", {1: False, 2: False})
    state = tmp_path / "state"
    server = start_server(repo, tmp_path / "a.log", "--data-dir", str(state))
    try:
        assert httpx.post(f"{api(server)}/models/m/versions/1/load").status_code == 200
        spec = {
            "version": "2",
            "steps": [10, 50, 100],
            "interval_s": 1.0,
            "min_requests": 3,
            "evidence_timeout_s": 60,
        }
        assert httpx.post(f"{api(server)}/models/m/canary", json=spec).status_code == 201
    finally:
        stop_server(server)
    server = start_server(repo, tmp_path / "b.log", "--data-dir", str(state))
    try:
        # Without requests the first step cannot pass: it is still running.
        canary = httpx.get(f"{api(server)}/models/m/canary").json()
        assert canary["state"] == "running"
        assert canary["spec"]["step"] == 0
        # The stored policy still sends traffic to both versions after the restart.
        policy = httpx.get(f"{api(server)}/models/m/traffic").json()["policy"]
        assert {r["version"] for r in policy["routes"]} <= {"1", "2"}

        def promoted() -> bool:
            infer(server, "m", 1.0)
            return httpx.get(f"{api(server)}/models/m/canary").json()["state"] == "promoted"

        wait_for(promoted)
        steps = [
            e["reason"]
            for e in httpx.get(f"{api(server)}/models/m/history").json()["events"]
            if e["action"] == "canary.step"
        ]
        assert steps, "the canary stepped after the restart"
    finally:
        stop_server(server)


def postgres_url() -> str | None:
    import psycopg

    try:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as c:
            name = f"modelport_it_{uuid.uuid4().hex[:10]}"
            c.execute(f"CREATE DATABASE {name}")
    except psycopg.Error:
        return None
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


def test_policy_survives_restart_on_postgresql(tmp_path: Path) -> None:
    url = postgres_url()
    if url is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL on 127.0.0.1:5432 is not reachable")
        pytest.skip("PostgreSQL on 127.0.0.1:5432 is not reachable")
    repo = tmp_path / "repo"
    build(repo, "pg", {1: False, 2: False})
    server = start_server(repo, tmp_path / "a.log", "--state-url", url)
    try:
        body = {"routes": [{"version": "1", "weight": 100}]}
        assert put_policy(server, "pg", body, 0).status_code == 200
    finally:
        stop_server(server)
    server = start_server(repo, tmp_path / "b.log", "--state-url", url)
    try:
        state = httpx.get(f"{api(server)}/models/pg/traffic").json()
        assert state["revision"] == 1
        assert {infer(server, "pg", 1.0)[0] for _ in range(10)} == {"1"}
    finally:
        stop_server(server)


def cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelport", *args, "--url", server.base],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_command_line_drives_the_api(srv: Server) -> None:
    first = cli(srv, "deploy", "traffic", "cli", "1=50", "2=50", "--reason", "split", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["revision"] == 1
    second = cli(srv, "deploy", "traffic", "cli", "1=10", "2=90")
    assert second.returncode == 0, second.stderr
    bad = cli(srv, "deploy", "traffic", "cli", "1=70", "2=20")
    assert bad.returncode == 1
    assert "sum" in bad.stderr and "invalid_request" in bad.stderr
    listed = json.loads(cli(srv, "models", "list", "--json").stdout)
    weights = {
        v["version"]: v["weight"]
        for m in listed["models"]
        if m["name"] == "cli"
        for v in m["versions"]
    }
    assert weights == {"1": 10, "2": 90}
    back = cli(srv, "deploy", "rollback", "cli", "--json")
    assert back.returncode == 0, back.stderr
    routes = json.loads(back.stdout)["policy"]["routes"]
    assert routes == [{"version": "1", "weight": 50}, {"version": "2", "weight": 50}]
    history = json.loads(cli(srv, "deploy", "history", "cli", "--json").stdout)["events"]
    assert [e["action"] for e in history][:3] == ["traffic.update"] * 3
    assert history[-1]["reason"] == "split"
    # Without a model: every model's history, this one's changes among them.
    everything = cli(srv, "deploy", "history", "--json")
    assert everything.returncode == 0, everything.stderr
    events = json.loads(everything.stdout)["events"]
    assert {e["model"] for e in events} >= {"cli"}
    assert [e for e in events if e["model"] == "cli"][:3] == history[:3]
    unreachable = subprocess.run(
        [sys.executable, "-m", "modelport", "models", "list", "--url", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert unreachable.returncode == 2 and "cannot reach" in unreachable.stderr


def test_policy_naming_a_removed_version_falls_back_loudly(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    build(repo, "gone", {1: False, 2: False, 3: False})
    state = tmp_path / "state"
    server = start_server(repo, tmp_path / "a.log", "--data-dir", str(state))
    try:
        body = {"routes": [{"version": "1", "weight": 30}, {"version": "2", "weight": 70}]}
        assert put_policy(server, "gone", body, 0).status_code == 200
    finally:
        stop_server(server)
    # Version 2, the stable one (most weight), leaves the repository while the server is down.
    for path in sorted((repo / "gone" / "2").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (repo / "gone" / "2").rmdir()
    server = start_server(repo, tmp_path / "b.log", "--data-dir", str(state))
    try:
        state_now = httpx.get(f"{api(server)}/models/gone/traffic").json()
        assert state_now["revision"] == 2
        assert state_now["policy"]["routes"] == [{"version": "3", "weight": 100}]
        assert {infer(server, "gone", 1.0)[0] for _ in range(10)} == {"3"}
        latest = httpx.get(f"{api(server)}/models/gone/history").json()["events"][0]
        assert latest["actor"] == "modelport"
        assert "not available" in latest["reason"]
        assert "falling back" in server.log()
    finally:
        stop_server(server)
