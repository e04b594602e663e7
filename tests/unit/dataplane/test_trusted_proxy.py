"""Which X-Forwarded-For address is believed, and from whom."""

from __future__ import annotations

import pytest

from modelport.dataplane.admission.certificates import ClientCertificate
from modelport.dataplane.admission.proxies import is_trusted_proxy
from modelport.dataplane.transport.http.protocol import forwarded_for

GATEWAY = frozenset({"gateway", "gw.internal"})


def _cert(cn: str | None, *sans: str) -> ClientCertificate:
    return ClientCertificate(subject=f"CN={cn}", common_name=cn, sans=sans, pem="")


@pytest.mark.parametrize(
    ("headers", "caller"),
    [
        ([(b"x-forwarded-for", b"198.51.100.7")], "198.51.100.7"),
        ([(b"x-forwarded-for", b"203.0.113.1, 198.51.100.7")], "198.51.100.7"),
        ([(b"x-forwarded-for", b"1.1.1.1"), (b"x-forwarded-for", b"2001:db8::1 ")], "2001:db8::1"),
        ([(b"x-forwarded-for", b"198.51.100.7, evil")], None),
        ([(b"x-forwarded-for", b"")], None),
        ([(b"x-real-ip", b"198.51.100.7")], None),
    ],
)
def test_the_rightmost_address_counts(
    headers: list[tuple[bytes, bytes]], caller: str | None
) -> None:
    assert forwarded_for(headers) == caller


def test_a_proxy_is_trusted_by_its_common_name_or_a_san() -> None:
    assert is_trusted_proxy(_cert("gateway"), GATEWAY)
    assert is_trusted_proxy(_cert("node-7", "gw.internal"), GATEWAY)
    assert not is_trusted_proxy(_cert("stranger", "gateway.evil"), GATEWAY)
    assert not is_trusted_proxy(None, GATEWAY)
    assert not is_trusted_proxy(_cert("gateway"), frozenset())
