"""``modelport profile``: record what a model's inputs normally look like.

The server then counts, per input and feature, values that fall far outside
this reference (``modelport_input_out_of_profile_total``). It catches unit
mistakes, broken upstream features and probing long before accuracy
metrics would show them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from modelport.errors import ModelportError


def profile(
    version: Annotated[Path, typer.Argument(help="REPO/model/VERSION to profile.")],
    data: Annotated[
        Path,
        typer.Option(help="Real inputs: .npz (one array per input), or .npy / .csv (one input)."),
    ],
) -> None:
    """Write reference_profile.json into the version directory from real inputs."""
    from modelport.observability.profile import PROFILE_FILE, build_profile
    from modelport.optimize.convert.samples import read_data_file
    from modelport.optimize.convert.source import load_source, locate, read_config

    try:
        where = locate(version)
        model, config, origin = read_config(where)
        source = load_source(where, model, config, origin)
        source.runtime.unload()
        arrays = read_data_file(data)
    except ModelportError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    names = [spec.name for spec in source.signature.inputs]
    if "" in arrays:
        if len(names) != 1:
            typer.echo(
                f"error: --data {data} holds one unnamed array, but the model has "
                f"{len(names)} inputs ({', '.join(names)}); use an .npz named by input",
                err=True,
            )
            raise typer.Exit(2)
        arrays = {names[0]: arrays.pop("")}
    unknown = sorted(set(arrays) - set(names))
    if unknown:
        typer.echo(
            f"error: --data {data}: no input named {', '.join(unknown)} "
            f"(inputs: {', '.join(names)})",
            err=True,
        )
        raise typer.Exit(2)
    built = build_profile(arrays)
    if not built["inputs"]:
        typer.echo(f"error: --data {data}: no numeric rows to profile", err=True)
        raise typer.Exit(2)
    target = where.version_dir / PROFILE_FILE
    partial = target.with_suffix(".tmp")
    partial.write_text(json.dumps(built, indent=1), encoding="utf-8")
    os.replace(partial, target)
    for name, entry in built["inputs"].items():
        typer.echo(f"{name}: {entry['features']} features from {entry['rows']} rows")
    typer.echo(f"wrote {target}")
