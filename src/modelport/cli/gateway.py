"""``modelport gateway``: Envoy in front of a fleet of nodes (docs/gateway.md).

``modelport gateway --fleet fleet.yaml`` runs the gateway in the foreground;
``modelport gateway status`` asks a running one's Envoy what it routes to.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated

import typer

from modelport.errors import ConfigError, ListenFailed

gateway_app = typer.Typer(
    invoke_without_command=True,
    help="Route requests to a fleet of nodes through Envoy (docs/gateway.md).",
)

Port = Annotated[int, typer.Option(min=1, max=65535)]

KEY_ENV = "MODELPORT_GATEWAY_KEY"


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _node_key(key_file: Path | None) -> str | None:
    if key_file is not None:
        try:
            key = key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise _fail(f"--node-key-file: cannot read {key_file}: {exc.strerror}") from None
        if not key:
            raise _fail(f"--node-key-file: {key_file} is empty")
        return key
    return os.environ.get(KEY_ENV) or None


@gateway_app.callback()
def gateway(
    ctx: typer.Context,
    fleet: Annotated[
        Path | None, typer.Option("--fleet", help="The fleet file (YAML): regions, groups, nodes.")
    ] = None,
    host: Annotated[str, typer.Option(help="Address the REST and gRPC ports bind.")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(min=1, max=65535, help="REST port.")] = 8080,
    grpc_port: Annotated[int, typer.Option(min=1, max=65535, help="gRPC port.")] = 8081,
    admin_port: Annotated[
        int, typer.Option(min=1, max=65535, help="Envoy's admin port (always on 127.0.0.1).")
    ] = 9901,
    access_log: Annotated[
        Path | None,
        typer.Option(help="File of the JSON access log lines (default: standard output)."),
    ] = None,
    node_key_file: Annotated[
        Path | None,
        typer.Option(help=f"Bearer token for the nodes' readiness polls (default: {KEY_ENV})."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the gateway in the foreground (Ctrl-C or SIGTERM stops it)."""
    if ctx.invoked_subcommand is not None:
        return
    if fleet is None:
        raise _fail("--fleet: the fleet file is required (modelport gateway --fleet fleet.yaml)")
    if not host.strip():
        raise _fail("--host: empty address")
    ports = {"--http-port": http_port, "--grpc-port": grpc_port, "--admin-port": admin_port}
    seen: dict[int, str] = {}
    for flag, port in ports.items():
        if port in seen:
            raise _fail(f"{flag}: {port} is also {seen[port]}")
        seen[port] = flag
    if log_level not in ("debug", "info", "warning", "error"):
        raise _fail(f"--log-level: unknown level '{log_level}' (debug, info, warning, error)")
    token = _node_key(node_key_file)

    from modelport.gateway.envoy_config import Listen
    from modelport.gateway.fleet import load_fleet
    from modelport.observability.logs import configure_logging

    try:
        spec = load_fleet(fleet)
    except ConfigError as exc:
        raise _fail(exc.message) from None
    listen = Listen(
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        admin_port=admin_port,
        access_log=str(access_log.resolve()) if access_log else "/dev/stdout",
    )
    configure_logging(log_level, "auto")
    from modelport.gateway.app import Gateway

    def ready(line: str) -> None:
        typer.echo(line)

    try:
        status = asyncio.run(Gateway(spec, listen, token, on_ready=ready).run())
    except (ConfigError, ListenFailed) as exc:
        raise _fail(exc.message) from None
    raise typer.Exit(status)


@gateway_app.command("status")
def status(
    admin_port: Annotated[
        int, typer.Option(min=1, max=65535, help="The gateway's --admin-port.")
    ] = 9901,
) -> None:
    """Groups, nodes (health as Envoy sees it), weights, regions, ready models, refusals."""
    import httpx

    from modelport.gateway.status import format_status, read_status

    try:
        found = read_status(admin_port)
    except httpx.HTTPError:
        raise _fail(f"--admin-port: no gateway answers on 127.0.0.1:{admin_port}") from None
    typer.echo(format_status(found))
