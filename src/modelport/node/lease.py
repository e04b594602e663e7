"""The node's leader lease: which worker runs the jobs there must be one of.

The canary controller and the repository poller act on the node's shared
state, so exactly one worker runs them. The lease is an exclusive
``flock`` on a file in the node's directory: the kernel releases it when
its holder's process ends, however it ends (SIGKILL included), so another
worker's next attempt takes it. Workers try every ``retry_s``, which
bounds how long the node goes without a leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from pathlib import Path


class Lease:
    """One worker's claim on the lease file."""

    def __init__(self, path: Path, index: int = 0, retry_s: float = 0.5) -> None:
        self.path = path
        self.index = index
        self.retry_s = retry_s
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_take(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        # The holder's index, for the workers that report to it.
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(self.index).encode(), 0)
        return True

    def holder(self) -> int | None:
        """The index of the worker holding the lease, as it wrote it; None when none has."""
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except (OSError, ValueError):
            return None
        return int(text) if text.isdigit() else None

    async def take(self, stop: asyncio.Event) -> bool:
        """Wait for the lease; False when ``stop`` is set first."""
        while not stop.is_set():
            if self.try_take():
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.retry_s)
        return False

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None
