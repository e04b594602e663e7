"""Tables, times and empty listings of the management commands, against a fake server.

``httpx.request`` is replaced by a function that records each request and
answers from a table, so these tests run the real commands (typer, the
views, rich) without a server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from modelport.cli import output
from modelport.cli.main import app
from modelport.cli.output import iso_time

UTC_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")

MODELS = {
    "models": [
        {
            "name": "fraud",
            "versions": [
                {"version": "1", "state": "READY", "reason": "", "weight": 90},
                {"version": "2", "state": "READY", "reason": "", "weight": 10},
                {
                    "version": "3",
                    "state": "UNAVAILABLE",
                    "reason": "load failed: model.onnx: the graph names an input that no "
                    "node produces and no initializer holds, so it cannot run",
                    "weight": None,
                },
            ],
            "traffic_revision": 4,
            "canary": "running",
        },
        {
            "name": "a-model-with-a-rather-long-name-for-a-column",
            "versions": [{"version": "1", "state": "READY", "reason": "", "weight": None}],
            "traffic_revision": 0,
            "canary": None,
        },
    ]
}
HISTORY = {
    "events": [
        {
            "id": 7,
            "model": "fraud",
            "at": "2026-12-07T17:47:03.900192Z",
            "actor": "key:ops-bot",
            "action": "traffic.update",
            "detail": {
                "revision": 4,
                "policy": {
                    "routes": [{"version": "1", "weight": 90}, {"version": "2", "weight": 10}],
                    "sticky_key": None,
                    "shadow": None,
                },
            },
            "reason": "rollback from revision 7: restores revision 4, the policy in force "
            "before the canary of version 2 (promoted)",
        },
        {
            "id": 6,
            "model": "fraud",
            "at": "2026-12-07T17:40:00Z",
            "actor": "local",
            "action": "version.load",
            "detail": {"version": "2"},
            "reason": None,
        },
    ],
    "next_before": 6,
}


@dataclass
class FakeServer:
    """Answers ``path -> (status, body)``; records every request."""

    answers: dict[str, tuple[int, Any]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        self.requests.append({"method": method, "url": url, **kwargs})
        path = url.split("/api/v1", 1)[1]
        status, body = self.answers.get(path.split("?")[0], (404, {"error": "?", "code": "x"}))
        return httpx.Response(status, json=body, request=httpx.Request(method, url))


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    fake = FakeServer()
    monkeypatch.setattr(httpx, "request", fake)
    monkeypatch.delenv("MODELPORT_URL", raising=False)
    monkeypatch.delenv("MODELPORT_TOKEN", raising=False)
    yield fake


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), env=env)


# ------------------------------------------------------------------ times


def test_times_are_utc_with_z_off_a_terminal_and_local_with_offset_on_one() -> None:
    moment = "2026-12-07T17:47:03.900192Z"
    assert iso_time(moment, local=False) == "2026-12-07T17:47:03Z"
    local = iso_time(moment, local=True)
    parsed = datetime.fromisoformat(local)
    assert parsed.utcoffset() is not None
    assert parsed == datetime(2026, 12, 7, 17, 47, 3, tzinfo=UTC)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", local)


def test_naive_times_are_utc_and_epoch_seconds_and_offsets_convert() -> None:
    assert iso_time(datetime(2026, 1, 2, 3, 4, 5), local=False) == "2026-01-02T03:04:05Z"
    assert iso_time(0.5, local=False) == "1970-01-01T00:00:00Z"
    plus4 = datetime(2026, 1, 2, 7, 4, 5, tzinfo=timezone(timedelta(hours=4)))
    assert iso_time(plus4, local=False) == "2026-01-02T03:04:05Z"
    assert iso_time(None) == "-"
    assert iso_time("not a time", local=False) == "not a time"


def test_off_a_terminal_is_the_default_for_captured_output() -> None:
    assert output.local_times() is False  # pytest captures stdout


# ------------------------------------------------------------------ tables


def test_models_list_is_a_table_one_row_per_version(server: FakeServer) -> None:
    server.answers["/models"] = (200, MODELS)
    result = run("models", "list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["MODEL", "VERSION", "STATE", "WEIGHT", "CANARY", "REASON"]
    assert lines[2].split() == ["fraud", "1", "READY", "90%", "running", "-"]
    assert lines[3].split() == ["2", "READY", "10%", "-"]
    assert "a-model-with-a-rather-long-name-for-a-column" in result.stdout


def test_json_prints_the_servers_json_exactly_as_before(server: FakeServer) -> None:
    server.answers["/models"] = (200, MODELS)
    result = run("models", "list", "--json")
    assert result.exit_code == 0, result.output
    assert result.stdout == json.dumps(MODELS, indent=2, default=str) + "\n"


@pytest.mark.parametrize(
    ("args", "path", "body", "line"),
    [
        (["models", "list"], "/models", {"models": []}, "no models"),
        (["deploy", "history"], "/history", {"events": [], "next_before": None}, "no changes"),
        (
            ["deploy", "history", "fraud"],
            "/models/fraud/history",
            {"events": [], "next_before": None},
            "no changes to fraud",
        ),
    ],
)
def test_empty_listings_say_so(
    server: FakeServer, args: list[str], path: str, body: Any, line: str
) -> None:
    server.answers[path] = (200, body)
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert result.stdout == line + "\n"


def test_history_shows_iso_times_what_changed_and_how_to_page(server: FakeServer) -> None:
    server.answers["/history"] = (200, HISTORY)
    result = run("deploy", "history", "--limit", "2")
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()[2:]
    assert rows[0].split()[:5] == [
        "7", "2026-12-07T17:47:03Z", "fraud", "key:ops-bot", "traffic.update"
    ]  # fmt: skip
    assert "1=90 2=10 (rollback from revision 7" in rows[0]
    assert rows[1].split()[:6] == [
        "6", "2026-12-07T17:40:00Z", "fraud", "local", "version.load", "version"
    ]  # fmt: skip
    assert rows[-1] == "older changes: add --before 6"
    assert server.requests[0]["url"].endswith("/api/v1/history?limit=2")
    run("deploy", "history", "--before", "6")
    assert server.requests[-1]["url"].endswith("/api/v1/history?limit=20&before=6")


def test_traffic_and_canary_reports(server: FakeServer) -> None:
    server.answers["/models/fraud/traffic"] = (
        200,
        {
            "model": "fraud",
            "revision": 3,
            "policy": {
                "routes": [{"version": "1", "weight": 90}, {"version": "2", "weight": 10}],
                "sticky_key": "X-User",
                "shadow": {"version": "3", "fraction": 0.25},
            },
            "updated_at": "2026-12-07T17:47:03Z",
            "updated_by": "local",
            "windows": {
                "1": {"requests": 120, "errors": 1, "error_rate": 0.00833, "p99_ms": 4.25},
                "3": {"requests": 30, "shadow_compared": 30, "agreement": 0.9},
            },
        },
    )
    shown = run("deploy", "traffic", "fraud")
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert lines[0] == "fraud: traffic policy revision 3, updated 2026-12-07T17:47:03Z by local"
    assert lines[1].startswith("sticky key: X-User")
    rows = {line.split()[0]: line.split()[1:] for line in lines[4:]}
    assert rows["1"] == ["90%", "120", "1", "0.83%", "4.2", "-"]
    assert rows["2"][:2] == ["10%", "-"]
    assert rows["3"][:3] == ["shadow", "25%", "30"] and "90.00% of 30" in lines[-1]

    server.answers["/models/digits/traffic"] = (
        200,
        {"model": "digits", "revision": 0, "policy": None, "windows": {}},
    )
    assert run("deploy", "traffic", "digits").stdout.startswith("digits: no traffic policy")

    server.answers["/models/fraud/canary"] = (
        200,
        {
            "model": "fraud",
            "state": "running",
            "revision": 2,
            "updated_at": "2026-12-07T17:47:04Z",
            "spec": {
                "version": "2",
                "stable": "1",
                "steps": [10, 50, 100],
                "step": 1,
                "weight": 50,
                "interval_s": 300.0,
                "slo": {"max_error_rate": 0.01, "max_p99_ms": 50, "min_agreement": None},
                "min_requests": 20,
                "step_started_at": 1796665624.4,
            },
            "window": {"requests": 3, "errors": 0},
        },
    )
    canary = run("deploy", "canary", "status", "fraud")
    assert canary.exit_code == 0, canary.output
    pairs = [re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in canary.stdout.splitlines()]
    fields = dict(pairs)
    assert fields["state"].strip() == "running"
    assert fields["step"].strip() == "2 of 3"
    assert fields["slo"].strip() == "error rate <= 0.01, p99 <= 50 ms"
    assert UTC_ISO.fullmatch(fields["updated"].strip())


#: An 80-column terminal, as far as rich can tell (rich reads TTY_COMPATIBLE and COLUMNS).
TERMINAL_80 = {"TTY_COMPATIBLE": "1", "COLUMNS": "80", "NO_COLOR": "1"}
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_tables_fit_80_columns(server: FakeServer) -> None:
    server.answers["/models"] = (200, MODELS)
    server.answers["/history"] = (200, HISTORY)
    for args in (["models", "list"], ["deploy", "history"]):
        result = run(*args, env=TERMINAL_80)
        assert result.exit_code == 0, result.output
        shown = ANSI.sub("", result.stdout)
        assert max(len(line.rstrip()) for line in shown.splitlines()) <= 80, shown
        # No cell is cut: wrapped text stays whole, only split over lines.
        assert "…" not in shown
        if args[0] == "deploy":  # a time is never split over two lines
            assert "2026-12-07T17:47:03Z" in shown


def test_off_a_terminal_rows_are_never_wrapped(server: FakeServer) -> None:
    server.answers["/models"] = (200, MODELS)
    result = run("models", "list", env={"COLUMNS": "80"})
    reason = next(line for line in result.stdout.splitlines() if "UNAVAILABLE" in line)
    assert reason.endswith("so it cannot run")
    assert all(line == line.rstrip() for line in result.stdout.splitlines())


def test_markup_in_values_is_printed_as_written(server: FakeServer) -> None:
    body = {"models": [{"name": "fraud[ae]", "versions": [{"version": "1", "state": "READY"}]}]}
    server.answers["/models"] = (200, body)
    assert "fraud[ae]" in run("models", "list").stdout


# ------------------------------------------------------------------ exit codes


def test_usage_errors_exit_2(server: FakeServer) -> None:
    assert run("models", "load", "fraud", "not-a-number").exit_code == 2
    server.answers["/models/fraud/traffic"] = (200, {"model": "fraud", "revision": 0})
    bad = run("deploy", "traffic", "fraud", "1:90")
    assert bad.exit_code == 2 and "VERSION=WEIGHT" in bad.output


def test_a_refusal_exits_1_with_the_servers_error(server: FakeServer) -> None:
    result = run("deploy", "history", "nope")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: 404: ? (x)")


def test_compliance_report_of_an_empty_repository_says_so(tmp_path: Any) -> None:
    result = run("compliance", "report", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"no models in {tmp_path}\n"
