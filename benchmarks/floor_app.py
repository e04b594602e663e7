"""The HTTP floor: the least an ASGI server can do per request.

Reads the request body to the end and answers a fixed small JSON object,
whatever the path or method. Served the way modelport serves REST (uvicorn,
``--http httptools --loop uvloop``, the same worker count) and driven by the
same wrk script and body, its req/s is the ceiling that the HTTP stack alone
puts on modelport's REST transport on this machine:

    .venv/bin/python -m uvicorn --app-dir benchmarks floor_app:app \\
        --http httptools --loop uvloop --workers 1 --no-access-log --port 9000
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ANSWER = b'{"model_name":"floor","outputs":[]}'
HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(ANSWER)).encode()),
]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        more = bool(message.get("more_body", False))
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})
