"""``modelport models`` and ``modelport deploy``: the management API from a shell.

Each command is one request to a running server's /api/v1 (``traffic``
with routes reads the current revision first). The answer is printed as a
table or a short report for people; with ``--json``, as the server's JSON,
unchanged, for scripts. ``--url`` and ``--token`` may come before the group,
after it or on the command (see :mod:`modelport.cli.client`).

Exit codes: 0 done; 1 the server refused (its ``error`` and ``code`` are
printed, and for 401/403 where the token came from); 2 a usage error, or
the server could not be reached.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from modelport.cli import views
from modelport.cli.client import Token, Url, connection, remember
from modelport.cli.output import AsJson, print_json

models_app = typer.Typer(no_args_is_help=True, help="Model versions on a running server.")
deploy_app = typer.Typer(no_args_is_help=True, help="Traffic, canaries and rollback.")
canary_app = typer.Typer(no_args_is_help=True, help="Stepped rollouts guarded by SLOs.")
deploy_app.add_typer(canary_app, name="canary")

Model = Annotated[str, typer.Argument(help="The model's name.", show_default=False)]
Reason = Annotated[str | None, typer.Option(help="Why, recorded in the history with the change.")]


@models_app.callback()
def _models(ctx: typer.Context, url: Url = None, token: Token = None) -> None:
    """Model versions on a running server."""
    remember(ctx, url, token)


@deploy_app.callback()
def _deploy(ctx: typer.Context, url: Url = None, token: Token = None) -> None:
    """Traffic, canaries and rollback."""
    remember(ctx, url, token)


@canary_app.callback()
def _canary(ctx: typer.Context, url: Url = None, token: Token = None) -> None:
    """Stepped rollouts guarded by SLOs."""
    remember(ctx, url, token)


def _request(
    ctx: typer.Context,
    url: str | None,
    token: str | None,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> Any:
    """One call with the command's connection; the JSON answer."""
    server = connection(ctx, url, token)
    return server.json(server.call(method, path, body, headers))


def _emit(as_json: bool, data: Any, view: Callable[..., None], *args: Any) -> None:
    """The server's JSON unchanged with ``--json``; else its view for people."""
    if as_json:
        print_json(data)
    else:
        view(data, *args)


@models_app.command("list")
def list_models(
    ctx: typer.Context, url: Url = None, token: Token = None, as_json: AsJson = False
) -> None:
    """Models, their versions, states and traffic weights."""
    data = _request(ctx, url, token, "GET", "/models")
    _emit(as_json, data, views.models)


def _version_command(action: str, doc: str) -> None:
    def command(
        ctx: typer.Context,
        model: Model,
        version: Annotated[int, typer.Argument(help="The version number.", show_default=False)],
        reason: Reason = None,
        url: Url = None,
        token: Token = None,
        as_json: AsJson = False,
    ) -> None:
        path = f"/models/{model}/versions/{version}/{action}"
        data = _request(ctx, url, token, "POST", path, {"reason": reason})
        _emit(as_json, data, views.version_change)

    command.__doc__ = doc
    models_app.command(action)(command)


_version_command("load", "Load a version and keep it loaded across repository scans.")
_version_command("unload", "Unload a version (refused while traffic or a canary uses it).")


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
    ctx: typer.Context,
    model: Model,
    routes: Annotated[
        list[str] | None,
        typer.Argument(help="VERSION=WEIGHT pairs summing to 100; none: show the policy."),
    ] = None,
    sticky_key: Annotated[
        str | None, typer.Option(help="Header or parameter whose value pins a caller.")
    ] = None,
    shadow: Annotated[
        str | None, typer.Option(help="Copy answered requests: VERSION=FRACTION, e.g. 3=0.1.")
    ] = None,
    reason: Reason = None,
    url: Url = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Show the traffic policy, or replace it (the current revision is read first)."""
    current = _request(ctx, url, token, "GET", f"/models/{model}/traffic")
    if not routes:
        _emit(as_json, current, views.traffic)
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
    saved = _request(ctx, url, token, "PUT", f"/models/{model}/traffic", body, headers)
    _emit(as_json, saved, views.traffic)


@deploy_app.command("rollback")
def rollback(
    ctx: typer.Context,
    model: Model,
    reason: Reason = None,
    url: Url = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Abort the running canary, or restore the previous traffic policy (after a
    canary, the one in force before it began)."""
    data = _request(ctx, url, token, "POST", f"/models/{model}/rollback", {"reason": reason})
    _emit(as_json, data, views.traffic)


@deploy_app.command("history")
def history(
    ctx: typer.Context,
    model: Annotated[
        str | None, typer.Argument(help="Only this model's changes; every model's without one.")
    ] = None,
    limit: Annotated[int, typer.Option(help="How many changes to show (1 to 1000).")] = 20,
    before: Annotated[
        int | None,
        typer.Option(help="Only changes older than this id (the id the last page ends on)."),
    ] = None,
    url: Url = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Who changed what, when and why (newest first)."""
    path = f"/models/{model}/history" if model is not None else "/history"
    query = f"?limit={limit}" + (f"&before={before}" if before is not None else "")
    data = _request(ctx, url, token, "GET", path + query)
    _emit(as_json, data, views.history, model)


@canary_app.command("start")
def canary_start(
    ctx: typer.Context,
    model: Model,
    version: Annotated[str, typer.Argument(help="The candidate version.", show_default=False)],
    steps: Annotated[
        str, typer.Option(help="Comma-separated percentages, the last 100.")
    ] = "5,25,50,100",
    interval: Annotated[float, typer.Option(help="Seconds per step.")] = 60.0,
    max_error_rate: Annotated[
        float | None, typer.Option(help="SLO: largest share of failed requests (0 to 1).")
    ] = 0.01,
    max_p99_ms: Annotated[
        float | None, typer.Option(help="SLO: largest p99 latency in milliseconds.")
    ] = None,
    min_agreement: Annotated[
        float | None,
        typer.Option(help="SLO: smallest share of shadow answers equal to stable's (0 to 1)."),
    ] = None,
    min_requests: Annotated[
        int, typer.Option(help="Requests a step needs before it is judged.")
    ] = 20,
    evidence_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds a step may wait for min-requests before the canary aborts "
            "(default: five intervals)."
        ),
    ] = None,
    stable: Annotated[
        str | None,
        typer.Option(help="The version to compare against (default: the policy's main route)."),
    ] = None,
    url: Url = None,
    token: Token = None,
    as_json: AsJson = False,
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
    data = _request(ctx, url, token, "POST", f"/models/{model}/canary", body)
    _emit(as_json, data, views.canary)


@canary_app.command("status")
def canary_status(
    ctx: typer.Context,
    model: Model,
    url: Url = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """The canary's state, step and the candidate's live window."""
    data = _request(ctx, url, token, "GET", f"/models/{model}/canary")
    _emit(as_json, data, views.canary)


def _canary_action(action: str) -> None:
    def command(
        ctx: typer.Context,
        model: Model,
        url: Url = None,
        token: Token = None,
        as_json: AsJson = False,
    ) -> None:
        data = _request(ctx, url, token, "POST", f"/models/{model}/canary/{action}")
        _emit(as_json, data, views.canary)

    command.__doc__ = f"{action.capitalize()} the model's canary."
    canary_app.command(action)(command)


for _action in ("pause", "resume", "promote", "abort"):
    _canary_action(_action)
