"""TLS on both hops of the gateway: clients to Envoy, and Envoy (and the poller) to nodes.

The fleet file's ``tls`` section names PEM files only; this module checks
them at load, so a fleet whose certificates are missing or mismatched is
refused at start (one line naming the file and the field) instead of Envoy
rejecting a cluster later with nothing but a log line, and it builds the
Envoy transport sockets and the poller's SSL context from them, so that the
gateway's readiness polls and Envoy's requests and health checks trust and
present exactly the same certificates.

Nodes are verified against ``tls.ca`` alone (the chain, not a host name):
nodes are reached by address, and one cluster holds many nodes, so the CA is
the fleet's boundary. Keep a CA for the fleet that signs nothing else.
"""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509
from pydantic import BaseModel, ConfigDict

from modelport.errors import ConfigError
from modelport.tls.material import MAX_PEM_BYTES, TlsFiles, read_material

TLS_SOCKET = "envoy.transport_sockets.tls"
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
DOWNSTREAM_TLS = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
)

#: The oldest TLS version either hop accepts (the nodes' own floor).
MIN_VERSION = "TLSv1_2"


class TlsSpec(BaseModel):
    """The fleet file's ``tls``: PEM paths, relative to the fleet file's folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca: Path | None = None
    """The CA bundle nodes' certificates are verified against; set: TLS to every node."""
    cert: Path | None = None
    """The gateway's client certificate (chain), presented to nodes (mutual TLS); its
    common name or a DNS name is what nodes list in --trusted-proxy-identity."""
    key: Path | None = None
    """The unencrypted private key of ``cert``."""
    server_cert: Path | None = None
    """The certificate (chain) clients are shown on the REST and gRPC ports; set: TLS
    to clients."""
    server_key: Path | None = None
    """The unencrypted private key of ``server_cert``."""
    node_cert: Path | None = None
    """The certificate ``modelport fleet up`` gives every node it starts (all on loopback,
    so one certificate serves them all); the gateway itself does not read it."""
    node_key: Path | None = None
    """The unencrypted private key of ``node_cert``."""


def _pair(tls: TlsSpec, source: str, cert: str, key: str) -> None:
    """Both or neither of a certificate and its key; when both, a pair that belongs together."""
    cert_path, key_path = getattr(tls, cert), getattr(tls, key)
    if cert_path is None and key_path is None:
        return
    if key_path is None:
        raise ConfigError(source, f"tls.{key}", f"needed with tls.{cert} (its private key)")
    if cert_path is None:
        raise ConfigError(source, f"tls.{cert}", f"needed with tls.{key} (the key's certificate)")
    fields = {"--tls-cert": f"tls.{cert}", "--tls-key": f"tls.{key}"}
    try:
        read_material(TlsFiles(cert_path, key_path))
    except ConfigError as exc:
        field = fields.get(exc.field, f"tls.{cert}")
        raise ConfigError(source, field, f"{exc.source}: {exc.problem}") from None


def _ca(path: Path, source: str) -> None:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise ConfigError(source, "tls.ca", f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        certs = x509.load_pem_x509_certificates(data) if len(data) <= MAX_PEM_BYTES else []
    except ValueError:
        certs = []
    if not certs:
        raise ConfigError(source, "tls.ca", f"{path}: holds no PEM certificate")


def check_tls(tls: TlsSpec, source: str) -> None:
    """Refuses a ``tls`` section that names missing, unreadable or mismatched files."""
    if all(getattr(tls, name) is None for name in TlsSpec.model_fields):
        raise ConfigError(
            source,
            "tls",
            "name ca (with cert and key) for TLS to the nodes, "
            "server_cert and server_key for TLS to clients, or both",
        )
    for cert, key in (("cert", "key"), ("node_cert", "node_key")):
        if tls.ca is None and (getattr(tls, cert) is not None or getattr(tls, key) is not None):
            raise ConfigError(
                source,
                "tls.ca",
                f"needed with tls.{cert}: the gateway verifies the nodes against it",
            )
    if tls.ca is not None:
        _ca(tls.ca, source)
    _pair(tls, source, "cert", "key")
    _pair(tls, source, "server_cert", "server_key")
    _pair(tls, source, "node_cert", "node_key")


def identity(cert: Path) -> str:
    """The name nodes know a certificate by: its common name, else its first DNS name.

    Read the way nodes read ``--trusted-proxy-identity`` (subject CN or DNS SAN);
    ``cert`` has been checked at load.
    """
    leaf = x509.load_pem_x509_certificates(cert.read_bytes())[0]
    names = leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if names:
        return str(names[0].value)
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = None
    dns = sans.get_values_for_type(x509.DNSName) if sans is not None else []
    if not dns:
        raise ConfigError(str(cert), "", "the certificate names no common name or DNS name")
    return str(dns[0])


def _certificate(cert: Path, key: Path) -> dict[str, Any]:
    return {"certificate_chain": {"filename": str(cert)}, "private_key": {"filename": str(key)}}


def to_nodes(tls: TlsSpec | None, alpn: str) -> dict[str, Any] | None:
    """A cluster's transport socket: TLS to nodes verified against ``tls.ca``, presenting
    the gateway's client certificate (None: plain TCP)."""
    if tls is None or tls.ca is None:
        return None
    common: dict[str, Any] = {
        "tls_params": {"tls_minimum_protocol_version": MIN_VERSION},
        "validation_context": {"trusted_ca": {"filename": str(tls.ca)}},
        "alpn_protocols": [alpn],
    }
    if tls.cert is not None and tls.key is not None:
        common["tls_certificates"] = [_certificate(tls.cert, tls.key)]
    return {
        "name": TLS_SOCKET,
        "typed_config": {"@type": UPSTREAM_TLS, "common_tls_context": common},
    }


def to_clients(tls: TlsSpec | None) -> dict[str, Any] | None:
    """A listener's transport socket: TLS with the server certificate (None: plain TCP)."""
    if tls is None or tls.server_cert is None or tls.server_key is None:
        return None
    common = {
        "tls_params": {"tls_minimum_protocol_version": MIN_VERSION},
        "tls_certificates": [_certificate(tls.server_cert, tls.server_key)],
        # HTTP/2 where the client offers it (gRPC needs it), else HTTP/1.1.
        "alpn_protocols": ["h2", "http/1.1"],
    }
    return {
        "name": TLS_SOCKET,
        "typed_config": {"@type": DOWNSTREAM_TLS, "common_tls_context": common},
    }


def gateway_probe_context(tls: TlsSpec | None) -> ssl.SSLContext | None:
    """A context that trusts the gateway's own server certificate, for probing it locally.

    The system's CAs, the fleet CA and the certificate itself (a self-signed one is its
    own anchor): whichever signed it, a process that just started the gateway can tell
    it is answering.
    """
    if tls is None or tls.server_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if tls.ca is not None:
        context.load_verify_locations(str(tls.ca))
    with contextlib.suppress(ssl.SSLError):
        context.load_verify_locations(str(tls.server_cert))
    # The probe goes to 127.0.0.1, a name the certificate need not carry.
    context.check_hostname = False
    return context


def poll_context(tls: TlsSpec | None) -> ssl.SSLContext | None:
    """The readiness poller's context: the same trust and identity as Envoy's clusters."""
    if tls is None or tls.ca is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # As Envoy does: the chain is checked against the fleet CA, not a host name.
    context.check_hostname = False
    if tls.cert is not None and tls.key is not None:
        context.load_cert_chain(str(tls.cert), str(tls.key))
    return context
