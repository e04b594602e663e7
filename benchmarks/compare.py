"""Two commits of modelport side by side, in one run: ``run.py --compare-commits A B``.

    make bench BENCH_ARGS='--compare-commits 97b5ebc HEAD'
    .venv/bin/python benchmarks/run.py --compare-commits 97b5ebc HEAD --ab-rounds 2 --duration 1

Each commit's ``src/`` is exported with ``git archive`` into
``.work/commits/<sha>/`` (the working tree is never touched) and its
protobuf stubs generated there with that tree's own
``python -m modelport.protos.generate``. Both servers run from their own tree
with this venv's python (``PYTHONPATH=<tree>/src``), on free ports, and stay
up together while the rows below take turns on them in alternating rounds
(rounds.py): for the gRPC row a third server, the bare ``grpc.aio`` floor
(grpc_floor.py), takes its turn under the same perf_analyzer load.

Every run gives req/s (wrk or perf_analyzer) and the server's CPU time per
request: utime + stime of its process tree over the run (/proc/<pid>/stat,
all threads) divided by the requests it answered, which is the success count
of gRPC ModelStatistics before and after the run (the load tool's own count
when that cannot be read). Per row and side the report gives the medians and
the spread of the rounds ((max - min) / median); a row is flagged worse only
when B is worse than A by more than the larger of the two spreads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import loadgen
import machine
import models
import payloads
import rounds
import servers
from loadgen import LoadResult
from tables import fmt_num, fmt_pct, fmt_ratio, log
from tritonclient.grpc import service_pb2
from workdirs import BODIES, HERE, LOGS, PYTHON, RAW, ROOT, SERVE, WORK

COMMITS = WORK / "commits"
REPORT = WORK / "RESULTS-compare.md"
DEFAULT_ROUNDS = 8
#: modelport may not spend more than this multiple of the floor's CPU per gRPC request.
GRPC_FLOOR_TARGET = 1.3
#: Marks the section ``--compare-into-results`` keeps in RESULTS.md.
SECTION = "## Commit comparison"


@dataclass(frozen=True)
class Row:
    """One comparison row: a model, a transport, a concurrency."""

    model: str
    transport: str
    conc: int

    @property
    def label(self) -> str:
        return f"{self.model} {self.transport} c={self.conc}"


#: What "nothing gets slower" is checked on. The CNN row uses binary bodies:
#: its 48 KiB input as JSON would measure the JSON float parser.
ROWS = (
    Row("mlp", "http-json", 1),
    Row("mlp", "http-json", 32),
    Row("mlp", "http-binary", 32),
    Row("mlp", "grpc", 32),
    Row("cnn", "http-binary", 32),
)


@dataclass
class Measured:
    """One run on one side, with the server's CPU time per request answered."""

    load: LoadResult
    served: int
    """Requests the server answered during the run."""
    counted_by: str
    """``server`` (ModelStatistics) or the load tool's name."""
    cpu_us_per_request: float | None


@dataclass
class Side:
    """One server taking turns: a commit's modelport, or the gRPC floor."""

    name: str
    """``A``, ``B`` or ``floor``."""
    label: str
    server: servers.ServerProcess
    run: servers.ServerRun
    http_port: int
    grpc_port: int
    stats: ServedCounter
    log_path: Path
    sha: str = ""
    runs: dict[str, list[Measured]] = field(default_factory=dict)


# ---------------------------------------------------------------- source trees


def resolve(rev: str) -> str:
    """The full sha of ``rev`` (anything ``git rev-parse`` takes), or SystemExit."""
    out = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"--compare-commits: {rev!r} is not a commit of {ROOT}")
    return out.stdout.strip()


def tree_env(tree: Path) -> dict[str, str]:
    """This environment without MODELPORT_* settings, importing modelport from ``tree``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    env["PYTHONPATH"] = str(tree / "src")
    return env


def python_in_tree(
    tree: Path, args: list[str], *, timeout: float
) -> subprocess.CompletedProcess[str]:
    """This Python run in ``tree`` with tree_env(), its output captured as text."""
    return subprocess.run(
        [PYTHON, *args],
        cwd=tree,
        env=tree_env(tree),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def export_tree(sha: str) -> Path:
    """``.work/commits/<sha>``: the commit's src/ with its protobuf stubs generated.

    ``git archive`` reads the commit from the object store, so neither the
    working tree nor the index changes. A tree is exported once and reused;
    it is complete only once renamed into place.
    """
    dest = COMMITS / sha
    if (dest / "src" / "modelport" / "protos" / "grpc_service_pb2_grpc.py").exists():
        return dest
    COMMITS.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{sha[:12]}-", dir=COMMITS))
    try:
        archive = staging / "src.tar"
        with archive.open("wb") as out:
            subprocess.run(
                ["git", "-C", str(ROOT), "archive", "--format=tar", sha, "src"],
                stdout=out,
                check=True,
                timeout=120,
            )
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter="data")
        archive.unlink()
        # The stubs are not committed: the tree's own generator writes them
        # next to its .proto files.
        gen = python_in_tree(staging, ["-m", "modelport.protos.generate"], timeout=120)
        if gen.returncode != 0:
            raise SystemExit(f"generating the stubs of {sha[:12]} failed:\n{gen.stderr[-2000:]}")
        shutil.rmtree(dest, ignore_errors=True)
        staging.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def check_imports_from(tree: Path) -> None:
    """Fail unless a server started with tree_env() imports modelport from ``tree``.

    The venv holds modelport as an editable install of the main tree; the
    PYTHONPATH entry must come first or both sides would measure that one.
    """
    out = python_in_tree(tree, ["-c", "import modelport; print(modelport.__file__)"], timeout=60)
    found = Path(out.stdout.strip() or "?").resolve()
    if not found.is_relative_to(tree.resolve()):
        raise SystemExit(f"modelport imports from {found}, not from {tree}: {out.stderr[-500:]}")


# --------------------------------------------------------------------- servers


class ServedCounter:
    """Requests a server has answered for a model: gRPC ModelStatistics' success count.

    Counted by the server, over exactly the interval its CPU time is read,
    whichever transport carried them. None when the server does not say.
    """

    def __init__(self, grpc_port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        self.call = self.channel.unary_unary(
            "/inference.GRPCInferenceService/ModelStatistics",
            request_serializer=service_pb2.ModelStatisticsRequest.SerializeToString,
            response_deserializer=service_pb2.ModelStatisticsResponse.FromString,
        )

    def count(self, model: str) -> int | None:
        try:
            reply = self.call(service_pb2.ModelStatisticsRequest(name=model), timeout=5)
        except grpc.RpcError:
            return None
        total = sum(s.inference_stats.success.count for s in reply.model_stats)
        return int(total) if reply.model_stats else None

    def close(self) -> None:
        self.channel.close()


def _serve_repo(label: str, names: list[str]) -> Path:
    repo = SERVE / label
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    for name in names:
        shutil.copytree(models.DEFAULT_REPO / name, repo / name)
    return repo


def start_commit(name: str, sha: str, names: list[str], workers: int | None) -> Side:
    tree = export_tree(sha)
    check_imports_from(tree)
    label = f"{name} {sha[:9]}"
    log_path = LOGS / f"compare-{name}-{sha[:12]}.log"
    log_path.unlink(missing_ok=True)
    server, http_port, grpc_port = servers.modelport_server(
        PYTHON, _serve_repo(f"compare-{name}", names), log_path, tree, workers
    )
    server.env = tree_env(tree)
    run = servers.ServerRun(label, names, source=machine.source_fingerprint(tree))
    server.start()
    run.rss_ready_kib = server.memory_kib()["VmRSS"]
    side = Side(name, label, server, run, http_port, grpc_port, ServedCounter(grpc_port), log_path)
    side.sha = sha
    return side


def start_floor(model: str) -> Side:
    """grpc_floor.py on a free port, ready once ServerReady answers through its counter."""
    port = servers.free_port()
    log_path = LOGS / "compare-grpc-floor.log"
    log_path.unlink(missing_ok=True)
    argv = [PYTHON, str(HERE / "grpc_floor.py"), "--port", str(port), "--model", model]
    # ServerProcess polls an HTTP URL; the floor has none, so it is started
    # by hand and polled through ModelStatistics instead.
    server = servers.ServerProcess("grpc floor", argv, log_path, "", HERE)
    with log_path.open("ab") as out:
        server.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=HERE)
    stats = ServedCounter(port)
    try:
        grpc.channel_ready_future(stats.channel).result(timeout=servers.READY_TIMEOUT_S)
    except grpc.FutureTimeoutError:
        server.stop()
        raise RuntimeError(f"grpc floor not ready:\n{server.log_tail()}") from None
    run = servers.ServerRun("grpc floor", [model])
    return Side("floor", "grpc.aio floor", server, run, 0, port, stats, log_path)


def stop(side: Side) -> None:
    side.stats.close()
    side.run.peak_rss_kib = side.server.memory_kib()["VmHWM"]
    side.run.exit_code = side.server.stop()
    if side.name != "floor":
        servers.scan_log(side.log_path, side.run)


# ------------------------------------------------------------------ measuring


def measure(
    side: Side,
    row: Row,
    round_no: int,
    settings: loadgen.LoadSettings,
    bodies: payloads.ModelBodies,
    duration: int,
) -> Measured:
    before = side.stats.count(row.model)
    r = loadgen.load(
        settings,
        target=side.label,
        model=row.model,
        served_name=row.model,
        transport=row.transport,
        conc=row.conc,
        http_port=side.http_port,
        grpc_port=side.grpc_port,
        bodies=bodies,
        duration=duration,
        tag=f"compare-{side.name}-{row.model}-r{round_no}",
        server_pid=side.server.pid,
    )
    after = side.stats.count(row.model)
    if before is not None and after is not None:
        served, counted_by = after - before, "server"
    else:
        served, counted_by = r.requests, r.tool
    cpu = r.server_cpu_s
    per_request = cpu * 1e6 / served if cpu is not None and served > 0 else None
    return Measured(r, served, counted_by, per_request)


def summarize(runs: list[Measured]) -> dict[str, Any]:
    rps = [m.load.req_per_s for m in runs if m.load.errors == 0]
    cpu = [m.cpu_us_per_request for m in runs if m.cpu_us_per_request is not None]
    other = [m.load.other_cpu for m in runs if m.load.other_cpu is not None]
    return {
        "req_per_s": rounds.median(rps),
        "req_per_s_spread": rounds.spread(rps),
        "req_per_s_runs": [m.load.req_per_s for m in runs],
        "cpu_us": rounds.median(cpu),
        "cpu_us_spread": rounds.spread(cpu),
        "cpu_us_runs": [m.cpu_us_per_request for m in runs],
        "other_cpu": rounds.median(other),
        "failed": [m.load.note for m in runs if m.load.errors != 0],
        "counted_by": sorted({m.counted_by for m in runs}),
        "served_runs": [m.served for m in runs],
        "tool_requests_runs": [m.load.requests for m in runs],
    }


def verdict(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """B against A: ratios, the larger spread of the two sides, and whether B is worse.

    B is worse in req/s when B/A < 1 - spread, in CPU per request when
    B/A > 1 + spread: a difference the rounds of one side show between
    themselves is not a difference between the commits.
    """
    out: dict[str, Any] = {}
    for key, worse_if_lower in (("req_per_s", True), ("cpu_us", False)):
        va, vb = a[key], b[key]
        spreads = [s for s in (a[f"{key}_spread"], b[f"{key}_spread"]) if s is not None]
        noise = max(spreads) if spreads else None
        ratio = vb / va if va and vb is not None else None
        worse = None
        if ratio is not None and noise is not None:
            worse = ratio < 1 - noise if worse_if_lower else ratio > 1 + noise
        out[key] = {"ratio": ratio, "noise": noise, "worse": worse}
    return out


# --------------------------------------------------------------------- report


def _spread(value: float | None) -> str:
    return "-" if value is None else f"±{value * 100:.0f}%"


def _verdict(v: dict[str, Any]) -> str:
    if v["worse"] is None:
        return "-"
    return "**worse**" if v["worse"] else "ok"


def render(out: dict[str, Any]) -> str:
    a, b = out["commits"]["A"], out["commits"]["B"]
    lines = [
        f"A = `{a['sha'][:12]}` ({a['rev']}), B = `{b['sha'][:12]}` ({b['rev']}). "
        f"{out['rounds']} rounds of {out['duration_s']} s runs per row, both servers up "
        "the whole time, order flipped each round. req/s from the load tool; CPU µs/req = "
        "the server's utime + stime over the run ÷ requests it answered. Medians of the "
        "rounds; `±` is the spread of one side's rounds ((max - min) / median). A row is "
        "**worse** only when B is worse than A by more than the larger spread.\n",
        "| row | tool | req/s A | req/s B | B/A | spread A / B | req/s | "
        "CPU µs/req A | CPU µs/req B | B/A | spread A / B | CPU | other CPU |",
        "|---|---|--:|--:|--:|---|---|--:|--:|--:|---|---|--:|",
    ]
    for row in out["rows"]:
        if "error" in row:
            lines.append(f"| {row['row']} | {row['error']} |" + " - |" * 11)
            continue
        sa, sb, v = row["A"], row["B"], row["verdict"]
        other = max(sa["other_cpu"] or 0.0, sb["other_cpu"] or 0.0)
        lines.append(
            f"| {row['row']} | {row['tool']} | {fmt_num(sa['req_per_s'])} | "
            f"{fmt_num(sb['req_per_s'])} | {fmt_ratio(sb['req_per_s'], sa['req_per_s'])} | "
            f"{_spread(sa['req_per_s_spread'])} / {_spread(sb['req_per_s_spread'])} | "
            f"{_verdict(v['req_per_s'])} | {fmt_num(sa['cpu_us'], 1)} | "
            f"{fmt_num(sb['cpu_us'], 1)} | {fmt_ratio(sb['cpu_us'], sa['cpu_us'])} | "
            f"{_spread(sa['cpu_us_spread'])} / {_spread(sb['cpu_us_spread'])} | "
            f"{_verdict(v['cpu_us'])} | {fmt_pct(other)} |"
        )
    floor = out.get("grpc_floor")
    if floor:
        lines.append("\n### gRPC against a bare grpc.aio server\n")
        if "error" in floor:
            lines.append(f"Not measured: {floor['error']}")
        else:
            f = floor["floor"]
            lines.append(
                f"`benchmarks/grpc_floor.py` answers every ModelInfer with a fixed response; it "
                f"took its turn in the same rounds as {floor['row']} ({floor['tool']}). "
                f"Target: modelport at most {GRPC_FLOOR_TARGET}x the floor's CPU µs/req.\n"
            )
            lines.append("| server | req/s | spread | CPU µs/req | spread | x floor CPU |")
            lines.append("|---|--:|---|--:|---|--:|")
            for name, s in (("floor", f), ("A", floor["A"]), ("B", floor["B"])):
                lines.append(
                    f"| {name} | {fmt_num(s['req_per_s'])} | {_spread(s['req_per_s_spread'])} | "
                    f"{fmt_num(s['cpu_us'], 1)} | {_spread(s['cpu_us_spread'])} | "
                    f"{fmt_ratio(s['cpu_us'], f['cpu_us'])} |"
                )
    lines.append("\nEvery run (req/s; CPU µs/req), in the order made within each side:\n")
    for row in out["rows"]:
        if "error" in row:
            continue
        for name in ("A", "B", "floor"):
            s = row.get(name)
            if not s:
                continue
            pairs = ", ".join(
                f"{fmt_num(r)}; {fmt_num(c, 1)}"
                for r, c in zip(s["req_per_s_runs"], s["cpu_us_runs"], strict=True)
            )
            note = f" (failed: {'; '.join(s['failed'])})" if s["failed"] else ""
            lines.append(f"- {row['row']}, {name}: {pairs}{note}")
    if out["problems"]:
        lines.append("\nProblems:\n")
        lines.extend(f"- {p}" for p in out["problems"])
    return "\n".join(lines)


def write_reports(out: dict[str, Any], body: str, argv: list[str], into: Path | None) -> None:
    m = out["machine"]
    head = [
        "# modelport: two commits side by side\n",
        f"Run {out['started']}, {out['elapsed_s'] / 60:.1f} min. "
        "Generated by `benchmarks/run.py --compare-commits`; see benchmarks/README.md.\n",
        f"```\n{machine.exact_command(argv)}\n```\n",
        f"- nproc: {m.get('nproc')}; CPU: {m.get('cpu')}; Python: {m.get('python')}",
        f"- wrk: {m.get('wrk')}; perf_analyzer: {m.get('perf_analyzer')}",
        "- load generators and servers share the same cores\n",
        SECTION + "\n",
    ]
    REPORT.write_text("\n".join(head) + "\n" + body + "\n")
    if into is None:
        return
    # Keep RESULTS.md's other sections; replace an earlier comparison.
    text = into.read_text() if into.exists() else ""
    start = text.find(SECTION)
    if start >= 0:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + (text[end + 1 :] if end >= 0 else "")
    section = f"{SECTION}\n\nCommand: `{machine.exact_command(argv)}`\n\n{body}\n"
    into.write_text(text.rstrip() + "\n\n" + section)


# ----------------------------------------------------------------------- main


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """The whole comparison; 1 when a row is worse, a run failed or a server died."""
    started = datetime.now(UTC)
    rev_a, rev_b = args.compare_commits
    sha_a, sha_b = resolve(rev_a), resolve(rev_b)
    rows = [r for r in ROWS if r.model in args.models and r.transport in args.transports]
    if not rows:
        raise SystemExit("--compare-commits: no row left after --models / --transports")
    for d in (RAW, LOGS, BODIES, SERVE):
        d.mkdir(parents=True, exist_ok=True)
    if loadgen.wrk_path() is None and any(r.transport.startswith("http") for r in rows):
        print(loadgen.WRK_INSTALL_HINT + "  (or `make bench` as root installs it)", file=sys.stderr)
        return 2
    names = sorted({r.model for r in rows})
    out: dict[str, Any] = {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "commits": {"A": {"rev": rev_a, "sha": sha_a}, "B": {"rev": rev_b, "sha": sha_b}},
        "rounds": args.ab_rounds or DEFAULT_ROUNDS,
        "duration_s": args.duration,
        "rows": [],
        "problems": [],
    }
    pa = None
    if any(r.transport == "grpc" for r in rows) and args.grpc_tool != "grpc_load":
        pa, why = loadgen.ensure_perf_analyzer(WORK / "pa-venv", LOGS / "pa-setup.log")
        if pa is None:
            out["problems"].append(f"perf_analyzer unavailable, gRPC rows use grpc_load.py: {why}")
    settings = loadgen.LoadSettings(args.batch, args.wrk_threads, RAW, pa, PYTHON)
    out["machine"] = machine.describe_machine(pa, WORK / "pa-venv")
    log(f"comparing A {sha_a[:12]} ({rev_a}) with B {sha_b[:12]} ({rev_b}): {len(rows)} rows")
    models.generate()
    bodies = {m: payloads.write_bodies(BODIES, m, args.batch) for m in names}
    sides: dict[str, Side] = {}
    try:
        for name, sha in (("A", sha_a), ("B", sha_b)):
            log(f"exporting and starting {name} {sha[:12]}")
            sides[name] = start_commit(name, sha, names, args.workers)
            for model in names:
                loadgen.warm_up(settings, sides[name].http_port, model, bodies[model].binary)
        if any(r.transport == "grpc" for r in rows):
            grpc_model = next(r.model for r in rows if r.transport == "grpc")
            sides["floor"] = start_floor(grpc_model)
        for row in rows:
            out["rows"].append(compare_row(row, sides, settings, bodies[row.model], args, out))
    except servers.ServerGone as exc:
        out["problems"].append(f"a server died and did not restart: {exc}")
    finally:
        for side in sides.values():
            stop(side)
            out.setdefault("servers", []).append(asdict(side.run))
            for crash in side.run.crashes:
                out["problems"].append(f"{side.label}: {crash}")
    out["elapsed_s"] = (datetime.now(UTC) - started).total_seconds()
    body = render(out)
    print("\n" + body + "\n", flush=True)
    write_reports(out, body, argv, args.output if args.compare_into_results else None)
    (RAW / "compare.json").write_text(json.dumps(out, indent=2, default=str))
    log(
        f"wrote {REPORT}"
        + (f" and a section of {args.output}" if args.compare_into_results else "")
    )
    worse = any(
        v["worse"] for row in out["rows"] if "verdict" in row for v in row["verdict"].values()
    )
    failed = any(
        row.get("error") or row["A"]["failed"] or row["B"]["failed"] for row in out["rows"]
    )
    return 1 if worse or failed or out["problems"] else 0


def compare_row(
    row: Row,
    sides: dict[str, Side],
    settings: loadgen.LoadSettings,
    bodies: payloads.ModelBodies,
    args: argparse.Namespace,
    out: dict[str, Any],
) -> dict[str, Any]:
    turns = ["A", "B", "floor"] if row.transport == "grpc" and "floor" in sides else ["A", "B"]
    runs: dict[str, list[Measured]] = {name: [] for name in turns}
    for round_no, name in rounds.round_order(turns, out["rounds"]):
        side = sides[name]
        m = measure(side, row, round_no, settings, bodies, args.duration)
        runs[name].append(m)
        if side.name != "floor":
            servers.check_server(side.server, side.run)
        log(
            f"{row.label} round {round_no} {side.label}: {m.load.req_per_s:,.0f} req/s, "
            f"{fmt_num(m.cpu_us_per_request, 1)} CPU µs/req"
            + (f" ({m.load.note})" if m.load.note else "")
        )
    result: dict[str, Any] = {"row": row.label, "tool": runs["A"][0].load.tool}
    result.update({name: summarize(r) for name, r in runs.items()})
    result["verdict"] = verdict(result["A"], result["B"])
    if "floor" in runs:
        out["grpc_floor"] = {
            "row": row.label,
            "tool": result["tool"],
            "floor": result["floor"],
            "A": result["A"],
            "B": result["B"],
        }
    return result
