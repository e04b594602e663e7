"""Trusted proxies: whose ``X-Forwarded-For`` names the caller, and which address in it.

Brute-force blocking, rate limits and the audit log key on the caller's
address. Behind the fleet's gateway every connection is the gateway's, so a
node takes the caller's address from ``X-Forwarded-For``, but only on a
connection whose verified client certificate names a trusted proxy (its
common name or a subject alternative name, as ``certificates.py`` reads
them), and only the rightmost address, the one that proxy appended: what
stands left of it came from the caller, who may write anything there. A
rightmost entry that is not an IP address is ignored, and the connection's
own address counts, as it does for everyone else. Both transports ask here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from modelport.dataplane.admission.certificates import ClientCertificate

#: The header (REST) and metadata key (gRPC), lower case as both transports hand them.
FORWARDED_FOR = "x-forwarded-for"


def is_trusted_proxy(cert: ClientCertificate | None, trusted: frozenset[str]) -> bool:
    if cert is None or not trusted:
        return False
    return cert.common_name in trusted or any(san in trusted for san in cert.sans)


def rightmost_address(values: Iterable[str]) -> str | None:
    """The last address of the last X-Forwarded-For value, if it is an IP address."""
    last: str | None = None
    for value in values:
        last = value
    if last is None:
        return None
    try:
        return str(ipaddress.ip_address(last.rsplit(",", 1)[-1].strip()))
    except ValueError:
        return None
