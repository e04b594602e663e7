"""Open Inference Protocol v2 JSON bodies and Triton's binary tensor extension.

A binary request is a JSON header of ``Inference-Header-Content-Length``
bytes followed by each binary input's raw bytes, in the order of the inputs
that carry ``parameters.binary_data_size``. The header is decoded with a
msgspec decoder built once; binary tensors become zero-copy numpy views of
the body, so no per-element Python object is made for them.

Responses mirror this: outputs asked for with ``binary_data`` (or all
outputs, with the request parameter ``binary_data_output``) are appended as
raw bytes after the JSON header.

Triton's system shared-memory extension: an input whose parameters name a
``shared_memory_region`` carries no data and is read from that region, and
an output asked for with one is written there, its metadata (with the same
parameters) answered without data. The caller's regions are a
``SharedMemoryAccess`` the transport hands in; without one, such a tensor is
refused.
"""

from __future__ import annotations

from typing import Any

import msgspec

from modelport.dataplane.codec.jsonbody import decode_json
from modelport.dataplane.codec.parameters import apply_request_parameters
from modelport.dataplane.codec.tensors import (
    SHM_REGION,
    SharedMemoryAccess,
    array_from_buffer,
    array_from_json,
    array_to_bytes,
    array_to_json,
    check_datatype,
    check_shape,
    shm_output_parameters,
    shm_outputs,
    shm_reference,
    without_shm,
)
from modelport.errors import InvalidRequest, Unsupported
from modelport.types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor

Params = dict[str, str | int | float | bool | None]


class InputTensor(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    shape: list[int]
    datatype: str
    parameters: Params = {}
    data: Any = msgspec.UNSET


class OutputRequest(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    parameters: Params = {}


class RequestBody(msgspec.Struct, forbid_unknown_fields=True):
    inputs: list[InputTensor]
    id: str | None = None
    parameters: Params = {}
    outputs: list[OutputRequest] | None = None


class OutputTensor(msgspec.Struct, omit_defaults=True):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: Any = msgspec.UNSET


class ResponseBody(msgspec.Struct, omit_defaults=True):
    model_name: str
    model_version: str
    outputs: list[OutputTensor]
    id: str | None = None
    parameters: dict[str, Any] | None = None


_request_decoder = msgspec.json.Decoder(RequestBody)
_encoder = msgspec.json.Encoder()


def decode_request(
    body: bytes | memoryview,
    header_length: int | None,
    model_name: str,
    model_version: str | None,
    max_elements: int,
    shm: SharedMemoryAccess | None = None,
) -> InferenceRequest:
    """Decode a JSON or binary-extension request body into an InferenceRequest.

    ``shm``: the caller's shared-memory regions, for tensors that name one.
    """
    view = memoryview(body)
    if header_length is None:
        header, binary = view, view[:0]
    else:
        if header_length < 0 or header_length > len(view):
            raise InvalidRequest(
                f"Inference-Header-Content-Length is {header_length} but the body has "
                f"{len(view)} bytes"
            )
        header, binary = view[:header_length], view[header_length:]
    parsed: RequestBody = decode_json(header, _request_decoder)

    tensors: list[Tensor] = []
    seen: set[str] = set()
    offset = 0
    for i, inp in enumerate(parsed.inputs):
        where = f"input {inp.name!r}"
        if inp.name in seen:
            raise InvalidRequest(f"{where} appears more than once")
        seen.add(inp.name)
        check_datatype(inp.datatype, where)
        shape = check_shape(inp.shape, max_elements, where)
        size = inp.parameters.get("binary_data_size")
        ref = shm_reference(inp.parameters, where) if inp.parameters else None
        if ref is not None:
            if size is not None or inp.data is not msgspec.UNSET:
                raise InvalidRequest(f"{where}: has both {SHM_REGION} and data")
            array = _shm(shm, where).read(ref, inp.datatype, shape, where)
        elif size is not None:
            if type(size) is not int or size < 0:
                raise InvalidRequest(f"{where}: binary_data_size must be a non-negative integer")
            if inp.data is not msgspec.UNSET:
                raise InvalidRequest(f"{where}: has both binary_data_size and JSON data")
            if offset + size > len(binary):
                raise InvalidRequest(
                    f"{where}: binary_data_size {size} runs past the end of the body "
                    f"({len(binary) - offset} bytes left)"
                )
            array = array_from_buffer(binary[offset : offset + size], inp.datatype, shape, where)
            offset += size
        else:
            if inp.data is msgspec.UNSET:
                raise InvalidRequest(f"{where} (inputs[{i}]) has no data")
            array = array_from_json(inp.data, inp.datatype, shape, where)
        params = (
            without_shm(inp.parameters)
            if ref is not None
            else {k: v for k, v in inp.parameters.items() if k != "binary_data_size"}
        )
        tensors.append(Tensor(inp.name, inp.datatype, shape, array, params))
    if offset != len(binary):
        raise InvalidRequest(
            f"body has {len(binary) - offset} bytes of binary data no input claims "
            "(check binary_data_size and Inference-Header-Content-Length)"
        )

    outputs: list[RequestedOutput] | None = None
    if parsed.outputs is not None:
        outputs = []
        names: set[str] = set()
        for out in parsed.outputs:
            if out.name in names:
                raise InvalidRequest(f"output {out.name!r} is requested more than once")
            names.add(out.name)
            if out.parameters.get("classification"):
                raise Unsupported(
                    f"output {out.name!r}: the classification extension is not served"
                )
            where = f"output {out.name!r}"
            ref = shm_reference(out.parameters, where) if out.parameters else None
            if ref is not None:
                _shm(shm, where).check_output(ref, where)
            outputs.append(RequestedOutput(out.name, dict(out.parameters)))
    request = InferenceRequest(
        model_name=model_name,
        model_version=model_version,
        inputs=tensors,
        outputs=outputs,
        id=parsed.id,
        parameters=dict(parsed.parameters),
    )
    apply_request_parameters(request)
    return request


def _shm(shm: SharedMemoryAccess | None, where: str) -> SharedMemoryAccess:
    if shm is None:
        raise Unsupported(f"{where}: shared memory is not served on this path")
    return shm


def _binary_wanted(request: InferenceRequest) -> dict[str, bool] | bool:
    default = bool(request.parameters.get("binary_data_output", False))
    if request.outputs is None:
        return default
    return {o.name: bool(o.parameters.get("binary_data", default)) for o in request.outputs}


def encode_response(
    request: InferenceRequest,
    response: InferenceResponse,
    shm: SharedMemoryAccess | None = None,
) -> tuple[bytes, int | None]:
    """Encode a response; the int is the JSON header length when binary data follows.

    Outputs asked for in shared memory are written to their region through ``shm``.
    """
    wanted = _binary_wanted(request)
    refs = shm_outputs(request) if request.outputs is not None else None
    tensors: list[OutputTensor] = []
    chunks: list[bytes] = []
    for t in response.outputs:
        ref = refs.get(t.name) if refs else None
        if ref is not None:
            where = f"output {t.name!r}"
            written = _shm(shm, where).write(ref, t.data, t.datatype, where)
            params = shm_output_parameters(ref, written)
            tensors.append(OutputTensor(t.name, t.datatype, list(t.shape), parameters=params))
            continue
        binary = wanted if isinstance(wanted, bool) else wanted.get(t.name, False)
        if binary:
            raw = array_to_bytes(t.data, t.datatype)
            chunks.append(raw)
            tensors.append(
                OutputTensor(
                    t.name, t.datatype, list(t.shape), parameters={"binary_data_size": len(raw)}
                )
            )
        else:
            tensors.append(
                OutputTensor(
                    t.name, t.datatype, list(t.shape), data=array_to_json(t.data, t.datatype)
                )
            )
    body = ResponseBody(
        model_name=response.model_name,
        model_version=response.model_version,
        outputs=tensors,
        id=response.id,
        parameters=response.parameters or None,
    )
    header = _encoder.encode(body)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def encode_json(value: Any) -> bytes:
    """Encode any JSON-able value with the shared encoder."""
    return _encoder.encode(value)
