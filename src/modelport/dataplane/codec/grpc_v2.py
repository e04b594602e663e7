"""gRPC ModelInferRequest / ModelInferResponse ↔ core types.

Inputs arrive either as ``raw_input_contents`` (one little-endian buffer per
input, what tritonclient sends; decoded as zero-copy numpy views) or as typed
``contents``; mixing the two in one request is refused. Outputs always go
back as ``raw_output_contents``, which every standard client reads.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from modelport.dataplane.codec.parameters import apply_request_parameters
from modelport.dataplane.codec.tensors import (
    array_from_buffer,
    array_to_bytes,
    check_datatype,
    check_shape,
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


def decode_request(msg: Any, max_elements: int) -> InferenceRequest:
    """Decode a ModelInferRequest; raises InvalidRequest naming the bad input."""
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise InvalidRequest(
            f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} inputs"
        )
    tensors: list[Tensor] = []
    seen: set[str] = set()
    for i, inp in enumerate(msg.inputs):
        where = f"input {inp.name!r}"
        if inp.name in seen:
            raise InvalidRequest(f"{where} appears more than once")
        seen.add(inp.name)
        check_datatype(inp.datatype, where)
        shape = check_shape(list(inp.shape), max_elements, where)
        if raw:
            if _has_typed_contents(inp):
                raise InvalidRequest(
                    f"{where}: has typed contents while the request uses raw_input_contents; "
                    "use one or the other"
                )
            array = array_from_buffer(memoryview(raw[i]), inp.datatype, shape, where)
        elif _has_typed_contents(inp) or math.prod(shape) == 0:
            array = _typed_array(inp, shape, where)
        else:
            raise InvalidRequest(f"{where} has no data")
        params = _parameters(inp.parameters)
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


def encode_response(response: InferenceResponse) -> Any:
    """A ModelInferResponse with every output in raw_output_contents."""
    msg = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id or "",
    )
    for t in response.outputs:
        out = msg.outputs.add()
        out.name = t.name
        out.datatype = t.datatype
        out.shape.extend(t.shape)
        msg.raw_output_contents.append(array_to_bytes(t.data, t.datatype))
    return msg
