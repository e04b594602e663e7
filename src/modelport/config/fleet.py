"""What a fleet node's name and addresses look like, checked the same way everywhere.

The node's configuration (``--advertise``, ``--node-name``…) is checked with
these when it is read, and the node store checks every record with them
again when it writes or reads one: a row written by another release or by
hand must not hand the gateway an address it would route to blindly. Each
check raises ValueError with a sentence naming the bad value.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

#: A node or group name: a letter or digit first, then letters, digits, '.', '_', '-'.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"

#: A region (``ae-dxb-1``) or a jurisdiction (``ae``), as residency lists hold them.
REGION_PATTERN = r"[a-z]{2,}(?:-[a-z0-9]+)*"

_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def check_name(value: str, what: str) -> str:
    if not re.fullmatch(NAME_PATTERN, value):
        raise ValueError(
            f"{what} {value!r} must be 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def check_region(value: str, what: str = "region") -> str:
    if len(value) > 64 or not re.fullmatch(REGION_PATTERN, value):
        raise ValueError(f"{what} {value!r} is not a region (e.g. 'ae-dxb-1')")
    return value


def _check_host(host: str, where: str) -> None:
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    labels = host.split(".")
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{where}: {host!r} is not a host name or IP address")


def check_http_url(value: str) -> str:
    """An ``http://`` or ``https://`` origin: scheme, host and port, nothing else.

    Returned without a trailing slash, so the gateway can join paths to it.
    """
    where = f"advertised URL {value!r}"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError(f"{where} is not a URL") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{where} must start with http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{where} must not hold a user name or password")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{where} must be scheme://host[:port] with no path or query")
    host = parts.hostname
    if not host:
        raise ValueError(f"{where} has no host")
    _check_host(host, where)
    if port == 0:
        raise ValueError(f"{where} has port 0")
    return value.rstrip("/")


def check_grpc_address(value: str) -> str:
    """``host:port`` (``[v6]:port`` for an IPv6 address), as gRPC channels take it."""
    where = f"advertised gRPC address {value!r}"
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{where} must be host:port with a port from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{where}: {host!r} is not an IPv6 address") from None
        return value
    if not host:
        raise ValueError(f"{where} has no host")
    _check_host(host, where)
    return value
