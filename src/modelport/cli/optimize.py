"""``modelport optimize`` and ``modelport validate``: flags in, a report out, exit codes.

optimize: 0 a new version was written; 2 bad input or nothing within the
budget (nothing written). validate: 0 no regression; 1 a regression past a
threshold; 2 bad input. Heavy imports stay inside the commands, so
``modelport --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from modelport.optimize.tune.command import OptimizeOptions
    from modelport.optimize.tune.hardware import Hardware
    from modelport.optimize.tune.report import OptimizeReport

EXIT_REGRESSED = 1
EXIT_BAD_INPUT = 2


def exit_bad_input(message: str, json_output: bool) -> NoReturn:
    """Report a ModelportError (as JSON too with --json) and exit with EXIT_BAD_INPUT."""
    if json_output:
        typer.echo(json.dumps({"ok": False, "error": message}, indent=2))
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT) from None


_VERSION = typer.Argument(
    help="The version to start from: REPO/model/VERSION.",
    metavar="REPO/MODEL/VERSION",
    show_default=False,
)


def optimize(
    version_dir: Annotated[Path, _VERSION],
    data: Annotated[
        Path,
        typer.Option(
            help=(
                "Real input rows: .npz (one array per input name), .npy / .csv / .parquet "
                "(single input). Split into calibration and held-out rows (seed 0)."
            ),
            show_default=False,
        ),
    ],
    labels: Annotated[
        Path | None,
        typer.Option(help="True labels or targets, one per --data row (.npy, .csv, .npz)."),
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            help=(
                "accuracy, auc, rmse or max_abs_diff (default: accuracy for classifiers, "
                "judged as top-1 agreement without --labels; else rmse)."
            )
        ),
    ] = None,
    budget: Annotated[
        str, typer.Option(help="Largest allowed loss, e.g. 0.5% or 0.005 (see docs).")
    ] = "0.5%",
    objective: Annotated[
        str, typer.Option(help="latency (p50 at batch 1) or throughput (rows/s).")
    ] = "latency",
    target: Annotated[str, typer.Option(help="cpu or gpu.")] = "cpu",
    seconds: Annotated[
        float, typer.Option(help="Seconds per latency measurement per candidate and thread count.")
    ] = 0.5,
    write_within_noise: Annotated[
        bool,
        typer.Option(
            "--write-within-noise",
            help=(
                "Write the best candidate even when it does not beat the current version "
                "beyond measurement noise (by default the current version is kept)."
            ),
        ),
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object; no progress bars.")
    ] = False,
) -> None:
    """Try the optimizations this machine supports; write the fastest within budget as a version.

    Every candidate is judged on held-out rows against the original; one
    outside the budget is never chosen. The best one is timed again against
    the current version over alternating rounds, and written only when it
    is faster beyond measurement noise; otherwise the current version is
    kept and nothing is written (exit code 0 either way). The new version
    (next free number) holds model, config.yaml, report.json and report.md.
    """
    from rich.markup import escape

    from modelport.cli.console import output_console
    from modelport.errors import ModelportError
    from modelport.optimize.tune.command import OptimizeOptions, optimize_version
    from modelport.optimize.tune.hardware import detect_hardware
    from modelport.optimize.tune.metrics import parse_budget
    from modelport.optimize.tune.report import print_report, report_json

    console = output_console(stderr=json_output)
    try:
        options = OptimizeOptions(
            path=version_dir,
            data=data,
            labels=labels,
            metric=metric,
            budget=parse_budget(budget),
            objective=objective,
            target=target,
            seconds=seconds,
            write_within_noise=write_within_noise,
        )
        hardware = detect_hardware()
        if not json_output:
            console.print(escape(f"detected {hardware.describe()}"))
        if json_output:
            report = optimize_version(options, hardware=hardware)
        else:
            report = _with_progress(options, hardware, console)
    except ModelportError as exc:
        exit_bad_input(exc.message, json_output)
    if json_output:
        typer.echo(json.dumps(report_json(report), indent=2))
    else:
        print_report(report, console)


def _with_progress(
    options: OptimizeOptions, hardware: Hardware, console: Console
) -> OptimizeReport:
    """optimize_version under rich progress bars, one per calibration and timing task."""
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from modelport.optimize.tune.command import optimize_version

    tasks: dict[str, TaskID] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bars:

        def tick(task: str, done: int, total: int) -> None:
            if task not in tasks:
                tasks[task] = bars.add_task(task, total=total)
            bars.update(tasks[task], completed=done, total=total)

        return optimize_version(options, progress=tick, hardware=hardware)


def validate(
    version_dir: Annotated[Path, _VERSION],
    data: Annotated[
        Path, typer.Option(help="Rows both versions answer (as for optimize).", show_default=False)
    ],
    expect: Annotated[
        str,
        typer.Option(
            help="The current version: its number (a sibling) or its directory.",
            show_default=False,
        ),
    ],
    max_diff: Annotated[
        float | None, typer.Option(help="Largest allowed |new - current| on float outputs.")
    ] = None,
    min_agreement: Annotated[
        float, typer.Option(help="Least share of rows with the same top-1 class (classifiers).")
    ] = 0.99,
    max_latency_regression: Annotated[
        str, typer.Option(help="Largest allowed growth of p50 latency at batch 1; 'off' skips.")
    ] = "20%",
    labels: Annotated[
        Path | None, typer.Option(help="True labels, one per row, for --max-metric-drop.")
    ] = None,
    metric: Annotated[
        str | None, typer.Option(help="accuracy, auc, rmse or max_abs_diff (with --labels).")
    ] = None,
    max_metric_drop: Annotated[
        str | None, typer.Option(help="Largest allowed metric loss, e.g. 0.5% (with --labels).")
    ] = None,
    seconds: Annotated[float, typer.Option(help="Seconds each version is timed.")] = 0.5,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Exit 1 when a new version's answers or latency regress past the thresholds.

    For CI: run it before deploying a new version, against the one serving now.
    """
    from rich.markup import escape
    from rich.table import Table

    from modelport.cli.console import output_console
    from modelport.errors import ModelportError
    from modelport.optimize.tune.metrics import parse_budget
    from modelport.optimize.tune.validate import ValidateOptions, validate_version

    try:
        latency = (
            None
            if max_latency_regression.strip().lower() == "off"
            else _fraction("--max-latency-regression", max_latency_regression)
        )
        drop = None if max_metric_drop is None else parse_budget(max_metric_drop)
        report = validate_version(
            ValidateOptions(
                path=version_dir,
                data=data,
                expect=expect,
                max_diff=max_diff,
                min_agreement=min_agreement,
                max_latency_regression=latency,
                labels=labels,
                metric=metric,
                max_metric_drop=drop,
                seconds=seconds,
            )
        )
    except ModelportError as exc:
        exit_bad_input(exc.message, json_output)
    if json_output:
        body = {
            "ok": report.ok,
            "new": str(report.new.version_dir),
            "current": str(report.current.version_dir),
            "rows": report.rows,
            "checks": [
                {
                    "name": c.name,
                    "current": c.current,
                    "new": c.new,
                    "threshold": c.threshold,
                    "ok": c.ok,
                }
                for c in report.checks
            ],
        }
        typer.echo(json.dumps(body, indent=2))
    else:
        table = Table(
            title=escape(
                f"version {report.new.version} vs {report.current.version} on {report.rows} rows"
            ),
            title_justify="left",
        )
        for column in ("check", "current", "new", "threshold", "result"):
            table.add_column(column)
        for c in report.checks:
            current = "-" if c.current is None else f"{c.current:.4g}"
            result = "[green]ok[/green]" if c.ok else "[red]regressed[/red]"
            table.add_row(escape(c.name), current, f"{c.new:.4g}", escape(c.threshold), result)
        output_console().print(table)
    if not report.ok:
        names = ", ".join(
            f"{c.name} {c.new:.4g} (threshold {c.threshold})" for c in report.regressions()
        )
        typer.echo(f"regressed: {names}", err=True)
        raise typer.Exit(EXIT_REGRESSED)


def _fraction(flag: str, text: str) -> float:
    """``20%`` → 0.2, ``0.2`` → 0.2; any fraction >= 0."""
    from modelport.optimize.tune.errors import OptimizeFailed
    from modelport.optimize.tune.metrics import parse_fraction

    value = parse_fraction(flag, text)
    if not value >= 0:
        raise OptimizeFailed(f"{flag}: must be at least 0, got {text!r}")
    return value
