"""``modelport fleet up|down|ps``: a whole fleet on this machine (docs/fleet.md).

``up`` returns once every node and the gateway answer, leaving them running
in their own sessions; ``down`` stops what ``up`` recorded. Exit codes: 0
done, 1 a process failed to start or ``down`` found nothing to stop, 2 a bad
fleet file or flag (one line naming the file and field, or the flag).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from modelport.cli.client import fail
from modelport.cli.output import say, show, table, text
from modelport.errors import ConfigError

fleet_app = typer.Typer(no_args_is_help=True, help="A whole fleet on this machine.")

StateDir = Annotated[
    Path,
    typer.Option(
        "--state-dir",
        help="Folder of the fleet's record, logs and node data (default .modelport/fleet).",
    ),
]
DEFAULT_STATE_DIR = Path(".modelport/fleet")


def _port(value: int, flag: str) -> int:
    if not 1 <= value <= 65535:
        fail(f"command line: {flag}: {value} is not a port (1 to 65535)", 2)
    return value


@fleet_app.command("up")
def fleet_up(
    fleet_file: Annotated[Path, typer.Argument(help="The fleet file (docs/gateway.md).")],
    state_dir: StateDir = DEFAULT_STATE_DIR,
    http_port: Annotated[int, typer.Option(help="The gateway's REST port.")] = 8080,
    grpc_port: Annotated[int, typer.Option(help="The gateway's gRPC port.")] = 8081,
    admin_port: Annotated[int, typer.Option(help="The gateway's admin port (loopback).")] = 9901,
    gateway: Annotated[
        bool, typer.Option("--gateway/--no-gateway", help="Start the gateway too.")
    ] = True,
    timeout: Annotated[
        float, typer.Option(help="Seconds each process may take to answer.", min=1)
    ] = 120.0,
) -> None:
    """Start every node of FLEET_FILE on loopback, then the gateway; return once all answer."""
    from modelport.deploy.local import FleetError, GatewayPorts, Probes, plan, up
    from modelport.gateway.fleet import load_fleet

    ports = (
        GatewayPorts(
            _port(http_port, "--http-port"),
            _port(grpc_port, "--grpc-port"),
            _port(admin_port, "--admin-port"),
        )
        if gateway
        else None
    )
    try:
        spec = load_fleet(fleet_file)
        launches = plan(spec, fleet_file, state_dir.resolve(), ports)
    except ConfigError as exc:
        fail(f"error: {exc.message}", 2)
    try:
        running = up(
            launches, state_dir.resolve(), timeout, progress=say, probes=Probes.of(spec.tls)
        )
    except FleetError as exc:
        fail(f"error: {exc.message}", 1)
    grid = table("NAME", "KIND", "REGION", "GROUP", "HTTP", "GRPC", "PID", "LOG")
    for entry in running:
        launch = entry.launch
        grid.add_row(
            escape(launch.name),
            launch.kind,
            text(launch.region),
            text(launch.group),
            text(launch.http),
            text(launch.grpc),
            str(entry.pid),
            escape(launch.log),
        )
    show(grid)
    say(f"fleet up: {len(running)} processes; stop them with: modelport fleet down")


@fleet_app.command("down")
def fleet_down(state_dir: StateDir = DEFAULT_STATE_DIR) -> None:
    """Stop the fleet that fleet up started from --state-dir (gateway first)."""
    from modelport.deploy.local import FleetError, down

    try:
        stopped, killed = down(state_dir.resolve())
    except FleetError as exc:
        fail(f"error: {exc.message}", 1)
    for name in killed:
        say(f"{name} did not stop in time and was killed")
    say(f"fleet down: {len(stopped)} processes stopped")


@fleet_app.command("ps")
def fleet_ps(state_dir: StateDir = DEFAULT_STATE_DIR) -> None:
    """The processes fleet up started from --state-dir, and whether each still runs."""
    from modelport.deploy.local import FleetError, is_alive, read_state

    try:
        running = read_state(state_dir.resolve())
    except FleetError as exc:
        fail(f"error: {exc.message}", 1)
    if not running:
        say(f"no fleet is recorded in {state_dir}")
        return
    grid = table("NAME", "KIND", "REGION", "HTTP", "PID", "STATE")
    for entry in running:
        grid.add_row(
            escape(entry.launch.name),
            entry.launch.kind,
            text(entry.launch.region),
            text(entry.launch.http),
            str(entry.pid),
            "running" if is_alive(entry) else "stopped",
        )
    show(grid)
