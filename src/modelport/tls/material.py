"""Reading and checking a server's certificate, key and client CA bundle.

Everything is read once into memory and checked before any listener sees
it: a file that cannot be read, a PEM that does not parse, a key that does
not belong to the certificate, an expired certificate. The same check runs
at start (a failure stops the server with a ConfigError naming the file)
and on every rotation (a failure is logged and the old pair keeps serving),
so a half-written or mismatched pair can never reach a live context.

The :class:`ssl.SSLContext` API loads certificates only from paths, so
:func:`load_into` hands it the checked bytes through anonymous in-memory
files (``memfd``) where the platform has them, else a private temporary
directory; it never reads the watched paths again, which could have changed
since they were checked.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from modelport.errors import ConfigError

#: Largest PEM file read (a certificate chain or CA bundle is a few KiB; a CA
#: bundle of a whole system store is about 250 KiB).
MAX_PEM_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where the server's TLS material lives; ``client_ca`` set turns on mTLS."""

    cert: Path
    key: Path
    client_ca: Path | None = None
    client_auth_required: bool = True


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """A checked certificate chain, its key and the client CA bundle, as PEM bytes."""

    cert_pem: bytes
    key_pem: bytes
    client_ca_pem: bytes | None
    serial: int
    not_after: datetime
    subject: str


def _read(path: Path, flag: str) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise ConfigError(str(path), flag, f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_PEM_BYTES:
        raise ConfigError(str(path), flag, f"larger than {MAX_PEM_BYTES} bytes; not a PEM file")
    if b"-----BEGIN" not in data:
        raise ConfigError(str(path), flag, "not a PEM file (no -----BEGIN line)")
    return data


def _certificates(data: bytes, path: Path, flag: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigError(str(path), flag, f"not a valid PEM certificate: {exc}") from None
    if not certs:
        raise ConfigError(str(path), flag, "holds no certificate")
    return certs


def _private_key(data: bytes, path: Path) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(
            str(path), "--tls-key", "the private key is encrypted; give an unencrypted key"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(str(path), "--tls-key", f"not a valid PEM private key: {exc}") from None


def _public(obj: x509.Certificate | PrivateKeyTypes) -> bytes:
    key = obj.public_key()
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def read_material(files: TlsFiles, now: datetime | None = None) -> TlsMaterial:
    """The checked material of ``files``; ConfigError naming the file at fault.

    ``now`` is injected for tests; the certificate must be valid at that time.
    """
    now = now or datetime.now(UTC)
    cert_pem = _read(files.cert, "--tls-cert")
    key_pem = _read(files.key, "--tls-key")
    leaf = _certificates(cert_pem, files.cert, "--tls-cert")[0]
    key = _private_key(key_pem, files.key)
    if _public(leaf) != _public(key):
        raise ConfigError(
            str(files.key), "--tls-key", f"this key does not belong to the certificate {files.cert}"
        )
    if leaf.not_valid_after_utc <= now:
        raise ConfigError(
            str(files.cert),
            "--tls-cert",
            f"the certificate expired at {leaf.not_valid_after_utc.isoformat()}",
        )
    if leaf.not_valid_before_utc > now:
        raise ConfigError(
            str(files.cert),
            "--tls-cert",
            f"the certificate is not valid before {leaf.not_valid_before_utc.isoformat()}",
        )
    ca_pem = None
    if files.client_ca is not None:
        ca_pem = _read(files.client_ca, "--tls-client-ca")
        _certificates(ca_pem, files.client_ca, "--tls-client-ca")
    material = TlsMaterial(
        cert_pem=cert_pem,
        key_pem=key_pem,
        client_ca_pem=ca_pem,
        serial=leaf.serial_number,
        not_after=leaf.not_valid_after_utc,
        subject=leaf.subject.rfc4514_string(),
    )
    # Last, what OpenSSL itself says (chain order, key types it refuses).
    try:
        load_into(_scratch_context(), material)
    except ssl.SSLError as exc:
        raise ConfigError(str(files.cert), "--tls-cert", f"refused by OpenSSL: {exc}") from None
    return material


def _scratch_context() -> ssl.SSLContext:
    return ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)


@contextlib.contextmanager
def _as_files(*blobs: bytes) -> Iterator[list[str]]:
    """Paths that read back ``blobs``, gone when the block ends."""
    if hasattr(os, "memfd_create"):
        fds = [os.memfd_create("modelport-tls", 0) for _ in blobs]
        try:
            for fd, blob in zip(fds, blobs, strict=True):
                os.write(fd, blob)
            yield [f"/proc/self/fd/{fd}" for fd in fds]
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="modelport-tls-") as tmp:
        paths = []
        for i, blob in enumerate(blobs):
            path = Path(tmp) / str(i)
            path.touch(mode=0o600)
            path.write_bytes(blob)
            paths.append(str(path))
        yield paths


def load_into(context: ssl.SSLContext, material: TlsMaterial) -> None:
    """Put the pair (and the client CAs) into ``context``; new handshakes use them.

    A CA bundle adds to the CAs already trusted: an SSLContext cannot forget
    one, so removing a client CA takes a restart.
    """
    with _as_files(material.cert_pem, material.key_pem) as (cert, key):
        context.load_cert_chain(cert, key)
    if material.client_ca_pem is not None:
        der = b"".join(
            c.public_bytes(serialization.Encoding.DER)
            for c in x509.load_pem_x509_certificates(material.client_ca_pem)
        )
        context.load_verify_locations(cadata=der)


def server_context(files: TlsFiles, material: TlsMaterial) -> ssl.SSLContext:
    """A server context (TLS 1.2 or later) holding ``material``; mTLS when a CA is set."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if files.client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED if files.client_auth_required else ssl.CERT_OPTIONAL
    load_into(context, material)
    return context
