"""--url and --token at every level, their variables, and what a refusal says."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from modelport.cli.main import app
from tests.unit.cli.test_cli_output import FakeServer

SECRET = "mpk_0123456789ab_s3cr3tS3cr3tS3cr3t"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    fake = FakeServer({"/models": (200, {"models": []})})
    monkeypatch.setattr(httpx, "request", fake)
    monkeypatch.delenv("MODELPORT_URL", raising=False)
    monkeypatch.delenv("MODELPORT_TOKEN", raising=False)
    return fake


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), env=env)


def sent(server: FakeServer) -> tuple[str, str | None]:
    last = server.requests[-1]
    return last["url"], last["headers"].get("Authorization")


@pytest.mark.parametrize(
    "args",
    [
        ["--url", "http://h:1", "--token", "T", "models", "list"],
        ["models", "--url", "http://h:1", "--token", "T", "list"],
        ["models", "list", "--url", "http://h:1", "--token", "T"],
        ["--url", "http://h:1", "models", "--token", "T", "list"],
        ["--token", "T", "deploy", "canary", "--url", "http://h:1", "status", "m"],
    ],
)
def test_url_and_token_work_before_or_after_the_subcommand(
    server: FakeServer, args: list[str]
) -> None:
    server.answers["/models/m/canary"] = (200, {"model": "m", "state": "running"})
    result = run(*args)
    assert result.exit_code == 0, result.output
    url, auth = sent(server)
    assert url.startswith("http://h:1/api/v1/")
    assert auth == "Bearer T"


def test_the_option_nearest_the_command_wins(server: FakeServer) -> None:
    run("--url", "http://outer:1", "models", "--url", "http://group:1", "list")
    assert sent(server)[0] == "http://group:1/api/v1/models"
    run("--url", "http://outer:1", "models", "list", "--url", "http://inner:1")
    assert sent(server)[0] == "http://inner:1/api/v1/models"


def test_variables_are_used_and_options_beat_them(server: FakeServer) -> None:
    env = {"MODELPORT_URL": "http://env:1", "MODELPORT_TOKEN": "E"}
    assert run("models", "list", env=env).exit_code == 0
    assert sent(server) == ("http://env:1/api/v1/models", "Bearer E")
    assert run("--url", "http://flag:1", "--token", "F", "models", "list", env=env).exit_code == 0
    assert sent(server) == ("http://flag:1/api/v1/models", "Bearer F")


def test_without_anything_the_default_address_and_no_token(server: FakeServer) -> None:
    assert run("models", "list").exit_code == 0
    assert sent(server) == ("http://127.0.0.1:8000/api/v1/models", None)


@pytest.mark.parametrize(
    ("status", "args", "env", "source"),
    [
        (401, [], {}, "No token was sent (neither --token nor MODELPORT_TOKEN is set)"),
        (401, ["--token", SECRET], {}, "The token from --token was not accepted"),
        (401, [], {"MODELPORT_TOKEN": SECRET}, "The token from MODELPORT_TOKEN was not accepted"),
        (403, ["--token", SECRET], {}, "The token from --token is not allowed this"),
        (403, [], {"MODELPORT_TOKEN": SECRET}, "The token from MODELPORT_TOKEN is not allowed"),
    ],
)
def test_401_and_403_name_the_tokens_source_never_the_token(
    server: FakeServer, status: int, args: list[str], env: dict[str, str], source: str
) -> None:
    server.answers["/models"] = (status, {"error": "no", "code": "unauthenticated"})
    result = run(*args, "models", "list", env=env)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {status}: no (unauthenticated)\n")
    assert source in result.stderr
    assert "--token TOKEN or the MODELPORT_TOKEN environment variable" in result.stderr
    # Neither the token nor any part of it (its id, a prefix of its secret).
    assert SECRET not in result.output
    assert "0123" not in result.output and "s3cr" not in result.output


def test_other_refusals_give_no_token_advice(server: FakeServer) -> None:
    server.answers["/models"] = (409, {"error": "busy", "code": "conflict"})
    result = run("models", "list")
    assert result.exit_code == 1
    assert result.stderr == "error: 409: busy (conflict)\n"


def test_an_unreachable_server_names_the_url_and_how_to_change_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(method: str, url: str, **kwargs: Any) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused")

    monkeypatch.setattr(httpx, "request", refuse)
    monkeypatch.delenv("MODELPORT_URL", raising=False)
    result = run("models", "list")
    assert result.exit_code == 2
    assert "cannot reach the server at http://127.0.0.1:8000 (from the default)" in result.stderr
    assert "connection refused" in result.stderr
    assert "--url URL or MODELPORT_URL=URL" in result.stderr
    by_env = run("models", "list", env={"MODELPORT_URL": "http://10.0.0.9:8000"})
    assert "http://10.0.0.9:8000 (from MODELPORT_URL)" in by_env.stderr


def test_an_answer_that_is_not_json_is_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def html(method: str, url: str, **kwargs: Any) -> httpx.Response:
        return httpx.Response(200, text="<html>", request=httpx.Request(method, url))

    monkeypatch.setattr(httpx, "request", html)
    result = run("models", "list", "--url", "http://127.0.0.1:8002")
    assert result.exit_code == 2
    assert "answered 200 without JSON" in result.stderr


def test_a_refusal_without_a_code_prints_the_error_alone(server: FakeServer) -> None:
    server.answers["/models"] = (401, {"error": "authentication required"})
    result = run("models", "list")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == "error: 401: authentication required"
