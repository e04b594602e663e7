"""Asynchronous inference end to end: ``Prefer: respond-async``, /api/v1/jobs, restarts.

The server runs with ``--require-auth`` and two invoker keys (``alice`` and
``bob``) made with ``modelport keys create``. Models: ``add_sub`` (ONNX, fast)
and ``slow`` (a Python model that sleeps on real data, so jobs can be caught
queued and running).
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Server, start_server, stop_server
from tests.integration.test_auth import _model, bearer, cli, create_key
from tests.integration.test_traffic import postgres_url

pytestmark = pytest.mark.integration

ROW = [float(n) for n in range(16)]
BODY = {
    "id": "req-1",
    "inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": ROW},
        {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": ROW},
    ],
}
ASYNC = {"Prefer": "respond-async"}
SLOW_SECONDS = 1.5


def _slow_model(root: Path) -> None:
    (root / "slow" / "1").mkdir(parents=True)
    (root / "slow" / "1" / "model.py").write_text(
        textwrap.dedent(
            f"""
            import time

            class Model:
                def predict(self, inputs):
                    if inputs["x"].any():  # the load's warm-up sends zeros
                        time.sleep({SLOW_SECONDS})
                    return {{"y": inputs["x"] * 2}}
            """
        )
    )
    (root / "slow" / "config.yaml").write_text(
        "max_batch_size: 1\n"
        "input:\n- {name: x, data_type: TYPE_FP32, dims: [2]}\n"
        "output:\n- {name: y, data_type: TYPE_FP32, dims: [2]}\n"
    )


def _slow_body(n: int) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [n, 1.0]}]}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    root = tmp_path_factory.mktemp("jobs")
    repo = root / "repo"
    _model(repo, "add_sub", None)
    _slow_model(repo)
    data = root / "data"
    keys = {
        "alice": create_key(data, "--role", "invoker", "--models", "*", "--name", "alice"),
        "bob": create_key(data, "--role", "invoker", "--models", "*", "--name", "bob"),
    }
    server = start_server(repo, root / "server.log", "--data-dir", str(data), "--require-auth")
    yield server, keys
    stop_server(server)


def _wait_finished(
    base: str, location: str, headers: dict[str, str], within: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        state: dict[str, Any] = httpx.get(base + location, headers=headers).json()
        if state["state"] in ("succeeded", "failed", "cancelled"):
            return state
        assert time.monotonic() < deadline, state
        time.sleep(0.05)


def test_submit_poll_and_fetch_the_synchronous_answer(
    setup: tuple[Server, dict[str, str]],
) -> None:
    server, keys = setup
    alice = bearer(keys["alice"])
    url = f"{server.base}/v2/models/add_sub/infer"
    sync = httpx.post(url, json=BODY, headers=alice)
    assert sync.status_code == 200
    submitted = httpx.post(url, json=BODY, headers={**alice, **ASYNC})
    assert submitted.status_code == 202, submitted.text
    location = submitted.headers["location"]
    job_id = submitted.json()["id"]
    assert location == f"/api/v1/jobs/{job_id}"
    assert submitted.json()["state"] == "queued"
    assert submitted.headers["preference-applied"] == "respond-async"
    state = _wait_finished(server.base, location, alice)
    assert state["state"] == "succeeded"
    assert (state["model"], state["version"]) == ("add_sub", "1")
    assert state["created"] <= state["started"] <= state["finished"]
    result = httpx.get(f"{server.base}{location}/result", headers=alice)
    assert result.status_code == 200
    assert result.content == sync.content
    listed = httpx.get(f"{server.base}/api/v1/jobs", headers=alice).json()
    assert listed["jobs"][0]["id"] == job_id


def test_binary_answer_kept_byte_for_byte(setup: tuple[Server, dict[str, str]]) -> None:
    server, keys = setup
    alice = bearer(keys["alice"])
    url = f"{server.base}/v2/models/add_sub/versions/1/infer"
    body = {**BODY, "parameters": {"binary_data_output": True}}
    sync = httpx.post(url, json=body, headers=alice)
    location = httpx.post(url, json=body, headers={**alice, **ASYNC}).headers["location"]
    _wait_finished(server.base, location, alice)
    result = httpx.get(f"{server.base}{location}/result", headers=alice)
    assert result.content == sync.content
    assert (
        result.headers["inference-header-content-length"]
        == sync.headers["inference-header-content-length"]
    )


def test_refused_at_submission_as_the_synchronous_call(
    setup: tuple[Server, dict[str, str]],
) -> None:
    server, keys = setup
    alice = {**bearer(keys["alice"]), **ASYNC}
    bad_shape = {"inputs": [{**BODY["inputs"][0], "shape": [1, 3]}]}  # type: ignore[dict-item]
    missing = httpx.post(f"{server.base}/v2/models/nope/infer", json=BODY, headers=alice)
    invalid = httpx.post(f"{server.base}/v2/models/add_sub/infer", json=bad_shape, headers=alice)
    anonymous = httpx.post(f"{server.base}/v2/models/add_sub/infer", json=BODY, headers=ASYNC)
    assert missing.status_code == 404 and "nope" in missing.json()["error"]
    assert invalid.status_code == 400
    assert anonymous.status_code == 401
    listed = httpx.get(f"{server.base}/api/v1/jobs?limit=1000", headers=bearer(keys["alice"]))
    assert all(j["model"] != "nope" for j in listed.json()["jobs"])


def test_another_callers_job_is_not_found(setup: tuple[Server, dict[str, str]]) -> None:
    server, keys = setup
    alice, bob = bearer(keys["alice"]), bearer(keys["bob"])
    url = f"{server.base}/v2/models/add_sub/infer"
    location = httpx.post(url, json=BODY, headers={**alice, **ASYNC}).headers["location"]
    job_id = location.rsplit("/", 1)[1]
    for path in (location, f"{location}/result"):
        refused = httpx.get(server.base + path, headers=bob)
        assert refused.status_code == 404
        assert job_id in refused.json()["error"]
    assert httpx.delete(server.base + location, headers=bob).status_code == 404
    assert all(
        j["id"] != job_id
        for j in httpx.get(f"{server.base}/api/v1/jobs", headers=bob).json()["jobs"]
    )
    assert httpx.get(server.base + location, headers=alice).status_code == 200


def test_unknown_job_id_is_named(setup: tuple[Server, dict[str, str]]) -> None:
    server, keys = setup
    refused = httpx.get(f"{server.base}/api/v1/jobs/no-such-job", headers=bearer(keys["alice"]))
    assert refused.status_code == 404
    assert "no-such-job" in refused.json()["error"]


def test_idempotency_key_returns_the_first_job(setup: tuple[Server, dict[str, str]]) -> None:
    server, keys = setup
    alice, bob = bearer(keys["alice"]), bearer(keys["bob"])
    url = f"{server.base}/v2/models/add_sub/infer"
    once = {**ASYNC, "Idempotency-Key": "order-42"}
    first = httpx.post(url, json=BODY, headers={**alice, **once})
    again = httpx.post(url, json=BODY, headers={**alice, **once})
    theirs = httpx.post(url, json=BODY, headers={**bob, **once})
    assert first.status_code == again.status_code == theirs.status_code == 202
    assert again.headers["location"] == first.headers["location"]
    assert theirs.headers["location"] != first.headers["location"]
    malformed = httpx.post(url, json=BODY, headers={**alice, **ASYNC, "Idempotency-Key": "a b"})
    assert malformed.status_code == 400
    assert "Idempotency-Key" in malformed.json()["error"]


def test_concurrent_submissions_with_one_key_store_one_job(
    setup: tuple[Server, dict[str, str]],
) -> None:
    server, keys = setup
    alice = bearer(keys["alice"])
    url = f"{server.base}/v2/models/add_sub/infer"
    once = {**alice, **ASYNC, "Idempotency-Key": "burst-7"}
    jobs = f"{server.base}/api/v1/jobs?limit=1000"
    before = {j["id"] for j in httpx.get(jobs, headers=alice).json()["jobs"]}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: httpx.post(url, json=BODY, headers=once), range(8)))
    assert {a.status_code for a in answers} == {202}
    assert len({a.headers["location"] for a in answers}) == 1
    after = {j["id"] for j in httpx.get(jobs, headers=alice).json()["jobs"]}
    assert after - before == {answers[0].json()["id"]}
    first = answers[0].headers["location"]
    assert _wait_finished(server.base, first, alice)["state"] == "succeeded"


def test_cancel_a_queued_job(setup: tuple[Server, dict[str, str]]) -> None:
    server, keys = setup
    alice = bearer(keys["alice"])
    url = f"{server.base}/v2/models/slow/infer"
    # Two runs at a time: the later submissions wait queued behind them.
    locations = [
        httpx.post(url, json=_slow_body(n + 1), headers={**alice, **ASYNC}).headers["location"]
        for n in range(4)
    ]
    last = locations[-1]
    cancelled = httpx.delete(server.base + last, headers=alice)
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"
    result = httpx.get(f"{server.base}{last}/result", headers=alice)
    assert result.status_code == 409 and "cancelled" in result.json()["error"]
    pending = httpx.get(f"{server.base}{locations[0]}/result", headers=alice)
    assert pending.status_code == 409 and "not ready" in pending.json()["error"]
    for location in locations[:-1]:
        assert _wait_finished(server.base, location, alice)["state"] == "succeeded"
    assert httpx.get(server.base + last, headers=alice).json()["state"] == "cancelled"


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_jobs_survive_sigkill(tmp_path: Path, store: str) -> None:
    repo = tmp_path / "repo"
    _slow_model(repo)
    state = ["--data-dir", str(tmp_path / "data")]
    if store == "postgresql":
        url = postgres_url()
        if url is None:
            if os.environ.get("CI"):
                pytest.fail("PostgreSQL on 127.0.0.1:5432 is not reachable")
            pytest.skip("PostgreSQL on 127.0.0.1:5432 is not reachable")
        state = ["--state-url", url]
    server = start_server(repo, tmp_path / "first.log", *state)
    url = f"{server.base}/v2/models/slow/infer"
    locations = [
        httpx.post(url, json=_slow_body(n + 1), headers=ASYNC).headers["location"] for n in range(5)
    ]
    deadline = time.monotonic() + 10
    while httpx.get(server.base + locations[0]).json()["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    states = {httpx.get(server.base + loc).json()["state"] for loc in locations}
    assert states == {"running", "queued"}
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()
    restarted = start_server(repo, tmp_path / "second.log", *state)
    try:
        for n, location in enumerate(locations):
            state = _wait_finished(restarted.base, location, {}, within=60)
            assert state["state"] == "succeeded", state
            answer = httpx.get(f"{restarted.base}{location}/result").json()
            assert answer["outputs"][0]["data"] == [2.0 * (n + 1), 2.0]
    finally:
        stop_server(restarted)


def test_job_cli_lists_and_reads(setup: tuple[Server, dict[str, str]]) -> None:
    server, keys = setup
    alice = bearer(keys["alice"])
    url = f"{server.base}/v2/models/add_sub/infer"
    job_id = httpx.post(url, json=BODY, headers={**alice, **ASYNC}).json()["id"]
    _wait_finished(server.base, f"/api/v1/jobs/{job_id}", alice)
    common = ["--url", server.base, "--token", keys["alice"]]
    listing = cli("jobs", "list", *common)
    assert listing.returncode == 0, listing.stderr
    assert job_id in listing.stdout and "succeeded" in listing.stdout
    shown = cli("jobs", "get", job_id, *common, "--json")
    assert shown.returncode == 0 and '"succeeded"' in shown.stdout
    result = cli("jobs", "result", job_id, *common)
    assert result.returncode == 0 and '"outputs"' in result.stdout
    missing = cli("jobs", "cancel", "nope", *common)
    assert missing.returncode != 0 and "nope" in missing.stderr
