"""Rotation: a reload changes what new handshakes see, keeps open connections, refuses
a bad pair. Runs a real TLS listener on the rotation's live context (port 0)."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from modelport.tls.material import TlsFiles
from modelport.tls.rotation import TlsRotation, file_signature
from tests.tls_certs import Issued, issue, make_ca


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        writer.write(line)
        await writer.drain()
    writer.close()


async def _connect(port: int, ca: Issued) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    return await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")


def _serial(writer: asyncio.StreamWriter) -> int:
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


async def _roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"ping\n")
    await writer.drain()
    return await reader.readline()


def _write(pair: Issued, files: TlsFiles) -> None:
    pair.write(files.cert, files.key)
    # A rewrite within the same mtime tick must still look changed.
    os.utime(files.cert, ns=(0, os.stat(files.cert).st_mtime_ns + 1_000_000))


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Issued, TlsFiles]:
    ca = make_ca()
    files = TlsFiles(tmp_path / "c.pem", tmp_path / "k.pem")
    issue(ca, "srv", server=True).write(files.cert, files.key)
    return ca, files


def test_reload_reaches_new_connections_and_spares_open_ones(
    setup: tuple[Issued, TlsFiles], caplog: pytest.LogCaptureFixture
) -> None:
    ca, files = setup

    async def scenario() -> None:
        rotation = TlsRotation.start(files)
        first = rotation.material.serial
        server = await asyncio.start_server(_echo, "127.0.0.1", 0, ssl=rotation.context)
        port = server.sockets[0].getsockname()[1]
        reader, old = await _connect(port, ca)
        assert _serial(old) == first

        rotated = issue(ca, "srv", server=True)
        _write(rotated, files)
        assert await rotation.reload()
        assert rotation.generation == 1
        _, new = await _connect(port, ca)
        assert _serial(new) == rotated.serial
        assert await _roundtrip(reader, old) == b"ping\n"  # the open one goes on
        assert _serial(old) == first

        # A mismatched pair is refused; the rotated certificate keeps serving.
        files.key.write_bytes(issue(ca, "stray", server=True).key_pem)
        with caplog.at_level(logging.ERROR, "modelport.tls"):
            assert not await rotation.reload()
        assert "tls reload failed" in caplog.text
        assert rotation.material.serial == rotated.serial
        _, after = await _connect(port, ca)
        assert _serial(after) == rotated.serial

        for w in (old, new, after):
            w.close()
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())


class _Counted(TlsRotation):
    """Says when each reload finished, so the test waits on an event, not a clock."""

    reloaded: asyncio.Queue[bool]

    async def reload(self) -> bool:
        done = await super().reload()
        self.reloaded.put_nowait(done)
        return done


def test_run_polls_for_changed_files_and_trigger_forces_a_reload(
    setup: tuple[Issued, TlsFiles],
) -> None:
    ca, files = setup

    async def scenario() -> None:
        material = TlsRotation.start(files).material
        rotation = _Counted(files, material, interval=0.01)
        rotation.reloaded = asyncio.Queue()
        stop = asyncio.Event()
        task = asyncio.create_task(rotation.run(stop))
        rotated = issue(ca, "srv", server=True)
        _write(rotated, files)
        async with asyncio.timeout(10):
            assert await rotation.reloaded.get()
        assert rotation.material.serial == rotated.serial
        # Unchanged files: nothing happens until a trigger (SIGHUP) asks.
        rotation.interval = 3600
        rotation.trigger()
        async with asyncio.timeout(10):
            assert await rotation.reloaded.get()
        assert rotation.generation == 2
        stop.set()
        async with asyncio.timeout(10):
            await task

    asyncio.run(scenario())


def test_signature_notices_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_text("a")
    before = file_signature((path,))
    path.unlink()
    assert file_signature((path,)) == (None,) != before
