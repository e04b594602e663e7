"""``modelport convert``: flags in, a report out, exit codes for scripts.

Exit codes: 0 converted; 1 the ONNX model answers differently (nothing
written); 2 bad input or a conversion that cannot be done here (nothing
written). Everything heavy is imported inside the command, so ``modelport
--help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

EXIT_DIFFERS = 1


def convert(
    version_dir: Annotated[
        Path,
        typer.Argument(
            help="The version to convert: REPO/model/VERSION.",
            metavar="REPO/MODEL/VERSION",
            show_default=False,
        ),
    ],
    output_version: Annotated[
        int | None,
        typer.Option(
            help="Version number to write (default: one past the highest); never overwritten."
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help=(
                "Rows to compare on: .npz with one array per input name, or .npy / .csv for a "
                "single-input model. Default: 256 synthetic rows from the signature (seed 0)."
            )
        ),
    ] = None,
    rtol: Annotated[
        float | None,
        typer.Option(help="Relative tolerance for float outputs (default 1e-4; FP16 1e-2)."),
    ] = None,
    atol: Annotated[
        float | None,
        typer.Option(help="Absolute tolerance for float outputs (default 1e-5; FP16 1e-3)."),
    ] = None,
    opset: Annotated[
        int | None,
        typer.Option(help="ONNX opset to target (default: the converter's own choice)."),
    ] = None,
    seconds: Annotated[
        float,
        typer.Option(
            help="Seconds each model is timed per measurement (latency, throughput); 0 skips."
        ),
    ] = 1.0,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of tables.")
    ] = False,
) -> None:
    """Convert a model version to ONNX beside it, checking its answers and timing both.

    Labels, integers and text must match exactly; float outputs within
    rtol/atol (|onnx - original| <= atol + rtol * |original|). Exit code 1 when
    they differ, 2 for bad input; in both cases nothing is written.
    """
    from modelport.cli.console import output_console
    from modelport.cli.optimize import exit_bad_input
    from modelport.errors import ModelportError
    from modelport.optimize.convert.command import ConvertOptions, convert_version
    from modelport.optimize.convert.errors import AnswersDiffer
    from modelport.optimize.convert.report import check_json, check_table, print_report, report_json

    options = ConvertOptions(
        path=version_dir,
        output_version=output_version,
        data=data,
        rtol=rtol,
        atol=atol,
        opset=opset,
        seconds=seconds,
    )
    try:
        report = convert_version(options)
    except AnswersDiffer as exc:
        if json_output:
            body = {"ok": False, "error": exc.message, "check": check_json(exc.check)}
            typer.echo(json.dumps(body, indent=2))
        else:
            output_console().print(check_table(exc.check))
        typer.echo(f"error: {exc.message}; nothing was written", err=True)
        raise typer.Exit(EXIT_DIFFERS) from None
    except ModelportError as exc:
        exit_bad_input(exc.message, json_output)
    if json_output:
        typer.echo(json.dumps(report_json(report), indent=2))
    else:
        print_report(report, output_console())
