"""modelport's benchmark: throughput and latency beside what the machine allows.

    make bench                         # everything, 5 s per load run (~7 min)
    make bench BENCH_ARGS=--quick      # smoke check: 1 s runs, mlp, concurrency 1 and 32
    .venv/bin/python benchmarks/run.py --help

In one run it measures
1. ceilings: ONNX Runtime called in-process (2 processes x 1 thread) at
   batch 1 and 64 (at the start, and again right after each model's rows:
   the ratios use the mean, since the machine's speed drifts), and the
   HTTP floor (a bare ASGI app under uvicorn with httptools and uvloop,
   driven by the same wrk script and bodies);
2. modelport, one server per model (so each peak RSS is that model's), for
   every model x transport x concurrency: req/s, samples/s, p50, p99, errors;
3. optionally the same models with batching off (``--batching-off-key``) and
   an overload scenario (``--overload``).
It prints the tables and writes them with the machine's description to
benchmarks/RESULTS.md (``--quick``: benchmarks/.work/RESULTS-quick.md), raw
outputs to benchmarks/.work/raw/.
"""

from __future__ import annotations

import argparse
import itertools
import json
import operator
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ceilings
import compare
import loadgen
import models
import payloads
import rounds
import servers
from loadgen import LoadResult
from machine import describe_machine, exact_command, read_text, source_fingerprint
from servers import ServerGone, ServerRun, check_server, scan_log
from tables import OTHER_CPU_WARN, fmt_ms, fmt_num, fmt_pct, fmt_ratio, log
from workdirs import BODIES, HERE, LOGS, PYTHON, RAW, ROOT, SERVE, WORK

TRANSPORTS = ("http-json", "http-binary", "grpc")
CONCURRENCY = (1, 8, 32, 64)
CEILING_BATCHES = (1, 64)
DEFAULT_BATCHING_OFF_KEY = "modelport.batching"
OVERLOAD_CONCURRENCY = 256
OVERLOAD_QUEUE = 64
OVERLOAD_TIMEOUT_US = 100_000
PROBE_REQUESTS = 20
BY_REQ_PER_S = operator.attrgetter("req_per_s")


Ceiling = ceilings.Ceiling


@dataclass
class Results:
    settings: dict[str, Any]
    machine: dict[str, str] = field(default_factory=dict)
    ceilings: list[ceilings.Ceiling] = field(default_factory=list)
    ceilings_after: list[Ceiling] = field(default_factory=list)
    """The same ceilings measured again right after each model's modelport rows."""
    floor: list[LoadResult] = field(default_factory=list)
    runs: list[LoadResult] = field(default_factory=list)
    pa_http: list[LoadResult] = field(default_factory=list)
    servers: list[ServerRun] = field(default_factory=list)
    grpc_tool: str = ""
    grpc_tool_note: str = ""
    batching_off: dict[str, Any] = field(default_factory=dict)
    overload: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    started: str = ""
    elapsed_s: float = 0.0
    other_cpu: float = 0.0
    source_start: str = ""
    source_end: str = ""
    loadavg_start: str = ""
    loadavg_end: str = ""


# ------------------------------------------------------------------ helpers


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark modelport against in-process and HTTP-floor ceilings.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke check: 1 s runs, concurrency 1 and 32, mlp only"
    )
    parser.add_argument(
        "--models", nargs="+", choices=models.MODEL_NAMES, default=list(models.MODEL_NAMES)
    )
    parser.add_argument("--transports", nargs="+", choices=TRANSPORTS, default=list(TRANSPORTS))
    parser.add_argument("--concurrency", nargs="+", type=int, default=list(CONCURRENCY))
    parser.add_argument("--duration", type=int, default=5, help="seconds per load run")
    parser.add_argument("--batch", type=int, default=1, help="samples per request")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="passed to modelport as --workers (and to the floor's uvicorn)",
    )
    parser.add_argument(
        "--wrk-threads",
        type=int,
        default=1,
        choices=(1, 2),
        help="wrk threads; every one takes CPU from the server",
    )
    parser.add_argument(
        "--grpc-tool",
        choices=("auto", "perf_analyzer", "grpc_load"),
        default="auto",
        help="auto: perf_analyzer, else grpc_load.py",
    )
    parser.add_argument("--no-floor", action="store_true", help="skip the HTTP floor")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the in-process ceiling")
    parser.add_argument(
        "--batching-off-key",
        nargs="?",
        const=DEFAULT_BATCHING_OFF_KEY,
        default=None,
        metavar="DOTTED.KEY",
        help="also serve each model with this config key set to false "
        f"(bare flag: {DEFAULT_BATCHING_OFF_KEY}) and compare",
    )
    parser.add_argument(
        "--ab-rounds",
        type=int,
        default=None,
        help=f"alternating rounds: of the on/off comparison (default {AB_ROUNDS}) and of "
        f"--compare-commits (default {compare.DEFAULT_ROUNDS}); more steady the medians "
        "on a noisy machine",
    )
    parser.add_argument(
        "--compare-commits",
        nargs=2,
        metavar=("A", "B"),
        default=None,
        help="instead of the usual run, serve two commits (e.g. 97b5ebc HEAD) at once from "
        "trees exported under .work/commits and compare them row by row in alternating "
        "rounds, with a bare grpc.aio floor for gRPC; writes .work/RESULTS-compare.md",
    )
    parser.add_argument(
        "--compare-instructions",
        nargs=2,
        metavar=("A", "B"),
        default=None,
        help="instead of the usual run, count the instructions each commit's server executes "
        "per MLP HTTP JSON request under callgrind (needs valgrind), less its idle rate; "
        "writes .work/RESULTS-instructions.md",
    )
    parser.add_argument(
        "--compare-into-results",
        action="store_true",
        help="with --compare-commits, also write the comparison as a section of --output",
    )
    parser.add_argument(
        "--overload",
        action="store_true",
        help=f"also run concurrency {OVERLOAD_CONCURRENCY} against a model "
        f"with max_queue_size {OVERLOAD_QUEUE} and a request timeout",
    )
    parser.add_argument("--overload-model", choices=models.MODEL_NAMES, default="mlp")
    parser.add_argument(
        "--wait-quiet",
        type=int,
        default=0,
        metavar="SECONDS",
        help="first wait up to this long for other processes to leave the CPU idle",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="report file (default RESULTS.md; .work/RESULTS-quick.md with --quick)",
    )
    parser.add_argument(
        "--shm",
        action="store_true",
        help="also compare system shared memory with binary HTTP (shm.py), after the rest",
    )
    parser.add_argument(
        "--shm-only", action="store_true", help="run only the shared-memory comparison (shm.py)"
    )
    parser.add_argument(
        "--cold-start",
        action="store_true",
        help="also time cold starts against explicit loads (cold_start.py), after the rest",
    )
    parser.add_argument(
        "--cold-start-only", action="store_true", help="run only the cold-start measurement"
    )
    parser.add_argument(
        "--workers-only",
        action="store_true",
        help="run only --workers 2 against --workers 1 and two separate servers (workers.py)",
    )
    parser.add_argument(
        "--eviction-only",
        action="store_true",
        help="run only round-robin traffic over three models in a memory budget for two, "
        "against no budget (eviction.py)",
    )
    parser.add_argument(
        "--pipelines-only",
        action="store_true",
        help="run only a three-step ensemble against one tiny model, a cascade against its "
        "large model, and job submission beside synchronous traffic (pipelines.py)",
    )
    parser.add_argument(
        "--gateway-only",
        action="store_true",
        help="run only the fleet gateway: its hop against a node direct, least_request "
        "against round_robin over skewed nodes, and failover time (gateway.py)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = 1
        args.concurrency = [1, 32]
        args.models = ["mlp"]
    if args.output is None:
        args.output = WORK / "RESULTS-quick.md" if args.quick else HERE / "RESULTS.md"
    if args.ab_rounds is not None and args.ab_rounds < 1:
        parser.error("--ab-rounds must be at least 1")
    if args.compare_into_results and not args.compare_commits:
        parser.error("--compare-into-results needs --compare-commits")
    if args.duration < 1:
        parser.error("--duration is whole seconds, at least 1")
    if any(c < 1 for c in args.concurrency):
        parser.error("--concurrency values must be positive")
    if not 1 <= args.batch <= models.MAX_BATCH_SIZE:
        parser.error(f"--batch must be 1..{models.MAX_BATCH_SIZE}")
    return args


def serve_repo(label: str, sources: list[str]) -> Path:
    """A repository holding copies of ``sources`` from the generated repo."""
    repo = SERVE / label
    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir(parents=True)
    for name in sources:
        shutil.copytree(models.DEFAULT_REPO / name, repo / name)
    return repo


# ----------------------------------------------------------------- phases


def wait_quiet(limit_s: int, res: Results) -> None:
    """Wait until unrelated processes use under OTHER_CPU_WARN of the CPU, at most ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while True:
        meter = servers.CpuMeter()
        time.sleep(3)
        share = meter.other_share()
        if share < OTHER_CPU_WARN:
            log(f"machine quiet: other processes use {share:.0%} of the CPU")
            return
        if time.monotonic() >= deadline:
            note = f"machine still busy after waiting {limit_s} s: other processes use {share:.0%}"
            log(note)
            res.problems.append(note)
            return
        log(f"waiting for a quiet machine: other processes use {share:.0%} of the CPU")


def measure_ceilings(
    args: argparse.Namespace, names: list[str], into: list[Ceiling], when: str = ""
) -> None:
    for name in names:
        spec = models.SPECS[name]
        path = str(models.DEFAULT_REPO / name / "1" / "model.onnx")
        for batch in CEILING_BATCHES:
            meter = servers.CpuMeter()
            c = ceilings.measure(path, spec.input_name, spec.sample_shape, batch, args.duration)
            c.other_cpu = meter.other_share()
            into.append(c)
            log(
                f"ceiling {name} batch {batch}{when}: {c.samples_per_s:,.0f} samples/s "
                f"({c.mean_call_us:.1f} us per call)"
            )


def measure_floor(args: argparse.Namespace, res: Results, mlp: payloads.ModelBodies) -> None:
    http_transports = [t for t in args.transports if t.startswith("http")]
    if not http_transports:
        return
    server, port = servers.floor_server(PYTHON, HERE, LOGS / "floor.log", ROOT, args.workers or 1)
    server.start()
    try:
        url = loadgen.url_for(port, "mlp")
        for transport in http_transports:
            for conc in args.concurrency:
                r = LoadResult("floor", "mlp", transport, conc, "wrk", args.batch)
                meter = servers.CpuMeter(server.pid)
                loadgen.run_wrk(
                    url,
                    loadgen.http_body(mlp, transport),
                    concurrency=conc,
                    duration=args.duration,
                    threads=args.wrk_threads,
                    timeout_s=10,
                    result=r,
                    raw_out=RAW / f"floor-{transport}-c{conc}.txt",
                )
                r.other_cpu = meter.other_share()
                res.floor.append(r)
                log(
                    f"floor {transport} c={conc}: {r.req_per_s:,.0f} req/s, "
                    f"p50 {fmt_ms(r.p50_ms)}, p99 {fmt_ms(r.p99_ms)} ms, errors {r.errors}"
                )
    finally:
        server.stop()


def setup_grpc_tool(args: argparse.Namespace, res: Results) -> loadgen.PerfAnalyzer | None:
    needs = "grpc" in args.transports or args.grpc_tool == "perf_analyzer"
    pa: loadgen.PerfAnalyzer | None = None
    if needs and args.grpc_tool in ("auto", "perf_analyzer"):
        pa, why = loadgen.ensure_perf_analyzer(WORK / "pa-venv", LOGS / "pa-setup.log")
        if pa is None:
            res.grpc_tool_note = f"perf_analyzer unavailable: {why}"
            log(res.grpc_tool_note)
            if args.grpc_tool == "perf_analyzer":
                res.problems.append(res.grpc_tool_note)
    if "grpc" in args.transports:
        res.grpc_tool = "perf_analyzer" if pa is not None else "grpc_load.py (Python, grpc.aio)"
        log(f"gRPC load generator: {res.grpc_tool}")
    return pa


def load_settings(
    args: argparse.Namespace, pa: loadgen.PerfAnalyzer | None
) -> loadgen.LoadSettings:
    return loadgen.LoadSettings(args.batch, args.wrk_threads, RAW, pa, PYTHON)


def bench_model(
    args: argparse.Namespace,
    res: Results,
    model: str,
    bodies: payloads.ModelBodies,
    pa: loadgen.PerfAnalyzer | None,
) -> None:
    run = ServerRun(model, [model], source=source_fingerprint())
    res.servers.append(run)
    log_path = LOGS / f"modelport-{model}.log"
    log_path.unlink(missing_ok=True)
    server, http_port, grpc_port = servers.modelport_server(
        PYTHON, serve_repo(model, [model]), log_path, ROOT, args.workers
    )
    try:
        server.start()
    except RuntimeError as exc:
        run.crashes.append(f"did not start: {exc}")
        res.problems.append(f"modelport did not start for {model}: {exc}")
        log(f"modelport did not start for {model}: {exc}")
        return
    run.rss_ready_kib = server.memory_kib()["VmRSS"]
    try:
        loadgen.warm_up(load_settings(args, pa), http_port, model, bodies.binary)
        for transport in args.transports:
            for conc in args.concurrency:
                r = loadgen.load(
                    load_settings(args, pa),
                    target="modelport",
                    model=model,
                    served_name=model,
                    transport=transport,
                    conc=conc,
                    http_port=http_port,
                    grpc_port=grpc_port,
                    bodies=bodies,
                    duration=args.duration,
                    tag=model,
                    server_pid=server.pid,
                )
                run.peak_rss_kib = max(run.peak_rss_kib, server.memory_kib()["VmHWM"])
                if not check_server(server, run):
                    r.note = (r.note + "; " if r.note else "") + "server crashed or not ready"
                res.runs.append(r)
                log(
                    f"{model} {transport} c={conc} [{r.tool}]: {r.req_per_s:,.0f} req/s, "
                    f"p50 {fmt_ms(r.p50_ms)} ms, p99 {fmt_ms(r.p99_ms)} ms, errors {r.errors}"
                    + (f" ({r.note})" if r.note else "")
                )
        if pa is not None and any(t.startswith("http") for t in args.transports):
            conc = 32 if 32 in args.concurrency else max(args.concurrency)
            r = LoadResult("modelport", model, "http-binary", conc, "perf_analyzer", args.batch)
            meter = servers.CpuMeter(server.pid)
            loadgen.run_perf_analyzer(
                pa,
                model=model,
                url=f"127.0.0.1:{http_port}",
                protocol="http",
                concurrency=conc,
                batch=args.batch,
                duration=args.duration,
                input_data=bodies.pa_input_data,
                csv_out=RAW / f"{model}-pa-http-c{conc}.csv",
                result=r,
            )
            r.other_cpu = meter.other_share()
            res.pa_http.append(r)
            log(
                f"{model} perf_analyzer -i http c={conc}: {r.req_per_s:,.0f} req/s, "
                f"p50 {fmt_ms(r.p50_ms)} ms, p99 {fmt_ms(r.p99_ms)} ms"
                + (f" ({r.note})" if r.note else "")
            )
            check_server(server, run)
        run.peak_rss_kib = max(run.peak_rss_kib, server.memory_kib()["VmHWM"])
    except ServerGone as exc:
        res.problems.append(f"modelport for {model} died and did not restart: {exc}")
        log(f"skipping the rest of {model}: {exc}")
    finally:
        run.exit_code = server.stop()
        scan_log(log_path, run)


#: Alternating rounds in the batching on/off comparison, and seconds per run.
AB_ROUNDS = 4
AB_DURATION_S = 2


def _start_variant(
    args: argparse.Namespace, label: str, served: str
) -> tuple[servers.ServerProcess, int, int, ServerRun, Path] | str:
    """A server for ``served`` (already in the generated repo), or why it did not start."""
    log_path = LOGS / f"modelport-{label}.log"
    log_path.unlink(missing_ok=True)
    server, http_port, grpc_port = servers.modelport_server(
        PYTHON, serve_repo(label, [served]), log_path, ROOT, args.workers
    )
    run = ServerRun(label, [served], source=source_fingerprint())
    try:
        server.start()
    except RuntimeError as exc:
        return f"server did not start: {exc}"
    status, _ = servers.http_get(f"http://127.0.0.1:{http_port}/v2/models/{served}/ready")
    if status != 200:
        run.exit_code = server.stop()
        scan_log(log_path, run)
        return f"{served} not ready (GET ready -> {status}); see {log_path}"
    return server, http_port, grpc_port, run, log_path


def bench_batching_off(
    args: argparse.Namespace,
    res: Results,
    all_bodies: dict[str, payloads.ModelBodies],
    pa: loadgen.PerfAnalyzer | None,
) -> None:
    """Batching on against off, both servers up at once, in alternating rounds (rounds.py).

    A fresh batching-on server and the batching-off one take turns with
    short runs; the report gives the median of each side.
    """
    key = args.batching_off_key
    extra = models.nested(key, False)
    settings = load_settings(args, pa)
    # The lowest concurrency shows whether batching costs a lone request
    # anything; the highest, what it does under load.
    concs = sorted({min(args.concurrency), max(args.concurrency)})
    out: dict[str, Any] = {
        "key": key,
        "config": extra,
        "concurrency": concs,
        "rounds": args.ab_rounds or AB_ROUNDS,
        "run_s": AB_DURATION_S,
        "rows": [],
    }
    res.batching_off = out
    for model in args.models:
        variant = f"{model}_nobatch"
        models.write_variant(models.DEFAULT_REPO, model, variant, extra)
        started: dict[str, tuple[servers.ServerProcess, int, int, ServerRun, Path]] = {}
        try:
            for which, label, served in (("on", f"{model}_on", model), ("off", variant, variant)):
                got = _start_variant(args, label, served)
                if isinstance(got, str):
                    out["rows"].append({"model": model, "error": f"batching {which}: {got}"})
                    log(f"batching-off {model}: {got}")
                    break
                started[which] = got
                loadgen.warm_up(settings, got[1], served, all_bodies[model].binary)
            if len(started) < 2:
                continue
            for conc, transport in itertools.product(concs, args.transports):
                runs: dict[str, list[LoadResult]] = {"on": [], "off": []}
                for round_no, which in rounds.round_order(
                    ("on", "off"), args.ab_rounds or AB_ROUNDS
                ):
                    server, http_port, grpc_port, _run, _log = started[which]
                    r = loadgen.load(
                        settings,
                        target=f"modelport (batching {which})",
                        model=model,
                        served_name=model if which == "on" else variant,
                        transport=transport,
                        conc=conc,
                        http_port=http_port,
                        grpc_port=grpc_port,
                        bodies=all_bodies[model],
                        duration=AB_DURATION_S,
                        tag=f"{model}-batching-{which}-r{round_no}",
                        server_pid=server.pid,
                    )
                    runs[which].append(r)
                on = rounds.median_run(runs["on"], key=BY_REQ_PER_S)
                off = rounds.median_run(runs["off"], key=BY_REQ_PER_S)
                out["rows"].append(
                    {
                        "model": model,
                        "on": on.as_dict(),
                        "off": off.as_dict(),
                        "on_runs": [r.req_per_s for r in runs["on"]],
                        "off_runs": [r.req_per_s for r in runs["off"]],
                    }
                )
                log(
                    f"batching on/off {model} {transport} c={conc}: median "
                    f"{on.req_per_s:,.0f} / {off.req_per_s:,.0f} req/s "
                    f"(on {[round(r.req_per_s) for r in runs['on']]}, "
                    f"off {[round(r.req_per_s) for r in runs['off']]})"
                )
            for which, (server, _h, _g, run, _log) in started.items():
                if not check_server(server, run):
                    out["rows"].append({"model": model, "error": f"batching {which}: crashed"})
        except ServerGone as exc:
            out["rows"].append({"model": model, "error": f"server died: {exc}"})
        finally:
            for server, _h, _g, run, log_path in started.values():
                server.stop()
                scan_log(log_path, run)
                out.setdefault("servers", []).append(asdict(run))


def bench_overload(args: argparse.Namespace, res: Results) -> None:
    """Concurrency 256 against a bounded queue with a per-request timeout."""
    model = args.overload_model
    variant = f"{model}_bounded"
    extra = {
        "dynamic_batching": {
            "default_queue_policy": {
                "max_queue_size": OVERLOAD_QUEUE,
                "timeout_action": "REJECT",
                "default_timeout_microseconds": OVERLOAD_TIMEOUT_US,
                "allow_timeout_override": True,
            }
        }
    }
    models.write_variant(models.DEFAULT_REPO, model, variant, extra)
    bodies = payloads.write_bodies(
        BODIES, model, args.batch, {"timeout": OVERLOAD_TIMEOUT_US}, tag="-timeout"
    )
    normal = payloads.write_bodies(BODIES, model, args.batch)
    out: dict[str, Any] = {
        "model": variant,
        "config": extra,
        "request_parameters": {"timeout": OVERLOAD_TIMEOUT_US},
        "concurrency": OVERLOAD_CONCURRENCY,
        "duration_s": args.duration,
    }
    res.overload = out
    got = _start_variant(args, variant, variant)
    out["variant_ready"] = not isinstance(got, str)
    if isinstance(got, str):
        out["error"] = got
        return
    server, http_port, _, run, log_path = got
    try:
        cfg_status, cfg = servers.http_get(
            f"http://127.0.0.1:{http_port}/v2/models/{variant}/config"
        )
        if cfg_status == 200:
            served = json.loads(cfg).get("dynamic_batching", {}).get("default_queue_policy")
            out["served_queue_policy"] = served
        r = LoadResult(
            "modelport (overload)", model, "http-binary", OVERLOAD_CONCURRENCY, "wrk", args.batch
        )
        meter = servers.CpuMeter(server.pid)
        loadgen.run_wrk(
            loadgen.url_for(http_port, variant),
            bodies.binary,
            concurrency=OVERLOAD_CONCURRENCY,
            duration=args.duration,
            threads=args.wrk_threads,
            timeout_s=10,
            result=r,
            raw_out=RAW / f"{variant}-overload.txt",
        )
        r.other_cpu = meter.other_share()
        out["load"] = r.as_dict()
        out["alive_after"] = server.alive()
        probe_latencies: list[float] = []
        probe_statuses: dict[str, int] = {}
        headers = {
            "Content-Type": normal.binary.content_type,
            "Inference-Header-Content-Length": str(normal.binary.header_length),
        }
        payload = normal.binary.path.read_bytes()
        for _ in range(PROBE_REQUESTS):
            started = time.perf_counter()
            code = servers.http_post(
                loadgen.url_for(http_port, variant), payload, headers, timeout=10
            )
            probe_latencies.append((time.perf_counter() - started) * 1000)
            probe_statuses[str(code)] = probe_statuses.get(str(code), 0) + 1
        ready, _ = servers.http_get(server.ready_url, timeout=5)
        out["probe"] = {
            "requests": PROBE_REQUESTS,
            "statuses": probe_statuses,
            "first_ms": probe_latencies[0],
            "median_ms": statistics.median(probe_latencies),
            "max_ms": max(probe_latencies),
            "ready_status": ready,
        }
        out["answers_normally_after"] = (
            probe_statuses.get("200", 0) == PROBE_REQUESTS and ready == 200
        )
        run.peak_rss_kib = server.memory_kib()["VmHWM"]
        log(
            f"overload: statuses {r.statuses}, socket errors {r.socket_errors}, "
            f"max latency {fmt_ms(r.max_ms)} ms; "
            f"normal right after: {out['answers_normally_after']}"
        )
    finally:
        run.exit_code = server.stop()
        scan_log(log_path, run)
        out["server"] = asdict(run)


# ------------------------------------------------------------------ report


def _ceiling(res: Results, model: str, batch: int) -> float | None:
    """The mean of the ceiling's measurements: at the start and right after the model's rows.

    The machine's speed drifts by several percent over minutes (other tenants
    of the host), so the ratio uses the measurements on either side of it.
    """
    found = [
        c.samples_per_s
        for c in (*res.ceilings, *res.ceilings_after)
        if c.model == model and c.batch == batch
    ]
    return statistics.fmean(found) if found else None


def _floor(res: Results, transport: str, conc: int) -> float | None:
    return next(
        (f.req_per_s for f in res.floor if f.transport == transport and f.concurrency == conc),
        None,
    )


def render(res: Results, args: argparse.Namespace) -> str:
    lines: list[str] = []
    add = lines.append
    add("## Summary: best of each model and transport\n")
    add(
        "The highest req/s over the concurrencies tried, and at that concurrency: the ratio "
        "to the HTTP floor (MLP over HTTP) and to in-process ONNX Runtime at batch 1 and 64.\n"
    )
    add("| model | transport | best req/s | at conc | p99 ms | vs floor | vs ORT b1 | vs ORT b64 |")
    add("|---|---|--:|--:|--:|--:|--:|--:|")
    for model in args.models:
        for transport in args.transports:
            rows = [
                r
                for r in res.runs
                if r.model == model and r.transport == transport and r.errors >= 0
            ]
            if not rows:
                continue
            best = max(rows, key=lambda r: r.req_per_s)
            floor = _floor(res, transport, best.concurrency) if model == "mlp" else None
            add(
                f"| {model} | {transport} | {fmt_num(best.req_per_s)} | {best.concurrency} | "
                f"{fmt_ms(best.p99_ms)} | {fmt_ratio(best.req_per_s, floor)} | "
                f"{fmt_ratio(best.samples_per_s, _ceiling(res, model, 1))} | "
                f"{fmt_ratio(best.samples_per_s, _ceiling(res, model, 64))} |"
            )
    add("\n## Throughput and latency\n")
    add(
        f"Closed loop, {args.duration} s per row, {args.batch} sample(s) per request. "
        "`vs floor` = modelport req/s ÷ the HTTP floor's req/s at the same body and "
        "concurrency (MLP over HTTP only); `vs ORT b1` / `vs ORT b64` = samples/s ÷ "
        "in-process ONNX Runtime samples/s at batch 1 / 64. Errors = non-2xx answers "
        "+ socket errors and timeouts.\n"
    )
    add(
        "| model | transport | load tool | conc | req/s | samples/s | p50 ms | p99 ms | "
        "errors | vs floor | vs ORT b1 | vs ORT b64 | other CPU |"
    )
    add("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in res.runs:
        floor = _floor(res, r.transport, r.concurrency) if r.model == "mlp" else None
        vs_floor = fmt_ratio(r.req_per_s, floor) if r.transport.startswith("http") else "-"
        err = "FAILED" if r.errors < 0 else str(r.errors)
        add(
            f"| {r.model} | {r.transport} | {r.tool} | {r.concurrency} | {fmt_num(r.req_per_s)} | "
            f"{fmt_num(r.samples_per_s)} | {fmt_ms(r.p50_ms)} | {fmt_ms(r.p99_ms)} | {err} | "
            f"{vs_floor} | {fmt_ratio(r.samples_per_s, _ceiling(res, r.model, 1))} | "
            f"{fmt_ratio(r.samples_per_s, _ceiling(res, r.model, 64))} | {fmt_pct(r.other_cpu)} |"
        )
    notes = [r for r in res.runs if r.note or (r.errors > 0)]
    if notes:
        add("\nRows with errors or notes:\n")
        for r in notes:
            detail = r.note or ""
            if r.statuses and any(not k.startswith("2") for k in r.statuses):
                detail += f" statuses {r.statuses}"
            if r.socket_errors:
                detail += f" socket errors {r.socket_errors}"
            add(f"- {r.model} {r.transport} c={r.concurrency}: {detail.strip()}")
    if res.ceilings:
        add("\n## Ceiling: ONNX Runtime in-process\n")
        add(
            "2 processes x `intra_op_num_threads=1`, `session.run` on a fixed batch in a loop "
            f"for {args.duration} s.\n"
        )
        if res.ceilings_after:
            add(
                "Measured at the start of the run and again right after each model's "
                "modelport rows; the `vs ORT` ratios use the mean of the two.\n"
            )
        add(
            "| model | batch | when | samples/s | calls/s | µs per call (one process) | other CPU |"
        )
        add("|---|--:|---|--:|--:|--:|--:|")
        measured = [("start", c) for c in res.ceilings]
        measured += [("after its rows", c) for c in res.ceilings_after]
        for when, c in sorted(measured, key=lambda m: (m[1].model, m[1].batch)):
            add(
                f"| {c.model} | {c.batch} | {when} | {fmt_num(c.samples_per_s)} | "
                f"{fmt_num(c.calls_per_s)} | {c.mean_call_us:.1f} | {fmt_pct(c.other_cpu)} |"
            )
    if res.floor:
        add("\n## Ceiling: the HTTP floor\n")
        add(
            "`benchmarks/floor_app.py` (reads the body, answers fixed JSON) under uvicorn "
            "(httptools, uvloop, same worker count), same wrk script, same MLP bodies.\n"
        )
        add("| body | conc | req/s | p50 ms | p99 ms | errors | other CPU |")
        add("|---|--:|--:|--:|--:|--:|--:|")
        for f in res.floor:
            add(
                f"| {f.transport} | {f.concurrency} | {fmt_num(f.req_per_s)} | "
                f"{fmt_ms(f.p50_ms)} | {fmt_ms(f.p99_ms)} | {f.errors} | {fmt_pct(f.other_cpu)} |"
            )
    if res.pa_http:
        add("\n## perf_analyzer over HTTP (for comparison with wrk)\n")
        add(
            "| model | conc | req/s (perf_analyzer -i http) | p50 ms | p99 ms | "
            "req/s (wrk, http-binary) | other CPU | note |"
        )
        add("|---|--:|--:|--:|--:|--:|--:|---|")
        for p in res.pa_http:
            w = next(
                (
                    r
                    for r in res.runs
                    if r.model == p.model
                    and r.transport == "http-binary"
                    and r.concurrency == p.concurrency
                ),
                None,
            )
            add(
                f"| {p.model} | {p.concurrency} | {fmt_num(p.req_per_s)} | {fmt_ms(p.p50_ms)} | "
                f"{fmt_ms(p.p99_ms)} | {fmt_num(w.req_per_s) if w else '-'} | "
                f"{fmt_pct(p.other_cpu)} | {p.note} |"
            )
    if res.servers:
        add("\n## Server memory\n")
        add(
            "One modelport process per model. RSS when ready, and peak RSS (VmHWM) over all "
            "of that model's runs.\n"
        )
        add("| model | RSS ready MiB | peak RSS MiB | restarts | log warnings | log errors |")
        add("|---|--:|--:|--:|--:|--:|")
        for s in res.servers:
            add(
                f"| {s.label} | {s.rss_ready_kib / 1024:.0f} | {s.peak_rss_kib / 1024:.0f} | "
                f"{s.restarts} | {s.log_warnings} | {s.log_errors} |"
            )
        for s in res.servers:
            for crash in s.crashes:
                add(f"\n**{s.label}: {crash}**")
            for kind, count in s.error_kinds.items():
                add(f"\n{s.label}: {count} error log line(s): `{kind}`")
    add("\n## Batching off\n")
    if not res.batching_off:
        add(
            "Skipped (pass `--batching-off-key [DOTTED.KEY]` to compare; the bare flag sets "
            f"`{DEFAULT_BATCHING_OFF_KEY}: false`)."
        )
    else:
        b = res.batching_off
        add(
            f"Each model served twice at once, as configured (batching on) and copied with "
            f"`{json.dumps(b['config'])}` merged into its config (off); concurrency "
            f"{b['concurrency']}. For each row, {b.get('rounds', 1)} rounds of "
            f"{b.get('run_s', args.duration)} s runs alternate on, off, off, on, and so on; "
            "the table gives each side's median run and every run's req/s.\n"
        )
        add(
            "| model | transport | conc | req/s on | req/s off | on/off | p99 ms on "
            "| p99 ms off | runs on | runs off |"
        )
        add("|---|---|--:|--:|--:|--:|--:|--:|---|---|")
        for row in b["rows"]:
            if "error" in row:
                add(f"| {row['model']} | - | - | - | - | - | - | - | - | {row['error']} |")
                continue
            off, on = row["off"], row["on"]
            runs_on = ", ".join(fmt_num(x) for x in row.get("on_runs", []))
            runs_off = ", ".join(fmt_num(x) for x in row.get("off_runs", []))
            add(
                f"| {row['model']} | {off['transport']} | {off['concurrency']} | "
                f"{fmt_num(on['req_per_s'])} | {fmt_num(off['req_per_s'])} | "
                f"{fmt_ratio(on['req_per_s'], off['req_per_s'])} | "
                f"{fmt_ms(on['p99_ms'])} | {fmt_ms(off['p99_ms'])} | {runs_on} | {runs_off} |"
            )
    add("\n## Overload\n")
    if not res.overload:
        add("Skipped (pass `--overload`).")
    else:
        o = res.overload
        add(
            f"wrk with {o['concurrency']} connections for {o['duration_s']} s against "
            f"`{o['model']}` with `{json.dumps(o['config'])}` and request parameter "
            f"`{json.dumps(o['request_parameters'])}` (http-binary).\n"
        )
        if "error" in o:
            add(f"**{o['error']}**")
        if "served_queue_policy" in o:
            add(f"- queue policy as served by GET config: `{json.dumps(o['served_queue_policy'])}`")
        if "load" in o:
            ld = o["load"]
            s503 = ld["statuses"].get("503", 0)
            add(
                f"- answered: {ld['requests']:,} ({fmt_num(ld['req_per_s'])} 2xx/s); statuses "
                f"`{json.dumps(ld['statuses'])}`; 503: {s503:,}; socket errors "
                f"`{json.dumps(ld['socket_errors'])}`"
            )
            add(
                f"- latency p50 {fmt_ms(ld['p50_ms'])} ms, p99 {fmt_ms(ld['p99_ms'])} ms, "
                f"max {fmt_ms(ld['max_ms'])} ms"
            )
            add(
                f"- server alive after: {o.get('alive_after')}; answers normally right after: "
                f"{o.get('answers_normally_after')}"
            )
        if "probe" in o:
            p = o["probe"]
            add(
                f"- {p['requests']} sequential normal requests right after: statuses "
                f"`{json.dumps(p['statuses'])}`, first {p['first_ms']:.1f} ms, median "
                f"{p['median_ms']:.1f} ms, max {p['max_ms']:.1f} ms; ready -> {p['ready_status']}"
            )
        srv = o.get("server", {})
        if srv:
            add(
                f"- server log: {srv['log_warnings']} warning and {srv['log_errors']} error "
                f"lines; exit code at stop {srv['exit_code']}"
            )
            for kind, count in srv.get("error_kinds", {}).items():
                add(f"- {count} error log line(s): `{kind}`")
    return "\n".join(lines)


def write_report(res: Results, args: argparse.Namespace, argv: list[str], body: str) -> None:
    m = res.machine
    head = [
        "# modelport benchmark results\n",
        f"Run {res.started}, {res.elapsed_s / 60:.1f} min. Generated by `benchmarks/run.py`; "
        "see benchmarks/README.md for how to read it.\n",
        "## Command\n",
        f"```\n{exact_command(argv)}\n```\n",
        "## Machine\n",
        f"- nproc: {m.get('nproc')}; CPU: {m.get('cpu')}; memory: {m.get('memory')}",
        f"- OS: {m.get('os')}",
        f"- Python: {m.get('python')}",
        f"- libraries: {m.get('libraries')}",
        f"- wrk: {m.get('wrk')} ({args.wrk_threads} thread(s)); gRPC load: "
        f"{res.grpc_tool or 'not run'}"
        + (f" ({res.grpc_tool_note})" if res.grpc_tool_note else ""),
        f"- perf_analyzer: {m.get('perf_analyzer')}",
        f"- modelport: {m.get('modelport commit')} (source hash {res.source_start}); workers: "
        f"{args.workers if args.workers else 'default'}; model configs: "
        f"`{json.dumps(models.BASE_CONFIG)}`",
        f"- CPU used by unrelated processes during the whole run: {fmt_pct(res.other_cpu)} of "
        f"the machine (column `other CPU` per row; (!) marks {OTHER_CPU_WARN:.0%} or more); "
        f"/proc/loadavg at start `{res.loadavg_start}`, at end `{res.loadavg_end}`",
        "- Load generator and server share the same 2 cores: every CPU cycle wrk or "
        "perf_analyzer spends is one the server does not get, so all numbers (and the "
        "floor) are lower than with a separate client machine.\n",
    ]
    fingerprints = [res.source_start, *(s.source for s in res.servers), res.source_end]
    fingerprints += [str(x.get("source")) for x in res.batching_off.get("servers", [])]
    if res.overload.get("server"):
        fingerprints.append(str(res.overload["server"].get("source")))
    if len({f for f in fingerprints if f}) > 1:
        res.problems.append(
            "modelport's source changed during the run (hash of src/modelport/**/*.py: "
            f"{res.source_start} at start, {res.source_end} at end; per model server: "
            + ", ".join(f"{s.label} {s.source}" for s in res.servers)
            + "): rows measured different code"
        )
    if res.problems:
        head.append("## Problems\n")
        head.extend(f"- {p}" for p in res.problems)
        head.append("")
    text = "\n".join(head) + "\n" + body + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)


# -------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.compare_commits:
        return compare.run(args, argv)
    if args.compare_instructions:
        import instructions

        return instructions.main(args.compare_instructions)
    if args.shm_only:
        return run_shm(args)
    if args.cold_start_only:
        return run_cold_start(args)
    if args.workers_only:
        return run_workers(args, argv)
    if args.eviction_only:
        return run_eviction(args, argv)
    if args.pipelines_only:
        return run_pipelines(args, argv)
    if args.gateway_only:
        return run_gateway(args, argv)
    started = time.monotonic()
    whole = servers.CpuMeter()
    res = Results(settings={k: str(v) for k, v in vars(args).items()})
    res.started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    res.loadavg_start = read_text("/proc/loadavg").strip()
    res.source_start = source_fingerprint()
    for d in (RAW, LOGS, BODIES, SERVE):
        d.mkdir(parents=True, exist_ok=True)
    needs_wrk = any(t.startswith("http") for t in args.transports) or args.overload
    if needs_wrk and loadgen.wrk_path() is None:
        print(loadgen.WRK_INSTALL_HINT + "  (or `make bench` as root installs it)", file=sys.stderr)
        return 2

    if args.wait_quiet > 0:
        wait_quiet(args.wait_quiet, res)
    log("generating models")
    models.generate()
    all_bodies = {m: payloads.write_bodies(BODIES, m, args.batch) for m in models.MODEL_NAMES}

    if not args.no_ceiling:
        log("in-process ONNX Runtime ceilings")
        measure_ceilings(args, list(args.models), res.ceilings)
    if not args.no_floor:
        log("HTTP floor")
        measure_floor(args, res, all_bodies["mlp"])
    pa = setup_grpc_tool(args, res)
    res.machine = describe_machine(pa, WORK / "pa-venv")

    for model in args.models:
        log(f"modelport: {model}")
        bench_model(args, res, model, all_bodies[model], pa)
        if not args.no_ceiling:
            measure_ceilings(args, [model], res.ceilings_after, " (again, after its rows)")

    if args.batching_off_key:
        log(f"batching off ({args.batching_off_key}: false)")
        bench_batching_off(args, res, all_bodies, pa)
    else:
        log("batching-off comparison skipped (pass --batching-off-key to run it)")
    if args.overload:
        log("overload")
        bench_overload(args, res)

    res.elapsed_s = time.monotonic() - started
    res.other_cpu = whole.other_share()
    res.loadavg_end = read_text("/proc/loadavg").strip()
    res.source_end = source_fingerprint()
    body = render(res, args)
    print("\n" + body + "\n", flush=True)
    write_report(res, args, argv, body)
    raw = {
        **asdict(res),
        "floor": [f.as_dict() for f in res.floor],
        "runs": [r.as_dict() for r in res.runs],
        "pa_http": [r.as_dict() for r in res.pa_http],
    }
    (RAW / ("results-quick.json" if args.quick else "results.json")).write_text(
        json.dumps(raw, indent=2, default=str)
    )
    log(f"wrote {args.output} ({res.elapsed_s / 60:.1f} min)")
    failed = [r for r in res.runs if r.errors != 0] or res.problems
    shm_failed = run_shm(args) if args.shm else 0
    cold_failed = run_cold_start(args) if args.cold_start else 0
    return 1 if failed or shm_failed or cold_failed else 0


def run_shm(args: argparse.Namespace) -> int:
    """System shared memory against binary HTTP (shm.py; its own server and table)."""
    import shm

    log("system shared memory vs binary HTTP")
    return shm.main(["--duration", str(args.duration)] + (["--rounds", "1"] if args.quick else []))


def run_cold_start(args: argparse.Namespace) -> int:
    """Cold starts of the bundled digits model against explicit loads (cold_start.py)."""
    import cold_start

    log("cold starts against explicit loads")
    return cold_start.main(["--runs", "5" if args.quick else "20"])


def run_workers(args: argparse.Namespace, argv: list[str]) -> int:
    """--workers 2 against --workers 1 and two separate servers (workers.py; its own section)."""
    import workers

    log("--workers 2 against --workers 1 and two separate servers")
    return workers.main(
        ["--duration", str(args.duration), "--command", exact_command(argv)]
        + (["--rounds", "1", "--output", str(args.output)] if args.quick else [])
    )


def run_eviction(args: argparse.Namespace, argv: list[str]) -> int:
    """Three models in a memory budget for two against no budget (eviction.py; its section)."""
    import eviction

    log("eviction churn: three models in a memory budget for two, against no budget")
    return eviction.main(
        ["--command", exact_command(argv)]
        + (["--rounds", "1", "--duration", "3", "--output", str(args.output)] if args.quick else [])
    )


def run_pipelines(args: argparse.Namespace, argv: list[str]) -> int:
    """Ensemble, cascade and job submission, each against its reference (pipelines.py)."""
    import pipelines

    log("pipelines: ensemble vs tiny model, cascade vs large model, job submission")
    return pipelines.main(
        ["--command", exact_command(argv)]
        + (
            ["--rounds", "1", "--duration", "2", "--jobs-rounds", "1", "--output", str(args.output)]
            if args.quick
            else []
        )
    )


def run_gateway(args: argparse.Namespace, argv: list[str]) -> int:
    """The fleet gateway's hop, skewed nodes and failover (gateway.py; its section)."""
    import gateway

    log("gateway: the Envoy hop, least_request over skewed nodes, failover")
    return gateway.main(
        ["--command", exact_command(argv)]
        + (["--rounds", "1", "--duration", "2", "--output", str(args.output)] if args.quick else [])
    )


if __name__ == "__main__":
    sys.exit(main())
