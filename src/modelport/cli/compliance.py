"""``modelport compliance report``: what this node would do with each model's data.

Offline: it reads the repository and the settings (``--config`` file,
``MODELPORT_*`` environment, flags) the way ``modelport serve`` does, and
loads no model, so it can run on a node before the server starts, or in CI
against the repository that is about to be deployed. For every model it
answers the questions an auditor asks: where may its data be processed, is
it served here, are its artifacts encrypted at rest, what is logged, where,
and for how long.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from modelport.config.server import ServerConfig

compliance_app = typer.Typer(
    no_args_is_help=True, help="Where models may process data, and what they keep."
)


def _payload_log(config: ServerConfig, name: str, model: Any) -> dict[str, Any]:
    from modelport.regions import region_allowed

    settings = model.modelport.payload_log
    if settings is None or not settings.enabled:
        return {"enabled": False}
    keys = (
        config.master_key_file is not None
        or config.master_key is not None
        or config.key_provider is not None
    )
    allowed = region_allowed(config.region, model.modelport.residency)
    if not allowed:
        written, why = False, "this node's region is outside the model's residency"
    elif settings.seal and not keys:
        written, why = False, "seal is true but no master key is configured"
    else:
        written, why = True, ""
    return {
        "enabled": True,
        "sample": settings.sample,
        "retention_days": settings.retention_days,
        "sealed": settings.seal,
        "include_outputs": settings.include_outputs,
        "redact_fields": list(settings.redact_fields),
        "directory": str((config.payload_log_dir or config.data_dir / "payloads") / name),
        "written_here": written,
        "reason": why,
    }


def build_report(config: ServerConfig, repository: Path) -> dict[str, Any]:
    """The report as plain data (what ``--json`` prints)."""
    from modelport.controlplane.crypto.sealing import is_sealed
    from modelport.controlplane.repository.config_files import read_model_config
    from modelport.controlplane.repository.layout import misnamed_models, scan_repository
    from modelport.dataplane.admission.residency import model_refusal
    from modelport.errors import ModelportError
    from modelport.observability.profile import PROFILE_FILE
    from modelport.regions import jurisdiction_of

    models: list[dict[str, Any]] = []
    for name, source in sorted(scan_repository(repository).items()):
        versions = [
            {
                "version": str(v),
                "sealed": is_sealed(path),
                "reference_profile": (path / PROFILE_FILE).is_file(),
            }
            for v, path in sorted(source.versions.items())
        ]
        entry: dict[str, Any] = {"name": name, "versions": versions}
        try:
            if source.problem:
                raise ModelportError(source.problem)
            model = read_model_config(source)
        except ModelportError as exc:
            entry.update(served_here=False, reason=f"config invalid: {exc.message}")
            models.append(entry)
            continue
        residency = list(model.modelport.residency)
        refused = model_refusal(config.region, residency)
        limit = model.modelport.rate_limit
        entry.update(
            residency=residency,
            allowed_regions=residency or ["anywhere"],
            served_here=refused is None,
            reason=refused or "",
            encrypted=bool(versions) and all(v["sealed"] for v in versions),
            payload_log=_payload_log(config, name, model),
            rate_limit=None if limit is None else {"rate": limit.rate, "burst": limit.burst},
        )
        models.append(entry)
    # Not served for its name (shown escaped, as in the server's index): an
    # auditor should see it rather than a report that is silently short.
    for shown, why in misnamed_models(repository).items():
        models.append({"name": shown, "versions": [], "served_here": False, "reason": why})
    models.sort(key=lambda m: str(m["name"]))
    region = config.region
    return {
        "node": {
            "region": region,
            "jurisdiction": jurisdiction_of(region) if region is not None else None,
            "repository": str(repository),
            "tenant_residency": dict(config.tenant_residency),
        },
        "models": models,
    }


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _print_table(report: dict[str, Any]) -> None:
    """The report as a table; every cell escaped, since rich reads ``[ae]`` as markup."""
    from rich.markup import escape
    from rich.table import Table

    from modelport.cli.console import output_console

    node = report["node"]
    if not report["models"]:
        typer.echo(f"no models in {node['repository']}")
        return
    where = node["region"] or "none (fail closed: only models without residency are served)"
    table = Table(title=escape(f"modelport compliance: node region {where}"))
    for column in ("model", "allowed regions", "served here", "encrypted", "payload log", "limit"):
        table.add_column(column)
    for m in report["models"]:
        served = _yes(m["served_here"]) + (f" ({m['reason']})" if m["reason"] else "")
        if "residency" not in m:
            table.add_row(*(escape(cell) for cell in (m["name"], "?", served, "?", "?", "?")))
            continue
        log = m["payload_log"]
        logged = "off"
        if log["enabled"]:
            logged = (
                f"sample {log['sample']:g}, {log['retention_days']} days, "
                f"sealed {_yes(log['sealed'])}, {log['directory']}"
                + ("" if log["written_here"] else f"; not written here: {log['reason']}")
            )
        limit = m["rate_limit"]
        sealed = sum(v["sealed"] for v in m["versions"])
        cells = (
            m["name"],
            ", ".join(m["allowed_regions"]),
            served,
            f"{sealed}/{len(m['versions'])} versions",
            logged,
            "none" if limit is None else f"{limit['rate']:g}/s burst {limit['burst']}",
        )
        table.add_row(*(escape(cell) for cell in cells))
    output_console().print(table)


@compliance_app.command("report")
def report(
    repo_argument: Annotated[
        Path | None,
        typer.Argument(
            metavar="REPO",
            show_default=False,
            help="Model repository, as for serve (or --repository).",
        ),
    ] = None,
    repository: Annotated[
        Path | None,
        typer.Option(
            help=(
                "Model repository (default: the server settings': --config file or "
                "MODELPORT_REPOSITORY); required when they name none."
            )
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="Server config file (YAML), as for serve.")
    ] = None,
    region: Annotated[
        str | None, typer.Option(help="This node's region (default: the server settings').")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List every model: allowed regions, served here, encrypted, logged and for how long."""
    from modelport.config.server import load_server_config
    from modelport.errors import ConfigError

    if repo_argument is not None and repository is not None and repo_argument != repository:
        typer.echo(
            f"error: two repositories given: {repo_argument} and --repository {repository}",
            err=True,
        )
        raise typer.Exit(2)
    repository = repository or repo_argument
    try:
        settings = load_server_config(
            config, os.environ, {"repository": repository, "region": region}
        )
    except ConfigError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    repo = settings.repository
    if repo is None:
        # Reporting on the bundled examples instead would describe models
        # that this node does not serve, and look like a clean bill.
        typer.echo(
            "error: no model repository given: pass REPO (or --repository REPO), or name "
            "it in the --config file or MODELPORT_REPOSITORY, as for serve",
            err=True,
        )
        raise typer.Exit(2)
    if not repo.is_dir():
        typer.echo(f"error: repository {repo} is not a directory", err=True)
        raise typer.Exit(2)
    built = build_report(settings, repo)
    if as_json:
        typer.echo(json.dumps(built, indent=1))
    else:
        _print_table(built)
