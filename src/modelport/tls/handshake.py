"""A time limit on the TLS handshake of the REST and metrics listeners.

asyncio bounds a server-side TLS handshake by ``create_server``'s
``ssl_handshake_timeout``, 60 s unless given, and uvicorn, which creates
those listeners, gives none. So a client could open connections to a TLS
port, send nothing (or half a ClientHello), and hold each for a minute
before any limit of ours applies: the request-head clock starts only once
the handshake is done. The handshake gets the time the head gets,
``header_timeout``.

uvicorn leaves one seam for this: it calls the running loop's
``create_server`` with ``ssl=`` as a keyword. This module wraps that method
on the loop the server runs in. If a uvicorn release stopped calling it that
way the limit would silently go, so an integration test
(``test_tls.py::test_a_stalled_handshake_is_cut_off_after_header_timeout``)
checks it on every TLS port.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any


def bound_tls_handshakes(loop: asyncio.AbstractEventLoop, seconds: float) -> None:
    """Give every TLS listener created on ``loop`` from now on ``seconds`` per handshake.

    A connection whose handshake is not done in time is closed. Plain
    listeners are left alone (asyncio refuses the setting without ``ssl``).
    """
    create_server = loop.create_server

    @functools.wraps(create_server)
    async def bounded(*args: Any, **kwargs: Any) -> asyncio.Server:
        if kwargs.get("ssl") is not None:
            kwargs.setdefault("ssl_handshake_timeout", seconds)
        return await create_server(*args, **kwargs)

    loop.create_server = bounded  # type: ignore[method-assign]
