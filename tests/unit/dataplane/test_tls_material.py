"""TLS material checks: every bad file is a ConfigError that names it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from modelport.config.server import load_server_config
from modelport.errors import ConfigError
from modelport.tls.material import TlsFiles, read_material, server_context
from tests.tls_certs import Issued, issue, make_ca


@pytest.fixture
def ca() -> Issued:
    return make_ca()


def _files(tmp_path: Path, pair: Issued, ca: Issued | None = None) -> TlsFiles:
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    pair.write(cert, key)
    ca_path = None
    if ca is not None:
        ca_path = tmp_path / "ca.pem"
        ca_path.write_bytes(ca.cert_pem)
    return TlsFiles(cert, key, ca_path)


def test_a_good_pair_reads_with_its_serial(tmp_path: Path, ca: Issued) -> None:
    pair = issue(ca, "srv", server=True)
    material = read_material(_files(tmp_path, pair, ca))
    assert material.serial == pair.serial
    assert material.subject == "CN=srv"
    assert material.client_ca_pem == ca.cert_pem


def test_server_context_is_tls_1_2_or_later_and_asks_for_client_certs(
    tmp_path: Path, ca: Issued
) -> None:
    import ssl

    files = _files(tmp_path, issue(ca, "srv", server=True), ca)
    ctx = server_context(files, read_material(files))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    optional = TlsFiles(files.cert, files.key, files.client_ca, client_auth_required=False)
    assert server_context(optional, read_material(optional)).verify_mode == ssl.CERT_OPTIONAL


def test_missing_file_names_it(tmp_path: Path, ca: Issued) -> None:
    files = _files(tmp_path, issue(ca, "srv", server=True))
    files.key.unlink()
    with pytest.raises(ConfigError, match=r"server\.key: --tls-key: cannot read"):
        read_material(files)


def test_not_pem_names_the_file(tmp_path: Path, ca: Issued) -> None:
    files = _files(tmp_path, issue(ca, "srv", server=True))
    files.cert.write_text("hello")
    with pytest.raises(ConfigError, match=r"server.pem: --tls-cert: not a PEM file"):
        read_material(files)


def test_mismatched_key_is_refused(tmp_path: Path, ca: Issued) -> None:
    files = _files(tmp_path, issue(ca, "srv", server=True))
    files.key.write_bytes(issue(ca, "other", server=True).key_pem)
    with pytest.raises(ConfigError, match="does not belong to the certificate"):
        read_material(files)


def test_expired_certificate_is_refused(tmp_path: Path, ca: Issued) -> None:
    files = _files(tmp_path, issue(ca, "srv", server=True, expired=True))
    with pytest.raises(ConfigError, match=r"server\.pem: --tls-cert: the certificate expired"):
        read_material(files)


def test_expiry_uses_the_clock_given(tmp_path: Path, ca: Issued) -> None:
    files = _files(tmp_path, issue(ca, "srv", server=True))
    with pytest.raises(ConfigError, match="expired"):
        read_material(files, now=datetime.now(UTC) + timedelta(days=30))


def test_encrypted_key_is_refused_clearly(tmp_path: Path, ca: Issued) -> None:
    from cryptography.hazmat.primitives import serialization

    pair = issue(ca, "srv", server=True)
    files = _files(tmp_path, pair)
    files.key.write_bytes(
        pair.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    with pytest.raises(ConfigError, match="the private key is encrypted"):
        read_material(files)


def test_bad_client_ca_names_it(tmp_path: Path, ca: Issued) -> None:
    files = _files(tmp_path, issue(ca, "srv", server=True), ca)
    assert files.client_ca is not None
    files.client_ca.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match=r"ca\.pem: --tls-client-ca: not a valid PEM"):
        read_material(files)


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        ({"tls_cert": "c.pem"}, "tls_cert and tls_key must be given together"),
        ({"tls_key": "k.pem"}, "tls_cert and tls_key must be given together"),
        ({"tls_client_ca": "ca.pem"}, "needs tls_cert and tls_key"),
        (
            {"tls_cert": "c", "tls_key": "k", "tls_identities": "i.yaml"},
            "tls_identities needs tls_client_ca",
        ),
        ({"tls_cert": "c", "tls_key": "k", "tls_client_auth": "maybe"}, "--tls-client-auth"),
    ],
)
def test_settings_that_do_not_go_together(flags: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_server_config(None, {}, flags)
