"""The fleet gateway: the Envoy hop's cost, least_request over skewed nodes, failover time.

    make bench BENCH_ARGS=--gateway-only
    .venv/bin/python benchmarks/gateway.py --rounds 2 --duration 5

Every fleet here is started as a user starts one, ``modelport fleet up`` with
a fleet file (nodes on loopback, the gateway in front), and stopped with
``fleet down``; all of it shares this machine's cores with the load
generators, Envoy included (the table says how many cores there are).

1. **Hop**: one node serving the MLP, wrk at c=32 against the node directly,
   through the gateway, and through a second gateway over the same node with
   the residency check on (``tenant_residency``: Envoy's external
   authorization asks the gateway about every request), in alternating
   rounds. Reported: req/s through the gateway over direct, the p50 and p99
   the hop adds, and what the check adds on top.
2. **Skewed nodes**: two nodes in cgroup v1 CPU quotas, the slow one with
   half the fast one's (``FAST_CORES``), serving 64-row MLP requests. Two gateways over the same
   two nodes, one ``round_robin`` and one ``least_request`` (a second
   ``modelport gateway`` over a copy of the fleet file with the other
   policy, as two gateways may run side by side), take turns under the same
   open-loop load: 70% of what the fast node alone answers one request at a
   time (so the fast node alone could carry it, and round robin gives the
   slow node more than it can). Before each run the nodes are let go idle.
   Target: least_request's p99 at most 0.7x round robin's.
3. **Failover**: three nodes under round robin, an open-loop load, one node
   SIGKILLed. Reported: the time from the kill to the last growth of Envoy's
   request counter for the dead node (its admin ``/clusters``, polled every
   20 ms), and how many client requests failed (retries should cover the
   reset ones).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
import models  # noqa: E402
import payloads  # noqa: E402
import rounds  # noqa: E402
import servers  # noqa: E402
from machine import command_output, read_text  # noqa: E402
from pipelines import Connections  # noqa: E402
from tables import fmt_num, log, write_section  # noqa: E402
from workdirs import BODIES, PYTHON, RAW, ROOT, WORK  # noqa: E402

SECTION = "## Fleet gateway"
GATEWAY = WORK / "gateway"
#: least_request's p99 over round robin's that the skewed-nodes row must stay under.
SKEW_TARGET = 0.7
#: Rows per request in the skewed-nodes row (the model's max_batch_size): enough model
#: work that the nodes' CPU, not Envoy's or the load generator's, bounds what they answer.
SKEW_ROWS = 64
#: The fast node's CPU quota in cores; the slow node gets half of it. Less than one core
#: leaves room on a two-core machine for Envoy and the load generator.
FAST_CORES = 0.5
#: The open-loop rate as a share of what the fast node alone answers: it could carry it,
#: and round robin gives the slow node more than it can.
SKEW_LOAD = 0.7
CGROUP_ROOT = Path("/sys/fs/cgroup/cpu")
CFS_PERIOD_US = 100_000


# ---------------------------------------------------------------- fleets


def modelport(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    return subprocess.run(
        [PYTHON, "-m", "modelport", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class Fleet:
    folder: Path
    nodes: dict[str, int]
    """Node name -> HTTP port."""
    gateway_http: int
    admin: int
    pids: dict[str, int] = field(default_factory=dict)


def fleet_up(name: str, repo: Path, nodes: list[str], policy: str) -> Fleet:
    folder = GATEWAY / name
    if (folder / ".modelport").exists():
        modelport("fleet", "down", cwd=folder)
    folder.mkdir(parents=True, exist_ok=True)
    ports = {node: servers.free_port() for node in nodes}
    gw_http, gw_grpc, admin = servers.free_port(), servers.free_port(), servers.free_port()
    write_fleet(folder / "fleet.yaml", repo, ports, policy)
    done = modelport(
        "fleet", "up", "fleet.yaml",
        "--http-port", str(gw_http), "--grpc-port", str(gw_grpc), "--admin-port", str(admin),
        cwd=folder,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"fleet up ({name}) failed:\n{done.stdout}\n{done.stderr}")
    fleet = Fleet(folder, ports, gw_http, admin)
    record = json.loads((folder / ".modelport" / "fleet" / "fleet.json").read_text())
    fleet.pids = {p["launch"]["name"]: int(p["pid"]) for p in record["processes"]}
    return fleet


def write_fleet(path: Path, repo: Path, ports: dict[str, int], policy: str) -> None:
    lines = [
        "regions: [ae-dxb]",
        "groups:",
        f"  main: {{policy: {policy}, models: [mlp], repository: {json.dumps(str(repo))}}}",
        "nodes:",
    ]
    lines += [
        f'  - {{name: {node}, http: "127.0.0.1:{port}", region: ae-dxb}}'
        for node, port in ports.items()
    ]
    path.write_text("\n".join(lines) + "\n")


def fleet_down(fleet: Fleet) -> None:
    done = modelport("fleet", "down", cwd=fleet.folder)
    if done.returncode != 0:
        log(f"fleet down in {fleet.folder}: {done.stderr.strip()}")


def wait_routed(base: str, body: bytes, limit_s: float = 30.0) -> None:
    """Until an infer through ``base`` answers 200 (the gateway found a healthy node)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            status = servers.http_post(
                f"{base}/v2/models/mlp/infer", body, {"Content-Type": payloads.JSON_TYPE}
            )
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"nothing answered through {base} within {limit_s:g} s")


# ---------------------------------------------------------------- load


@dataclass
class OpenLoop:
    sent: int = 0
    ok: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)

    def percentile(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _one(conns: Connections, head: bytes, body: bytes, at: float, out: OpenLoop) -> None:
    try:
        status, _ = await conns.post(head, body)
        key = str(status)
    except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
        key = type(exc).__name__
    out.latencies_ms.append((time.perf_counter() - at) * 1000)
    if key == "200":
        out.ok += 1
    else:
        out.failed[key] = out.failed.get(key, 0) + 1


async def _open_loop(port: int, body: bytes, rate: float, duration: float, out: OpenLoop) -> None:
    """Requests at a fixed rate whatever the answers do, each timed from when it was due."""
    conns = Connections("127.0.0.1", port)
    head = (
        "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    try:
        start = time.perf_counter() + 0.02
        tasks = []
        for i in range(int(rate * duration)):
            at = start + i / rate
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(conns, head, body, at, out)))
            out.sent += 1
        await asyncio.wait(tasks, timeout=30)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        conns.close()


def open_loop(port: int, body: bytes, rate: float, duration: float) -> OpenLoop:
    out = OpenLoop()
    asyncio.run(_open_loop(port, body, rate, duration, out))
    return out


def wrk(port: int, body: payloads.Body, concurrency: int, duration: int) -> loadgen.LoadResult:
    result = loadgen.LoadResult("gateway", "mlp", "http-json", concurrency, "wrk", 1)
    return loadgen.run_wrk(
        f"http://127.0.0.1:{port}/v2/models/mlp/infer",
        body,
        concurrency=concurrency,
        duration=duration,
        threads=2,
        timeout_s=10,
        result=result,
    )


# ---------------------------------------------------------------- cgroups


class CpuQuota:
    """A cgroup v1 CPU quota a process (every thread) is moved into."""

    def __init__(self, name: str, cores: float) -> None:
        self.path = CGROUP_ROOT / f"modelport-bench-{name}-{os.getpid()}"
        self.path.mkdir()
        (self.path / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
        (self.path / "cpu.cfs_quota_us").write_text(str(int(cores * CFS_PERIOD_US)))

    def add(self, pid: int) -> None:
        for tid in servers.process_tree(pid):
            (self.path / "cgroup.procs").write_text(str(tid))

    def remove(self) -> None:
        for pid in (self.path / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (CGROUP_ROOT / "cgroup.procs").write_text(pid)
        try:
            self.path.rmdir()
        except OSError as exc:
            log(f"could not remove {self.path}: {exc}")


def cgroups_usable() -> str | None:
    """None when CPU quotas can be set here, else why not."""
    if not (CGROUP_ROOT / "cgroup.procs").exists():
        return f"no cgroup v1 cpu controller at {CGROUP_ROOT}"
    if os.geteuid() != 0:
        return "CPU quotas need root"
    return None


# ---------------------------------------------------------------- rows


def second_gateway(fleet: Fleet, name: str, fleet_text: str) -> tuple[subprocess.Popen[bytes], int]:
    """Another ``modelport gateway`` over ``fleet``'s nodes, from ``fleet_text``; its REST port."""
    path = fleet.folder / f"fleet-{name}.yaml"
    path.write_text(fleet_text)
    http, grpc, admin = (servers.free_port() for _ in range(3))
    with (fleet.folder / f"gateway-{name}.log").open("wb") as log_file:
        process = subprocess.Popen(
            [
                PYTHON, "-m", "modelport", "gateway", "--fleet", str(path),
                "--http-port", str(http), "--grpc-port", str(grpc), "--admin-port", str(admin),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    return process, http


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    if process is None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def hop(repo: Path, body: payloads.Body, raw: bytes, args: argparse.Namespace) -> dict[str, Any]:
    fleet = fleet_up("hop", repo, ["n1"], "round_robin")
    checked: subprocess.Popen[bytes] | None = None
    try:
        direct, through = fleet.nodes["n1"], fleet.gateway_http
        # The same node behind a second gateway whose fleet file maps a tenant to
        # regions: Envoy then asks the gateway's residency check about every request.
        text = (fleet.folder / "fleet.yaml").read_text() + "tenant_residency: {acme: [ae-dxb]}\n"
        checked, checked_port = second_gateway(fleet, "residency-check", text)
        ports = {"direct": direct, "gateway": through, "gateway+check": checked_port}
        wait_routed(f"http://127.0.0.1:{through}", raw)
        wait_routed(f"http://127.0.0.1:{checked_port}", raw)
        log("hop: warm-up")
        for port in ports.values():
            wrk(port, body, 32, 2)
        runs: dict[str, list[loadgen.LoadResult]] = {side: [] for side in ports}
        for round_no, side in rounds.round_order(list(ports), args.rounds):
            port = ports[side]
            run = wrk(port, body, 32, args.duration)
            runs[side].append(run)
            log(
                f"hop round {round_no} {side}: {fmt_num(run.req_per_s)} req/s, "
                f"p50 {run.p50_ms} ms, p99 {run.p99_ms} ms, errors {run.errors}"
            )
    finally:
        stop_process(checked)
        fleet_down(fleet)

    def med(side: str, key: str) -> float:
        return statistics.median(float(getattr(r, key) or 0.0) for r in runs[side])

    return {
        "runs": {k: [asdict(r) for r in v] for k, v in runs.items()},
        "rps": {s: med(s, "req_per_s") for s in runs},
        "p50": {s: med(s, "p50_ms") for s in runs},
        "p99": {s: med(s, "p99_ms") for s in runs},
        "spread": {s: rounds.spread([r.req_per_s for r in runs[s]]) for s in runs},
        "errors": sum(r.errors for v in runs.values() for r in v),
    }


def settle(port: int, body: bytes, limit_s: float = 60.0) -> None:
    """Until one request through ``port`` answers within 100 ms: the last run's backlog is gone."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        started = time.monotonic()
        url = f"http://127.0.0.1:{port}/v2/models/mlp/infer"
        status = servers.http_post(url, body, {"Content-Type": payloads.JSON_TYPE})
        if status == 200 and time.monotonic() - started < 0.1:
            return
        time.sleep(0.5)
    log(f"the nodes behind port {port} were still busy after {limit_s:g} s")


def skew(repo: Path, args: argparse.Namespace) -> dict[str, Any]:
    why = cgroups_usable()
    if why is not None:
        return {"skipped": why}
    fleet = fleet_up("skew", repo, ["fast", "slow"], "round_robin")
    quotas = [CpuQuota("fast", FAST_CORES), CpuQuota("slow", FAST_CORES / 2)]
    heavy = payloads.write_bodies(BODIES, "mlp", SKEW_ROWS)
    body, raw = heavy.json, heavy.json.path.read_bytes()
    second: subprocess.Popen[bytes] | None = None
    try:
        quotas[0].add(fleet.pids["fast"])
        quotas[1].add(fleet.pids["slow"])
        fleet_text = (fleet.folder / "fleet.yaml").read_text()
        second, lr_http = second_gateway(
            fleet,
            "least-request",
            fleet_text.replace("policy: round_robin", "policy: least_request"),
        )
        gateways = {"round_robin": fleet.gateway_http, "least_request": lr_http}
        for port in gateways.values():
            wait_routed(f"http://127.0.0.1:{port}", raw)
        # One request at a time: what the fast node answers without batching's help, so
        # the load stays one it could carry whatever batches happen to form.
        capacity = wrk(fleet.nodes["fast"], body, 1, 3).req_per_s
        rate = max(10.0, capacity * SKEW_LOAD)
        log(
            f"skew: the fast node alone answers {fmt_num(capacity)} req/s at c=1; load {rate:.0f}/s"
        )
        runs: dict[str, list[OpenLoop]] = {p: [] for p in gateways}
        for round_no, policy in rounds.round_order(list(gateways), args.rounds):
            settle(gateways[policy], raw)
            run = open_loop(gateways[policy], raw, rate, args.duration)
            runs[policy].append(run)
            log(
                f"skew round {round_no} {policy}: p50 {run.percentile(0.5):.1f} ms, "
                f"p99 {run.percentile(0.99):.1f} ms, {run.ok}/{run.sent} ok"
            )
    finally:
        stop_process(second)
        fleet_down(fleet)
        for quota in quotas:
            quota.remove()

    def med(policy: str, q: float) -> float:
        return statistics.median(r.percentile(q) or 0.0 for r in runs[policy])

    p99 = {p: med(p, 0.99) for p in runs}
    return {
        "capacity": capacity,
        "rate": rate,
        "p50": {p: med(p, 0.5) for p in runs},
        "p99": p99,
        "p99_spread": {
            p: rounds.spread([r.percentile(0.99) or 0.0 for r in runs[p]]) for p in runs
        },
        "ratio": p99["least_request"] / p99["round_robin"] if p99["round_robin"] else None,
        "failed": sum(sum(r.failed.values()) for v in runs.values() for r in v),
        "sent": sum(r.sent for v in runs.values() for r in v),
    }


def _requests_to(admin: int, address: str) -> int | None:
    """Requests Envoy has sent to ``address`` over every cluster (its per-host rq_total)."""
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{admin}/clusters?format=json", timeout=2
        ) as reply:
            data = json.load(reply)
    except (OSError, ValueError):
        return None
    host, port = address.rsplit(":", 1)
    total = 0
    for cluster in data.get("cluster_statuses", []):
        for status in cluster.get("host_statuses", []):
            sock = status.get("address", {}).get("socket_address", {})
            if sock.get("address") == host and str(sock.get("port_value")) == port:
                total += sum(
                    int(stat.get("value", 0))
                    for stat in status.get("stats", [])
                    if stat.get("name") == "rq_total"
                )
    return total


class RequestWatch:
    """When Envoy last sent a request to one node: its counters polled every 20 ms."""

    def __init__(self, admin: int, address: str) -> None:
        self.admin, self.address = admin, address
        self.last_change: float | None = None
        self._last: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            count = _requests_to(self.admin, self.address)
            now = time.time()
            if count is not None:
                if self._last is not None and count > self._last:
                    self.last_change = now
                self._last = count
            self._stop.wait(0.02)

    def __enter__(self) -> RequestWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def failover(raw: bytes, repo: Path, args: argparse.Namespace) -> dict[str, Any]:
    fleet = fleet_up("failover", repo, ["n1", "n2", "n3"], "round_robin")
    try:
        wait_routed(f"http://127.0.0.1:{fleet.gateway_http}", raw)
        rate, duration, kill_after = args.failover_rate, 8.0, 3.0
        killed: dict[str, float] = {}

        def kill_later() -> None:
            time.sleep(kill_after)
            killed["at"] = time.time()
            os.kill(fleet.pids["n2"], signal.SIGKILL)

        dead = f"127.0.0.1:{fleet.nodes['n2']}"
        with RequestWatch(fleet.admin, dead) as watch:
            killer = threading.Thread(target=kill_later)
            killer.start()
            run = open_loop(fleet.gateway_http, raw, rate, duration)
            killer.join()
        last = watch.last_change
        result: dict[str, Any] = {
            "rate": rate,
            "sent": run.sent,
            "ok": run.ok,
            "failed": run.failed,
            "last_to_dead_s": (last - killed["at"]) if last is not None else None,
            "p99_ms": run.percentile(0.99),
        }
        log(f"failover: {result}")
        return result
    finally:
        fleet_down(fleet)


# ---------------------------------------------------------------- report


def render(out: dict[str, Any], args: argparse.Namespace) -> str:
    lines: list[str] = []
    h = out.get("hop")
    lines += (
        []
        if h is None
        else [
            "| row | direct | through the gateway | ratio / added |",
            "|---|--:|--:|--:|",
            f"| MLP HTTP JSON c=32, req/s (median of {args.rounds}) | "
            f"{fmt_num(h['rps']['direct'])} | "
            f"{fmt_num(h['rps']['gateway'])} | {h['rps']['gateway'] / h['rps']['direct']:.2f}x |",
            f"| p50 ms | {h['p50']['direct']:.2f} | {h['p50']['gateway']:.2f} | "
            f"+{h['p50']['gateway'] - h['p50']['direct']:.2f} ms |",
            f"| p99 ms | {h['p99']['direct']:.2f} | {h['p99']['gateway']:.2f} | "
            f"+{h['p99']['gateway'] - h['p99']['direct']:.2f} ms |",
            *_check_rows(h),
            "",
            "Spread of req/s between rounds: "
            + ", ".join(f"{side} {h['spread'][side] or 0:.0%}" for side in h["spread"])
            + f"; failed requests: {h['errors']}. Envoy, the node and wrk share the machine's "
            "cores. *gateway+check*: a second gateway over the same node whose fleet file sets "
            "`tenant_residency`, so Envoy asks the gateway's residency check (its Unix socket) "
            "about every request; the ratio and added times there are against the plain gateway.",
            "",
        ]
    )
    s = out.get("skew", {"skipped": "not asked for (--rows)"})
    if "skipped" in s:
        lines += [f"Skewed nodes: skipped ({s['skipped']}).", ""]
    else:
        ratio = s["ratio"]
        verdict = "met" if ratio is not None and ratio <= SKEW_TARGET else "MISSED"
        lines += [
            f"| skewed nodes (fast: {FAST_CORES:g} core, slow: {FAST_CORES / 2:g} core; "
            f"MLP, {SKEW_ROWS} rows per request) | p50 ms | p99 ms | p99 spread |",
            "|---|--:|--:|--:|",
            *(
                f"| {p} | {s['p50'][p]:.1f} | {s['p99'][p]:.1f} | {s['p99_spread'][p] or 0:.0%} |"
                for p in ("round_robin", "least_request")
            ),
            "",
            f"Open-loop load {s['rate']:.0f} req/s, {SKEW_LOAD:.0%} of the fast node's "
            f"{fmt_num(s['capacity'])} req/s alone at c=1. least_request p99 / round_robin p99: "
            f"**{ratio:.2f}** (target <= {SKEW_TARGET}): {verdict}. Failed: {s['failed']} of "
            f"{s['sent']}.",
            "",
        ]
    f = out.get("failover")
    last = None if f is None else f["last_to_dead_s"]
    lines += (
        []
        if f is None
        else [
            f"Failover: {f['rate']:.0f} req/s over three nodes (round robin), one SIGKILLed "
            "after 3 s. "
            f"Envoy's request counter for the dead node last grew "
            f"**{last * 1000:.0f} ms** after the kill (counters polled every 20 ms; a try that "
            f"failed there was retried on another node); client requests failed: "
            f"{sum(f['failed'].values())} of {f['sent']} ({f['failed'] or 'none'}); "
            "p99 over the run "
            f"{f['p99_ms']:.1f} ms."
            if last is not None
            else "Failover: Envoy's counters show no request to the node at all (check the run).",
            "",
        ]
    )
    return "\n".join(lines)


def _check_rows(h: dict[str, Any]) -> list[str]:
    """The residency check's rows: through the gateway with the check against without it."""
    side = "gateway+check"
    if side not in h["rps"]:
        return []
    return [
        f"| with the residency check: req/s | {fmt_num(h['rps']['gateway'])} | "
        f"{fmt_num(h['rps'][side])} | {h['rps'][side] / h['rps']['gateway']:.2f}x |",
        f"| with the residency check: p50 ms | {h['p50']['gateway']:.2f} | "
        f"{h['p50'][side]:.2f} | +{h['p50'][side] - h['p50']['gateway']:.2f} ms |",
        f"| with the residency check: p99 ms | {h['p99']['gateway']:.2f} | "
        f"{h['p99'][side]:.2f} | +{h['p99'][side] - h['p99']['gateway']:.2f} ms |",
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=8, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument(
        "--rows",
        default="hop,skew,failover",
        help="which rows to run, comma-separated (hop, skew, failover)",
    )
    parser.add_argument("--failover-rate", type=float, default=200.0, help="req/s in failover")
    parser.add_argument(
        "--output",
        type=Path,
        default=HERE / "RESULTS.md",
        help="the report the section goes into (replacing an earlier one); - for none",
    )
    parser.add_argument("--command", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.duration < 1 or args.rounds < 1:
        parser.error("--duration and --rounds must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = args.command or shlex.join(
        [os.path.relpath(PYTHON, ROOT), "benchmarks/gateway.py", *(argv or sys.argv[1:])]
    )
    if loadgen.wrk_path() is None:
        print(loadgen.WRK_INSTALL_HINT, file=sys.stderr)
        return 2
    for d in (RAW, GATEWAY, BODIES):
        d.mkdir(parents=True, exist_ok=True)
    started_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    commit = command_output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    loadavg_start = read_text("/proc/loadavg").strip()
    t0 = time.monotonic()
    repo = GATEWAY / "repo"
    models.generate(repo, names=("mlp",))
    bodies = payloads.write_bodies(BODIES, "mlp", 1)
    raw = bodies.json.path.read_bytes()
    wanted = {row.strip() for row in args.rows.split(",")}
    out: dict[str, Any] = {}
    if "hop" in wanted:
        out["hop"] = hop(repo, bodies.json, raw, args)
    if "skew" in wanted:
        out["skew"] = skew(repo, args)
    if "failover" in wanted:
        out["failover"] = failover(raw, repo, args)
    elapsed = time.monotonic() - t0
    section = "\n".join(
        [
            SECTION,
            "",
            f"Run {started_at}, {elapsed / 60:.1f} min, at {commit}, on "
            f"{command_output(['nproc'])} cores; load average {loadavg_start} at the start. "
            "Generated by `benchmarks/gateway.py`:",
            "",
            "```",
            command,
            "```",
            "",
            render(out, args),
        ]
    )
    print("\n" + section, flush=True)
    (RAW / "gateway.json").write_text(json.dumps(out, indent=2, default=str))
    if str(args.output) != "-":
        write_section(args.output, SECTION, section)
        log(f"wrote the section to {args.output}")
    skewed = out.get("skew", {"skipped": ""})
    skew_ok = "skipped" in skewed or (skewed["ratio"] or 9) <= SKEW_TARGET
    return 0 if skew_ok and out.get("hop", {}).get("errors", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
