"""Response cache: answers repeated identical requests without computing.

Opt-in per model (Triton's ``response_cache: {enable: true}``), bounded in
bytes for the whole server (``--cache-size``), least recently used out
first. The key is a hash of the model, its version, the outputs asked for,
and every input's name, datatype, shape and bytes, so two requests share an
answer only if the model would see exactly the same thing.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from modelport.dataplane.codec.tensors import array_to_bytes
from modelport.types import Array, Tensor


def cache_key(model: str, version: str, inputs: Sequence[Tensor], outputs: Sequence[str]) -> bytes:
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{model}\0{version}\0{','.join(outputs)}\0".encode())
    for t in sorted(inputs, key=lambda t: t.name):
        h.update(f"{t.name}\0{t.datatype}\0{t.shape}\0".encode())
        if t.datatype == "BYTES":
            h.update(array_to_bytes(t.data, "BYTES"))
        else:
            h.update(np.ascontiguousarray(t.data).data)
    return h.digest()


def _size(outputs: dict[str, Array]) -> int:
    return sum(a.nbytes if a.dtype != object else 64 * a.size for a in outputs.values()) + 256


class ResponseCache:
    """A byte-bounded LRU map from request hash to output arrays."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self.used = 0
        self._entries: OrderedDict[bytes, tuple[dict[str, Array], int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> dict[str, Array] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: bytes, outputs: dict[str, Array]) -> None:
        size = _size(outputs)
        if size > self.capacity or key in self._entries:
            return
        # Keep our own read-only copies: callers' arrays may be views of a batch.
        frozen = {}
        for name, array in outputs.items():
            copy = np.array(array, copy=True)
            copy.flags.writeable = False
            frozen[name] = copy
        self._entries[key] = (frozen, size)
        self.used += size
        while self.used > self.capacity:
            _, (_, evicted) = self._entries.popitem(last=False)
            self.used -= evicted
