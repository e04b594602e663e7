"""A directory of in-memory files, so runtimes open paths and no plaintext hits a disk.

Each decrypted file lives in an anonymous memory file (``memfd_create``),
sealed against writes once filled. A private directory (mode 0700) mirrors
the version's layout with symbolic links to ``/proc/self/fd/<fd>``; a
runtime that opens ``<view>/<model>/<version>/model.onnx`` reads the memory
file. The links mean nothing to another process, and the directory holds
no file content. Memory files can still be swapped out like any memory:
hosts that must keep models off disks entirely run without swap or with
encrypted swap.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from modelport.errors import ModelLoadError

_PROC_FD = Path("/proc/self/fd")
_WRITE_SEALS = (
    getattr(fcntl, "F_SEAL_SEAL", 0)
    | getattr(fcntl, "F_SEAL_SHRINK", 0)
    | getattr(fcntl, "F_SEAL_GROW", 0)
    | getattr(fcntl, "F_SEAL_WRITE", 0)
)


def memory_files_supported() -> bool:
    """Whether this platform has anonymous memory files reachable by path (Linux)."""
    return sys.platform == "linux" and hasattr(os, "memfd_create") and _PROC_FD.is_dir()


class MemoryView:
    """A model directory whose one version's files are memory files.

    ``version_dir`` is what a runtime loader is given; its parent stands in
    for the model directory. Call ``release`` once the runtime is unloaded:
    it closes the memory files (freeing them) and removes the links.
    """

    def __init__(self, model: str, version: int) -> None:
        if not memory_files_supported():
            raise ModelLoadError(
                "sealed models need anonymous memory files (Linux memfd_create and /proc); "
                "refusing to write plaintext anywhere else"
            )
        self.root = Path(tempfile.mkdtemp(prefix="modelport-sealed-"))
        self.model_dir = self.root / model
        self.version_dir = self.model_dir / str(version)
        self.version_dir.mkdir(parents=True, mode=0o700)
        self._fds: list[int] = []

    def add(self, rel: str, size: int, chunks: Iterable[bytes]) -> None:
        """Fill a memory file from ``chunks`` and link it at ``rel`` below the version."""
        fd = os.memfd_create(PurePosixPath(rel).name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        self._fds.append(fd)
        os.ftruncate(fd, size)
        offset = 0
        for chunk in chunks:
            if offset + len(chunk) > size:
                raise ModelLoadError(f"{rel}: longer than the {size} bytes it was sealed with")
            view = memoryview(chunk)
            while view:
                written = os.pwrite(fd, view, offset)
                offset += written
                view = view[written:]
        if offset != size:
            raise ModelLoadError(f"{rel}: {offset} bytes, not the {size} it was sealed with")
        if _WRITE_SEALS:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _WRITE_SEALS)
        link = self.version_dir / rel
        link.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        link.symlink_to(_PROC_FD / str(fd))

    def copy_beside(self, model_dir: Path, name: str) -> None:
        """Copy a model-level directory (``warmup``), which is plaintext already, into the view.

        A link would not do: warm-up resolves sample paths and insists they
        stay inside the model directory it was given.
        """
        source = model_dir / name
        if source.is_dir():
            shutil.copytree(source, self.model_dir / name, symlinks=True)

    def release(self) -> None:
        """Free the memory files and remove the links; safe to call twice."""
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)
        shutil.rmtree(self.root, ignore_errors=True)
