"""One request's use of the caller's regions: tensors in, tensors out.

A :class:`Session` is the ``SharedMemoryAccess`` the codecs are given. It
holds every region the request names (so an unregister meanwhile closes
nothing under it) until :meth:`Session.close`, which the transport calls
when the answer is written, whatever happened.

Every read or write checks, in this order and before a byte moves:

1. the span ``[offset, offset + byte_size)`` against the region;
2. the bytes the tensor needs (shape x datatype size) against ``byte_size``;
3. the segment's size now (``os.fstat``) against where the span ends, so a
   segment truncated since it was registered is a clear 400.

Inputs are read with ``os.preadv`` straight into a fresh numpy array (one
copy, by the kernel, and the array is the request's own: the client may
rewrite or truncate the segment at once); outputs are written with
``os.pwrite`` from the output array's own buffer. Neither maps the segment,
so a truncation racing the copy is a short count, answered as a 400, never
a SIGBUS.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np

from modelport.dataplane.codec.tensors import (
    ShmRef,
    array_from_buffer,
    array_to_buffer,
)
from modelport.dataplane.sharedmemory.registry import Owner, Region, Registry
from modelport.errors import InvalidRequest
from modelport.types import DTYPES, ITEMSIZE, Array


def _truncated(ref: ShmRef, where: str, size: int, end: int) -> InvalidRequest:
    return InvalidRequest(
        f"{where}: shared-memory region {ref.region!r} no longer fits its segment "
        f"({size} bytes; the tensor ends at byte {end}): was the segment truncated?"
    )


class Session:
    """The regions one request uses; call :meth:`close` when it is answered."""

    def __init__(
        self, registry: Registry | Callable[[], Registry], owner: Owner, max_bytes_read: int
    ) -> None:
        """``registry``: the registry, or how to get it: a request that names no region
        never asks (the transports pass ``lambda: ctx.shared_memory``).
        ``max_bytes_read``: the most bytes a BYTES input read from a region may take."""
        self._registry = registry
        self.owner = owner
        self.max_bytes_read = max_bytes_read
        self._held: dict[str, Region] = {}

    @property
    def registry(self) -> Registry:
        registry = self._registry
        if not isinstance(registry, Registry):
            registry = self._registry = registry()
        return registry

    def _region(self, ref: ShmRef, where: str) -> tuple[Region, int]:
        """The region ``ref`` names, held, and the span's start in the segment (checked)."""
        region = self._held.get(ref.region)
        if region is None:
            region = self.registry.acquire(self.owner, ref.region, where)
            self._held[ref.region] = region
        if ref.offset > region.byte_size or ref.byte_size > region.byte_size - ref.offset:
            raise InvalidRequest(
                f"{where}: offset {ref.offset} + byte_size {ref.byte_size} runs past the end "
                f"of shared-memory region {ref.region!r} ({region.byte_size} bytes)"
            )
        return region, region.offset + ref.offset

    @staticmethod
    def _check_segment(region: Region, ref: ShmRef, where: str, end: int) -> None:
        size = os.fstat(region.fd).st_size
        if size < end:
            raise _truncated(ref, where, size, end)

    def read(self, ref: ShmRef, datatype: str, shape: tuple[int, ...], where: str) -> Array:
        region, start = self._region(ref, where)
        count = math.prod(shape)
        if datatype == "BYTES":
            if ref.byte_size < 4 * count:
                raise InvalidRequest(
                    f"{where}: BYTES shape {list(shape)} needs at least {4 * count} bytes, "
                    f"shared_memory_byte_size is {ref.byte_size}"
                )
            if ref.byte_size > self.max_bytes_read:
                raise InvalidRequest(
                    f"{where}: shared_memory_byte_size {ref.byte_size} is over the limit of "
                    f"{self.max_bytes_read} bytes for a BYTES input"
                )
            nbytes = ref.byte_size
        else:
            nbytes = count * ITEMSIZE[datatype]
            if nbytes != ref.byte_size:
                raise InvalidRequest(
                    f"{where}: {datatype} shape {list(shape)} needs {nbytes} bytes, "
                    f"shared_memory_byte_size is {ref.byte_size}"
                )
        end = start + nbytes
        self._check_segment(region, ref, where, end)
        if datatype == "BYTES":
            raw = np.empty(nbytes, dtype=np.uint8)
            self._pread(region, raw, start, ref, where)
            # The element arrays copy their bytes out, so ``raw`` is dropped after.
            return array_from_buffer(memoryview(raw.data), datatype, shape, where)
        array = np.empty(count, dtype=DTYPES[datatype])
        self._pread(region, array, start, ref, where)
        return array.reshape(shape)

    @staticmethod
    def _pread(region: Region, into: Array, start: int, ref: ShmRef, where: str) -> None:
        view = into.data.cast("B")
        done = 0
        total = len(view)
        while done < total:
            n = os.preadv(region.fd, [view[done:]], start + done)
            if n <= 0:  # the segment shrank under the read
                raise _truncated(ref, where, start + done, start + total)
            done += n

    def check_output(self, ref: ShmRef, where: str) -> None:
        region, start = self._region(ref, where)
        self._check_segment(region, ref, where, start + ref.byte_size)

    def write(self, ref: ShmRef, array: Array, datatype: str, where: str) -> int:
        region, start = self._region(ref, where)
        if datatype != "BYTES":
            needed = array.size * ITEMSIZE[datatype]
            if needed > ref.byte_size:
                raise InvalidRequest(
                    f"{where}: the output takes {needed} bytes; shared_memory_byte_size is "
                    f"{ref.byte_size}"
                )
        data = memoryview(array_to_buffer(array, datatype)).cast("B")
        total = len(data)
        if total > ref.byte_size:
            raise InvalidRequest(
                f"{where}: the output takes {total} bytes; shared_memory_byte_size is "
                f"{ref.byte_size}"
            )
        self._check_segment(region, ref, where, start + total)
        done = 0
        while done < total:
            # pwrite past a truncated end extends the segment: no signal, no harm.
            done += os.pwrite(region.fd, data[done:], start + done)
        return total

    def close(self) -> None:
        """Let go of every region this request held (idempotent)."""
        held, self._held = self._held, {}
        if not held:
            return
        for region in held.values():
            self.registry.release(region)
