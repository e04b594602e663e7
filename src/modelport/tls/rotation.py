"""Certificate rotation without dropping service.

The server holds one :class:`TlsRotation`. It owns the checked material and
the :class:`ssl.SSLContext` the REST and metrics listeners share, and
reloads both when the files change (their mtime, size or inode, polled every
``interval`` seconds) or when :meth:`trigger` is called (SIGHUP).

Why it does not drop anything: ``load_cert_chain`` on the live context
changes only what new handshakes present; a connection already open keeps
the certificate it was set up with and its keep-alive requests go on. gRPC
reads :attr:`material` through its certificate-configuration fetcher at
each new handshake and compares :attr:`generation` with what it served.

Failure mode: a new pair that fails the checks of
:func:`~modelport.tls.material.read_material` (half written, mismatched,
expired) is logged and the old pair keeps serving. The failed file state is
remembered, so the error is logged once per change rather than every poll;
writing the files again, or SIGHUP, retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Callable
from pathlib import Path

from modelport.errors import ConfigError
from modelport.tls.material import TlsFiles, TlsMaterial, load_into, read_material, server_context

log = logging.getLogger("modelport.tls")

#: What the poll compares: per file (mtime ns, size, inode), or None when missing.
Signature = tuple[tuple[int, int, int] | None, ...]


def file_signature(paths: tuple[Path, ...]) -> Signature:
    out: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
            continue
        out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


def describe(material: TlsMaterial) -> dict[str, object]:
    """Log fields of a certificate (never the key)."""
    return {
        "serial": f"{material.serial:x}",
        "subject": material.subject,
        "not_after": material.not_after.isoformat(),
    }


class TlsRotation:
    """The live TLS material of one server, and the reload loop that replaces it."""

    def __init__(
        self,
        files: TlsFiles,
        material: TlsMaterial,
        *,
        interval: float = 5.0,
        read: Callable[[TlsFiles], TlsMaterial] = read_material,
    ) -> None:
        self.files = files
        self.material = material
        self.generation = 0
        self.interval = interval
        self._read = read
        self._paths = tuple(p for p in (files.cert, files.key, files.client_ca) if p is not None)
        self._signature = file_signature(self._paths)
        self._context = server_context(files, material)
        self._wake = asyncio.Event()

    @classmethod
    def start(cls, files: TlsFiles, interval: float = 5.0) -> TlsRotation:
        """Read and check the files; ConfigError names the one at fault. Blocking."""
        material = read_material(files)
        log.info("tls certificate loaded", extra=describe(material))
        return cls(files, material, interval=interval)

    @property
    def context(self) -> ssl.SSLContext:
        """The context every HTTP listener serves with (the same object after reloads)."""
        return self._context

    def trigger(self) -> None:
        """Reload now, whether or not the files look changed (SIGHUP)."""
        self._wake.set()

    async def reload(self) -> bool:
        """Read, check and apply the files; False (logged) keeps the old pair."""
        self._signature = await asyncio.to_thread(file_signature, self._paths)
        try:
            material = await asyncio.to_thread(self._read, self.files)
        except ConfigError as exc:
            log.error(
                "tls reload failed; still serving the previous certificate",
                extra={"error": exc.message, **describe(self.material)},
            )
            return False
        # On the event loop thread: handshakes start there too, so none sees
        # the context half way through the change.
        load_into(self._context, material)
        self.material = material
        self.generation += 1
        log.info("tls certificate reloaded", extra=describe(material))
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Poll the files (and wait for :meth:`trigger`) until ``stop``."""

        async def wake_on_stop() -> None:
            await stop.wait()
            self._wake.set()

        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(wake_on_stop())
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.interval)
                forced = self._wake.is_set()
                self._wake.clear()
                if stop.is_set():
                    break
                current = await asyncio.to_thread(file_signature, self._paths)
                if forced or current != self._signature:
                    await self.reload()
