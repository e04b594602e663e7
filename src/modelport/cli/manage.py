"""``modelport models`` and ``modelport deploy``: the management API from a shell.

Each command is one request to a running server's /api/v1; the answer is
printed as JSON so scripts can read it. A refusal prints the server's
``error`` and ``code`` and exits 1; an unreachable server exits 2.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import httpx
import typer

Url = Annotated[
    str,
    typer.Option(
        "--url", envvar="MODELPORT_URL", help="The server's REST address (MODELPORT_URL)."
    ),
]
DEFAULT_URL = "http://127.0.0.1:8000"

models_app = typer.Typer(no_args_is_help=True, help="Model versions on a running server.")
deploy_app = typer.Typer(no_args_is_help=True, help="Traffic, canaries and rollback.")
canary_app = typer.Typer(no_args_is_help=True, help="Stepped rollouts guarded by SLOs.")
deploy_app.add_typer(canary_app, name="canary")

#: The bearer token for servers with authentication on (set by the group callbacks).
_credentials: dict[str, str] = {}

Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="MODELPORT_TOKEN",
        help="API key or JWT for a server with authentication on (MODELPORT_TOKEN).",
    ),
]


@models_app.callback()
def _models(token: Token = None) -> None:
    """Model versions on a running server."""
    if token:
        _credentials["token"] = token


@deploy_app.callback()
def _deploy(token: Token = None) -> None:
    """Traffic, canaries and rollback."""
    if token:
        _credentials["token"] = token


def _call(
    url: str,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    headers = dict(headers or {})
    if "token" in _credentials:
        headers["Authorization"] = f"Bearer {_credentials['token']}"
    try:
        response = httpx.request(
            method, f"{url.rstrip('/')}/api/v1{path}", json=body, headers=headers, timeout=60
        )
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach {url}: {exc}", err=True)
        raise typer.Exit(2) from None
    if response.status_code >= 400:
        try:
            payload = response.json()
            message = f"{payload.get('error')} ({payload.get('code')})"
        except ValueError:
            message = response.text
        typer.echo(f"error: {response.status_code}: {message}", err=True)
        raise typer.Exit(1)
    return response


def _show(response: httpx.Response) -> None:
    if response.status_code != 204:
        typer.echo(json.dumps(response.json(), indent=2, default=str))


@models_app.command("list")
def list_models(url: Url = DEFAULT_URL) -> None:
    """Models, their versions, states and traffic weights."""
    _show(_call(url, "GET", "/models"))


@models_app.command("load")
def load(model: str, version: int, url: Url = DEFAULT_URL, reason: str | None = None) -> None:
    """Load a version and keep it loaded across repository scans."""
    _show(_call(url, "POST", f"/models/{model}/versions/{version}/load", {"reason": reason}))


@models_app.command("unload")
def unload(model: str, version: int, url: Url = DEFAULT_URL, reason: str | None = None) -> None:
    """Unload a version (refused while traffic or a canary uses it)."""
    _show(_call(url, "POST", f"/models/{model}/versions/{version}/unload", {"reason": reason}))


def _parse_routes(routes: list[str]) -> list[dict[str, Any]]:
    parsed = []
    for item in routes:
        version, sep, weight = item.partition("=")
        if not sep or not weight.strip().isdigit():
            raise typer.BadParameter(f"{item!r}: expected VERSION=WEIGHT, e.g. 2=90")
        parsed.append({"version": version.strip(), "weight": int(weight)})
    return parsed


@deploy_app.command("traffic")
def traffic(
    model: str,
    routes: Annotated[
        list[str] | None, typer.Argument(help="VERSION=WEIGHT pairs summing to 100; none: show")
    ] = None,
    sticky_key: Annotated[str | None, typer.Option(help="Header or parameter to pin by.")] = None,
    shadow: Annotated[str | None, typer.Option(help="VERSION=FRACTION, e.g. 3=0.1")] = None,
    reason: str | None = None,
    url: Url = DEFAULT_URL,
) -> None:
    """Show the traffic policy, or replace it (the current revision is read first)."""
    current = _call(url, "GET", f"/models/{model}/traffic").json()
    if not routes:
        typer.echo(json.dumps(current, indent=2, default=str))
        return
    body: dict[str, Any] = {"routes": _parse_routes(routes), "sticky_key": sticky_key}
    if shadow is not None:
        version, _, fraction = shadow.partition("=")
        try:
            body["shadow"] = {"version": version, "fraction": float(fraction)}
        except ValueError:
            raise typer.BadParameter(f"{shadow!r}: expected VERSION=FRACTION") from None
    if reason is not None:
        body["reason"] = reason
    headers = {"If-Match": str(current["revision"])}
    _show(_call(url, "PUT", f"/models/{model}/traffic", body, headers))


@deploy_app.command("rollback")
def rollback(model: str, reason: str | None = None, url: Url = DEFAULT_URL) -> None:
    """Abort the running canary, or restore the previous traffic policy (after a
    canary, the one in force before it began)."""
    _show(_call(url, "POST", f"/models/{model}/rollback", {"reason": reason}))


@deploy_app.command("history")
def history(
    model: Annotated[
        str | None, typer.Argument(help="Only this model's changes; every model's without one.")
    ] = None,
    limit: int = 20,
    url: Url = DEFAULT_URL,
) -> None:
    """Who changed what, when and why (newest first)."""
    path = f"/models/{model}/history" if model is not None else "/history"
    _show(_call(url, "GET", f"{path}?limit={limit}"))


@canary_app.command("start")
def canary_start(
    model: str,
    version: str,
    steps: Annotated[str, typer.Option(help="Comma-separated percentages.")] = "5,25,50,100",
    interval: Annotated[float, typer.Option(help="Seconds per step.")] = 60.0,
    max_error_rate: float | None = 0.01,
    max_p99_ms: float | None = None,
    min_agreement: float | None = None,
    min_requests: int = 20,
    evidence_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds a step may wait for min-requests before the canary aborts "
            "(default: five intervals)."
        ),
    ] = None,
    stable: str | None = None,
    url: Url = DEFAULT_URL,
) -> None:
    """Start a canary of VERSION against the stable version."""
    try:
        step_list = [int(s) for s in steps.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter(f"{steps!r}: expected comma-separated integers") from None
    body = {
        "version": version,
        "steps": step_list,
        "interval_s": interval,
        "slo": {
            "max_error_rate": max_error_rate,
            "max_p99_ms": max_p99_ms,
            "min_agreement": min_agreement,
        },
        "min_requests": min_requests,
        "evidence_timeout_s": evidence_timeout,
        "stable": stable,
    }
    _show(_call(url, "POST", f"/models/{model}/canary", body))


@canary_app.command("status")
def canary_status(model: str, url: Url = DEFAULT_URL) -> None:
    """The canary's state, step and the candidate's live window."""
    _show(_call(url, "GET", f"/models/{model}/canary"))


def _canary_action(action: str) -> None:
    def command(model: str, url: Url = DEFAULT_URL) -> None:
        _show(_call(url, "POST", f"/models/{model}/canary/{action}"))

    command.__doc__ = f"{action.capitalize()} the model's canary."
    canary_app.command(action)(command)


for _action in ("pause", "resume", "promote", "abort"):
    _canary_action(_action)
