"""The management commands against the real server: tables, ``--json``, options, refusals.

The CLI runs as a subprocess (``python -m modelport``), so stdout is a pipe:
times are printed in UTC (``...Z``), and table rows are never wrapped.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Server, free_port, start_server, stop_server
from tests.integration.test_traffic import build, put_policy

pytestmark = pytest.mark.integration

ISO_UTC = re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\b")


def modelport(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    base.pop("COLUMNS", None)
    return subprocess.run(
        [sys.executable, "-m", "modelport", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**base, **(env or {})},
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-tables-repo")
    build(root, "scorer", {1: False, 2: False})
    build(root, "ranker-with-a-long-name", {1: False})
    return root


@pytest.fixture(scope="module")
def srv(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(repo, tmp_path_factory.mktemp("cli-tables") / "server.log")
    api = f"{server.base}/api/v1"
    assert httpx.post(f"{api}/models/scorer/versions/1/load", timeout=60).status_code == 200
    body = {"routes": [{"version": "1", "weight": 70}, {"version": "2", "weight": 30}]}
    assert put_policy(server, "scorer", {**body, "reason": "split for the test"}, 0).is_success
    yield server
    stop_server(server)


def rest(server: Server, path: str) -> object:
    reply = httpx.get(f"{server.base}/api/v1{path}", timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_models_list_is_a_table_of_the_models(srv: Server) -> None:
    done = modelport("models", "list", "--url", srv.base)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["MODEL", "VERSION", "STATE", "WEIGHT", "CANARY", "REASON"]
    rows = [line.split() for line in lines[2:]]
    assert ["scorer", "1", "READY", "70%", "-", "-"] in rows
    assert ["2", "READY", "30%", "-"] in rows
    assert any(row[0] == "ranker-with-a-long-name" for row in rows)


def test_history_shows_iso_utc_times_and_the_change(srv: Server) -> None:
    done = modelport("deploy", "history", "scorer", "--url", srv.base)
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()[2:]
    update = next(row for row in rows if "traffic.update" in row)
    assert ISO_UTC.search(update), update
    assert "1=70 2=30 (split for the test)" in update
    assert any("version.load" in row and ISO_UTC.search(row) for row in rows)


def test_traffic_shows_the_policy_with_its_time(srv: Server) -> None:
    done = modelport("deploy", "traffic", "scorer", "--url", srv.base)
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("scorer: traffic policy revision 1, updated ")
    assert ISO_UTC.search(first)


@pytest.mark.parametrize(
    ("args", "path"),
    [
        (["models", "list"], "/models"),
        (["deploy", "history"], "/history?limit=20"),
        (["deploy", "history", "scorer", "--limit", "5"], "/models/scorer/history?limit=5"),
        (["deploy", "traffic", "scorer"], "/models/scorer/traffic"),
    ],
)
def test_json_is_what_the_rest_api_returns(srv: Server, args: list[str], path: str) -> None:
    done = modelport(*args, "--json", "--url", srv.base)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == rest(srv, path)
    # The format scripts already read: the server's JSON, indented by two.
    assert done.stdout == json.dumps(json.loads(done.stdout), indent=2) + "\n"


def test_url_before_or_after_the_subcommand_or_from_the_variable(srv: Server) -> None:
    outputs = {
        "root": modelport("--url", srv.base, "models", "list"),
        "group": modelport("models", "--url", srv.base, "list"),
        "command": modelport("models", "list", "--url", srv.base),
        "variable": modelport("models", "list", env={"MODELPORT_URL": srv.base}),
        "option over variable": modelport(
            "--url", srv.base, "models", "list", env={"MODELPORT_URL": "http://127.0.0.1:9"}
        ),
    }
    for name, done in outputs.items():
        assert done.returncode == 0, (name, done.stderr)
    assert len({done.stdout for done in outputs.values()}) == 1
    assert "scorer" in outputs["root"].stdout


def test_tables_fit_an_80_column_terminal(srv: Server) -> None:
    # rich takes the output for a terminal with TTY_COMPATIBLE, and its width from COLUMNS.
    terminal = {"TTY_COMPATIBLE": "1", "COLUMNS": "80", "NO_COLOR": "1"}
    for args in (["models", "list"], ["deploy", "history"], ["deploy", "traffic", "scorer"]):
        done = modelport(*args, "--url", srv.base, env=terminal)
        assert done.returncode == 0, done.stderr
        shown = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout)
        assert max(len(line.rstrip()) for line in shown.splitlines()) <= 80, shown
        assert "…" not in shown


def test_connection_refused_names_the_url_and_how_to_change_it() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = modelport("models", "list", env={"MODELPORT_URL": url})
    assert done.returncode == 2
    assert f"cannot reach the server at {url} (from MODELPORT_URL)" in done.stderr
    assert "--url URL or MODELPORT_URL=URL" in done.stderr
    assert "Traceback" not in done.stderr


# ------------------------------------------------------------------ authentication


@pytest.fixture(scope="module")
def secured(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    data = tmp_path_factory.mktemp("cli-auth-data")
    made = modelport("keys", "create", "--role", "viewer", "--models", "*", "--data-dir", str(data))
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    log = tmp_path_factory.mktemp("cli-auth") / "server.log"
    server = start_server(repo, log, "--data-dir", str(data), "--require-auth")
    yield server, token
    stop_server(server)


def test_401_names_where_the_token_came_from_never_the_token(
    secured: tuple[Server, str],
) -> None:
    server, token = secured
    wrong = token[:-4] + ("aaaa" if not token.endswith("aaaa") else "bbbb")
    cases = {
        "No token was sent (neither --token nor MODELPORT_TOKEN is set)": modelport(
            "models", "list", "--url", server.base
        ),
        "The token from --token was not accepted": modelport(
            "--token", wrong, "models", "list", "--url", server.base
        ),
        "The token from MODELPORT_TOKEN was not accepted": modelport(
            "models", "list", "--url", server.base, env={"MODELPORT_TOKEN": wrong}
        ),
    }
    for source, done in cases.items():
        assert done.returncode == 1, done.stderr
        assert done.stderr.startswith("error: 401: "), done.stderr
        assert source in done.stderr
        assert "--token TOKEN or the MODELPORT_TOKEN environment variable" in done.stderr
        secret = wrong.split("_", 2)[2]
        assert secret not in done.stderr + done.stdout
        assert secret[:4] not in done.stderr + done.stdout


def test_a_good_token_before_or_after_the_subcommand(secured: tuple[Server, str]) -> None:
    server, token = secured
    for args in (
        ["--token", token, "models", "list", "--url", server.base],
        ["models", "--token", token, "list", "--url", server.base],
        ["models", "list", "--url", server.base, "--token", token],
    ):
        done = modelport(*args, "--json")
        assert done.returncode == 0, done.stderr
        assert {m["name"] for m in json.loads(done.stdout)["models"]} == {
            "scorer",
            "ranker-with-a-long-name",
        }
    by_variable = modelport(
        "deploy", "history", "--url", server.base, env={"MODELPORT_TOKEN": token}
    )
    assert by_variable.returncode == 0, by_variable.stderr
