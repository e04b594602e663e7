"""Server settings, and the one place that reads files and the environment for them.

Precedence, lowest first: defaults, the server config file (YAML), ``MODELPORT_*``
environment variables, command-line flags. Nothing here runs at import: the
CLI calls :func:`load_server_config` with what it read.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from modelport.config import fleet
from modelport.errors import ConfigError

ENV_PREFIX = "MODELPORT_"

MANAGEMENT_BODY_BYTES = 1 << 20
"""Largest body of a management request (/api/v1, /v2/repository), in bytes: 1 MiB.

Fixed rather than configurable: policies, canaries and load requests are a
few kilobytes, and these routes buffer and parse the whole body, so a body
allowed up to ``max_body_bytes`` (an inference limit, 64 MiB by default)
would cost many times its size in memory for no use."""
_RESIDENCY_ENTRY = re.compile(r"[a-z]{2,}(?:-[a-z0-9]+)*")
#: A callback host: a DNS name or IPv4 address, or a bracketed IPv6 one; then maybe a port.
_CALLBACK_HOST = re.compile(r"(?:[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?")


class ServerConfig(BaseModel):
    """Everything the composition root needs to build a server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repository: Path | None = None
    """Model repository in Triton's layout; None serves the bundled examples."""
    host: str = "127.0.0.1"
    """Address both transports bind; loopback unless asked otherwise."""
    http_port: int = Field(default=8000, ge=0, le=65535)
    """REST port (Open Inference Protocol v2, KServe v1, Triton extensions); 0 picks a free one."""
    grpc_port: int = Field(default=8001, ge=0, le=65535)
    """gRPC port (inference.GRPCInferenceService and grpc.health.v1)."""
    metrics_port: int | None = Field(default=8002, ge=0, le=65535)
    """Extra port that serves only /metrics; None turns it off."""
    poll_interval: float | None = Field(default=None, gt=0)
    """Seconds between repository scans for new, changed and removed versions."""
    strict_readiness: bool = True
    """Triton's strict readiness: /v2/health/ready (and gRPC ServerReady) says not ready
    while a model version has failed to load. Versions unloaded on purpose (repository
    unload, /api/v1, not chosen by version_policy) do not count. False: ready once the
    server has started, whatever the models."""
    max_body_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    """Largest request body (HTTP) or message (gRPC) accepted, in bytes."""
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    """Largest HTTP request line plus headers, in bytes; more is answered 431."""
    header_timeout: float = Field(default=10.0, gt=0)
    """Seconds a client has to send a request's line and headers (408 after)."""
    body_timeout: float = Field(default=60.0, gt=0)
    """Seconds, beyond header_timeout, a client has to send the rest of a request (408 after)."""
    max_elements: int = Field(default=1 << 28, gt=0)
    """Most elements one input tensor may claim, checked before any allocation."""
    default_timeout: float | None = Field(default=None, gt=0)
    """Seconds a request may wait in a model's queue when neither the request
    (Triton's ``timeout`` parameter) nor the model's queue policy sets one."""
    cache_size: int = Field(default=0, ge=0)
    """Bytes of the response cache shared by models with ``response_cache.enable``; 0 is off."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Threshold of the server's log."""
    log_format: Literal["auto", "text", "json"] = "auto"
    """Log lines for people (text) or for collectors (json, one object per line);
    auto picks text when stderr is a terminal, json otherwise."""
    triton_metrics: bool = True
    """Serve Triton's metric names (``nv_inference_*``, ``nv_cpu_*``) on /metrics beside
    modelport's own, so dashboards built for Triton work unchanged."""
    idle_unload: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Seconds without a request after which a version is unloaded (and loaded again by
    the next request); a model's ``idle_unload_s`` wins; None never unloads for idleness."""
    cold_start_timeout: float = Field(default=60.0, gt=0, allow_inf_nan=False)
    """Most seconds a request for an unloaded version waits for it to load."""
    job_retention_s: float = Field(default=86400.0, gt=0, allow_inf_nan=False)
    """Seconds a finished asynchronous job (``Prefer: respond-async``) and its result
    are kept before they are purged (docs/jobs.md)."""
    job_callback_hosts: list[str] = Field(default_factory=list)
    """Hosts a job's callback URL may name (docs/jobs.md): ``host`` or ``host:port``
    (a string is a comma-separated list). A name resolving to a private, loopback or
    link-local address is refused; such an address is reached only when listed as
    an IP literal. Empty: callbacks are refused."""
    job_callback_secret: SecretStr | None = None
    """Key of the HMAC-SHA256 signature on job callbacks (16 characters or more),
    normally from ``MODELPORT_JOB_CALLBACK_SECRET``. Secret: never logged or shown."""
    batch_dir: Path | None = None
    """Directory whose files batch jobs (``POST /api/v1/jobs/batch``) read and write;
    nothing outside it is reachable. None turns batch jobs off."""
    memory_budget: int | None = Field(default=None, gt=0)
    """Bytes the node's loaded model versions may take, every worker's copy counted
    (``2GiB``, ``512MB``, or a percentage of the machine's memory such as ``60%``);
    None sets no budget."""
    workers: int = Field(default=1, ge=1, le=1024)
    """Front-end processes of this node, sharing its ports and acting as one server
    (``auto``: one per core this process may run on)."""
    shutdown_grace: float = Field(default=30.0, ge=0)
    """Seconds SIGTERM waits for requests in flight before closing."""
    data_dir: Path = Path(".modelport")
    """Where the embedded state database (traffic policies, canaries, history) lives."""
    state_url: str | None = None
    """A database URL for the state (``postgresql://...``); None uses SQLite under data_dir."""
    redis_url: str | None = None
    """Redis that holds rate-limit buckets (``redis://host:6379/0``), so every node sharing
    it enforces one limit; None keeps buckets in this process."""
    master_key_file: Path | None = None
    """File holding the master key of sealed models (32 raw bytes or base64 text)."""
    master_key: SecretStr | None = None
    """The master key as base64 text, normally from ``MODELPORT_MASTER_KEY``; used when
    master_key_file is unset. Secret: never logged or shown."""
    key_provider: str | None = None
    """A key provider plugged in for a KMS: ``package.module:factory`` or the name of an
    entry point in group ``modelport.key_providers``; it wins over the local key."""
    payload_log_dir: Path | None = None
    """Where models with ``payload_log`` write their day files; None is data_dir/payloads."""
    region: str | None = Field(default=None, pattern=r"^[a-z]{2,}(?:-[a-z0-9]+)*$")
    """This node's region (``ae-dxb-1``; the first label, ``ae``, is the jurisdiction),
    checked against a model's ``residency``; None matches only models without one."""
    tenant_residency: dict[str, list[str]] = Field(default_factory=dict)
    """Data residency implied by a caller's tenant when a request carries no
    ``X-Data-Residency`` (``{acme: [ae]}``; a string is a comma-separated list)."""

    insecure: bool = False
    """Serve without authentication even on a non-loopback address (a warning is
    logged every minute while it lasts)."""
    require_auth: bool = False
    """Require authentication even on loopback. Off loopback it is required anyway,
    and on loopback it is also on as soon as an API key exists or JWTs are configured."""
    metrics_open: bool = False
    """Leave --metrics-port open to anyone (a scraper on a trusted network); /metrics
    on the REST port still needs the viewer role."""
    auth_failure_rate: float = Field(default=1.0, gt=0)
    """Failed authentications one peer address regains per second."""
    auth_failure_burst: int = Field(default=10, ge=1)
    """Failed authentications one peer address may make in a row before it is refused
    with 429 / RESOURCE_EXHAUSTED without its credentials being checked."""
    jwt_jwks: str | None = None
    """JWKS of the token issuer: a file path or an http(s) URL; None accepts no JWTs."""
    jwt_issuer: str | None = None
    """Required ``iss`` of JWTs."""
    jwt_audience: str | None = None
    """Required ``aud`` of JWTs."""
    jwt_roles_claim: str = "roles"
    """Claim (dotted path) listing the caller's modelport roles."""
    jwt_models_claim: str | None = None
    """Claim listing model name patterns; unset grants every model."""
    jwt_tenant_claim: str | None = None
    """Claim naming the caller's tenant; unset means no tenant."""

    tls_cert: Path | None = None
    """PEM certificate chain (leaf first) served on the REST, gRPC and metrics ports;
    with tls_key it turns TLS (1.2 or later) on for all three."""
    tls_key: Path | None = None
    """PEM private key of tls_cert (unencrypted)."""
    tls_client_ca: Path | None = None
    """PEM bundle of the CAs that sign client certificates; turns on mutual TLS."""
    tls_client_auth: Literal["required", "optional"] = "required"
    """With tls_client_ca: refuse a handshake without a client certificate (required),
    or accept it and fall back to bearer tokens (optional)."""
    tls_identities: Path | None = None
    """YAML mapping of client certificate subjects to roles, model patterns and tenants."""
    tls_reload_interval: float = Field(default=5.0, gt=0)
    """Seconds between checks of the TLS files for a rotated certificate."""

    advertise: str | None = None
    """This node's HTTP origin as the fleet's gateway reaches it (``http://10.0.0.5:8000``,
    https with TLS): the node registers itself and its ready models in the state store
    (state_url) and heartbeats every second; None: not part of a fleet."""
    advertise_grpc: str | None = None
    """``host:port`` of this node's gRPC port as the gateway reaches it."""
    node_name: str | None = None
    """This node's unique name in the fleet; None derives it from the advertised URL."""
    group: str | None = None
    """The node group the gateway may route a model's traffic to as one."""
    node_weight: int = Field(default=100, ge=0, le=10_000)
    """This node's share of its group's traffic, relative to the other nodes'."""
    drain_seconds: float = Field(default=2.0, ge=0, le=3600)
    """Seconds an advertised node keeps serving, marked draining, after SIGTERM, so the
    gateway takes it out of rotation before it stops accepting."""
    trusted_proxy_identities: list[str] = Field(default_factory=list)
    """Client-certificate identities (subject CN or DNS SAN) of the proxies, such as the
    fleet's gateway, whose X-Forwarded-For names the real caller; others' is ignored."""

    @field_validator("advertise")
    @classmethod
    def _check_advertise(cls, value: str | None) -> str | None:
        return None if value is None else fleet.check_http_url(value)

    @field_validator("advertise_grpc")
    @classmethod
    def _check_advertise_grpc(cls, value: str | None) -> str | None:
        return None if value is None else fleet.check_grpc_address(value)

    @field_validator("node_name", "group")
    @classmethod
    def _check_fleet_name(cls, value: str | None) -> str | None:
        return None if value is None else fleet.check_name(value, "the name")

    @field_validator("trusted_proxy_identities", mode="before")
    @classmethod
    def _split_identities(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [i for i in (part.strip() for part in value.split(",")) if i]
        return value

    @field_validator("trusted_proxy_identities")
    @classmethod
    def _check_identities(cls, value: list[str]) -> list[str]:
        for identity in value:
            if not identity or len(identity) > 255 or not identity.isprintable():
                raise ValueError(f"{identity!r} is not a certificate identity")
        return value

    @model_validator(mode="after")
    def _check_fleet(self) -> ServerConfig:
        if self.advertise is not None and self.state_url is None:
            raise ValueError(
                "--advertise needs --state-url: the node registers itself in the "
                "state database the gateway reads (e.g. postgresql://host/db)"
            )
        if self.advertise_grpc is not None and self.advertise is None:
            raise ValueError("--advertise-grpc needs --advertise")
        if self.trusted_proxy_identities and self.tls_client_ca is None:
            raise ValueError(
                "--trusted-proxy-identity needs tls_client_ca: a proxy is known only "
                "by its client certificate"
            )
        return self

    @field_validator("memory_budget", mode="before")
    @classmethod
    def _parse_budget(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_size(value)
        return value

    @field_validator("workers", mode="before")
    @classmethod
    def _auto_workers(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return cores()
        return value

    @field_validator("tenant_residency", mode="before")
    @classmethod
    def _split_residency(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: v.split(",") if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("tenant_residency")
    @classmethod
    def _check_residency(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for tenant, entries in value.items():
            cleaned = [e.strip().lower() for e in entries]
            for entry in cleaned:
                if not _RESIDENCY_ENTRY.fullmatch(entry):
                    raise ValueError(
                        f"tenant {tenant!r}: {entry!r} is not a jurisdiction (e.g. 'ae') "
                        "or a region (e.g. 'ae-dxb-1')"
                    )
            value[tenant] = cleaned
        return value

    @field_validator("job_callback_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [h for h in (part.strip() for part in value.split(",")) if h]
        return value

    @field_validator("job_callback_hosts")
    @classmethod
    def _check_hosts(cls, value: list[str]) -> list[str]:
        cleaned = [h.strip().lower() for h in value]
        for host in cleaned:
            if not _CALLBACK_HOST.fullmatch(host):
                raise ValueError(f"{host!r} is not a host name or host:port")
        return cleaned

    @field_validator("batch_dir")
    @classmethod
    def _check_batch_dir(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"{value} is not a directory")
        return value

    @model_validator(mode="after")
    def _check_callbacks(self) -> ServerConfig:
        secret = self.job_callback_secret
        if self.job_callback_hosts and secret is None:
            raise ValueError("job_callback_hosts needs job_callback_secret to sign callbacks")
        if secret is not None and len(secret.get_secret_value()) < 16:
            raise ValueError("job_callback_secret must be 16 characters or more")
        return self

    @model_validator(mode="after")
    def _check_tls(self) -> ServerConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        if self.tls_identities is not None and self.tls_client_ca is None:
            raise ValueError("tls_identities needs tls_client_ca (mutual TLS)")
        return self

    @property
    def loopback(self) -> bool:
        """Whether both transports bind only to this machine."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


_FIELDS = set(ServerConfig.model_fields)


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def machine_memory() -> int:
    """Bytes of memory this machine has (MemTotal)."""
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise ValueError("cannot read the machine's memory size from /proc/meminfo")


def parse_size(text: str) -> int:
    """``2GiB``, ``512MB``, ``1.5G``, ``1000000`` or ``60%`` (of the machine's memory)
    → bytes; ValueError says what is accepted."""
    stripped = text.strip()
    if stripped.endswith("%"):
        try:
            share = float(stripped[:-1])
        except ValueError:
            share = -1.0
        if not 0 < share <= 100:
            raise ValueError(f"{text!r}: a percentage must be above 0 and at most 100")
        return int(machine_memory() * share / 100)
    found = _SIZE.fullmatch(stripped)
    if found is None:
        raise ValueError(f"{text!r} is not a size (e.g. 2GiB, 512MB, 60%)")
    number, unit = float(found.group(1)), (found.group(2) or "").lower()
    binary = unit.endswith("ib") or (len(unit) == 1 and unit != "b")
    base = unit[:1] if unit not in ("", "b") else unit
    scale = 1024 ** "bkmgt".index(base) if binary and base else _UNITS[base]
    return int(number * scale)


def cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name in _FIELDS:
            out[name] = value
    return out


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), "", f"invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", "expected a mapping of server settings")
    return data


def load_server_config(
    file: Path | None, env: Mapping[str, str], flags: Mapping[str, Any]
) -> ServerConfig:
    """Merge file, environment and flags (flags win); errors name source and field."""
    layers: list[tuple[str, dict[str, Any]]] = []
    if file is not None:
        layers.append((str(file), _read_file(file)))
    layers.append(("environment", _from_env(env)))
    layers.append(("command line", {k: v for k, v in flags.items() if v is not None}))
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for source, values in layers:
        for key, value in values.items():
            merged[key] = value
            origin[key] = source
    try:
        return ServerConfig.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        source = origin.get(field, "server config")
        if source == "environment":
            field = ENV_PREFIX + field.upper()
        elif source == "command line":
            field = "--" + field.replace("_", "-")
        problem = first["msg"]
        if first["type"] == "extra_forbidden":
            problem = "unknown setting"
        raise ConfigError(source, field, problem) from None
