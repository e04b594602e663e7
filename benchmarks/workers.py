"""Several workers: ``modelport serve --workers 2`` against one worker and two separate servers.

    make bench BENCH_ARGS=--workers-only               # 5 to 7 min
    .venv/bin/python benchmarks/workers.py [--rounds 4] [--duration 5]

Three servers of the MLP are up at once: ``w1`` (``--workers 1``: one
process), ``w2`` (``--workers 2``: a supervisor and two worker processes
sharing the ports with SO_REUSEPORT) and ``w1b``, a second ``--workers 1``
server on other ports. Every server has its own ``--data-dir``. The setups:

- HTTP JSON, 64 connections: wrk with two threads of 32 connections each.
  For ``workers 1`` and ``workers 2`` both threads go to that server; for
  ``2 servers`` one thread goes to ``w1`` and one to ``w1b`` (a generated
  script wraps ``wrk/post.lua`` and sets each thread's address), so the
  load generator is the same wrk process in every setup. The last is the
  bound that two cores allow when nothing is shared between the processes.
- gRPC, perf_analyzer at concurrency 32: one perf_analyzer against ``w1``
  and against ``w2``; two at concurrency 16 each at once, one per server,
  for ``2 servers``; and, to tell the client's connections apart from the
  server, two at 16 each against ``w2``. With two clients req/s is their
  sum, p50 the mean of their p50s weighted by req/s, p99 the higher p99.

Each run reads, before and after, ``utime + stime`` (``/proc/<pid>/stat``)
of every worker process (for ``--workers 2``: the supervisor's children
started by ``multiprocessing.spawn``; for ``--workers 1``: the server) and
the server's count of successful requests (``/v2/models/mlp/stats``), so
CPU per request is the workers' CPU over the requests they answered. RSS
(``VmRSS``) per worker and of the supervisor is read after warm-up and
after the last round. The setups alternate over ``--rounds`` rounds (order
flipped every other round, rounds.py); figures are each setup's median run
and the spread of its runs, ratios are of the medians, with the per-round
ratios beside them. The machine is shared: before each run it waits (up to
``--quiet-wait``) for a quiet second, and a run during which other processes
took REDO_SHARE of the CPU or more is run once again, all within
``--noise-budget`` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import threading
import time
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
from loadgen import LoadResult  # noqa: E402
from machine import command_output, read_text  # noqa: E402
from tables import fmt_ms, fmt_num, fmt_pct, log, write_section  # noqa: E402
from workdirs import BODIES, LOGS, PYTHON, RAW, ROOT, SERVE, WORK  # noqa: E402

MODEL = "mlp"
HTTP_CONCURRENCY = 64
GRPC_CONCURRENCY = 32
HTTP_TARGET = 1.4
GRPC_TARGET = 0.9
SECTION = "## Several workers: `--workers 2` against one worker and two separate servers"
QUIET_SHARE = 0.10
REDO_SHARE = 0.20
SERVERS = {"w1": 1, "w2": 2, "w1b": 1}
"""Server key -> --workers."""


@dataclass(frozen=True)
class Setup:
    key: str
    label: str
    transport: str
    targets: tuple[str, ...]
    """One server key per client (wrk thread or perf_analyzer process)."""


SETUPS = (
    Setup("http-w1", "workers 1", "http-json", ("w1", "w1")),
    Setup("http-w2", "workers 2", "http-json", ("w2", "w2")),
    Setup("http-2x", "2 servers x workers 1", "http-json", ("w1", "w1b")),
    Setup("grpc-w1", "workers 1", "grpc", ("w1",)),
    Setup("grpc-w2", "workers 2", "grpc", ("w2",)),
    Setup("grpc-w2-2c", "workers 2, 2 clients", "grpc", ("w2", "w2")),
    Setup("grpc-2x", "2 servers x workers 1", "grpc", ("w1", "w1b")),
)


@dataclass
class Server:
    key: str
    workers: int
    process: servers.ServerProcess
    http_port: int
    grpc_port: int
    log_path: Path
    rss_ready_kib: dict[str, int] = field(default_factory=dict)
    rss_end_kib: dict[str, int] = field(default_factory=dict)

    def worker_pids(self) -> list[int]:
        """The processes that serve: the supervisor's spawned children, else the server."""
        pid = self.process.pid
        if self.workers == 1:
            return [pid]
        kids = []
        for child in servers.process_tree(pid)[1:]:
            try:
                stat = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except (OSError, IndexError):
                continue
            if int(stat[1]) == pid and b"spawn_main" in cmdline:
                kids.append(child)
        return sorted(kids)

    def served(self) -> int | None:
        """Successful inferences the server (every worker) has answered so far."""
        status, body = servers.http_get(
            f"http://127.0.0.1:{self.http_port}/v2/models/{MODEL}/stats", timeout=5
        )
        if status != 200:
            return None
        try:
            stats = json.loads(body)["model_stats"]
            return sum(int(s["inference_stats"]["success"]["count"]) for s in stats)
        except (ValueError, KeyError, TypeError):
            return None

    def rss_kib(self) -> dict[str, int]:
        """VmRSS of each worker (``worker0``, ...) and of the supervisor, in KiB."""
        out = {f"worker{i}": rss_of(p) for i, p in enumerate(self.worker_pids())}
        if self.workers > 1:
            out["supervisor"] = rss_of(self.process.pid)
        return out


def rss_of(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_of(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / servers.CLOCK_TICKS


@dataclass
class Run:
    setup: str
    round: int
    req_per_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    served: int | None = None
    wall_s: float = 0.0
    worker_cpu_s: list[float] = field(default_factory=list)
    """CPU seconds of each worker process of the setup's servers over the run."""
    supervisor_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    other_cpu: float | None = None
    note: str = ""
    clients: list[dict[str, Any]] = field(default_factory=list)

    @property
    def cpu_ms_per_req(self) -> float | None:
        if not self.served:
            return None
        return sum(self.worker_cpu_s) / self.served * 1000

    @property
    def worker_cores(self) -> list[float]:
        """Each worker's CPU use as a share of one core."""
        return [c / self.wall_s for c in self.worker_cpu_s] if self.wall_s else []


class Meter:
    """CPU of the setup's workers, the load generators and everything else over one run."""

    def __init__(self, involved: list[Server], every: list[Server]) -> None:
        self.involved = involved
        self.every = every
        self.pids = [p for s in involved for p in s.worker_pids()]
        self.supervisors = [s.process.pid for s in involved if s.workers > 1]
        self.wall = time.monotonic()
        self.busy = servers.system_busy_s()
        self.own = servers.own_cpu_s()
        self.trees = sum(servers.tree_cpu_s(s.process.pid) for s in every)
        self.cpu = [cpu_of(p) for p in self.pids]
        self.sup = sum(cpu_of(p) for p in self.supervisors)
        self.served = [s.served() for s in involved]

    def finish(self, run: Run) -> None:
        wall = time.monotonic() - self.wall
        run.wall_s = wall
        run.worker_cpu_s = [cpu_of(p) - c for p, c in zip(self.pids, self.cpu, strict=True)]
        run.supervisor_cpu_s = sum(cpu_of(p) for p in self.supervisors) - self.sup
        run.client_cpu_s = servers.own_cpu_s() - self.own
        after = [s.served() for s in self.involved]
        if None not in after and None not in self.served:
            # the same server counted once even when two clients load it
            seen: dict[str, int] = {}
            for s, a, b in zip(self.involved, self.served, after, strict=True):
                seen[s.key] = int(b) - int(a)  # type: ignore[arg-type]
            run.served = sum(seen.values())
        busy = servers.system_busy_s() - self.busy
        trees = sum(servers.tree_cpu_s(s.process.pid) for s in self.every) - self.trees
        cores = len(os.sched_getaffinity(0)) or 1
        run.other_cpu = max(0.0, busy - run.client_cpu_s - trees) / (wall * cores)


# ----------------------------------------------------------------- load


def split_script(ports: tuple[int, ...]) -> Path:
    """post.lua, with wrk's thread i sent to ``ports[i % len(ports)]``."""
    path = WORK / f"wrk-split-{'-'.join(str(p) for p in ports)}.lua"
    path.write_text(
        "-- Generated by benchmarks/workers.py: post.lua, each wrk thread to its own port.\n"
        f"dofile({json.dumps(str(loadgen.WRK_SCRIPT))})\n"
        "local addrs = {}\n"
        f"for _, port in ipairs({{{', '.join(str(p) for p in ports)}}}) do\n"
        '   table.insert(addrs, wrk.lookup("127.0.0.1", tostring(port))[1])\n'
        "end\n"
        "local post_setup = setup\n"
        "local started = 0\n"
        "function setup(thread)\n"
        "   thread.addr = addrs[started % #addrs + 1]\n"
        "   started = started + 1\n"
        "   post_setup(thread)\n"
        "end\n"
    )
    return path


def run_http(setup: Setup, by_key: dict[str, Server], body: payloads.Body, duration: int,
             tag: str) -> LoadResult:  # fmt: skip
    ports = tuple(by_key[k].http_port for k in setup.targets)
    r = LoadResult(setup.label, MODEL, setup.transport, HTTP_CONCURRENCY, "wrk", 1)
    original = loadgen.WRK_SCRIPT
    loadgen.WRK_SCRIPT = split_script(ports)  # run_wrk reads it at call time
    try:
        return loadgen.run_wrk(
            loadgen.url_for(ports[0], MODEL),
            body,
            concurrency=HTTP_CONCURRENCY,
            duration=duration,
            threads=len(ports),
            timeout_s=10,
            result=r,
            raw_out=RAW / f"workers-{tag}.txt",
        )
    finally:
        loadgen.WRK_SCRIPT = original


def run_grpc(setup: Setup, by_key: dict[str, Server], pa: loadgen.PerfAnalyzer,
             bodies: payloads.ModelBodies, duration: int, tag: str) -> LoadResult:  # fmt: skip
    each = GRPC_CONCURRENCY // len(setup.targets)
    parts = [
        LoadResult(setup.label, MODEL, "grpc", each, "perf_analyzer", 1) for _ in setup.targets
    ]

    def one(i: int) -> None:
        loadgen.run_perf_analyzer(
            pa,
            model=MODEL,
            url=f"127.0.0.1:{by_key[setup.targets[i]].grpc_port}",
            protocol="grpc",
            concurrency=each,
            batch=1,
            duration=duration,
            input_data=bodies.pa_input_data,
            csv_out=RAW / f"workers-{tag}-client{i}.csv",
            result=parts[i],
        )

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(parts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    r = LoadResult(setup.label, MODEL, "grpc", GRPC_CONCURRENCY, "perf_analyzer", 1)
    r.req_per_s = sum(p.req_per_s for p in parts)
    r.requests = sum(p.requests for p in parts)
    r.errors = sum(max(p.errors, 0) for p in parts) + sum(1 for p in parts if p.errors < 0)
    r.note = "; ".join(p.note for p in parts if p.note)
    ok = [p for p in parts if p.p50_ms is not None and p.req_per_s]
    if ok and len(ok) == len(parts):
        r.p50_ms = sum(p.p50_ms * p.req_per_s for p in ok) / r.req_per_s  # type: ignore[operator]
        r.p99_ms = max(p.p99_ms for p in ok if p.p99_ms is not None)
    if len(parts) > 1:
        r.note = (
            (r.note + "; " if r.note else "")
            + "clients: "
            + ", ".join(f"{p.req_per_s:,.0f}" for p in parts)
        )
    return r


# --------------------------------------------------------------- report


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _mib(kib: int) -> str:
    return f"{kib / 1024:.0f}"


def summarize(runs: list[Run]) -> dict[str, Any]:
    ok = [r for r in runs if r.req_per_s > 0]
    if not ok:
        return {"req_per_s": None}
    mid = rounds.median_run(ok, key=lambda r: r.req_per_s)
    cpu = [c for c in (r.cpu_ms_per_req for r in ok) if c is not None]
    return {
        "req_per_s": mid.req_per_s,
        "spread": rounds.spread([r.req_per_s for r in ok]),
        "p50_ms": mid.p50_ms,
        "p99_ms": mid.p99_ms,
        "cpu_ms_per_req": median(cpu),
        "worker_cores": mid.worker_cores,
        "client_cores": mid.client_cpu_s / mid.wall_s if mid.wall_s else None,
        "other_cpu": max((r.other_cpu or 0.0) for r in ok),
        "errors": sum(r.errors for r in runs),
        "runs": [r.req_per_s for r in runs],
    }


def _rss_cell(server: Server) -> tuple[str, str]:
    workers = [v for k, v in server.rss_end_kib.items() if k.startswith("worker")]
    sup = server.rss_end_kib.get("supervisor")
    return " / ".join(_mib(v) for v in workers) or "-", _mib(sup) if sup else "-"


def render(results: dict[str, list[Run]], by_key: dict[str, Server], args: argparse.Namespace,
           tool_note: str, discarded: list[Run]) -> str:  # fmt: skip
    summary = {s.key: summarize(results.get(s.key, [])) for s in SETUPS}
    out: list[str] = []
    for transport, title in (
        ("http-json", f"HTTP JSON, concurrency {HTTP_CONCURRENCY} (wrk, 2 threads x 32)"),
        ("grpc", f"gRPC, concurrency {GRPC_CONCURRENCY} ({tool_note})"),
    ):  # fmt: skip
        setups = [s for s in SETUPS if s.transport == transport and s.key in results]
        if not setups:
            continue
        out += [
            f"### {title}",
            "",
            "| setup | req/s | spread | p50 ms | p99 ms | CPU ms/req | CPU per worker "
            "(cores) | client CPU (cores) | RSS per worker MiB | supervisor RSS MiB | "
            "other CPU | errors | runs req/s |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
        ]
        for s in setups:
            m = summary[s.key]
            keys = list(dict.fromkeys(s.targets))
            rss = [_rss_cell(by_key[k]) for k in keys]
            if m["req_per_s"] is None:
                out.append(f"| {s.label} | FAILED | | | | | | | | | | | |")
                continue
            out.append(
                f"| {s.label} | {fmt_num(m['req_per_s'])} | ±{m['spread'] / 2:.0%} | "
                f"{fmt_ms(m['p50_ms'])} | {fmt_ms(m['p99_ms'])} | "
                f"{fmt_num(m['cpu_ms_per_req'], 3)} | "
                f"{' / '.join(f'{c:.2f}' for c in m['worker_cores'])} | "
                f"{fmt_num(m['client_cores'], 2)} | {' / '.join(r[0] for r in rss)} | "
                f"{' / '.join(r[1] for r in rss if r[1] != '-') or '-'} | "
                f"{fmt_pct(m['other_cpu'])} | {m['errors']} | "
                f"{', '.join(fmt_num(v) for v in m['runs'])} |"
            )
        out.append("")
    out.append("Ratios (of the medians; each round's own ratio in brackets):")
    out.append("")
    for a, b, what, target in (
        ("http-w2", "http-w1", "HTTP JSON: workers 2 / workers 1", HTTP_TARGET),
        ("http-2x", "http-w1", "HTTP JSON: 2 servers / workers 1 (the attainable bound)", None),
        ("http-w2", "http-2x", "HTTP JSON: workers 2 / 2 servers", None),
        ("grpc-w2", "grpc-2x", "gRPC: workers 2 / 2 servers", GRPC_TARGET),
        ("grpc-w2-2c", "grpc-2x", "gRPC: workers 2 with 2 clients / 2 servers", None),
        ("grpc-w2", "grpc-w1", "gRPC: workers 2 / workers 1", None),
        ("grpc-2x", "grpc-w1", "gRPC: 2 servers / workers 1", None),
    ):
        va, vb = summary[a].get("req_per_s"), summary[b].get("req_per_s")
        if va is None or vb is None or not vb:
            continue
        paired = [
            x.req_per_s / y.req_per_s
            for x, y in zip(results[a], results[b], strict=False)
            if x.req_per_s and y.req_per_s
        ]
        verdict = ""
        if target is not None:
            verdict = f"; target ≥ {target}: {'met' if va / vb >= target else 'MISSED'}"
        out.append(
            f"- {what}: **{va / vb:.2f}x** ({va:,.0f} vs {vb:,.0f} req/s) "
            f"[{', '.join(f'{p:.2f}' for p in paired)}]{verdict}"
        )
    out += [
        "",
        f"{args.rounds} rounds of {args.duration} s runs (perf_analyzer: three windows of "
        f"{loadgen.pa_interval_ms(args.duration) / 1000:.1f} s), setups alternating, order "
        "flipped every other round. req/s, p50, p99, the per-worker CPU and client CPU are "
        "those of each setup's median run; spread = (max - min) / median of its runs, "
        "shown as ±half; CPU ms/req = the workers' CPU over the run ÷ the requests the "
        "server counted (median over rounds). CPU per worker: each worker process's CPU "
        "÷ wall time (1.00 = one core), in pid order; for 2 servers, one per server. "
        "Client CPU: wrk or perf_analyzer, same units. RSS after the last round. "
        "other CPU: the highest share of the machine unrelated processes took during one "
        "of the setup's runs (idle servers of the other setups are not counted as other). "
        f"Before each run the machine was given up to {args.quiet_wait:.0f} s to be quiet "
        f"(under {QUIET_SHARE:.0%} other), and a run with {REDO_SHARE:.0%} other or more was "
        f"run once again, within {args.noise_budget:.0f} s in all; runs set aside: "
        + (
            ", ".join(
                f"{r.setup} round {r.round} ({r.req_per_s:,.0f} req/s, "
                f"{fmt_pct(r.other_cpu)} other)"
                for r in discarded
            )
            or "none"
        )
        + ".",
    ]
    return "\n".join(out)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds")
    parser.add_argument("--transports", nargs="+", choices=("http-json", "grpc"),
                        default=["http-json", "grpc"])  # fmt: skip
    parser.add_argument(
        "--output",
        type=Path,
        default=HERE / "RESULTS.md",
        help="the report the section goes into (replacing an earlier one); - for none",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="before each run, wait up to this long for a second in which unrelated "
        f"processes use under {QUIET_SHARE:.0%} of the CPU",
    )
    parser.add_argument(
        "--noise-budget",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="most seconds spent in all on those waits and on running again, once, a run "
        f"during which unrelated processes took {REDO_SHARE:.0%} of the CPU or more",
    )
    parser.add_argument("--command", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.duration < 1 or args.rounds < 1:
        parser.error("--duration and --rounds must be at least 1")
    return args


def other_share(every: list[Server], seconds: float = 1.0) -> float:
    """Share of the machine's CPU that neither this process nor the servers used."""
    wall, busy, own = time.monotonic(), servers.system_busy_s(), servers.own_cpu_s()
    trees = sum(servers.tree_cpu_s(s.process.pid) for s in every)
    time.sleep(seconds)
    used = (
        servers.system_busy_s() - busy
        - (servers.own_cpu_s() - own)
        - (sum(servers.tree_cpu_s(s.process.pid) for s in every) - trees)
    )  # fmt: skip
    cores = len(os.sched_getaffinity(0)) or 1
    return max(0.0, used) / ((time.monotonic() - wall) * cores)


def wait_quiet(every: list[Server], limit_s: float) -> float:
    """Wait up to ``limit_s`` for a quiet second; the last share seen."""
    deadline = time.monotonic() + limit_s
    share = other_share(every)
    while share >= QUIET_SHARE and time.monotonic() < deadline:
        log(f"waiting for a quiet machine: other processes use {share:.0%} of the CPU")
        share = other_share(every)
    return share


def measure(
    setup: Setup,
    round_no: int,
    by_key: dict[str, Server],
    every: list[Server],
    pa: loadgen.PerfAnalyzer | None,
    bodies: payloads.ModelBodies,
    duration: int,
    problems: list[str],
) -> Run:
    """One run of ``setup``, with its CPU accounted; raises if a server died."""
    involved = [by_key[k] for k in dict.fromkeys(setup.targets)]
    tag = f"{setup.key}-r{round_no}"
    meter = Meter(involved, every)
    if setup.transport == "grpc":
        assert pa is not None
        r = run_grpc(setup, by_key, pa, bodies, duration, tag)
    else:
        r = run_http(setup, by_key, bodies.json, duration, tag)
    run = Run(setup.key, round_no, r.req_per_s, r.p50_ms, r.p99_ms, r.errors)
    run.note = r.note
    meter.finish(run)
    log(
        f"round {round_no} {setup.transport} {setup.label}: {r.req_per_s:,.0f} req/s, "
        f"p50 {fmt_ms(r.p50_ms)} ms, p99 {fmt_ms(r.p99_ms)} ms, "
        f"CPU {fmt_num(run.cpu_ms_per_req, 3)} ms/req, workers "
        f"{' / '.join(f'{c:.2f}' for c in run.worker_cores)} cores, other "
        f"{fmt_pct(run.other_cpu)}, errors {r.errors}" + (f" ({r.note})" if r.note else "")
    )
    for s in involved:
        if not s.process.alive():
            problems.append(f"server {s.key} died in {tag}: {s.process.log_tail(10)}")
            raise RuntimeError(problems[-1])
    return run


def source_state() -> str:
    """HEAD, and how many files under src/ differ from it (the servers run the tree)."""
    commit = command_output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = command_output(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"])
    changed = 0 if dirty in ("", "unavailable") else len(dirty.splitlines())
    return commit + (f" + uncommitted changes in {changed} file(s) under src/" if changed else "")


def start_servers(repo: Path) -> dict[str, Server]:
    started: dict[str, Server] = {}
    try:
        for key, count in SERVERS.items():
            log_path = LOGS / f"workers-{key}.log"
            log_path.unlink(missing_ok=True)
            data_dir = SERVE / f"workers-{key}-state"
            process, http_port, grpc_port = servers.modelport_server(
                PYTHON, repo, log_path, ROOT, count, ["--data-dir", str(data_dir)]
            )
            process.start()
            started[key] = Server(key, count, process, http_port, grpc_port, log_path)
            log(f"server {key} (--workers {count}) ready: pids {started[key].worker_pids()}")
    except BaseException:
        for s in started.values():
            s.process.stop()
        raise
    return started


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = args.command or shlex.join(
        [os.path.relpath(PYTHON, ROOT), "benchmarks/workers.py", *(argv or sys.argv[1:])]
    )
    for d in (RAW, LOGS, BODIES, SERVE):
        d.mkdir(parents=True, exist_ok=True)
    if "http-json" in args.transports and loadgen.wrk_path() is None:
        print(loadgen.WRK_INSTALL_HINT, file=sys.stderr)
        return 2
    pa: loadgen.PerfAnalyzer | None = None
    tool_note = "perf_analyzer"
    if "grpc" in args.transports:
        pa, why = loadgen.ensure_perf_analyzer(WORK / "pa-venv", LOGS / "pa-setup.log")
        if pa is None:
            log(f"perf_analyzer unavailable, gRPC skipped: {why}")
            tool_note = f"skipped: {why}"
        else:
            tool_note = pa.version
    started_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    commit = source_state()
    loadavg_start = read_text("/proc/loadavg").strip()
    t0 = time.monotonic()
    models.generate(names=(MODEL,))
    bodies = payloads.write_bodies(BODIES, MODEL, 1)
    repo = SERVE / "workers"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(models.DEFAULT_REPO / MODEL, repo / MODEL)

    setups = [s for s in SETUPS if s.transport in args.transports and (s.transport != "grpc" or pa)]
    results: dict[str, list[Run]] = {s.key: [] for s in setups}
    by_key = start_servers(repo)
    every = list(by_key.values())
    problems: list[str] = []
    discarded: list[Run] = []
    try:
        for s in every:
            loadgen.warm_up(loadgen.LoadSettings(1, 1, RAW, pa), s.http_port, MODEL, bodies.json)
            s.rss_ready_kib = s.rss_kib()
        budget = args.noise_budget
        for round_no, setup in rounds.round_order(setups, args.rounds):
            if args.quiet_wait > 0 and budget > 0:
                since = time.monotonic()
                wait_quiet(every, min(args.quiet_wait, budget))
                budget -= time.monotonic() - since
            run = measure(setup, round_no, by_key, every, pa, bodies, args.duration, problems)
            if (run.other_cpu or 0.0) >= REDO_SHARE and budget > 0:
                since = time.monotonic()
                log(f"other processes took {run.other_cpu:.0%} of the CPU: that run again")
                discarded.append(run)
                wait_quiet(every, min(args.quiet_wait, budget))
                run = measure(setup, round_no, by_key, every, pa, bodies, args.duration, problems)
                budget -= time.monotonic() - since
            results[setup.key].append(run)
        for s in every:
            s.rss_end_kib = s.rss_kib()
    finally:
        for s in every:
            code = s.process.stop()
            if code not in (0, None):
                problems.append(f"server {s.key} exited with {code}")
    elapsed = time.monotonic() - t0
    table = render(results, by_key, args, tool_note, discarded)
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in read_text("/proc/cpuinfo").splitlines()
            if ln.startswith("model name")
        ),
        "unknown",
    )
    section = "\n".join(
        [
            SECTION,
            "",
            f"Run {started_at}, {elapsed / 60:.1f} min, at {commit}, on {command_output(['nproc'])}"
            f" cores ({cpu}); load average {loadavg_start} at the start. Model: `{MODEL}` "
            "(benchmarks/models.py), one sample per request. Generated by "
            "`benchmarks/workers.py`:",
            "",
            "```",
            command,
            "```",
            "",
            table,
            *([""] + [f"- problem: {p}" for p in problems] if problems else []),
            "",
        ]
    )
    print("\n" + section, flush=True)
    (RAW / "workers.json").write_text(
        json.dumps(
            {
                "settings": vars(args) | {"output": str(args.output)},
                "servers": {
                    k: {
                        "workers": s.workers,
                        "rss_ready_kib": s.rss_ready_kib,
                        "rss_end_kib": s.rss_end_kib,
                    }
                    for k, s in by_key.items()
                },
                "runs": {k: [asdict(r) for r in v] for k, v in results.items()},
                "discarded": [asdict(r) for r in discarded],
            },
            indent=2,
            default=str,
        )
    )
    if str(args.output) != "-":
        write_section(args.output, SECTION, section)
        log(f"wrote the section to {args.output}")
    errors = sum(r.errors for v in results.values() for r in v)
    return 1 if problems or errors else 0


if __name__ == "__main__":
    sys.exit(main())
