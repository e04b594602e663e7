"""Eviction churn: round-robin traffic over three models in a memory budget with room for two.

    make bench BENCH_ARGS=--eviction-only              # about 4 min
    .venv/bin/python benchmarks/eviction.py [--rounds 4] [--duration 15] [--callers 4]

Three copies of one ONNX MLP (256 -> 4096 -> 2048 -> 10, Gemm/Relu, about
36 MiB of FP32 weights each, seeded) are written to ``.work/eviction/repo``
as ``heavy_a``, ``heavy_b`` and ``heavy_c``. Two servers serve them, both up
at once:

- ``budget``: ``--memory-budget`` with room for two of them. The budget is
  chosen as the integration test of the budget chooses its own: a version
  never counts less than its file, so a budget under three files never
  holds three, and one above two measured versions holds two. A short-lived
  probe server with a budget far above all three reports
  ``modelport_model_memory_bytes`` per version; the budget is halfway
  between twice the median of the three (the first version a process loads
  also carries ONNX Runtime's one-time set-up, the median leaves it out)
  and three files. The run stops when there is no room between the two;
- ``no budget``: the same models, all three loaded for the whole run.

The load is a closed loop in this process: ``--callers`` threads, each
with its own keep-alive ``httpx.Client``, take the next request number from
one shared counter and send request ``i`` to model ``i mod 3`` (JSON, one
sample of 256 floats), so the traffic is round-robin over the three. With
room for two and least-recently-used eviction, round-robin is the worst
case: the model asked for next is always the one just evicted, so nearly
every request waits for a load (callers waiting for the same model share it).

Each request is timed from send to the last byte of the answer, and its
answer says whether it was a cold start (``parameters.cold_start``), so
percentiles come from every request, and cold and warm answers are also
reported apart. Per run, ``/metrics`` is read before and after for
``modelport_cold_starts_total``, ``modelport_evictions_total`` and
``modelport_model_load_duration_seconds``; the server's RSS (``VmRSS`` of
its process tree) is sampled every 50 ms. The two sides alternate over
``--rounds`` rounds, order flipped every other round (rounds.py); the
tables give each side's median and spread over its runs and the ratios.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import resource
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

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import rounds  # noqa: E402
import servers  # noqa: E402
from machine import command_output, read_text  # noqa: E402
from tables import OTHER_CPU_WARN, fmt_num, fmt_pct, log, write_section  # noqa: E402
from workdirs import LOGS, PYTHON, RAW, ROOT, WORK  # noqa: E402

SECTION = "## Eviction churn: three models in a memory budget for two"
MODELS = ("heavy_a", "heavy_b", "heavy_c")
INPUT, HIDDEN1, HIDDEN2, OUTPUT = 256, 4096, 2048, 10
PROBE_BUDGET = "4GiB"
SIDES = ("budget", "no budget")
MIB = 1 << 20
SAMPLE_EVERY_S = 0.05
EVICTION = WORK / "eviction"


# ------------------------------------------------------------------- models


def build_model(path: Path) -> int:
    """Write the MLP to ``path`` (unless there already); its size in bytes."""
    if path.exists():
        return path.stat().st_size
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    dims = [INPUT, HIDDEN1, HIDDEN2, OUTPUT]
    inits, nodes = [], []
    current = "X"
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(dims)):
        scale = np.float32(1.0 / np.sqrt(fan_in))
        w = (rng.standard_normal((fan_in, fan_out), dtype=np.float32) * scale).astype(np.float32)
        b = np.zeros(fan_out, dtype=np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        out = "Y" if i == len(dims) - 2 else f"H{i}"
        gemm = out if out == "Y" else f"G{i}"
        nodes.append(helper.make_node("Gemm", [current, f"W{i}", f"B{i}"], [gemm]))
        if out != "Y":
            nodes.append(helper.make_node("Relu", [gemm], [out]))
        current = out
    graph = helper.make_graph(
        nodes,
        "heavy_mlp",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, INPUT])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, OUTPUT])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return path.stat().st_size


def build_repo() -> tuple[Path, int]:
    """The three copies in ``.work/eviction/repo``; the repository and one file's size."""
    source = EVICTION / "source" / "model.onnx"
    size = build_model(source)
    repo = EVICTION / "repo"
    for name in MODELS:
        target = repo / name / "1" / "model.onnx"
        if not target.exists() or target.stat().st_size != size:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    return repo, size


def request_body() -> bytes:
    row = [round(((i * 37) % 101) / 101.0 - 0.5, 4) for i in range(INPUT)]
    body = {"inputs": [{"name": "X", "shape": [1, INPUT], "datatype": "FP32", "data": row}]}
    return json.dumps(body).encode()


# ------------------------------------------------------------------- servers


@dataclass
class Server:
    side: str
    process: servers.ServerProcess
    http_port: int
    metrics_port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def metrics(self) -> str:
        status, body = servers.http_get(f"http://127.0.0.1:{self.metrics_port}/metrics", 10)
        if status != 200:
            raise RuntimeError(f"{self.side}: GET /metrics -> {status}")
        return body.decode()

    def rss_kib(self) -> dict[str, int]:
        return self.process.memory_kib()


def start_server(side: str, repo: Path, extra: list[str]) -> Server:
    key = side.replace(" ", "-")
    log_path = LOGS / f"eviction-{key}.log"
    log_path.unlink(missing_ok=True)
    state = EVICTION / f"state-{key}"
    shutil.rmtree(state, ignore_errors=True)
    process, http_port, _ = servers.modelport_server(
        PYTHON, repo, log_path, ROOT, extra=[*extra, "--data-dir", str(state)]
    )
    metrics_port = int(process.argv[process.argv.index("--metrics-port") + 1])
    process.start()
    return Server(side, process, http_port, metrics_port)


def series(text: str, family: str) -> dict[str, float]:
    """``family``'s samples keyed by their label text ("" when unlabelled)."""
    found: dict[str, float] = {}
    for labels, value in re.findall(rf"^{family}(?:\{{([^}}]*)\}})? (\S+)$", text, re.M):
        found[labels] = float(value)
    return found


def total(text: str, family: str) -> float:
    return sum(series(text, family).values())


def model_costs(text: str) -> dict[str, int]:
    costs: dict[str, int] = {}
    for labels, value in series(text, "modelport_model_memory_bytes").items():
        name = re.search(r'model="([^"]*)"', labels)
        if name:
            costs[name.group(1)] = int(value)
    return costs


def choose_budget(repo: Path, file_size: int) -> tuple[int, dict[str, int]]:
    """A budget for two, from the costs a probe server measures; and those costs."""
    log(f"probe server (--memory-budget {PROBE_BUDGET}) to measure the versions")
    probe = start_server("probe", repo, ["--memory-budget", PROBE_BUDGET])
    try:
        body = request_body()
        with httpx.Client(base_url=probe.base, timeout=120) as client:
            for name in MODELS:
                client.post(f"/v2/models/{name}/infer", content=body).raise_for_status()
        costs = model_costs(probe.metrics())
    finally:
        probe.process.stop()
    if sorted(costs) != sorted(MODELS):
        raise RuntimeError(f"the probe did not report a cost for every model: {costs}")
    # The median leaves out the first load's share of ONNX Runtime's one-time set-up.
    two, three_files = int(2 * statistics.median(costs.values())), 3 * file_size
    if two >= three_files:
        raise RuntimeError(
            f"two versions measured {two / MIB:.1f} MiB, three files take {three_files / MIB:.1f}"
            " MiB: no budget holds two and never three (make the model larger)"
        )
    return (two + three_files) // 2, costs


# ---------------------------------------------------------------------- load


@dataclass
class Run:
    side: str
    round_no: int
    seconds: float = 0.0
    requests: int = 0
    ok: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    req_per_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    cold_answers: int = 0
    cold_p50_ms: float | None = None
    cold_p99_ms: float | None = None
    warm_p50_ms: float | None = None
    warm_p99_ms: float | None = None
    cold_starts: int = 0
    evictions: int = 0
    loads: int = 0
    mean_load_ms: float | None = None
    rss_peak_kib: int = 0
    rss_end_kib: int = 0
    other_cpu: float | None = None
    server_cpu_s: float | None = None
    client_cpu_ms_per_req: float | None = None


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest rank: the smallest value with at least ``q`` of the values at or below it."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(len(sorted_values) * q))
    return sorted_values[min(len(sorted_values), rank) - 1]


class RssSampler(threading.Thread):
    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, self.server.rss_kib()["VmRSS"])
            self.done.wait(SAMPLE_EVERY_S)

    def stop(self) -> int:
        self.done.set()
        self.join()
        return max(self.peak, self.server.rss_kib()["VmRSS"])


def closed_loop(
    server: Server, callers: int, duration: float, body: bytes
) -> tuple[list[tuple[float, int, bool]], float]:
    """``callers`` threads cycling over the models until ``duration`` has passed.

    Returns (latency s, status, cold start) per request and the wall time from
    the start until the last answer.
    """
    counter = itertools.count()
    records: list[tuple[float, int, bool]] = []
    lock = threading.Lock()
    headers = {"content-type": "application/json"}
    start = time.perf_counter()
    deadline = start + duration

    def caller() -> None:
        mine: list[tuple[float, int, bool]] = []
        with httpx.Client(base_url=server.base, timeout=120) as client:
            while time.perf_counter() < deadline:
                name = MODELS[next(counter) % len(MODELS)]
                sent = time.perf_counter()
                try:
                    answer = client.post(f"/v2/models/{name}/infer", content=body, headers=headers)
                    status, content = answer.status_code, answer.content
                except httpx.HTTPError:
                    status, content = 0, b""
                took = time.perf_counter() - sent
                cold = False
                if status == 200:
                    cold = json.loads(content).get("parameters", {}).get("cold_start") is True
                mine.append((took, status, cold))
        with lock:
            records.extend(mine)

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return records, time.perf_counter() - start


def measure(server: Server, round_no: int, callers: int, duration: float, body: bytes) -> Run:
    run = Run(server.side, round_no)
    before = server.metrics()
    meter = servers.CpuMeter(server.process.pid)
    sampler = RssSampler(server)
    sampler.start()
    client = resource.getrusage(resource.RUSAGE_SELF)
    records, run.seconds = closed_loop(server, callers, duration, body)
    spent = resource.getrusage(resource.RUSAGE_SELF)
    client_s = spent.ru_utime + spent.ru_stime - client.ru_utime - client.ru_stime
    run.rss_peak_kib = sampler.stop()
    run.other_cpu = meter.other_share()
    run.server_cpu_s = meter.server_cpu_s()
    after = server.metrics()
    run.rss_end_kib = server.rss_kib()["VmRSS"]

    run.requests = len(records)
    run.client_cpu_ms_per_req = client_s * 1000 / run.requests if run.requests else None
    for _, status, _ in records:
        run.statuses[str(status)] = run.statuses.get(str(status), 0) + 1
    ok = sorted(t * 1000 for t, status, _ in records if status == 200)
    cold = sorted(t * 1000 for t, status, c in records if status == 200 and c)
    warm = sorted(t * 1000 for t, status, c in records if status == 200 and not c)
    run.ok = len(ok)
    run.req_per_s = run.ok / run.seconds if run.seconds else 0.0
    run.p50_ms, run.p99_ms = percentile(ok, 0.5), percentile(ok, 0.99)
    run.max_ms = ok[-1] if ok else None
    run.cold_answers = len(cold)
    run.cold_p50_ms, run.cold_p99_ms = percentile(cold, 0.5), percentile(cold, 0.99)
    run.warm_p50_ms, run.warm_p99_ms = percentile(warm, 0.5), percentile(warm, 0.99)

    def delta(family: str) -> float:
        return total(after, family) - total(before, family)

    run.cold_starts = round(delta("modelport_cold_starts_total"))
    run.evictions = round(delta("modelport_evictions_total"))
    run.loads = round(delta("modelport_model_load_duration_seconds_count"))
    load_s = delta("modelport_model_load_duration_seconds_sum")
    run.mean_load_ms = load_s / run.loads * 1000 if run.loads else None
    log(
        f"round {round_no} {server.side}: {run.req_per_s:,.1f} req/s, p50 {fmt_ms(run.p50_ms)}, "
        f"p99 {fmt_ms(run.p99_ms)}, max {fmt_ms(run.max_ms)} ms; cold starts {run.cold_starts}, "
        f"evictions {run.evictions}, cold answers {run.cold_answers}/{run.ok}; RSS peak "
        f"{run.rss_peak_kib / 1024:.0f} MiB; other CPU {fmt_pct(run.other_cpu)}; "
        f"statuses {run.statuses}"
    )
    if not server.process.alive():
        raise RuntimeError(f"server {server.side} died: {server.process.log_tail(10)}")
    return run


# -------------------------------------------------------------------- report


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def med(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def spread_cell(values: list[float]) -> str:
    s = rounds.spread(values)
    return "-" if s is None else f"±{s / 2:.0%}"


def ratio(a: float | None, b: float | None, digits: int = 2) -> str:
    if a is None or not b:
        return "-"
    return f"{a / b:.{digits}f}x"


def render(
    runs: dict[str, list[Run]],
    budget: int,
    costs: dict[str, int],
    file_size: int,
    rss_ready: dict[str, int],
    end_state: dict[str, Any],
    args: argparse.Namespace,
) -> str:
    out = [
        "| setup | req/s | spread | p50 ms | p99 ms | max ms | cold starts / run "
        "| evictions / run | cold answers | mean load ms | RSS peak MiB | RSS end MiB "
        "| client CPU ms/req | other CPU | non-200 | runs req/s |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for side in SIDES:
        rs = runs[side]
        if not rs:
            continue
        ok = sum(r.ok for r in rs)
        cold_share = sum(r.cold_answers for r in rs) / ok if ok else 0.0
        other = max((r.other_cpu or 0.0) for r in rs)
        label = f"budget {budget / MIB:.0f} MiB" if side == "budget" else "no budget"
        out.append(
            f"| {label} | {fmt_num(med([r.req_per_s for r in rs]), 1)} | "
            f"{spread_cell([r.req_per_s for r in rs])} | {fmt_ms(med([r.p50_ms for r in rs]))} | "
            f"{fmt_ms(med([r.p99_ms for r in rs]))} | {fmt_ms(med([r.max_ms for r in rs]))} | "
            f"{fmt_num(med([r.cold_starts for r in rs]))} | "
            f"{fmt_num(med([r.evictions for r in rs]))} | {cold_share:.0%} | "
            f"{fmt_ms(med([r.mean_load_ms for r in rs]))} | "
            f"{med([r.rss_peak_kib for r in rs]) / 1024:.0f} | "
            f"{med([r.rss_end_kib for r in rs]) / 1024:.0f} | "
            f"{fmt_num(med([r.client_cpu_ms_per_req for r in rs]), 2)} | {fmt_pct(other)} | "
            f"{sum(r.requests - r.ok for r in rs)} | "
            f"{', '.join(f'{r.req_per_s:,.1f}' for r in rs)} |"
        )
    b, n = runs["budget"], runs["no budget"]
    lines = ["", "Cold and warm answers apart (medians over runs; ms):", ""]
    lines += [
        "| setup | cold answers p50 | cold answers p99 | warm answers p50 | warm answers p99 |",
        "|---|--:|--:|--:|--:|",
    ]
    for side in SIDES:
        rs = runs[side]
        lines.append(
            f"| {side} | {fmt_ms(med([r.cold_p50_ms for r in rs]))} | "
            f"{fmt_ms(med([r.cold_p99_ms for r in rs]))} | "
            f"{fmt_ms(med([r.warm_p50_ms for r in rs]))} | "
            f"{fmt_ms(med([r.warm_p99_ms for r in rs]))} |"
        )
    out += lines

    def per_round(get: Any) -> str:
        pairs = zip(
            sorted(b, key=lambda r: r.round_no), sorted(n, key=lambda r: r.round_no), strict=False
        )
        return ", ".join(
            f"{get(x) / get(y):.2f}" if get(x) is not None and get(y) else "-" for x, y in pairs
        )

    rb, rn = med([r.req_per_s for r in b]), med([r.req_per_s for r in n])
    pb, pn = med([r.p50_ms for r in b]), med([r.p50_ms for r in n])
    qb, qn = med([r.p99_ms for r in b]), med([r.p99_ms for r in n])
    mb, mn = med([r.rss_peak_kib for r in b]), med([r.rss_peak_kib for r in n])
    eb, en = med([r.rss_end_kib for r in b]), med([r.rss_end_kib for r in n])

    def rss_line(what: str, x: float | None, y: float | None) -> str:
        diff = ((y or 0) - (x or 0)) / 1024
        return (
            f"- {what}: **{ratio(x, y, 2)}** ({(x or 0) / 1024:.0f} vs {(y or 0) / 1024:.0f} "
            f"MiB; {abs(diff):.0f} MiB {'less' if diff >= 0 else 'more'} with the budget)"
        )

    out += [
        "",
        "Ratios, budget / no budget (of the medians; each round's own ratio in brackets):",
        "",
        f"- req/s: **{ratio(rb, rn, 3)}** ({fmt_num(rb, 1)} vs {fmt_num(rn, 1)}) "
        f"[{per_round(lambda r: r.req_per_s)}]",
        f"- p50: **{ratio(pb, pn, 1)}** ({fmt_ms(pb)} vs {fmt_ms(pn)} ms) "
        f"[{per_round(lambda r: r.p50_ms)}]",
        f"- p99: **{ratio(qb, qn, 1)}** ({fmt_ms(qb)} vs {fmt_ms(qn)} ms) "
        f"[{per_round(lambda r: r.p99_ms)}]",
        rss_line("RSS peak during a run", mb, mn),
        rss_line("RSS at the end of a run", eb, en),
        "- peak RSS over each server's life (VmHWM, read before it stopped): "
        + ", ".join(f"{k} {v / 1024:.0f} MiB" for k, v in end_state.get("hwm_kib", {}).items()),
    ]
    cost_text = ", ".join(f"{k} {v / MIB:.1f}" for k, v in sorted(costs.items()))
    out += [
        "",
        f"Models: three copies of one MLP ({INPUT} -> {HIDDEN1} -> {HIDDEN2} -> {OUTPUT}, "
        f"Gemm/Relu, FP32), {file_size / MIB:.1f} MiB file each. Costs measured by a probe "
        f"server (`modelport_model_memory_bytes`, MiB): {cost_text}. Budget: halfway "
        f"between twice the median ({2 * statistics.median(costs.values()) / MIB:.1f} MiB) "
        f"and three files ({3 * file_size / MIB:.1f} MiB, below which no version is counted): "
        f"{budget:,} bytes ({budget / MIB:.1f} MiB). RSS when ready, after warm-up: "
        + ", ".join(f"{k} {v / 1024:.0f} MiB" for k, v in rss_ready.items())
        + f". At the end the budget server had {end_state.get('ready')} of the three READY "
        f"and `modelport_model_memory_bytes` summed to {end_state.get('loaded_mib', 0):.1f} "
        "MiB.",
        "",
        f"{args.rounds} rounds of {args.duration} s per side, sides alternating, order flipped "
        f"every other round; closed loop of {args.callers} callers (threads in the benchmark "
        "process, one keep-alive httpx client each), request i to model i mod 3, JSON, one "
        "sample. req/s counts 200 answers over the run's wall time (until the last answer); "
        "p50/p99/max over every answer of a run (nearest rank), figures are medians over the "
        "runs, spread = (max - min) / median of the runs' req/s, shown as ±half. cold starts "
        "and evictions: deltas of `modelport_cold_starts_total` and "
        "`modelport_evictions_total` over a run; mean load ms from "
        "`modelport_model_load_duration_seconds`; cold answers: share of answers with "
        "`cold_start: true`. RSS: `VmRSS` sampled every 50 ms during a run (peak) and after "
        f"it (end). client CPU ms/req: this process's CPU (the callers and the RSS sampler) over "
        "the run ÷ requests. other CPU: the highest share of the machine unrelated processes took "
        f"during one of the side's runs ((!) from {OTHER_CPU_WARN:.0%}; the idle server of "
        "the other side counts as other).",
    ]
    return "\n".join(out)


# ---------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds")
    parser.add_argument("--callers", type=int, default=4, help="concurrent closed-loop callers")
    parser.add_argument(
        "--output",
        type=Path,
        default=HERE / "RESULTS.md",
        help="the report the section goes into (replacing an earlier one); - for none",
    )
    parser.add_argument("--command", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.rounds < 1 or args.callers < 1:
        parser.error("--duration, --rounds and --callers must be positive")
    return args


def end_state(server: Server) -> dict[str, Any]:
    entries = httpx.post(f"{server.base}/v2/repository/index", json={}, timeout=30).json()
    ready = sum(1 for e in entries if e.get("name") in MODELS and e.get("state") == "READY")
    loaded = sum(model_costs(server.metrics()).values())
    return {"ready": ready, "loaded_mib": loaded / MIB, "index": entries}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = args.command or shlex.join(
        [os.path.relpath(PYTHON, ROOT), "benchmarks/eviction.py", *(argv or sys.argv[1:])]
    )
    for d in (RAW, LOGS, EVICTION):
        d.mkdir(parents=True, exist_ok=True)
    started_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    commit = command_output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    loadavg_start = read_text("/proc/loadavg").strip()
    t0 = time.monotonic()
    repo, file_size = build_repo()
    body = request_body()
    budget, costs = choose_budget(repo, file_size)
    log(f"budget {budget:,} bytes ({budget / MIB:.1f} MiB) from costs {costs}")

    by_side: dict[str, Server] = {}
    runs: dict[str, list[Run]] = {side: [] for side in SIDES}
    rss_ready: dict[str, int] = {}
    problems: list[str] = []
    state: dict[str, Any] = {}
    try:
        by_side["budget"] = start_server("budget", repo, ["--memory-budget", str(budget)])
        by_side["no budget"] = start_server("no budget", repo, [])
        for side, server in by_side.items():
            log(f"warm-up: {side}")
            closed_loop(server, args.callers, 2.0, body)
            rss_ready[side] = server.rss_kib()["VmRSS"]
        for round_no, side in rounds.round_order(SIDES, args.rounds):
            runs[side].append(measure(by_side[side], round_no, args.callers, args.duration, body))
        state = end_state(by_side["budget"])
        state["hwm_kib"] = {side: s.rss_kib()["VmHWM"] for side, s in by_side.items()}
    finally:
        for side, server in by_side.items():
            code = server.process.stop()
            if code not in (0, None):
                problems.append(f"server {side} exited with {code}")
    if state.get("ready", 0) > 2:
        problems.append(f"the budget server held {state['ready']} models READY at the end")
    elapsed = time.monotonic() - t0
    table = render(runs, budget, costs, file_size, rss_ready, state, args)
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
            f" cores ({cpu}); load average {loadavg_start} at the start. Generated by "
            "`benchmarks/eviction.py`:",
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
    (RAW / "eviction.json").write_text(
        json.dumps(
            {
                "settings": vars(args) | {"output": str(args.output)},
                "budget_bytes": budget,
                "costs": costs,
                "file_size": file_size,
                "rss_ready_kib": rss_ready,
                "end_state": state,
                "runs": {k: [asdict(r) for r in v] for k, v in runs.items()},
                "problems": problems,
            },
            indent=2,
            default=str,
        )
    )
    if str(args.output) != "-":
        write_section(args.output, SECTION, section)
        log(f"wrote the section to {args.output}")
    errors = sum(r.requests - r.ok for v in runs.values() for r in v)
    return 1 if problems or errors else 0


if __name__ == "__main__":
    sys.exit(main())
