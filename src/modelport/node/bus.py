"""The node's bus: how one worker tells the others of a change, or asks them for their counts.

Each worker listens on a Unix socket of its own in the node's private
directory (``w<index>.sock``, mode 0600, in a 0700 directory), so only
processes of the same user reach it and no port is opened. A message is
one JSON line, ``{"op": ..., "body": {...}}``, answered by one JSON line,
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": ...}``; one
connection carries one message. Peers are found by listing the directory:
a worker that died leaves a socket nobody answers on, which counts as
absent (its replacement reads the current state when it starts).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelport.errors import ModelportError, internal_error

log = logging.getLogger("modelport.node")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]

#: Largest message or answer in bytes (a model's metrics exposition is the largest).
LIMIT = 64 * 1024 * 1024


def socket_path(directory: Path, index: int) -> Path:
    return directory / f"w{index}.sock"


@dataclass(frozen=True, slots=True)
class Reply:
    """One worker's answer."""

    worker: int
    ok: bool
    result: Any = None
    error: str = ""
    kind: str = ""
    """The error's type name (``Unavailable``, ``InvalidRequest``...)."""


class BusServer:
    """Answers the other workers' messages with this worker's handlers."""

    def __init__(self, directory: Path, index: int, handlers: Mapping[str, Handler]) -> None:
        self.path = socket_path(directory, index)
        self.handlers = dict(handlers)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        # A predecessor that died left its socket file behind.
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.path), limit=LIMIT
        )
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            reply = await self._answer(line)
            writer.write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # the asking worker went away (or sent more than LIMIT)
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            message = json.loads(line)
            op = message["op"]
            handler = self.handlers[op]
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": "not a message this worker understands"}
        body = message.get("body")
        try:
            result = await handler(body if isinstance(body, dict) else {})
        except ModelportError as exc:
            return {"ok": False, "error": exc.message, "kind": type(exc).__name__}
        except Exception as exc:
            log.exception("node message failed", extra={"op": op})
            return {"ok": False, "error": internal_error(exc)}
        return {"ok": True, "result": result}


class Peers:
    """The other workers of this node, as the node's directory lists them."""

    def __init__(self, directory: Path, index: int) -> None:
        self.directory = directory
        self.index = index

    def indices(self) -> list[int]:
        found = []
        for path in self.directory.glob("w*.sock"):
            number = path.name[1 : -len(".sock")]
            if number.isdigit() and int(number) != self.index:
                found.append(int(number))
        return sorted(found)

    async def ask(
        self, worker: int, op: str, body: Mapping[str, Any], wait_s: float
    ) -> Reply | None:
        """``worker``'s answer, or None when it is not there (dead or restarting)."""
        path = socket_path(self.directory, worker)
        try:
            async with asyncio.timeout(wait_s):
                reader, writer = await asyncio.open_unix_connection(str(path), limit=LIMIT)
                try:
                    message = {"op": op, "body": dict(body)}
                    writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
                    await writer.drain()
                    line = await reader.readline()
                finally:
                    writer.close()
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        except (TimeoutError, OSError, ValueError) as exc:
            return Reply(worker, False, error=f"no answer ({type(exc).__name__})")
        return _reply(worker, line)

    def ask_blocking(
        self, worker: int, op: str, body: Mapping[str, Any], wait_s: float
    ) -> Reply | None:
        """:meth:`ask` for code that runs off the event loop (a model load's thread)."""
        path = socket_path(self.directory, worker)
        message = json.dumps({"op": op, "body": dict(body)}, separators=(",", ":")).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(wait_s)
                sock.connect(str(path))
                sock.sendall(message + b"\n")
                with sock.makefile("rb") as answers:
                    line = answers.readline(LIMIT)
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        except OSError as exc:
            return Reply(worker, False, error=f"no answer ({type(exc).__name__})")
        return _reply(worker, line)

    async def broadcast(
        self, op: str, body: Mapping[str, Any], wait_s: float = 10.0
    ) -> list[Reply]:
        """Every other worker's answer to one message, asked all at once."""
        asked = await asyncio.gather(*(self.ask(w, op, body, wait_s) for w in self.indices()))
        return [reply for reply in asked if reply is not None]


def _reply(worker: int, line: bytes) -> Reply:
    if not line:
        return Reply(worker, False, error="closed without answering")
    try:
        answer = json.loads(line)
    except ValueError:
        return Reply(worker, False, error="answered something unreadable")
    if answer.get("ok"):
        return Reply(worker, True, answer.get("result"))
    error, kind = str(answer.get("error", "failed")), str(answer.get("kind", ""))
    return Reply(worker, False, error=error, kind=kind)
