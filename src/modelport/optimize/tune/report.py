"""Showing an optimization: a rich table for people, JSON for pipelines, Markdown beside the model.

All three come from the same rows (``_rows``), so the terminal, report.json
and report.md never disagree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from modelport.optimize.tune.candidates import GRAPH_LEVEL_NAMES, Skipped
from modelport.optimize.tune.choose import NoiseCheck, Outcome
from modelport.optimize.tune.measure import instances_for

if TYPE_CHECKING:
    from modelport.optimize.convert.source import VersionPath
    from modelport.optimize.tune.hardware import Hardware
    from modelport.types import ModelSignature


@dataclass
class OptimizeReport:
    """The run: what was detected, every candidate's outcome, and what was written."""

    source: VersionPath
    backend: str
    hardware: Hardware
    metric: str
    budget: float
    objective: str
    signature: ModelSignature
    calibration_rows: int
    held_out_rows: int
    labels: bool
    outcomes: list[Outcome]
    skipped: list[Skipped]
    winner: Outcome
    threads: int
    instances: int
    graph_level: int | None
    served_by: str = "onnxruntime"
    """The winner's backend."""
    parameters: dict[str, str] = field(default_factory=dict)
    """The parameters the winner's config.yaml serves it with."""
    version: int = 0
    version_dir: Path | None = None
    notes: list[str] = field(default_factory=list)
    kept: str = ""
    """Why nothing was written and the current version stays (then ``winner`` is it)."""
    noise: NoiseCheck | None = None
    """The current version against the best candidate, round by round, when measured."""


_COLUMNS = (
    "candidate",
    "p50 ms (b1)",
    "p99 ms (b1)",
    "rows/s, 1 instance",
    "threads",
    "size",
    "metric",
    "result",
)


def _size(size: int | None) -> str:
    if size is None:
        return "-"
    return f"{size / 1e6:.2f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"


def _metric(outcome: Outcome) -> str:
    j = outcome.judgement
    if j is None:
        return "-"
    text = f"{j.metric} {j.candidate:.4g}"
    if j.original is not None:
        text += f" (orig {j.original:.4g})"
    return text


def _outcome_json(outcome: Outcome, cores: int) -> dict[str, Any]:
    j = outcome.judgement
    return {
        "name": outcome.name,
        "description": outcome.description,
        "settings": outcome.settings,
        "status": outcome.status,
        "reason": outcome.reason,
        "size_bytes": outcome.size_bytes,
        "metric": None
        if j is None
        else {
            "name": j.metric,
            "original": j.original,
            "candidate": j.candidate,
            "within_budget": j.within,
            "top1_agreement": j.agreement,
            "max_abs_diff": j.max_abs_diff,
        },
        "best": None
        if outcome.best is None
        else {
            "threads": outcome.best.threads,
            "instances": instances_for(outcome.best.threads, cores),
            "p50_ms": outcome.best.p50_ms,
            "p99_ms": outcome.best.p99_ms,
            "best_batch": outcome.best.best_batch,
            "rows_per_s": outcome.best.rows_per_s,
        },
        "timings": [
            {
                "threads": t.threads,
                "p50_ms": t.p50_ms,
                "p99_ms": t.p99_ms,
                "rows_per_s_by_batch": {str(b): r for b, r in t.throughput.items()},
            }
            for t in outcome.timings
        ],
    }


def _noise_json(report: OptimizeReport) -> dict[str, Any] | None:
    check = report.noise
    if check is None:
        return None
    unit = "seconds (p50, batch 1)" if report.objective == "latency" else "seconds per row"
    return {
        "rounds": len(check.current),
        "unit": unit,
        "current": list(check.current),
        "candidate": list(check.candidate),
        "gain": check.gain,
        "noise": check.noise,
        "beyond_noise": check.beats,
    }


def report_json(report: OptimizeReport) -> dict[str, Any]:
    hw = report.hardware
    return {
        "ok": True,
        "source": str(report.source.version_dir),
        "backend": report.backend,
        "written": not report.kept,
        "kept": report.kept or None,
        "version": None if report.kept else report.version,
        "version_dir": str(report.version_dir) if report.version_dir else None,
        "hardware": {
            "cpu": hw.cpu_model,
            "cores": hw.cores,
            "features": list(hw.features),
            "int8_fast": hw.int8_fast,
            "bf16_fast": hw.bf16_fast,
            "gpus": list(hw.gpus),
            "providers": list(hw.providers),
            "openvino": hw.openvino or None,
        },
        "metric": report.metric,
        "budget": report.budget,
        "objective": report.objective,
        "rows": {"calibration": report.calibration_rows, "held_out": report.held_out_rows},
        "labels": report.labels,
        "chosen": None
        if report.kept
        else {
            "candidate": report.winner.name,
            "backend": report.served_by,
            "intra_op_thread_count": report.threads,
            "instance_count": report.instances,
            "graph_level": report.graph_level,
            "parameters": report.parameters,
        },
        "noise_check": _noise_json(report),
        "candidates": [_outcome_json(o, hw.cores) for o in report.outcomes],
        "skipped": [{"name": s.name, "reason": s.reason} for s in report.skipped],
        "notes": report.notes,
    }


def report_text(report: OptimizeReport) -> str:
    return json.dumps(report_json(report), indent=2) + "\n"


def _cells(outcome: Outcome, reasons: bool = True) -> list[str]:
    best = outcome.best
    status = outcome.status + (f": {outcome.reason}" if outcome.reason and reasons else "")
    if best is None:
        return [
            outcome.name,
            "-",
            "-",
            "-",
            "-",
            _size(outcome.size_bytes),
            _metric(outcome),
            status,
        ]
    return [
        outcome.name,
        f"{best.p50_ms:.3f}",
        f"{best.p99_ms:.3f}",
        f"{best.rows_per_s:,.0f} (b{best.best_batch})",
        str(best.threads),
        _size(outcome.size_bytes),
        _metric(outcome),
        status,
    ]


def _chosen_line(report: OptimizeReport) -> str:
    if report.kept:
        return f"kept version {report.source.version}: {report.kept}"
    level = (
        f", graph level {report.graph_level} ({GRAPH_LEVEL_NAMES[report.graph_level]})"
        if report.graph_level is not None
        else ""
    )
    if report.served_by == "onnxruntime":
        threads = f"{report.threads} intra-op thread(s)"
    else:
        threads = f"{report.threads} thread(s)"
    backend = "" if report.served_by == "onnxruntime" else f", backend {report.served_by}"
    if report.served_by == "openvino" and "HINT_BF16" in report.parameters:
        backend += f" (HINT_BF16 {report.parameters['HINT_BF16']})"
    return (
        f"chose {report.winner.name} for {report.objective}: {threads} x "
        f"{report.instances} instance(s){level}{backend}; written as version "
        f"{report.version} ({report.version_dir})"
    )


def report_markdown(report: OptimizeReport) -> str:
    lines = [
        f"# modelport optimize: {report.source.model} version {report.source.version}",
        "",
        f"- hardware: {report.hardware.describe()}",
        f"- metric: {report.metric}, budget {report.budget:.2%}, objective {report.objective}",
        f"- rows: {report.calibration_rows} to calibrate, {report.held_out_rows} held out",
        f"- {_chosen_line(report)}",
        "",
        "| " + " | ".join(_COLUMNS) + " |",
        "|" + "---|" * len(_COLUMNS),
    ]
    lines += ["| " + " | ".join(_cells(o)) + " |" for o in report.outcomes]
    lines += ["", "Not tried:", ""]
    lines += [f"- {s.name}: {s.reason}" for s in report.skipped]
    return "\n".join(lines) + "\n"


def print_report(report: OptimizeReport, console: Console) -> None:
    """The table and the reasons; text is escaped, since rich reads ``[openvino]`` as markup."""
    table = Table(
        title=(
            f"Candidates ({report.objective}; judged on {report.held_out_rows} held-out rows; "
            "one instance each)"
        ),
        title_justify="left",
    )
    for column in _COLUMNS:
        table.add_column(column, justify="right" if "ms" in column or "rows" in column else "left")
    for outcome in report.outcomes:
        row = _cells(outcome, reasons=False)
        style = {
            "chosen": "green",
            "kept": "green",
            "out of budget": "red",
            "failed": "red",
        }.get(outcome.status)
        table.add_row(*(escape(cell) for cell in row), style=style)
    console.print(table)
    for outcome in report.outcomes:
        if outcome.status != "chosen":
            console.print(escape(f"{outcome.name}: {outcome.status}: {outcome.reason}"))
    for skipped in report.skipped:
        console.print(f"[dim]{escape(f'not tried: {skipped.name}: {skipped.reason}')}[/dim]")
    console.print(escape(_chosen_line(report)))
    for note in report.notes:
        console.print(escape(f"note: {note}"))
