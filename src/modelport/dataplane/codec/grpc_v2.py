"""gRPC ModelInferRequest / ModelInferResponse ↔ core types.

Inputs arrive either as ``raw_input_contents`` (one little-endian buffer per
input, what tritonclient sends; decoded as zero-copy numpy views) or as typed
``contents``; mixing the two in one request is refused. Outputs always go
back as ``raw_output_contents``, which every standard client reads.

System shared memory (Triton's extension): an input whose parameters name a
``shared_memory_region`` is read from it and has no raw entry (raw entries
belong, in order, to the other inputs, as tritonclient sends them); an
output asked for in a region is written there and answered with its
metadata and parameters only (an empty raw entry keeps the others' indices
when some outputs travel in the message).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from modelport.dataplane.codec.parameters import apply_request_parameters
from modelport.dataplane.codec.tensors import (
    SHM_REGION,
    SharedMemoryAccess,
    array_from_buffer,
    array_to_bytes,
    check_datatype,
    check_shape,
    shm_output_parameters,
    shm_outputs,
    shm_reference,
    without_shm,
)
from modelport.errors import InvalidRequest, Unsupported
from modelport.protos import grpc_service_pb2 as pb
from modelport.types import DTYPES, InferenceRequest, InferenceResponse, RequestedOutput, Tensor

#: Which typed-contents field carries each datatype (FP16 and BF16 travel raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parameter_value(p: Any) -> Any:
    """The Python value of an InferParameter (None when unset)."""
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None


def _parameters(params: Any) -> dict[str, Any]:
    return {k: parameter_value(v) for k, v in params.items()}


def _typed_array(inp: Any, shape: tuple[int, ...], where: str) -> np.ndarray[Any, Any]:
    field = CONTENTS_FIELD.get(inp.datatype)
    if field is None:
        raise InvalidRequest(f"{where}: {inp.datatype} data must be sent in raw_input_contents")
    values = getattr(inp.contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidRequest(
            f"{where}: shape {list(shape)} needs {count} elements, {field} has {len(values)}"
        )
    if inp.datatype == "BYTES":
        out = np.empty(count, dtype=object)
        out[:] = list(values)
        return out.reshape(shape)
    dtype = DTYPES[inp.datatype]
    raw = np.asarray(values)
    if dtype.kind in "iu" and count:
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise InvalidRequest(f"{where}: value out of range for {inp.datatype}")
    return raw.astype(dtype).reshape(shape)


def _has_typed_contents(inp: Any) -> bool:
    return bool(inp.HasField("contents") and inp.contents.ByteSize() > 0)


def _in_shm(inp: Any) -> bool:
    return SHM_REGION in inp.parameters


def _shm(shm: SharedMemoryAccess | None, where: str) -> SharedMemoryAccess:
    if shm is None:
        raise Unsupported(f"{where}: shared memory is not served on this path")
    return shm


def decode_request(
    msg: Any, max_elements: int, shm: SharedMemoryAccess | None = None
) -> InferenceRequest:
    """Decode a ModelInferRequest; raises InvalidRequest naming the bad input.

    ``shm``: the caller's shared-memory regions, for tensors that name one.
    """
    raw = msg.raw_input_contents
    in_shm = sum(1 for inp in msg.inputs if _in_shm(inp)) if shm is not None else 0
    if raw and len(raw) != len(msg.inputs) - in_shm:
        raise InvalidRequest(
            f"raw_input_contents has {len(raw)} entries for "
            f"{len(msg.inputs) - in_shm} inputs not in shared memory"
        )
    tensors: list[Tensor] = []
    seen: set[str] = set()
    next_raw = 0
    for inp in msg.inputs:
        where = f"input {inp.name!r}"
        if inp.name in seen:
            raise InvalidRequest(f"{where} appears more than once")
        seen.add(inp.name)
        check_datatype(inp.datatype, where)
        shape = check_shape(list(inp.shape), max_elements, where)
        params = _parameters(inp.parameters)
        ref = shm_reference(params, where) if params else None
        if ref is not None:
            if _has_typed_contents(inp):
                raise InvalidRequest(f"{where}: has both {SHM_REGION} and contents")
            array = _shm(shm, where).read(ref, inp.datatype, shape, where)
            params = without_shm(params)
        elif raw:
            if _has_typed_contents(inp):
                raise InvalidRequest(
                    f"{where}: has typed contents while the request uses raw_input_contents; "
                    "use one or the other"
                )
            array = array_from_buffer(memoryview(raw[next_raw]), inp.datatype, shape, where)
            next_raw += 1
        elif _has_typed_contents(inp) or math.prod(shape) == 0:
            array = _typed_array(inp, shape, where)
        else:
            raise InvalidRequest(f"{where} has no data")
        tensors.append(Tensor(inp.name, inp.datatype, shape, array, params))
    outputs: list[RequestedOutput] | None = None
    if msg.outputs:
        outputs = []
        names: set[str] = set()
        for out in msg.outputs:
            if out.name in names:
                raise InvalidRequest(f"output {out.name!r} is requested more than once")
            names.add(out.name)
            params = _parameters(out.parameters)
            if params.get("classification"):
                raise Unsupported(
                    f"output {out.name!r}: the classification extension is not served"
                )
            where = f"output {out.name!r}"
            ref = shm_reference(params, where) if params else None
            if ref is not None:
                _shm(shm, where).check_output(ref, where)
            outputs.append(RequestedOutput(out.name, params))
    request = InferenceRequest(
        model_name=msg.model_name,
        model_version=msg.model_version or None,
        inputs=tensors,
        outputs=outputs,
        id=msg.id or None,
        parameters=_parameters(msg.parameters),
    )
    apply_request_parameters(request)
    return request


def _set_parameter(params: Any, key: str, value: Any) -> None:
    if isinstance(value, bool):
        params[key].bool_param = value
    elif isinstance(value, str):
        params[key].string_param = value
    else:
        params[key].int64_param = value


def encode_response(
    response: InferenceResponse,
    request: InferenceRequest | None = None,
    shm: SharedMemoryAccess | None = None,
) -> Any:
    """A ModelInferResponse with every output in raw_output_contents.

    Outputs ``request`` asks for in shared memory are written there through ``shm``.
    """
    msg = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id or "",
    )
    if response.parameters:  # rare (a cold start): the answer usually carries none
        for key, value in response.parameters.items():
            _set_parameter(msg.parameters, key, value)
    refs = shm_outputs(request) if request is not None and request.outputs else None
    raw: list[bytes] = []
    for t in response.outputs:
        out = msg.outputs.add()
        out.name = t.name
        out.datatype = t.datatype
        out.shape.extend(t.shape)
        ref = refs.get(t.name) if refs else None
        if ref is not None:
            where = f"output {t.name!r}"
            written = _shm(shm, where).write(ref, t.data, t.datatype, where)
            for key, value in shm_output_parameters(ref, written).items():
                _set_parameter(out.parameters, key, value)
            raw.append(b"")
        else:
            raw.append(array_to_bytes(t.data, t.datatype))
    if refs and all(not r for r in raw):
        raw = []  # every output is in shared memory: no raw contents at all
    msg.raw_output_contents.extend(raw)
    return msg
