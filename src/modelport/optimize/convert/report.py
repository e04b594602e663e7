"""Showing a conversion's result: rich tables for people, one JSON object for scripts.

Names, paths and notes are escaped before rich prints them: it reads
``[ae]`` as markup and would drop it.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from modelport.optimize.convert.command import ConvertReport
from modelport.optimize.convert.comparison import CheckResult, OutputCheck
from modelport.optimize.convert.timing import Speed
from modelport.types import ModelSignature


def _number(value: float | None) -> str:
    """Tolerances as people write them: 1e-04, 0.5, 0."""
    if value is None:
        return "-"
    return f"{value:.0e}" if 0 < abs(value) < 1e-2 else f"{value:g}"


def _rule(check: OutputCheck) -> str:
    return "exact" if check.exact else f"rtol {_number(check.rtol)}, atol {_number(check.atol)}"


def _diff(check: OutputCheck) -> str:
    if check.max_abs_diff is None:
        return "-"
    row = f" (row {check.row})" if check.row is not None and check.max_abs_diff else ""
    return f"{check.max_abs_diff:.3g}{row}"


def check_table(check: CheckResult) -> Table:
    """One line per output: how it was compared and how far apart the answers were."""
    table = Table(title=f"Answers on {check.rows} rows", title_justify="left")
    table.add_column("output")
    table.add_column("type")
    table.add_column("rule")
    table.add_column("max abs diff", justify="right")
    table.add_column("result")
    for out in check.outputs:
        result = "[green]ok[/green]" if out.ok else f"[red]{out.differing_rows} rows differ[/red]"
        table.add_row(escape(out.name), escape(out.datatype), _rule(out), _diff(out), result)
    return table


def speed_table(backend: str, original: Speed, onnx: Speed) -> Table:
    """Latency and throughput side by side."""
    table = Table(title="Speed (this machine, one instance each)", title_justify="left")
    table.add_column("")
    table.add_column(escape(backend), justify="right")
    table.add_column("onnxruntime", justify="right")
    table.add_row("p50 latency, batch 1", f"{original.p50_ms:.3f} ms", f"{onnx.p50_ms:.3f} ms")
    table.add_row("p99 latency, batch 1", f"{original.p99_ms:.3f} ms", f"{onnx.p99_ms:.3f} ms")
    table.add_row(
        f"throughput, batch {original.batch}",
        f"{original.rows_per_s:,.0f} rows/s",
        f"{onnx.rows_per_s:,.0f} rows/s",
    )
    return table


def describe_data(check: CheckResult) -> str:
    if check.synthetic:
        return (
            f"Data: {check.origin}. Made-up rows may miss where a conversion goes wrong; "
            "pass --data with real rows for a meaningful check."
        )
    return f"Data: {check.origin} ({check.rows} rows)"


def print_report(report: ConvertReport, console: Console) -> None:
    where = report.source
    console.print(
        f"Converted [bold]{escape(where.model)}[/bold] "
        + escape(
            f"version {where.version} ({report.backend}) "
            f"to version {report.version} (onnxruntime): {report.version_dir}"
        )
    )
    console.print(escape(describe_data(report.check)))
    console.print(check_table(report.check))
    if report.original_speed is not None and report.onnx_speed is not None:
        console.print(speed_table(report.backend, report.original_speed, report.onnx_speed))
    for note in report.notes:
        console.print(escape(f"Note: {note}"))


def _signature_json(signature: ModelSignature) -> dict[str, Any]:
    def tensors(specs: Any) -> list[dict[str, Any]]:
        return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]

    return {
        "inputs": tensors(signature.inputs),
        "outputs": tensors(signature.outputs),
        "max_batch_size": signature.max_batch_size,
    }


def check_json(check: CheckResult) -> dict[str, Any]:
    return {
        "ok": check.ok,
        "rows": check.rows,
        "synthetic": check.synthetic,
        "data": check.origin,
        "outputs": [{**asdict(o), "ok": o.ok} for o in check.outputs],
    }


def report_json(report: ConvertReport) -> dict[str, Any]:
    where = report.source
    speed = None
    if report.original_speed is not None and report.onnx_speed is not None:
        speed = {"original": asdict(report.original_speed), "onnx": asdict(report.onnx_speed)}
    return {
        "ok": True,
        "source": {
            "repository": str(where.repository),
            "model": where.model,
            "version": where.version,
            "backend": report.backend,
        },
        "output": {
            "version": report.version,
            "path": str(report.version_dir),
            "backend": "onnxruntime",
        },
        "signature": _signature_json(report.signature),
        "check": check_json(report.check),
        "speed": speed,
        "notes": report.notes,
    }
