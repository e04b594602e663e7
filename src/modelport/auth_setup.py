"""Composing authentication for the server: which mode, and the parts for each transport.

Secure by default. The decision, made once at start:

- ``--insecure``: off, wherever the server binds; a warning every minute says so.
- a non-loopback address: on. With no active API key, no JWT issuer and no
  ``--tls-identities`` nobody could ever get in, so the server refuses to
  start and says how to fix it (create a key, set --jwt-jwks, or pass --insecure).
- loopback: on when ``--require-auth`` is given, a JWT issuer or
  ``--tls-identities`` is configured or an API key exists; otherwise off, for
  local development, with a log line saying that anyone on this machine may
  call every endpoint.

Only the composition root imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modelport.config.server import ServerConfig
from modelport.controlplane.keys import KeyService
from modelport.controlplane.store import AuditLog, KeyStore
from modelport.dataplane.admission.audit import AuthAudit, Sink
from modelport.dataplane.admission.authenticate import Authenticator, FailureBuckets
from modelport.dataplane.admission.certificates import CertificateIdentities
from modelport.dataplane.admission.gate import Gate
from modelport.dataplane.admission.jwks import JwksError
from modelport.dataplane.admission.jwt_tokens import JwtSettings, JwtVerifier, jwks_fetcher
from modelport.dataplane.admission.watch import build_watch
from modelport.dataplane.table import ModelTable
from modelport.dataplane.transport.http.guard import HttpGuard
from modelport.errors import ConfigError, ModelportError
from modelport.observability.metrics import Metrics

log = logging.getLogger("modelport.auth")

#: Seconds between the warnings an --insecure server logs.
INSECURE_WARNING_INTERVAL = 60.0


@dataclass
class AuthSetup:
    """What the transports are handed; all None when authentication is off."""

    gate: Gate | None
    guard: HttpGuard | None
    metrics_guard: HttpGuard | None
    insecure: bool
    host: str
    audit: AuthAudit | None = None
    """The admission audit queue; it exists with authentication off too, since
    residency refusals are audited either way."""

    async def run(self, stop: asyncio.Event) -> None:
        """Write audit records, and repeat the --insecure warning, until ``stop``."""
        async with asyncio.TaskGroup() as tasks:
            if self.audit is not None:
                tasks.create_task(self.audit.run(stop))
            if self.insecure:
                tasks.create_task(self._warn(stop))

    async def _warn(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            log.warning(
                "authentication is OFF (--insecure): anyone who can reach this address may "
                "call every endpoint",
                extra={"host": self.host},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), INSECURE_WARNING_INTERVAL)


def _jwt(config: ServerConfig) -> JwtVerifier | None:
    if config.jwt_jwks is None:
        return None
    settings = JwtSettings(
        issuer=config.jwt_issuer,
        audience=config.jwt_audience,
        roles_claim=config.jwt_roles_claim,
        models_claim=config.jwt_models_claim,
        tenant_claim=config.jwt_tenant_claim,
    )
    try:
        return JwtVerifier(jwks_fetcher(config.jwt_jwks), config.jwt_jwks, settings)
    except JwksError as exc:
        raise ConfigError("--jwt-jwks", "", str(exc)) from None
    except (OSError, ValueError) as exc:
        raise ConfigError("--jwt-jwks", "", f"cannot read {config.jwt_jwks}: {exc}") from None


def _certificates(config: ServerConfig) -> CertificateIdentities | None:
    """The mTLS identity table: from --tls-identities, empty (no roles) with only a CA."""
    if config.tls_identities is not None:
        return CertificateIdentities.from_file(config.tls_identities)
    return CertificateIdentities() if config.tls_client_ca is not None else None


def _tenant_lookup(table: ModelTable) -> Callable[[str], str | None]:
    """A model's tenant is its config parameter ``tenant``; unknown models have none."""

    def tenant_of(name: str) -> str | None:
        try:
            return table.acquire(name, None).config.parameter("tenant")
        except ModelportError:
            return None

    return tenant_of


def _sink(history: AuditLog) -> Sink:
    def write(model: str, action: str, actor: str, detail: dict[str, Any]) -> None:
        history.record(model, action, actor=actor, detail=detail)

    return write


def build_auth(
    config: ServerConfig,
    keys: KeyStore,
    history: AuditLog,
    table: ModelTable,
    metrics: Metrics | None = None,
    failures: FailureBuckets | None = None,
) -> AuthSetup:
    """Decide the mode and build its parts; ConfigError when the server must not start.

    Blocking (reads the key table and the JWKS): call it in a thread. With
    ``metrics``, traffic anomalies are watched while authentication is on.
    """
    audit = AuthAudit(_sink(history))
    off = AuthSetup(None, None, None, config.insecure, config.host, audit)
    if config.insecure:
        return off
    jwt = _jwt(config)
    certificates = _certificates(config)
    active = keys.count_active()
    # A --tls-identities table is a credential source like keys and JWTs.
    mtls = config.tls_identities is not None
    if not config.loopback and active == 0 and jwt is None and not mtls:
        raise ConfigError(
            "command line",
            "--host",
            f"binding {config.host} requires authentication, but there is no API key, "
            "no JWT issuer and no --tls-identities: create a key with 'modelport keys create "
            '--role admin --models "*"\' (same --data-dir/--state-url), set --jwt-jwks, '
            "map client certificates with --tls-identities, or pass --insecure to serve "
            "without authentication",
        )
    if config.loopback and not (config.require_auth or jwt is not None or active > 0 or mtls):
        log.info(
            "authentication off: serving on loopback with no API key or JWT issuer "
            "configured; anyone on this machine may call every endpoint",
            extra={"host": config.host},
        )
        return off
    authenticator = Authenticator(
        keys=KeyService(keys),
        jwt=jwt,
        audit=audit,
        certificates=certificates,
        failure_rate=config.auth_failure_rate,
        failure_burst=config.auth_failure_burst,
        failures=failures,
    )
    watch = build_watch(audit, metrics) if metrics is not None else None
    gate = Gate(authenticator, _tenant_lookup(table), audit, watch)
    guard = HttpGuard(gate)
    log.info(
        "authentication on",
        extra={
            "host": config.host,
            "api_keys": active,
            "jwt": jwt is not None,
            "tls_identities": len(certificates) if certificates is not None else None,
        },
    )
    metrics_guard = None if config.metrics_open else guard
    return AuthSetup(gate, guard, metrics_guard, False, config.host, audit)
