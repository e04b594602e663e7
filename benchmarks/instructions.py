"""Instructions per request of two commits, counted by callgrind: a measure noise cannot move.

    .venv/bin/python benchmarks/instructions.py 97b5ebc HEAD
    .venv/bin/python benchmarks/instructions.py 97b5ebc HEAD --model mlp --requests 400

CPU time per request (compare.py) swings by tens of percent on a shared,
two-core machine: frequency, caches and neighbours all move it, so a 5%
difference between two commits can take hours of quiet to settle. The number
of instructions a server executes for the same request does not depend on
any of that. Each commit's server runs under valgrind's callgrind with
instrumentation off while it starts and warms up; then counting is switched
on (``callgrind_control -i on``), the same keep-alive JSON request is sent
``--requests`` times, one at a time, and the dump's ``totals`` divided by the
requests is the figure. Every thread of the server is counted, the event loop
and ONNX Runtime's alike (modelport turns ONNX Runtime's spinning off, so
waiting adds no instructions). Each side is measured ``--repeats`` times in
alternation; the spread between one side's repeats shows what is left of
noise (timer wake-ups, garbage collection), normally well under 1%.

Under valgrind a server runs about fifty times slower, so the counts are of
the same code paths but not of the same timing: a commit whose speed came from
overlapping work across threads would not show it here; compare.py still
owns throughput.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import models
import payloads
import servers
from compare import _serve_repo, check_imports_from, export_tree, resolve, tree_env
from tables import fmt_num, log
from workdirs import BODIES, LOGS, PYTHON, WORK

REPORT = WORK / "RESULTS-instructions.md"
#: Seconds a server under valgrind may take to answer its readiness check.
START_TIMEOUT_S = 600.0
#: Seconds of no requests over which a server's own background work is counted.
IDLE_S = 5.0


def _post_many(port: int, path: str, body: bytes, count: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        for _ in range(count):
            conn.request("POST", path, body, {"Content-Type": payloads.JSON_TYPE})
            reply = conn.getresponse()
            data = reply.read()
            if reply.status != 200:
                raise SystemExit(f"request answered {reply.status}: {data[:300]!r}")
    finally:
        conn.close()


def _wait_ready(port: int, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server ended while starting; see {log_path}")
        try:
            status, _ = servers.http_get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(1.0)
    raise SystemExit(f"the server was not ready within {START_TIMEOUT_S:.0f} s; see {log_path}")


def _totals(dump: Path) -> int:
    for line in dump.read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise SystemExit(f"{dump} holds no totals line")


@dataclass(frozen=True)
class Count:
    """One server's counts: all instructions per request, per idle second, and the difference."""

    per_request: float
    idle_per_s: float
    net_per_request: float
    """Per request once the idle rate over the requests' wall time is taken off."""


def _count(out_dir: Path, stem: str, pid: str, work: Callable[[], None]) -> int:
    """Instructions the server executes while ``work`` runs (every thread)."""
    subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
    work()
    for old in out_dir.glob(f"{stem}.{pid}.*"):
        old.unlink()
    subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
    dumps = sorted(out_dir.glob(f"{stem}.{pid}.*"))
    if not dumps:
        raise SystemExit(f"callgrind wrote no dump for pid {pid} in {out_dir}")
    return sum(_totals(d) for d in dumps)


def count_once(sha: str, tag: str, model: str, body: bytes, warmup: int, requests: int) -> Count:
    """Instructions per request of one server of ``sha``, started and stopped here."""
    tree = export_tree(sha)
    check_imports_from(tree)
    repo = _serve_repo(f"instructions-{tag}", [model])
    http_port, grpc_port, metrics_port = (servers.free_port() for _ in range(3))
    out_dir = WORK / "callgrind"
    out_dir.mkdir(parents=True, exist_ok=True)
    out_file = out_dir / f"{tag}-{sha[:12]}.%p"
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / f"instructions-{tag}-{sha[:12]}.log"
    argv = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", "--collect-atstart=yes",
        f"--callgrind-out-file={out_file}",
        PYTHON, "-m", "modelport", "serve", str(repo),
        "--http-port", str(http_port), "--grpc-port", str(grpc_port),
        "--metrics-port", str(metrics_port),
    ]  # fmt: skip
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            argv, cwd=tree, env=tree_env(tree), stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        _wait_ready(http_port, process, log_path)
        path = f"/v2/models/{model}/infer"
        _post_many(http_port, path, body, warmup)
        pid = str(process.pid)
        subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
        idle = _count(out_dir, f"{tag}-{sha[:12]}", pid, lambda: time.sleep(IDLE_S))
        started = time.monotonic()
        busy = _count(
            out_dir, f"{tag}-{sha[:12]}", pid, lambda: _post_many(http_port, path, body, requests)
        )
        elapsed = time.monotonic() - started
        return Count(busy / requests, idle / IDLE_S, (busy - idle / IDLE_S * elapsed) / requests)
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="the commit measured first (e.g. 97b5ebc)")
    parser.add_argument("b", help="the commit compared with it (e.g. HEAD)")
    parser.add_argument("--model", choices=models.MODEL_NAMES, default="mlp")
    parser.add_argument("--requests", type=int, default=300, help="counted requests per run")
    parser.add_argument("--warmup", type=int, default=100, help="uncounted requests first")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, alternating")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    sha_a, sha_b = resolve(args.a), resolve(args.b)
    models.generate(names=(args.model,))
    body = payloads.write_bodies(BODIES, args.model, 1).json.path.read_bytes()
    per: dict[str, list[Count]] = {"A": [], "B": []}
    for round_no in range(args.repeats):
        order = [("A", sha_a), ("B", sha_b)] if round_no % 2 == 0 else [("B", sha_b), ("A", sha_a)]
        for tag, sha in order:
            value = count_once(sha, tag, args.model, body, args.warmup, args.requests)
            per[tag].append(value)
            log(
                f"round {round_no} {tag} {sha[:9]}: "
                f"{fmt_num(value.per_request)} instructions/request, "
                f"{fmt_num(value.idle_per_s)} per idle second, net {fmt_num(value.net_per_request)}"
            )

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    def figure(pick: Callable[[Count], float]) -> tuple[float, float, float, str, str]:
        a = [pick(c) for c in per["A"]]
        b = [pick(c) for c in per["B"]]
        ma, mb = median(a), median(b)
        spread_a = (max(a) - min(a)) / ma if ma else 0.0
        spread_b = (max(b) - min(b)) / mb if mb else 0.0
        return ma, mb, mb / ma if ma else float("nan"), f"{spread_a:.1%}", f"{spread_b:.1%}"

    lines = [
        "## Instructions per request (callgrind)",
        "",
        f"{args.model} over HTTP JSON, one request at a time on one keep-alive connection, "
        f"{args.requests} counted requests after {args.warmup} uncounted, {args.repeats} "
        f"server starts per side (alternating); A = {sha_a[:12]}, B = {sha_b[:12]}. "
        f"Idle: {IDLE_S:.0f} s without requests. Net: per request, less the idle rate "
        "over the requests' wall time (under valgrind that wall time is long, so timers "
        "would otherwise count as request cost).",
        "",
        "| figure | A (median) | B (median) | B/A | spread A / B |",
        "|---|--:|--:|--:|---|",
    ]
    for label, pick in (
        ("instructions/request", lambda c: c.per_request),
        ("instructions/idle second", lambda c: c.idle_per_s),
        ("net instructions/request", lambda c: c.net_per_request),
    ):
        ma, mb, ratio, sa, sb = figure(pick)
        lines.append(f"| {label} | {fmt_num(ma)} | {fmt_num(mb)} | {ratio:.3f} | {sa} / {sb} |")
    lines.append("")
    text = "\n".join(lines)
    REPORT.write_text(text)
    sys.stdout.write(text)
    log(f"wrote {REPORT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
