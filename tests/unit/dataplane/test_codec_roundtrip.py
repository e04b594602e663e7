"""Every OIP datatype round-trips through JSON, the binary extension and gRPC."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from modelport.dataplane.codec import grpc_v2, json_v2
from modelport.dataplane.codec.tensors import (
    array_from_buffer,
    array_from_json,
    array_to_bytes,
    array_to_json,
    bf16_from_float,
    bf16_to_float,
)
from modelport.protos import grpc_service_pb2 as pb
from modelport.types import DTYPES, InferenceRequest, InferenceResponse, RequestedOutput, Tensor

NUMERIC = [d for d in DTYPES if d not in ("BYTES", "BF16")]
LIMIT = 1 << 20
shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5)


def arrays_of(datatype: str) -> st.SearchStrategy[np.ndarray[Any, Any]]:
    if datatype == "BYTES":
        return shapes.flatmap(
            lambda shape: st.lists(
                st.binary(max_size=12), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))
            ).map(lambda items: _object_array(items, shape))
        )
    if datatype == "BF16":
        return hnp.arrays(np.float32, shapes, elements=st.floats(-1e6, 1e6, width=32)).map(
            bf16_from_float
        )
    dtype = DTYPES[datatype]
    elements = st.floats(-1e4, 1e4, width=dtype.itemsize * 8) if dtype.kind == "f" else None
    return hnp.arrays(dtype, shapes, elements=elements)


def _object_array(items: list[bytes], shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out.reshape(shape)


def _equal(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))


@pytest.mark.parametrize("datatype", list(DTYPES))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_binary_round_trip(datatype: str, data: st.DataObject) -> None:
    array = data.draw(arrays_of(datatype))
    raw = array_to_bytes(array, datatype)
    back = array_from_buffer(memoryview(raw), datatype, array.shape, "t")
    assert _equal(array, back)


@pytest.mark.parametrize("datatype", [d for d in DTYPES if d != "BYTES"])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_json_round_trip(datatype: str, data: st.DataObject) -> None:
    array = data.draw(arrays_of(datatype))
    values = array_to_json(array, datatype)
    back = array_from_json(values, datatype, array.shape, "t")
    assert _equal(array, back)


@settings(max_examples=25, deadline=None)
@given(items=st.lists(st.text(max_size=8), min_size=1, max_size=6))
def test_json_round_trip_text_bytes(items: list[str]) -> None:
    array = _object_array([s.encode() for s in items], (len(items),))
    back = array_from_json(array_to_json(array, "BYTES"), "BYTES", array.shape, "t")
    assert _equal(array, back)


def test_bf16_rounds_to_nearest() -> None:
    values = np.array([1.0, -2.5, 3.140625, 1e-3], dtype=np.float32)
    assert np.allclose(bf16_to_float(bf16_from_float(values)), values, rtol=1 / 128)
    assert bf16_to_float(bf16_from_float(np.array([1.0], np.float32)))[0] == 1.0


@pytest.mark.parametrize("datatype", list(DTYPES))
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_http_request_response_round_trip(datatype: str, data: st.DataObject) -> None:
    """A binary request decodes to the same tensor; a binary response carries it back."""
    array = data.draw(arrays_of(datatype))
    raw = array_to_bytes(array, datatype)
    header = json_v2.encode_json(
        {
            "id": "r1",
            "inputs": [
                {
                    "name": "x",
                    "shape": list(array.shape),
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "x", "parameters": {"binary_data": True}}],
        }
    )
    req = json_v2.decode_request(header + raw, len(header), "m", None, LIMIT)
    assert req.id == "r1"
    assert _equal(array, req.inputs[0].data)
    response = InferenceResponse("m", "1", [Tensor("x", datatype, array.shape, array)], id="r1")
    body, hlen = json_v2.encode_response(req, response)
    assert hlen is not None
    meta = json_v2.msgspec.json.decode(body[:hlen])
    out = meta["outputs"][0]
    assert out["parameters"]["binary_data_size"] == len(raw)
    assert body[hlen:] == raw


@pytest.mark.parametrize("datatype", list(DTYPES))
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_grpc_raw_round_trip(datatype: str, data: st.DataObject) -> None:
    array = data.draw(arrays_of(datatype))
    msg = pb.ModelInferRequest(model_name="m", id="q")
    msg.inputs.add(name="x", datatype=datatype, shape=list(array.shape))
    msg.raw_input_contents.append(array_to_bytes(array, datatype))
    req = grpc_v2.decode_request(pb.ModelInferRequest.FromString(msg.SerializeToString()), LIMIT)
    assert _equal(array, req.inputs[0].data)
    reply = grpc_v2.encode_response(
        InferenceResponse("m", "1", [Tensor("x", datatype, array.shape, array)], id="q")
    )
    assert reply.id == "q"
    assert list(reply.outputs[0].shape) == list(array.shape)
    back = array_from_buffer(memoryview(reply.raw_output_contents[0]), datatype, array.shape, "o")
    assert _equal(array, back)


@pytest.mark.parametrize("datatype", [d for d in NUMERIC if d != "FP16"] + ["BYTES"])
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_grpc_typed_contents(datatype: str, data: st.DataObject) -> None:
    array = data.draw(arrays_of(datatype))
    msg = pb.ModelInferRequest(model_name="m")
    inp = msg.inputs.add(name="x", datatype=datatype, shape=list(array.shape))
    field = grpc_v2.CONTENTS_FIELD[datatype]
    getattr(inp.contents, field).extend(array.ravel().tolist())
    req = grpc_v2.decode_request(msg, LIMIT)
    assert _equal(array, req.inputs[0].data)


def test_json_response_defaults_to_json_data_and_respects_requested_binary() -> None:
    req = InferenceRequest("m", None, [], outputs=[RequestedOutput("a", {"binary_data": True})])
    a = np.arange(4, dtype=np.float32)
    b = np.arange(3, dtype=np.int64)
    resp = InferenceResponse(
        "m", "1", [Tensor("a", "FP32", (4,), a), Tensor("b", "INT64", (3,), b)]
    )
    body, hlen = json_v2.encode_response(req, resp)
    assert hlen is not None
    meta = json_v2.msgspec.json.decode(body[:hlen])
    assert meta["outputs"][1]["data"] == [0, 1, 2]
    assert body[hlen:] == a.tobytes()
    plain, none = json_v2.encode_response(InferenceRequest("m", None, []), resp)
    assert none is None
    assert json_v2.msgspec.json.decode(plain)["outputs"][0]["data"] == [0.0, 1.0, 2.0, 3.0]
