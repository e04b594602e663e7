"""Core types shared by every layer: tensors, requests, responses, signatures.

They are framework-free and carry numpy arrays, never Python lists, so that a
request can travel from the wire to a runtime without per-element objects.

Datatypes use the Open Inference Protocol names (``FP32``, ``BYTES`` ...).
Each maps to the numpy dtype that holds its bytes. Two need a note:

- ``BYTES`` is held as a one-dimensional-or-more ``object`` array of ``bytes``.
- ``BF16`` has no numpy dtype; its raw 16-bit patterns are held as ``uint16``
  and converted only where a value is needed (JSON text).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

#: OIP datatype name -> numpy dtype that stores it.
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),
    "BYTES": np.dtype(object),
}

#: Size in bytes of one element, for fixed-size datatypes.
ITEMSIZE: dict[str, int] = {name: dt.itemsize for name, dt in DTYPES.items() if name != "BYTES"}

#: Triton model-config enum name (``TYPE_FP32``) <-> OIP datatype name.
#: Triton spells BYTES as TYPE_STRING.
CONFIG_TYPES: dict[str, str] = {
    **{f"TYPE_{name}": name for name in DTYPES if name != "BYTES"},
    "TYPE_STRING": "BYTES",
}
DATATYPE_TO_CONFIG: dict[str, str] = {v: k for k, v in CONFIG_TYPES.items()}

Array = npt.NDArray[Any]


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """Return the storage dtype of an OIP datatype (KeyError if unknown)."""
    return DTYPES[datatype]


def datatype_of(array: Array) -> str:
    """Name the OIP datatype for a numpy array produced by a runtime."""
    kind = array.dtype
    if kind.kind in ("O", "S", "U"):
        return "BYTES"
    for name, dt in DTYPES.items():
        if name not in ("BF16", "BYTES") and dt == kind.newbyteorder("<"):
            return name
    raise TypeError(f"numpy dtype {kind} has no Open Inference Protocol datatype")


def element_count(shape: tuple[int, ...] | list[int]) -> int:
    """Number of elements a shape holds (1 for a scalar)."""
    return math.prod(shape)


class Role(IntEnum):
    """What a caller may do; a higher role includes every lower one (one comparison)."""

    NONE = 0
    """An authenticated caller granted nothing (a JWT without a known role)."""
    VIEWER = 1
    """Health, metadata, config, statistics, repository index, metrics, reads of /api/v1."""
    INVOKER = 2
    """Plus inference."""
    OPERATOR = 3
    """Plus load, unload, traffic policies, canaries, version load and unload."""
    ADMIN = 4
    """Plus API keys and policies."""

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller, whatever credential (API key, JWT, certificate) it showed.

    It lives here, beside the request it rides on, so observers and tracing
    can read who called without importing the data plane's admission code.

    ``id`` is stable and unique (``key:<id>`` or ``jwt:<issuer>#<subject>``) and
    keys per-identity state such as rate-limit buckets; ``name`` is what the
    audit log shows as the actor. ``models`` are the model name patterns
    (``fnmatch``, case-sensitive) it may use; ``tenant``, when set, scopes it
    further. ``rate`` and ``burst`` are its own rate limit, when its key was
    created with one. ``expires_at`` is a wall-clock time in seconds since the
    epoch, or None; a cached identity is refused once past it.
    """

    id: str
    name: str
    role: Role
    models: tuple[str, ...]
    tenant: str | None = None
    rate: float | None = None
    burst: int | None = None
    expires_at: float | None = None

    @property
    def actor(self) -> str:
        """The name recorded as the actor of changes this identity makes."""
        return self.name


class Origin(Enum):
    """Where a call came from, so stages tell internal traffic apart without comparing strings."""

    REST = "rest"
    """The HTTP transport (the Open Inference Protocol's REST API and /api/v1)."""
    GRPC = "grpc"
    """The gRPC transport."""
    SHADOW = "shadow"
    """A copy the server sends to a shadow version; its answer goes to no one."""
    STEP = "step"
    """One step of a composite servable, run for a request already admitted."""
    JOB = "job"
    """An asynchronous job run by the job runner; admitted (rate limits included)
    when it was submitted."""

    @property
    def internal(self) -> bool:
        """Whether the server itself made the call, for a request it already admitted.

        Internal calls skip what exists to protect callers from one another,
        such as rate limits: the request they serve took its tokens once.
        """
        return self is Origin.SHADOW or self is Origin.STEP or self is Origin.JOB


#: The empty, read-only mapping a Call without headers or trace context holds.
_EMPTY: Mapping[str, str] = MappingProxyType({})


def _empty() -> Mapping[str, str]:
    return _EMPTY


@dataclass(frozen=True, slots=True)
class Call:
    """What a transport knows about one call, handed to everything below it.

    One typed object instead of a framework's scope dict or gRPC's context,
    so stages, observers and tracing read who calls, from where and until
    when the same way whichever transport took the call. It lives among the
    core types so that code outside the data plane can read it.

    Example: a REST request from 10.0.0.7 carrying ``X-Request-ID: r-1``,
    taken at monotonic time ``t`` with a 5 s timeout, is
    ``Call(Origin.REST, identity, deadline_ns=t + 5_000_000_000, headers=...,
    request_id="r-1", peer=("10.0.0.7", 53110))``.
    """

    origin: Origin
    """The transport, or the internal source, that made the call."""
    identity: Identity | None = None
    """The authenticated caller; None when authentication is off."""
    deadline_ns: int | None = None
    """Monotonic time (``Clock.monotonic_ns``) after which no one waits for the answer.

    Set once, at arrival, from what the transport carries; None means the
    call has none. Compared only with readings of the same process's clock.
    """
    headers: Mapping[str, str] = field(default_factory=_empty)
    """A read-only view of the request's headers (REST) or metadata (gRPC), names in lower case.

    A view, never a copy, so building a Call costs no per-header work.
    gRPC's binary (``-bin``) metadata is not in it.
    """
    request_id: str | None = None
    """The id the caller gave the request, echoed in the answer and in logs."""
    peer: str | tuple[str, int] | None = None
    """The client's address as the transport reports it, or None if unknown.

    Kept in the transport's own form so building a Call formats nothing:
    REST's ASGI ``(host, port)``, gRPC's peer string (``ipv4:10.0.0.7:53110``).
    :meth:`peer_text` writes either as text.
    """
    trace: Mapping[str, str] = field(default_factory=_empty)
    """Trace context carried with the call (such as W3C ``traceparent`` and ``tracestate``)."""

    def peer_text(self) -> str | None:
        """The peer as text (``host:port`` for REST), for logs and audit records."""
        peer = self.peer
        if peer is None or isinstance(peer, str):
            return peer
        return f"{peer[0]}:{peer[1]}"

    def remaining_ns(self, now_ns: int) -> int | None:
        """Nanoseconds left before the deadline at ``now_ns`` (0 or less: passed; None: none)."""
        if self.deadline_ns is None:
            return None
        return self.deadline_ns - now_ns


@dataclass(slots=True)
class Tensor:
    """A named tensor: OIP datatype, shape, and the numpy array holding it."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Array
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class RequestedOutput:
    """An output the caller asked for, with its wire options (``binary_data``)."""

    name: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class InferenceRequest:
    """One inference call as the data plane sees it, whatever the transport.

    ``priority`` and ``timeout_us`` are Triton's request parameters, kept for
    the scheduler; ``deadline`` is a monotonic time in seconds, or None.
    The caller's identity and deadline travel in the :class:`Call` the
    transport builds; ``identity`` here is only read for a request served
    without a Call (a library caller, a test).
    """

    model_name: str
    model_version: str | None
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None = None
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    timeout_us: int | None = None
    deadline: float | None = None
    identity: Identity | None = None


@dataclass(slots=True)
class InferenceResponse:
    """The answer to one InferenceRequest: the outputs it asked for."""

    model_name: str
    model_version: str
    outputs: list[Tensor]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output of a model: its name, OIP datatype and shape.

    ``shape`` is the full shape as clients see it in model metadata: when the
    model batches, it starts with -1 for the batch dimension; -1 elsewhere
    means any size.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelSignature:
    """What a model takes and gives; ``max_batch_size`` 0 means no batching."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 0
