"""A whole fleet on this machine: ``modelport fleet up`` and ``fleet down``.

Development, the tests and a small site on one big box all want what a real
fleet has (nodes in several regions sharing one state store and one set of
rate limits, behind the gateway) without a cluster. ``up`` starts every node
the fleet file names as a ``modelport serve`` subprocess on its own loopback
ports with its region label, then the gateway, waits until each answers, and
returns; what it started is recorded in ``<state-dir>/fleet.json`` so that
``down`` (another process, later) stops exactly those processes and nothing
that has since taken over one of their pids.

The nodes share the fleet file's ``state_url`` (PostgreSQL, or a SQLite file
in the state directory when the file names none: SQLite serves several
processes on one machine) and its ``redis_url`` when it has one.

With fleet certificates (the fleet file's ``tls``) every node serves
``tls.node_cert``, and, when the gateway has a client certificate, accepts
only clients the fleet CA signed and trusts the gateway's X-Forwarded-For:
the nodes ``up`` starts take the gateway as real ones would. ``up`` itself
probes them with the gateway's certificate.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from modelport.errors import ConfigError, ModelportError
from modelport.gateway.fleet import FleetSpec, NodeSpec, parse_address
from modelport.gateway.fleet_tls import TlsSpec, gateway_probe_context, identity, poll_context

#: The record of a running fleet, inside the state directory.
STATE_FILE = "fleet.json"
#: Seconds ``down`` waits for a process after SIGTERM before SIGKILL: a node's
#: default shutdown grace (30 s) and drain, with a margin.
STOP_WAIT_S = 45.0


class FleetError(ModelportError):
    """A local fleet could not be started or stopped; the message says which process and why."""


@dataclass(frozen=True)
class Launch:
    """One process ``up`` starts: what runs, where it logs, and how it shows it is ready."""

    name: str
    kind: str  # "node" or "gateway"
    argv: list[str]
    log: str
    ready_url: str
    region: str | None = None
    group: str | None = None
    http: str | None = None
    grpc: str | None = None


@dataclass(frozen=True)
class Running:
    """A started process as ``fleet.json`` records it."""

    launch: Launch
    pid: int
    started: str
    """The kernel's start time of ``pid`` (/proc/<pid>/stat field 22): a pid reused by
    another process later has another start time, so ``down`` leaves it alone."""


@dataclass(frozen=True)
class GatewayPorts:
    http: int = 8080
    grpc: int = 8081
    admin: int = 9901


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_local(spec: FleetSpec, source: str) -> None:
    """``up`` starts processes on this machine only, bound to loopback."""
    if not spec.nodes:
        raise ConfigError(source, "nodes", "fleet up needs at least one node to start")
    for index, node in enumerate(spec.nodes):
        for field in ("http", "grpc"):
            value = getattr(node, field)
            if value is None:
                continue
            host, _ = parse_address(value)
            if not _is_loopback(host):
                raise ConfigError(
                    source,
                    f"nodes[{index}].{field}",
                    f"fleet up starts nodes on this machine only, on loopback addresses; "
                    f"'{value}' is not one",
                )
    for name, group in spec.groups.items():
        if group.repository is not None and not group.repository.is_dir():
            raise ConfigError(
                source, f"groups.{name}.repository", f"{group.repository} is not a folder"
            )


def _node_tls(tls: TlsSpec | None, source: str) -> list[str]:
    """The TLS flags of every node: what the gateway's ``tls`` expects of the nodes."""
    if tls is None or tls.ca is None:
        return []
    if tls.node_cert is None or tls.node_key is None:
        raise ConfigError(
            source,
            "tls.node_cert",
            "fleet up needs the nodes' certificate (and tls.node_key) with tls.ca: "
            "the gateway reaches every node over TLS",
        )
    flags = ["--tls-cert", str(tls.node_cert), "--tls-key", str(tls.node_key)]
    if tls.cert is not None:
        flags += ["--tls-client-ca", str(tls.ca)]
        flags += ["--trusted-proxy-identity", identity(tls.cert)]
    return flags


def _node_argv(
    spec: FleetSpec,
    node: NodeSpec,
    state_url: str,
    data_dir: Path,
    python: str,
    tls_flags: Sequence[str] = (),
) -> list[str]:
    host, http_port = parse_address(node.http)
    group = spec.group_of_node(node)
    repository = spec.groups[group].repository
    argv = [python, "-m", "modelport", "serve"]
    if repository is not None:
        argv.append(str(repository))
    argv += ["--host", host, "--http-port", str(http_port)]
    if node.grpc is not None:
        argv += ["--grpc-port", str(parse_address(node.grpc)[1])]
    else:
        argv += ["--grpc-port", "0"]
    argv += ["--metrics-port", "0", "--region", node.region, "--state-url", state_url]
    argv += ["--data-dir", str(data_dir)]
    if spec.redis_url is not None:
        argv += ["--redis-url", spec.redis_url]
    return argv + list(tls_flags)


def _gateway_argv(fleet_file: Path, ports: GatewayPorts, python: str) -> list[str]:
    return [
        python, "-m", "modelport", "gateway",
        "--fleet", str(fleet_file.resolve()),
        "--http-port", str(ports.http),
        "--grpc-port", str(ports.grpc),
        "--admin-port", str(ports.admin),
    ]  # fmt: skip


def plan(
    spec: FleetSpec,
    fleet_file: Path,
    state_dir: Path,
    gateway: GatewayPorts | None,
    python: str = sys.executable,
) -> list[Launch]:
    """Every process ``up`` starts, nodes first, the gateway (when wanted) last."""
    source = str(fleet_file)
    _check_local(spec, source)
    state_url = spec.state_url or f"sqlite:///{(state_dir / 'state.db').resolve()}"
    tls_flags = _node_tls(spec.tls, source)
    scheme = "https" if tls_flags else "http"
    launches: list[Launch] = []
    for node in spec.nodes:
        host, http_port = parse_address(node.http)
        url_host = f"[{host}]" if ":" in host else host
        data_dir = state_dir / "nodes" / node.name
        launches.append(
            Launch(
                name=node.name,
                kind="node",
                argv=_node_argv(spec, node, state_url, data_dir, python, tls_flags),
                log=str(state_dir / "logs" / f"{node.name}.log"),
                ready_url=f"{scheme}://{url_host}:{http_port}/v2/health/ready",
                region=node.region,
                group=spec.group_of_node(node),
                http=node.http,
                grpc=node.grpc,
            )
        )
    if gateway is not None:
        to_clients = spec.tls is not None and spec.tls.server_cert is not None
        scheme = "https" if to_clients else "http"
        launches.append(
            Launch(
                name="gateway",
                kind="gateway",
                argv=_gateway_argv(fleet_file, gateway, python),
                log=str(state_dir / "logs" / "gateway.log"),
                # Through the gateway to a node: Envoy is up, has the routes, and
                # has found a node healthy.
                ready_url=f"{scheme}://127.0.0.1:{gateway.http}/v2/health/ready",
                http=f"127.0.0.1:{gateway.http}",
                grpc=f"127.0.0.1:{gateway.grpc}",
            )
        )
    return launches


# ---------------------------------------------------------------- processes


def start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid``, or None when no such process lives."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has ended; only its parent's wait is left
        return None
    return fields[19]


def is_alive(entry: Running) -> bool:
    return start_time(entry.pid) == entry.started


def _last_line(log: str) -> str:
    try:
        lines = [ln for ln in Path(log).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


@dataclass(frozen=True)
class Probes:
    """How ``up`` reaches what it started: TLS contexts for the nodes and the gateway."""

    nodes: ssl.SSLContext | None = None
    gateway: ssl.SSLContext | None = None

    @classmethod
    def of(cls, tls: TlsSpec | None) -> Probes:
        return cls(poll_context(tls), gateway_probe_context(tls))

    def context(self, launch: Launch) -> ssl.SSLContext | None:
        return self.gateway if launch.kind == "gateway" else self.nodes


def _ready(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _base(url: str) -> str:
    return url.split("/v2/", 1)[0]


def _ready_models(nodes: Sequence[Launch], context: ssl.SSLContext | None = None) -> list[str]:
    """The models READY on any node, from each node's repository index."""
    names: set[str] = set()
    for node in nodes:
        request = urllib.request.Request(
            f"{_base(node.ready_url)}/v2/repository/index",
            data=b"{}",
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as reply:
                entries = json.load(reply)
        except (urllib.error.URLError, OSError, ValueError):
            continue  # a node that needs a key: its models are not waited for
        names.update(
            str(e["name"]) for e in entries if isinstance(e, dict) and e.get("state") == "READY"
        )
    return sorted(names)


def _wait_routed(
    gateway: Running,
    models: Sequence[str],
    deadline: float,
    limit: float,
    context: ssl.SSLContext | None = None,
) -> None:
    """Until the gateway routes every ready model to a ready node.

    Envoy answers as soon as it has a healthy node for the fleet's own paths,
    a moment before the per-model clusters the gateway adds on its first look
    at the nodes are warm; ``up`` returns only once requests for every model
    would be served.
    """
    base = _base(gateway.launch.ready_url)
    for model in models:
        _wait_ready(
            gateway,
            f"{base}/v2/models/{model}/ready",
            context,
            deadline,
            stopped="gateway",
            late=f"the gateway did not route model {model!r} within {limit:g} s",
            every_s=0.1,
        )


def _wait_ready(
    entry: Running,
    url: str,
    context: ssl.SSLContext | None,
    deadline: float,
    *,
    stopped: str,
    late: str,
    every_s: float,
) -> None:
    """Until ``url`` answers ready; FleetError once ``entry`` died or ``deadline`` passed.

    ``stopped`` names the process in the message for its death (with its log's
    last line); ``late`` is the message for the deadline.
    """
    log_file = entry.launch.log
    while not _ready(url, context):
        if not is_alive(entry):
            raise FleetError(
                f"{stopped} stopped while starting; see {log_file}: {_last_line(log_file)}"
            )
        if time.monotonic() > deadline:
            raise FleetError(f"{late}; see {log_file}")
        time.sleep(every_s)


def read_state(state_dir: Path) -> list[Running]:
    """What a running fleet's ``up`` recorded; empty when nothing is recorded."""
    path = state_dir / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise FleetError(f"{path}: cannot read the fleet's record: {exc}") from None
    out: list[Running] = []
    for item in data.get("processes", []):
        out.append(Running(Launch(**item["launch"]), int(item["pid"]), str(item["started"])))
    return out


def _write_state(state_dir: Path, running: Sequence[Running]) -> None:
    path = state_dir / STATE_FILE
    tmp = path.with_suffix(".tmp")
    body = {
        "processes": [
            {"launch": asdict(r.launch), "pid": r.pid, "started": r.started} for r in running
        ]
    }
    tmp.write_text(json.dumps(body, indent=2))
    os.replace(tmp, path)


def _start(launch: Launch) -> Running:
    log_path = Path(launch.log)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            launch.argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # ``up`` returns; the fleet outlives it
        )
    started = start_time(process.pid)
    if started is None:
        raise FleetError(f"{launch.name} ended at once; see {launch.log}: {_last_line(launch.log)}")
    return Running(launch, process.pid, started)


def up(
    launches: Sequence[Launch],
    state_dir: Path,
    timeout_s: float,
    progress: Callable[[str], None] = lambda _: None,
    probes: Probes | None = None,
) -> list[Running]:
    """Start every process and wait for each to answer; on a failure stop them all.

    ``probes``: how to reach them over TLS (``Probes.of(spec.tls)``); None: plain HTTP.
    """
    probes = probes or Probes()
    if any(is_alive(r) for r in read_state(state_dir)):
        raise FleetError(
            f"a fleet started from {state_dir} is still running (modelport fleet down first)"
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    running: list[Running] = []
    try:
        for launch in launches:
            running.append(_start(launch))
            _write_state(state_dir, running)
        deadline = time.monotonic() + timeout_s
        for entry in running:
            name = entry.launch.name
            _wait_ready(
                entry,
                entry.launch.ready_url,
                probes.context(entry.launch),
                deadline,
                stopped=name,
                late=f"{name} was not ready within {timeout_s:g} s",
                every_s=0.2,
            )
            progress(f"{name} ready")
        gateways = [r for r in running if r.launch.kind == "gateway"]
        if gateways:
            nodes = [r.launch for r in running if r.launch.kind == "node"]
            models = _ready_models(nodes, probes.nodes)
            _wait_routed(gateways[0], models, deadline, timeout_s, probes.gateway)
            progress(f"gateway routes {len(models)} models")
    except BaseException:
        stop(running)
        (state_dir / STATE_FILE).unlink(missing_ok=True)
        raise
    return running


def stop(running: Sequence[Running], wait_s: float = STOP_WAIT_S) -> list[str]:
    """SIGTERM every live process (the gateway first), SIGKILL what outlives ``wait_s``.

    Returns the names of the processes that had to be killed.
    """
    order = sorted(running, key=lambda r: r.launch.kind != "gateway")
    live = [r for r in order if is_alive(r)]
    for entry in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(entry.pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    killed: list[str] = []
    for entry in live:
        while is_alive(entry) and time.monotonic() < deadline:
            _reap(entry.pid)
            time.sleep(0.1)
        if is_alive(entry):
            with contextlib.suppress(ProcessLookupError):
                os.kill(entry.pid, signal.SIGKILL)
            killed.append(entry.launch.name)
        _reap(entry.pid)
    return killed


def _reap(pid: int) -> None:
    """Collect ``pid`` when it is this process's child (a test's, or ``up``'s own on failure)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def down(state_dir: Path) -> tuple[list[Running], list[str]]:
    """Stop the fleet ``up`` recorded in ``state_dir``; what was stopped, what was killed."""
    running = read_state(state_dir)
    if not running:
        raise FleetError(f"no fleet is recorded in {state_dir} (nothing to stop)")
    killed = stop(running)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return running, killed
