"""Canaries judged on evidence, through /api/v1 and ``modelport deploy``.

Each model's versions answer y = x + version (see test_traffic), so version 2
disagrees with version 1 on every row: the shadow comparison an agreement SLO
relies on can only fail.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Server, start_server, stop_server
from tests.integration.test_traffic import api, build, cli, infer, put_policy, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("canary-repo")
    for name in ("idle", "differs", "promo"):
        build(root, name, {1: False, 2: False})
    server = start_server(root, tmp_path_factory.mktemp("canary-logs") / "server.log")
    # Only the latest version loads by itself; the stable one is loaded here.
    for name in ("idle", "differs", "promo"):
        r = httpx.post(f"{api(server)}/models/{name}/versions/1/load", timeout=60)
        assert r.status_code == 200, r.text
    yield server
    stop_server(server)


def canary(server: Server, model: str) -> dict[str, Any]:
    r = httpx.get(f"{api(server)}/models/{model}/canary")
    assert r.status_code == 200, r.text
    return dict(r.json())


def routes(server: Server, model: str) -> list[dict[str, Any]]:
    return list(httpx.get(f"{api(server)}/models/{model}/traffic").json()["policy"]["routes"])


def test_canary_without_traffic_aborts_instead_of_promoting(srv: Server) -> None:
    started = cli(
        srv,
        "deploy", "canary", "start", "idle", "2",
        "--steps", "50,100", "--interval", "0.2", "--min-requests", "5",
        "--evidence-timeout", "1", "--json",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    assert json.loads(started.stdout)["spec"]["evidence_timeout_s"] == 1.0
    # Nobody sends a request: the step holds past its interval, then gives up.
    state = wait_for(lambda: (s := canary(srv, "idle"))["state"] != "running" and s)
    assert state["state"] == "aborted"
    pattern = r"step 1: only 0 of min_requests 5 requests reached the candidate in 1\.\d s"
    assert re.fullmatch(pattern, state["spec"]["reason"])
    assert routes(srv, "idle") == [{"version": "1", "weight": 100}]
    status = json.loads(cli(srv, "deploy", "canary", "status", "idle", "--json").stdout)
    assert status["state"] == "aborted"
    events = json.loads(cli(srv, "deploy", "history", "idle", "--json").stdout)["events"]
    aborted = [e for e in events if e["action"] == "canary.aborted"]
    assert aborted and re.fullmatch(pattern, aborted[0]["reason"])
    assert not [e for e in events if e["action"] == "canary.promoted"]


def test_canary_disagreeing_with_stable_rolls_back(srv: Server) -> None:
    spec = {
        "version": "2",
        "steps": [50, 100],
        "interval_s": 0.3,
        "min_requests": 5,
        "evidence_timeout_s": 60,
        "slo": {"min_agreement": 0.9},
    }
    started = httpx.post(f"{api(srv)}/models/differs/canary", json=spec)
    assert started.status_code == 201, started.text

    def finished() -> dict[str, Any] | None:
        infer(srv, "differs", 1.0)
        state = canary(srv, "differs")
        return state if state["state"] != "running" else None

    state = wait_for(finished)
    assert state["state"] == "rolled_back", state
    assert "shadow agreement 0.000 < 0.9" in state["spec"]["reason"]
    assert routes(srv, "differs") == [{"version": "1", "weight": 100}]
    assert {infer(srv, "differs", 1.0)[0] for _ in range(10)} == {"1"}
    events = httpx.get(f"{api(srv)}/models/differs/history").json()["events"]
    assert "canary.rollback" in [e["action"] for e in events]


def test_rollback_after_a_promotion_restores_the_policy_before_the_canary(srv: Server) -> None:
    before = {"routes": [{"version": "1", "weight": 100}], "sticky_key": "X-User", "shadow": None}
    first = put_policy(srv, "promo", before, 0)
    assert first.status_code == 200, first.text
    spec = {
        "version": "2",
        "steps": [50, 100],
        "interval_s": 0.2,
        "min_requests": 3,
        "evidence_timeout_s": 60,
    }
    assert httpx.post(f"{api(srv)}/models/promo/canary", json=spec).status_code == 201

    def promoted() -> bool:
        infer(srv, "promo", 1.0)
        return canary(srv, "promo")["state"] == "promoted"

    wait_for(promoted)
    promoted_revision = httpx.get(f"{api(srv)}/models/promo/traffic").json()["revision"]
    back = cli(srv, "deploy", "rollback", "promo", "--json")
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout)["policy"] == before
    assert {infer(srv, "promo", 1.0)[0] for _ in range(10)} == {"1"}
    latest = json.loads(cli(srv, "deploy", "history", "promo", "--json").stdout)["events"][0]
    assert latest["action"] == "traffic.update"
    assert latest["detail"]["policy"] == before
    assert latest["reason"] == (
        f"rollback from revision {promoted_revision}: restores revision 1, "
        "the policy in force before the canary of version 2 (promoted)"
    )
