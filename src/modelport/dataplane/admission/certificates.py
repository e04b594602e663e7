"""Mutual TLS: a verified client certificate → an Identity.

The transports hand over a :class:`ClientCertificate` only after the TLS
layer has verified it against ``--tls-client-ca``; this module never checks
signatures. It decides who the holder is, from a ``--tls-identities`` YAML
file that maps a certificate to a role, model patterns and a tenant::

    identities:
      - cn: fraud-batch            # the subject's common name
        role: invoker
        models: ["fraud-*"]
        tenant: acme
      - subject: "CN=ops,O=Example"  # the whole subject, RFC 4514 as printed
        role: operator
        models: ["*"]
      - san: "spiffe://example.org/scorer"   # a subject alternative name
        role: invoker
        models: ["scorer"]

A certificate matches by full subject first, then by common name, then by
its SANs in the order they appear. A verified certificate that matches
nothing is still authenticated, with no role: it gets 403 on everything but
the health endpoints, and its subject shows in the audit log.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from modelport.dataplane.admission.identity import parse_role
from modelport.errors import ConfigError
from modelport.types import Identity, Role

#: Where the REST transport leaves the connection's ClientCertificate in the ASGI scope.
CLIENT_CERT_SCOPE_KEY = "modelport.client_cert"

#: Keys an entry of the identities file may match on (exactly one per entry).
MATCH_KEYS = ("subject", "cn", "san")


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """What the server knows of a verified client certificate."""

    subject: str
    """RFC 4514 form, as ``cryptography`` prints it (``CN=a,O=Example``)."""
    common_name: str | None
    sans: tuple[str, ...]
    """DNS names, URIs, e-mail addresses and IP addresses, as text."""
    pem: str


def _san_text(name: x509.GeneralName) -> str | None:
    value = name.value
    if isinstance(value, str):
        return value
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    return None


def describe_der(der: bytes) -> ClientCertificate:
    """Parse a DER certificate the TLS layer verified; ValueError if it does not parse."""
    cert = x509.load_der_x509_certificate(der)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = cns[0].value if cns else None
    try:
        san_ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = tuple(t for t in (_san_text(n) for n in san_ext) if t is not None)
    except x509.ExtensionNotFound:
        sans = ()
    return ClientCertificate(
        subject=cert.subject.rfc4514_string(),
        common_name=cn if isinstance(cn, str) else None,
        sans=sans,
        pem=cert.public_bytes(Encoding.PEM).decode("ascii"),
    )


@lru_cache(maxsize=1024)
def describe_pem(pem: str) -> ClientCertificate:
    """Parse a PEM certificate (gRPC's auth context); cached, as each rpc asks again."""
    cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    return describe_der(cert.public_bytes(Encoding.DER))


@dataclass(frozen=True, slots=True)
class _Grant:
    role: Role
    models: tuple[str, ...]
    tenant: str | None


class CertificateIdentities:
    """The ``--tls-identities`` table; an empty one grants every certificate nothing."""

    def __init__(
        self,
        by_subject: Mapping[str, _Grant] | None = None,
        by_cn: Mapping[str, _Grant] | None = None,
        by_san: Mapping[str, _Grant] | None = None,
    ) -> None:
        self._subject = dict(by_subject or {})
        self._cn = dict(by_cn or {})
        self._san = dict(by_san or {})

    def __len__(self) -> int:
        return len(self._subject) + len(self._cn) + len(self._san)

    def identity(self, cert: ClientCertificate) -> Identity:
        """Who holds ``cert``: its grant, or an identity with no role."""
        grant = self._subject.get(cert.subject)
        if grant is None and cert.common_name is not None:
            grant = self._cn.get(cert.common_name)
        if grant is None:
            grant = next((self._san[s] for s in cert.sans if s in self._san), None)
        name = f"cert:{cert.subject}"
        if grant is None:
            return Identity(id=name, name=name, role=Role.NONE, models=())
        return Identity(
            id=name, name=name, role=grant.role, models=grant.models, tenant=grant.tenant
        )

    @classmethod
    def from_file(cls, path: Path) -> CertificateIdentities:
        """Read and check the YAML table; ConfigError names the file and entry."""
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(str(path), "", f"cannot read: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(str(path), "", f"invalid YAML: {exc}") from None
        return cls.from_mapping(data, str(path))

    @classmethod
    def from_mapping(cls, data: Any, source: str) -> CertificateIdentities:
        if not isinstance(data, dict) or not isinstance(data.get("identities"), list):
            raise ConfigError(source, "identities", "expected a mapping with a list 'identities'")
        tables: dict[str, dict[str, _Grant]] = {k: {} for k in MATCH_KEYS}
        for i, entry in enumerate(data["identities"]):
            where = f"identities[{i}]"
            key, value, grant = _entry(entry, source, where)
            if value in tables[key]:
                raise ConfigError(source, f"{where}.{key}", f"{value!r} is mapped twice")
            tables[key][value] = grant
        unknown = set(data) - {"identities"}
        if unknown:
            raise ConfigError(source, sorted(unknown)[0], "unknown setting")
        return cls(tables["subject"], tables["cn"], tables["san"])


def _entry(entry: Any, source: str, where: str) -> tuple[str, str, _Grant]:
    if not isinstance(entry, dict):
        raise ConfigError(source, where, "expected a mapping")
    allowed = {*MATCH_KEYS, "role", "models", "tenant"}
    unknown = set(entry) - allowed
    if unknown:
        raise ConfigError(source, f"{where}.{sorted(unknown)[0]}", "unknown setting")
    keys = [k for k in MATCH_KEYS if k in entry]
    if len(keys) != 1:
        raise ConfigError(source, where, "give exactly one of subject, cn or san")
    key = keys[0]
    value = entry[key]
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(source, f"{where}.{key}", "expected a non-empty string")
    try:
        role = parse_role(str(entry.get("role", "")))
    except ValueError as exc:
        raise ConfigError(source, f"{where}.role", str(exc)) from None
    models = entry.get("models")
    if (
        not isinstance(models, list)
        or not models
        or not all(isinstance(m, str) and m for m in models)
    ):
        raise ConfigError(
            source, f"{where}.models", "expected a non-empty list of model name patterns"
        )
    tenant = entry.get("tenant")
    if tenant is not None and (not isinstance(tenant, str) or not tenant):
        raise ConfigError(source, f"{where}.tenant", "expected a non-empty string")
    return key, value.strip(), _Grant(role, tuple(models), tenant)
