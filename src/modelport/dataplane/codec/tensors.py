"""Wire bytes and JSON values ↔ numpy arrays, for every OIP datatype.

Every decoder checks the claimed shape before it allocates anything: a
shape is rejected when a dimension is negative or when it claims more
elements than the server's limit, so ``[1000000000000]`` costs nothing.
Fixed-size binary data becomes a zero-copy ``numpy.frombuffer`` view.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

import numpy as np

from modelport.errors import InvalidRequest
from modelport.types import DTYPES, ITEMSIZE, Array, InferenceRequest

_LEN = struct.Struct("<I")

_INT_TYPES = {"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"}
_FLOAT_TYPES = {"FP16", "FP32", "FP64", "BF16"}


def check_datatype(datatype: str, where: str) -> None:
    if datatype not in DTYPES:
        raise InvalidRequest(
            f"{where}: unknown datatype {datatype!r}; expected one of {', '.join(DTYPES)}"
        )


def check_shape(shape: Any, max_elements: int, where: str) -> tuple[int, ...]:
    """Validate a claimed shape and return it as a tuple of ints."""
    if not isinstance(shape, (list, tuple)):
        raise InvalidRequest(f"{where}: shape must be a list of integers")
    for d in shape:
        if type(d) is not int or d < 0:
            raise InvalidRequest(
                f"{where}: shape {list(shape)} has {d!r}; dimensions are non-negative integers"
            )
    count = math.prod(shape)
    if count > max_elements or any(d > max_elements for d in shape):
        raise InvalidRequest(
            f"{where}: shape {list(shape)} claims {count} elements, more than the limit "
            f"of {max_elements}"
        )
    return tuple(shape)


# --------------------------------------------------------- shared memory form

#: Triton's tensor parameters naming a registered system shared-memory region.
SHM_REGION = "shared_memory_region"
SHM_OFFSET = "shared_memory_offset"
SHM_BYTE_SIZE = "shared_memory_byte_size"
SHM_PARAMETERS = (SHM_REGION, SHM_OFFSET, SHM_BYTE_SIZE)


class ShmRef(NamedTuple):
    """Where a tensor lies in a registered region: the region, and a span inside it."""

    region: str
    offset: int
    byte_size: int


def shm_reference(params: Mapping[str, Any], where: str) -> ShmRef | None:
    """The region a tensor's parameters name; None when they name none.

    Only the shape of the values is checked here; whether the span fits
    the region is the region's own check (``SharedMemoryAccess``).
    """
    region = params.get(SHM_REGION)
    if region is None:
        if SHM_BYTE_SIZE in params or SHM_OFFSET in params:
            raise InvalidRequest(f"{where}: {SHM_BYTE_SIZE}/{SHM_OFFSET} without {SHM_REGION}")
        return None
    if type(region) is not str or not region:
        raise InvalidRequest(f"{where}: {SHM_REGION} must be a region name")
    size = params.get(SHM_BYTE_SIZE)
    if type(size) is not int or size < 0:
        raise InvalidRequest(f"{where}: {SHM_BYTE_SIZE} must be a non-negative integer")
    offset = params.get(SHM_OFFSET, 0)
    if type(offset) is not int or offset < 0:
        raise InvalidRequest(f"{where}: {SHM_OFFSET} must be a non-negative integer")
    return ShmRef(region, offset, size)


def without_shm(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` less the shared-memory ones (consumed by the codec)."""
    return {k: v for k, v in params.items() if k not in SHM_PARAMETERS}


class SharedMemoryAccess(Protocol):
    """The caller's registered regions, for one request (``modelport.dataplane.sharedmemory``).

    Codecs read inputs from it and write outputs to it; every span is checked
    against the region and the segment before a byte moves.
    """

    def read(self, ref: ShmRef, datatype: str, shape: tuple[int, ...], where: str) -> Array:
        """The tensor ``ref`` holds, as an array the request owns."""
        ...

    def check_output(self, ref: ShmRef, where: str) -> None:
        """Refuse, before inference, an output span that cannot be written."""
        ...

    def write(self, ref: ShmRef, array: Array, datatype: str, where: str) -> int:
        """Write ``array`` (Triton's binary layout) at ``ref``; the bytes written."""
        ...


def shm_outputs(request: InferenceRequest) -> dict[str, ShmRef]:
    """The outputs the request asks to have written to shared memory (checked at decode)."""
    if request.outputs is None:
        return {}
    refs: dict[str, ShmRef] = {}
    for o in request.outputs:
        if o.parameters and SHM_REGION in o.parameters:
            ref = shm_reference(o.parameters, f"output {o.name!r}")
            if ref is not None:
                refs[o.name] = ref
    return refs


def shm_output_parameters(ref: ShmRef, written: int) -> dict[str, Any]:
    """An output's parameters when it was written to shared memory (as Triton answers)."""
    params: dict[str, Any] = {SHM_REGION: ref.region, SHM_BYTE_SIZE: written}
    if ref.offset:
        params[SHM_OFFSET] = ref.offset
    return params


def tensor_nbytes(datatype: str, shape: tuple[int, ...]) -> int:
    """Bytes a fixed-size tensor takes in Triton's binary layout."""
    return math.prod(shape) * ITEMSIZE[datatype]


def array_to_buffer(array: Array, datatype: str) -> memoryview | bytes:
    """Triton's binary layout of ``array`` without a copy where it is already contiguous."""
    if datatype == "BYTES":
        return array_to_bytes(array, datatype)
    flat = np.ascontiguousarray(array, dtype=DTYPES[datatype]).reshape(-1)
    return memoryview(flat.view(np.uint8).data)


# ---------------------------------------------------------------- binary form


def array_from_buffer(buf: memoryview, datatype: str, shape: tuple[int, ...], where: str) -> Array:
    """Decode one tensor's raw bytes (Triton's binary layout) into an array."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return _bytes_from_buffer(buf, shape, count, where)
    expected = count * ITEMSIZE[datatype]
    if len(buf) != expected:
        raise InvalidRequest(
            f"{where}: {datatype} shape {list(shape)} needs {expected} bytes, got {len(buf)}"
        )
    return np.frombuffer(buf, dtype=DTYPES[datatype], count=count).reshape(shape)


def _bytes_from_buffer(buf: memoryview, shape: tuple[int, ...], count: int, where: str) -> Array:
    if count * 4 > len(buf):
        # Each element needs at least its 4-byte length: refuse before allocating.
        raise InvalidRequest(
            f"{where}: BYTES shape {list(shape)} needs {count} elements, "
            f"but {len(buf)} bytes cannot hold them"
        )
    out = np.empty(count, dtype=object)
    pos = 0
    end = len(buf)
    for i in range(count):
        if pos + 4 > end:
            raise InvalidRequest(f"{where}: BYTES data ends at element {i} of {count}")
        (n,) = _LEN.unpack_from(buf, pos)
        pos += 4
        if pos + n > end:
            raise InvalidRequest(f"{where}: BYTES element {i} claims {n} bytes past the data's end")
        out[i] = bytes(buf[pos : pos + n])
        pos += n
    if pos != end:
        raise InvalidRequest(
            f"{where}: BYTES data has {end - pos} bytes left after {count} elements"
        )
    return out.reshape(shape)


def array_to_bytes(array: Array, datatype: str) -> bytes:
    """Encode an array as Triton's binary layout (BYTES: 4-byte LE length prefixes)."""
    if datatype == "BYTES":
        parts: list[bytes] = []
        for item in array.ravel():
            b = _as_bytes(item)
            parts.append(_LEN.pack(len(b)))
            parts.append(b)
        return b"".join(parts)
    dt = DTYPES[datatype]
    return np.ascontiguousarray(array, dtype=dt).tobytes()


def _as_bytes(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    return str(item).encode("utf-8")


# ------------------------------------------------------------------ JSON form


def bf16_from_float(values: Array) -> Array:
    """Round float32 values to bfloat16 bit patterns (nearest, ties to even)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    return ((bits + rounding) >> 16).astype(np.uint16)


def bf16_to_float(patterns: Array) -> Array:
    return (patterns.astype(np.uint32) << 16).view(np.float32)


def array_from_json(data: Any, datatype: str, shape: tuple[int, ...], where: str) -> Array:
    """Decode a JSON ``data`` value (flat or nested list) for a tensor."""
    count = math.prod(shape)
    if not isinstance(data, list):
        data = [data]
    if datatype == "BYTES":
        flat = _flatten_bytes(data, where)
        if len(flat) != count:
            raise InvalidRequest(
                f"{where}: shape {list(shape)} needs {count} elements, data has {len(flat)}"
            )
        out = np.empty(count, dtype=object)
        out[:] = flat
        return out.reshape(shape)
    try:
        raw = np.asarray(data)
    except ValueError:
        raise InvalidRequest(f"{where}: data is a ragged nested list") from None
    if raw.dtype == object:
        raise InvalidRequest(f"{where}: data mixes types or nests unevenly")
    if raw.size != count:
        raise InvalidRequest(
            f"{where}: shape {list(shape)} needs {count} elements, data has {raw.size}"
        )
    kind: str = raw.dtype.kind
    if count == 0:
        kind = "n"
    if kind in ("i", "u", "f") and _contains_bool(data):
        # numpy silently turns true/false among numbers into 1/0.
        raise InvalidRequest(f"{where}: {datatype} data must be numbers, got a boolean")
    if datatype == "BOOL":
        if kind not in ("b", "n"):
            raise InvalidRequest(f"{where}: BOOL data must be true/false, got {raw.dtype.name}")
        return raw.astype(np.bool_).reshape(shape)
    if datatype in _INT_TYPES:
        if kind == "f" and datatype == "UINT64":
            # numpy infers float64 for integers past INT64's range; re-read them exactly.
            raw = _exact_uint64(data, where)
            kind = "u"
        if kind not in ("i", "u", "n"):
            raise InvalidRequest(f"{where}: {datatype} data must be integers, got {_kind(raw)}")
        info = np.iinfo(DTYPES[datatype])
        if count and (raw.min() < info.min or raw.max() > info.max):
            raise InvalidRequest(f"{where}: value out of range for {datatype}")
        return raw.astype(DTYPES[datatype]).reshape(shape)
    if datatype in _FLOAT_TYPES:
        if kind not in ("i", "u", "f", "n"):
            raise InvalidRequest(f"{where}: {datatype} data must be numbers, got {_kind(raw)}")
        if datatype == "BF16":
            return bf16_from_float(raw.astype(np.float32)).reshape(shape)
        return raw.astype(DTYPES[datatype]).reshape(shape)
    raise InvalidRequest(f"{where}: unknown datatype {datatype!r}")


def _kind(raw: Array) -> str:
    return {"b": "booleans", "U": "strings", "S": "strings", "f": "floats"}.get(
        raw.dtype.kind, raw.dtype.name
    )


def _flatten_bytes(data: list[Any], where: str) -> list[bytes]:
    out: list[bytes] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            if isinstance(item, str):
                out.append(item.encode("utf-8"))
            elif isinstance(item, bytes):
                out.append(item)
            else:
                raise InvalidRequest(f"{where}: BYTES data must be strings, got {item!r}")
        else:
            stack.pop()
    return out


def array_to_json(array: Array, datatype: str) -> list[Any]:
    """Flatten an array into JSON-ready values (row-major)."""
    if datatype == "BYTES":
        return [
            item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
            for item in array.ravel()
        ]
    if datatype == "BF16":
        return bf16_to_float(array.ravel()).tolist()  # type: ignore[no-any-return,unused-ignore]
    return array.ravel().tolist()  # type: ignore[no-any-return,unused-ignore]


def _exact_uint64(data: list[Any], where: str) -> Array:
    flat = np.asarray(data, dtype=object).ravel()
    if not all(type(v) is int for v in flat):
        raise InvalidRequest(f"{where}: UINT64 data must be integers, got floats")
    if any(v < 0 or v >= 1 << 64 for v in flat):
        raise InvalidRequest(f"{where}: value out of range for UINT64")
    return np.asarray(data, dtype=np.uint64)


def _contains_bool(data: list[Any]) -> bool:
    stack = [data]
    while stack:
        items = stack.pop()
        types = set(map(type, items))
        if bool in types:
            return True
        if list in types:
            stack.extend(x for x in items if type(x) is list)
    return False
