"""``modelport`` command line.

Turns flags into a ServerConfig (flags override ``MODELPORT_*`` environment
variables, which override the ``--config`` file) and starts the server.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from modelport import __version__
from modelport.cli.audit import audit_app
from modelport.cli.batch import batch
from modelport.cli.client import Token, Url, remember
from modelport.cli.compliance import compliance_app
from modelport.cli.convert import convert
from modelport.cli.crypto import encrypt, keygen
from modelport.cli.fleet import fleet_app
from modelport.cli.gateway import gateway_app
from modelport.cli.jobs import jobs_app
from modelport.cli.keys import keys_app
from modelport.cli.manage import deploy_app, models_app
from modelport.cli.optimize import optimize, validate
from modelport.cli.payloads import payloads_app
from modelport.cli.profile import profile
from modelport.errors import ConfigError, ListenFailed

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Serve machine-learning models.")
app.add_typer(models_app, name="models")
app.add_typer(deploy_app, name="deploy")
app.add_typer(audit_app, name="audit")
app.add_typer(keys_app, name="keys")
app.add_typer(jobs_app, name="jobs")
app.add_typer(payloads_app, name="payloads")
app.add_typer(compliance_app, name="compliance")
app.add_typer(gateway_app, name="gateway")
app.add_typer(fleet_app, name="fleet")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"modelport {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    url: Url = None,
    token: Token = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print modelport's version and exit.",
        ),
    ] = False,
) -> None:
    """modelport: Open Inference Protocol (REST and gRPC) model server."""
    # --url and --token for `models` and `deploy`, given before the group.
    remember(ctx, url, token)


@app.command()
def serve(
    repository: Annotated[
        Path | None,
        typer.Argument(
            help="Model repository in Triton's layout; omit to serve the bundled examples."
        ),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    http_port: Annotated[int | None, typer.Option(help="REST port (default 8000).")] = None,
    grpc_port: Annotated[int | None, typer.Option(help="gRPC port (default 8001).")] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Port serving only /metrics (default 8002).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="Server config file (YAML).")
    ] = None,
    poll_interval: Annotated[
        float | None, typer.Option(help="Seconds between repository scans for changes.")
    ] = None,
    strict_readiness: Annotated[
        str | None,
        typer.Option(
            help="true (default): not ready while a model has failed to load; "
            "false: ready once started."
        ),
    ] = None,
    max_body_bytes: Annotated[
        int | None, typer.Option(help="Largest request body in bytes (default 64 MiB).")
    ] = None,
    default_timeout: Annotated[
        float | None,
        typer.Option(help="Seconds a request may wait in a queue when nothing else sets it."),
    ] = None,
    cache_size: Annotated[
        int | None, typer.Option(help="Response cache size in bytes (0: off).")
    ] = None,
    idle_unload: Annotated[
        float | None,
        typer.Option(
            help="Seconds without a request before a version unloads; the next request "
            "loads it again (default: never)."
        ),
    ] = None,
    cold_start_timeout: Annotated[
        float | None,
        typer.Option(help="Most seconds a request waits for an unloaded version (default 60)."),
    ] = None,
    job_retention: Annotated[
        float | None,
        typer.Option(help="Seconds a finished asynchronous job's result is kept (default 86400)."),
    ] = None,
    job_callback_hosts: Annotated[
        str | None,
        typer.Option(
            help="Hosts job callbacks may go to: host or host:port, comma-separated "
            "(the signing key: MODELPORT_JOB_CALLBACK_SECRET)."
        ),
    ] = None,
    batch_dir: Annotated[
        Path | None,
        typer.Option(help="Directory of the files batch jobs read and write (default: off)."),
    ] = None,
    memory_budget: Annotated[
        str | None,
        typer.Option(
            help="Memory the node's loaded models may take, e.g. 2GiB or 60% of the "
            "machine's; least recently used idle versions make room (default: no budget)."
        ),
    ] = None,
    workers: Annotated[
        str | None,
        typer.Option(
            help="Processes serving the same ports as one server: a number, or auto "
            "for one per core (default 1)."
        ),
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning or error.")] = None,
    log_format: Annotated[
        str | None,
        typer.Option(
            help="auto (default: text on a terminal, JSON lines otherwise), text or json."
        ),
    ] = None,
    triton_metrics: Annotated[
        bool | None,
        typer.Option(
            "--triton-metrics/--no-triton-metrics",
            help="Serve Triton's nv_* metric names beside modelport's own (default: on).",
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Directory of the embedded state database (default ./.modelport)."),
    ] = None,
    state_url: Annotated[
        str | None,
        typer.Option(help="State database URL, e.g. postgresql://user@host/db (default: SQLite)."),
    ] = None,
    master_key_file: Annotated[
        Path | None,
        typer.Option(help="Master key of sealed models (default: MODELPORT_MASTER_KEY)."),
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(
            help="Redis URL for rate limits shared by several nodes, e.g. redis://host:6379/0."
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure", help="Serve without authentication off loopback (warns every minute)."
        ),
    ] = False,
    require_auth: Annotated[
        bool, typer.Option("--require-auth", help="Require authentication on loopback too.")
    ] = False,
    metrics_open: Annotated[
        bool,
        typer.Option("--metrics-open", help="Leave --metrics-port open for a trusted scraper."),
    ] = False,
    jwt_jwks: Annotated[
        str | None, typer.Option(help="JWKS of the JWT issuer: a file path or an https URL.")
    ] = None,
    jwt_issuer: Annotated[str | None, typer.Option(help="Required 'iss' of JWTs.")] = None,
    jwt_audience: Annotated[str | None, typer.Option(help="Required 'aud' of JWTs.")] = None,
    jwt_roles_claim: Annotated[
        str | None, typer.Option(help="JWT claim listing modelport roles (default roles).")
    ] = None,
    jwt_models_claim: Annotated[
        str | None, typer.Option(help="JWT claim listing model name patterns (default: all).")
    ] = None,
    jwt_tenant_claim: Annotated[
        str | None, typer.Option(help="JWT claim naming the caller's tenant.")
    ] = None,
    auth_failure_burst: Annotated[
        int | None,
        typer.Option(help="Failed authentications per address before 429 (default 10)."),
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="PEM certificate chain: TLS on every port.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key of --tls-cert.")] = None,
    tls_client_ca: Annotated[
        Path | None, typer.Option(help="PEM CA bundle of client certificates: mutual TLS.")
    ] = None,
    tls_client_auth: Annotated[
        str | None, typer.Option(help="Client certificates 'required' (default) or 'optional'.")
    ] = None,
    tls_identities: Annotated[
        Path | None, typer.Option(help="YAML: client certificate subject to role and models.")
    ] = None,
    tls_reload_interval: Annotated[
        float | None, typer.Option(help="Seconds between checks for rotated TLS files.")
    ] = None,
    region: Annotated[
        str | None, typer.Option(help="This node's region, e.g. ae-dxb-1 (data residency).")
    ] = None,
    advertise: Annotated[
        str | None,
        typer.Option(
            help="This node's URL as the fleet's gateway reaches it, e.g. http://10.0.0.5:8000: "
            "register it and its ready models in --state-url."
        ),
    ] = None,
    advertise_grpc: Annotated[
        str | None, typer.Option(help="HOST:PORT of this node's gRPC port for the gateway.")
    ] = None,
    node_name: Annotated[
        str | None, typer.Option(help="This node's name in the fleet (default: from --advertise).")
    ] = None,
    group: Annotated[str | None, typer.Option(help="This node's group in the fleet.")] = None,
    node_weight: Annotated[
        int | None, typer.Option(help="This node's share of its group's traffic (default 100).")
    ] = None,
    drain_seconds: Annotated[
        float | None,
        typer.Option(help="Seconds an advertised node serves, marked draining, after SIGTERM."),
    ] = None,
    trusted_proxy_identity: Annotated[
        list[str] | None,
        typer.Option(
            help="Client-certificate identity of a proxy whose X-Forwarded-For is believed "
            "(repeatable)."
        ),
    ] = None,
) -> None:
    """Serve a model repository over REST and gRPC."""
    from modelport.config.server import load_server_config
    from modelport.observability.logs import configure_logging

    flags = {
        "repository": repository,
        "host": host,
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "poll_interval": poll_interval,
        "strict_readiness": strict_readiness,
        "max_body_bytes": max_body_bytes,
        "default_timeout": default_timeout,
        "cache_size": cache_size,
        "idle_unload": idle_unload,
        "cold_start_timeout": cold_start_timeout,
        "job_retention_s": job_retention,
        "job_callback_hosts": job_callback_hosts,
        "batch_dir": batch_dir,
        "workers": workers,
        "memory_budget": memory_budget,
        "log_level": log_level,
        "log_format": log_format,
        "triton_metrics": triton_metrics,
        "data_dir": data_dir,
        "state_url": state_url,
        "master_key_file": master_key_file,
        "redis_url": redis_url,
        "insecure": insecure or None,
        "require_auth": require_auth or None,
        "metrics_open": metrics_open or None,
        "jwt_jwks": jwt_jwks,
        "jwt_issuer": jwt_issuer,
        "jwt_audience": jwt_audience,
        "jwt_roles_claim": jwt_roles_claim,
        "jwt_models_claim": jwt_models_claim,
        "jwt_tenant_claim": jwt_tenant_claim,
        "auth_failure_burst": auth_failure_burst,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "tls_client_ca": tls_client_ca,
        "tls_client_auth": tls_client_auth,
        "tls_identities": tls_identities,
        "tls_reload_interval": tls_reload_interval,
        "region": region,
        "advertise": advertise,
        "advertise_grpc": advertise_grpc,
        "node_name": node_name,
        "group": group,
        "node_weight": node_weight,
        "drain_seconds": drain_seconds,
        "trusted_proxy_identities": trusted_proxy_identity or None,
    }
    try:
        settings = load_server_config(config, os.environ, flags)
    except ConfigError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    if settings.repository is not None and not settings.repository.is_dir():
        typer.echo(f"error: repository {settings.repository} is not a directory", err=True)
        raise typer.Exit(2)
    configure_logging(settings.log_level, settings.log_format)
    try:
        if settings.workers > 1:
            from modelport.node.supervisor import run_node

            status = run_node(settings)
            if status:
                raise typer.Exit(status)
        else:
            from modelport.server import run

            run(settings)
    except (ConfigError, ListenFailed) as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None


app.command("convert")(convert)
app.command("batch")(batch)
app.command("optimize")(optimize)
app.command("validate")(validate)
app.command("encrypt")(encrypt)
app.command("keygen")(keygen)
app.command("profile")(profile)


def main() -> None:
    app(prog_name="modelport")


if __name__ == "__main__":
    main()
