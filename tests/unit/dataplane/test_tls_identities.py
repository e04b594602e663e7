"""Client certificates → identities: the mapping file, precedence with tokens, the scope."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from modelport.dataplane.admission.audit import AuthAudit
from modelport.dataplane.admission.authenticate import Authenticator
from modelport.dataplane.admission.certificates import (
    CertificateIdentities,
    ClientCertificate,
    describe_der,
    describe_pem,
)
from modelport.dataplane.transport.http.protocol import tls_extension
from modelport.errors import ConfigError, Unauthenticated
from modelport.types import Identity, Role
from tests.tls_certs import issue, make_ca

TABLE = {
    "identities": [
        {"cn": "scorer", "role": "invoker", "models": ["fraud-*"], "tenant": "acme"},
        {"subject": "CN=ops,O=Example", "role": "operator", "models": ["*"]},
        {"san": "spiffe://example.org/batch", "role": "viewer", "models": ["*"]},
    ]
}


def _cert(cn: str, org: str | None = None, uris: tuple[str, ...] = ()) -> ClientCertificate:
    pair = issue(make_ca(), cn, org=org, uris=uris)
    return describe_der(pair.cert.public_bytes(Encoding.DER))


def test_describe_reads_subject_cn_and_sans() -> None:
    cert = _cert("scorer", org="Example", uris=("spiffe://x/y",))
    assert cert.subject == "O=Example,CN=scorer"
    assert cert.common_name == "scorer"
    assert cert.sans == ("spiffe://x/y",)
    assert describe_pem(cert.pem) == cert


def test_mapping_by_cn_subject_and_san() -> None:
    table = CertificateIdentities.from_mapping(TABLE, "ids.yaml")
    scorer = table.identity(_cert("scorer"))
    assert (scorer.role, scorer.models, scorer.tenant) == (Role.INVOKER, ("fraud-*",), "acme")
    assert scorer.id == "cert:CN=scorer"
    assert table.identity(_cert("ops", org="Example")).role is Role.NONE  # subject order differs
    ops = ClientCertificate("CN=ops,O=Example", "ops", (), "")
    assert table.identity(ops).role is Role.OPERATOR
    batch = table.identity(_cert("anything", uris=("spiffe://example.org/batch",)))
    assert batch.role is Role.VIEWER


def test_unmapped_certificate_is_known_but_granted_nothing() -> None:
    table = CertificateIdentities.from_mapping(TABLE, "ids.yaml")
    who = table.identity(_cert("stranger"))
    assert who.role is Role.NONE
    assert who.models == ()
    assert who.name == "cert:CN=stranger"


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ([], "identities"),
        ({"identities": [{"role": "viewer", "models": ["*"]}]}, r"identities\[0\]"),
        (
            {"identities": [{"cn": "a", "san": "b", "role": "viewer", "models": ["*"]}]},
            r"identities\[0\]",
        ),
        ({"identities": [{"cn": "a", "role": "king", "models": ["*"]}]}, r"identities\[0\]\.role"),
        ({"identities": [{"cn": "a", "role": "viewer"}]}, r"identities\[0\]\.models"),
        (
            {"identities": [{"cn": "a", "role": "viewer", "models": ["*"], "x": 1}]},
            r"identities\[0\]\.x",
        ),
        (
            {
                "identities": [
                    {"cn": "a", "role": "viewer", "models": ["*"]},
                    {"cn": "a", "role": "admin", "models": ["*"]},
                ]
            },
            r"identities\[1\]\.cn: 'a' is mapped twice",
        ),
    ],
)
def test_bad_tables_name_the_entry(data: Any, where: str) -> None:
    with pytest.raises(ConfigError, match=f"ids.yaml: {where}"):
        CertificateIdentities.from_mapping(data, "ids.yaml")


def test_table_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        CertificateIdentities.from_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("identities: [")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid YAML"):
        CertificateIdentities.from_file(bad)


class _Keys:
    def verify(self, token: str) -> Identity:
        if token == "mpk_good_secret":
            return Identity("key:good", "alice", Role.ADMIN, ("*",))
        raise Unauthenticated("invalid API key")


def _auth() -> Authenticator:
    return Authenticator(
        keys=_Keys(),
        jwt=None,
        audit=AuthAudit(None),
        certificates=CertificateIdentities.from_mapping(TABLE, "ids.yaml"),
    )


def test_certificate_is_the_identity_when_no_token_is_sent() -> None:
    who = asyncio.run(_auth().authenticate(None, "1.2.3.4", _cert("scorer")))
    assert who.role is Role.INVOKER


def test_a_token_wins_over_the_certificate() -> None:
    auth = _auth()
    who = asyncio.run(auth.authenticate("Bearer mpk_good_secret", "1.2.3.4", _cert("scorer")))
    assert who.name == "alice"
    with pytest.raises(Unauthenticated):
        asyncio.run(auth.authenticate("Bearer mpk_bad_secret", "1.2.3.4", _cert("scorer")))


def test_no_token_and_no_certificate_is_unauthenticated() -> None:
    with pytest.raises(Unauthenticated):
        asyncio.run(_auth().authenticate(None, "1.2.3.4", None))


class _SslObject:
    def __init__(self, der: bytes | None) -> None:
        self.der = der

    def getpeercert(self, binary_form: bool = False) -> bytes | None:
        return self.der

    def version(self) -> str:
        return "TLSv1.3"


def test_tls_extension_carries_the_client_certificate() -> None:
    pair = issue(make_ca(), "scorer")
    extension, cert = tls_extension(_SslObject(pair.cert.public_bytes(Encoding.DER)))
    assert cert is not None and cert.common_name == "scorer"
    assert extension["client_cert_chain"] == [pair.cert_pem.decode()]
    assert extension["client_cert_name"] == "CN=scorer"
    assert extension["tls_version"] == 0x0304
    none, no_cert = tls_extension(_SslObject(None))
    assert no_cert is None and none["client_cert_chain"] == []
