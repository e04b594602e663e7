"""Tensors passed to and from instance processes through shared memory.

Pickling a batch to send it down a pipe copies every tensor twice more and
holds the server's GIL while it does, which is what process instances are
meant to avoid. Instead the arrays are copied once into a shared-memory
segment at 64-byte aligned offsets, and only a ``Placement`` per tensor
(name, dtype, shape, offset: a few hundred bytes whatever the batch size)
travels over the pipe; the other side maps the same pages as numpy views.

``BYTES`` tensors (numpy ``object`` arrays of ``bytes``) have no fixed-size
layout, so they fall back to pickling: their placement carries the array
itself. Text-heavy models pay that copy per element.

Every segment is created and unlinked by the server process, including the
one a worker writes its outputs into: a worker that dies, even by SIGKILL,
leaves nothing behind in ``/dev/shm``, because the server unlinks that
worker's segments when it notices the death. Workers only attach.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import secrets
from collections.abc import Mapping, Sequence
from multiprocessing.shared_memory import SharedMemory
from typing import Any, NamedTuple

import numpy as np

from modelport.errors import Unavailable
from modelport.types import Array

#: Offsets are multiples of this, so every view is aligned for any dtype and for SIMD loads.
ALIGNMENT = 64

#: Prefix of every segment name, so a test (or an operator) can tell ours apart in /dev/shm.
NAME_PREFIX = "mport_"


class Placement(NamedTuple):
    """Where one tensor lies in a segment, or the tensor itself when it is pickled.

    A named tuple, not a dataclass: it is pickled once per tensor per batch,
    and tuples pickle several times faster.
    """

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    offset: int
    objects: Array | None = None

    @property
    def nbytes(self) -> int:
        if self.objects is not None:
            return 0
        return math.prod(self.shape) * self.dtype.itemsize


def _aligned(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def place(arrays: Mapping[str, Array]) -> tuple[tuple[Placement, ...], int]:
    """Lay ``arrays`` out one after another; returns their placements and the bytes needed."""
    placements: list[Placement] = []
    end = 0
    for name, array in arrays.items():
        if array.dtype.kind == "O":
            placements.append(Placement(name, array.dtype, array.shape, 0, array))
            continue
        p = Placement(name, array.dtype, tuple(array.shape), end)
        placements.append(p)
        end = _aligned(end + p.nbytes)
    return tuple(placements), end


def write(
    buf: memoryview | None, arrays: Mapping[str, Array], placements: Sequence[Placement]
) -> None:
    """Copy ``arrays`` into ``buf`` where ``placements`` say (any strides on the way in)."""
    for p in placements:
        if p.objects is not None or p.nbytes == 0:
            continue
        if buf is None:
            raise ValueError(f"tensor {p.name!r} needs {p.nbytes} bytes but no segment was given")
        target: Array = np.ndarray(p.shape, p.dtype, buffer=buf, offset=p.offset)
        np.copyto(target, arrays[p.name], casting="no")
        del target  # a live view would keep the segment from closing


def read(buf: memoryview | None, placements: Sequence[Placement], copy: bool) -> dict[str, Array]:
    """The tensors ``placements`` describe: read-only views of ``buf``, or copies of them.

    Views are for the worker, which hands them to the model and is done with
    them before the segment is written again; read-only because the same
    model served in-process may get read-only views of a request body too.
    The server always copies, so a segment can be replaced under it.
    """
    out: dict[str, Array] = {}
    for p in placements:
        if p.objects is not None:
            out[p.name] = p.objects
            continue
        if p.nbytes == 0 or buf is None:
            out[p.name] = np.empty(p.shape, p.dtype)
            continue
        view: Array = np.ndarray(p.shape, p.dtype, buffer=buf, offset=p.offset)
        if copy:
            out[p.name] = view.copy()
        else:
            view.flags.writeable = False
            out[p.name] = view
        del view
    return out


class Segment:
    """A segment this process owns; ``reserve`` replaces it with a larger one when needed.

    Growth doubles (at least), so a model whose batches grow steadily
    replaces its segment a handful of times, not once per batch.
    """

    def __init__(self, minimum: int) -> None:
        self._minimum = max(minimum, mmap.PAGESIZE)
        self._shm: SharedMemory | None = None

    @property
    def name(self) -> str | None:
        return self._shm.name if self._shm is not None else None

    @property
    def size(self) -> int:
        return self._shm.size if self._shm is not None else 0

    @property
    def buf(self) -> memoryview | None:
        return self._shm.buf if self._shm is not None else None

    def reserve(self, nbytes: int) -> None:
        """Make room for ``nbytes``; the old segment's contents are not kept."""
        if nbytes <= self.size:
            return
        size = max(self._minimum, nbytes, 2 * self.size)
        size = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
        fresh = SharedMemory(name=NAME_PREFIX + secrets.token_hex(8), create=True, size=size)
        try:
            _allocate(fresh, size)
        except OSError as exc:
            fresh.close()
            fresh.unlink()
            raise Unavailable(
                f"no room in shared memory for a {size}-byte segment ({exc.strerror}); "
                "send smaller batches or give the server a larger /dev/shm "
                "(docker run --shm-size)"
            ) from None
        self.release()
        self._shm = fresh

    def release(self) -> None:
        """Unmap and unlink; safe to call twice."""
        shm, self._shm = self._shm, None
        if shm is None:
            return
        with contextlib.suppress(BufferError):
            shm.close()
        with contextlib.suppress(FileNotFoundError):
            shm.unlink()


def _allocate(shm: SharedMemory, size: int) -> None:
    """Reserve the segment's pages now, where running out is an error and not a crash.

    A new segment is sparse: its pages are found on first write, and when
    /dev/shm is full (64 MiB by default in a container) that write is a
    SIGBUS that kills the server. ``posix_fallocate`` fails with ENOSPC
    instead. Where it does not exist (macOS) pages stay lazy.
    """
    fallocate = getattr(os, "posix_fallocate", None)
    fd = getattr(shm, "_fd", -1)
    if fallocate is not None and fd >= 0:
        fallocate(fd, 0, size)


class Attachment:
    """A worker's mapping of a segment the server owns, following it when it is replaced.

    A model that keeps a view of its inputs past ``predict`` pins the old
    mapping (``close`` cannot unmap exported buffers); it is then left to the
    end of the process. The name is unlinked by the server all the same, so
    nothing outlives the worker.
    """

    def __init__(self) -> None:
        self._shm: SharedMemory | None = None
        self._pinned: list[SharedMemory] = []

    def buf(self, name: str | None) -> memoryview | None:
        if name is None:
            return None
        if self._shm is None or self._shm.name != name:
            self.close()
            # On Python < 3.13 attaching also registers the name with the
            # resource tracker; a spawned worker shares the server's tracker,
            # whose registry is a set, so the server's unlink still settles it.
            self._shm = SharedMemory(name=name)
        return self._shm.buf

    def close(self) -> None:
        shm, self._shm = self._shm, None
        if shm is None:
            return
        try:
            shm.close()
        except BufferError:
            self._pinned.append(shm)
