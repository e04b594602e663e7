"""Both codecs with tensors in shared memory: inputs read, outputs written, params shaped."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest

from modelport.dataplane.codec import grpc_v2, json_v2
from modelport.dataplane.sharedmemory import Registry, Session
from modelport.errors import InvalidRequest, Unsupported
from modelport.protos import grpc_service_pb2 as pb
from modelport.types import InferenceResponse, Tensor

DATA = np.arange(8, dtype=np.float32).reshape(2, 4)


@pytest.fixture
def shm(tmp_path: Path) -> Session:
    (tmp_path / "seg").write_bytes(DATA.tobytes() + b"\0" * 64)
    reg = Registry(shm_dir=str(tmp_path))
    reg.register(None, "in", "/seg", 0, 32)
    reg.register(None, "out", "/seg", 32, 64)
    return Session(reg, None, 1 << 20)


def shm_params(region: str, size: int, offset: int = 0) -> dict[str, object]:
    p: dict[str, object] = {"shared_memory_region": region, "shared_memory_byte_size": size}
    if offset:
        p["shared_memory_offset"] = offset
    return p


def test_json_input_and_output_in_shared_memory(shm: Session, tmp_path: Path) -> None:
    body = msgspec.json.encode(
        {
            "inputs": [
                {
                    "name": "X",
                    "datatype": "FP32",
                    "shape": [2, 4],
                    "parameters": shm_params("in", 32),
                }
            ],
            "outputs": [{"name": "Y", "parameters": shm_params("out", 32, 16)}],
        }
    )
    req = json_v2.decode_request(body, None, "m", None, 1 << 20, shm)
    np.testing.assert_array_equal(req.inputs[0].data, DATA)
    assert req.inputs[0].parameters == {}
    resp = InferenceResponse("m", "1", [Tensor("Y", "FP32", (2, 4), req.inputs[0].data * 2)])
    payload, hlen = json_v2.encode_response(req, resp, shm)
    assert hlen is None
    out = msgspec.json.decode(payload)["outputs"][0]
    assert "data" not in out
    assert out["parameters"] == shm_params("out", 32, 16)
    raw = (tmp_path / "seg").read_bytes()[48:80]
    np.testing.assert_array_equal(np.frombuffer(raw, np.float32).reshape(2, 4), DATA * 2)


def test_json_refusals(shm: Session) -> None:
    def decode(inp: dict[str, object], with_shm: bool = True) -> None:
        body = msgspec.json.encode({"inputs": [inp]})
        json_v2.decode_request(body, None, "m", None, 1 << 20, shm if with_shm else None)

    base = {"name": "X", "datatype": "FP32", "shape": [2, 4]}
    with pytest.raises(InvalidRequest, match="both"):
        decode({**base, "parameters": shm_params("in", 32), "data": [0] * 8})
    with pytest.raises(InvalidRequest, match="without shared_memory_region"):
        decode({**base, "parameters": {"shared_memory_byte_size": 32}, "data": [0] * 8})
    with pytest.raises(InvalidRequest, match="non-negative"):
        decode({**base, "parameters": {"shared_memory_region": "in"}})
    with pytest.raises(Unsupported):
        decode({**base, "parameters": shm_params("in", 32)}, with_shm=False)
    # The claimed shape is checked before any read.
    with pytest.raises(InvalidRequest, match="more than the limit"):
        decode({**base, "shape": [1 << 40], "parameters": shm_params("in", 32)})


def test_grpc_mixed_raw_and_shared_memory(shm: Session, tmp_path: Path) -> None:
    msg = pb.ModelInferRequest(model_name="m")
    a = msg.inputs.add(name="A", datatype="FP32", shape=[2, 4])
    a.parameters["shared_memory_region"].string_param = "in"
    a.parameters["shared_memory_byte_size"].int64_param = 32
    msg.inputs.add(name="B", datatype="FP32", shape=[2, 4])
    msg.raw_input_contents.append((DATA + 1).tobytes())  # B's: A has no raw entry
    y = msg.outputs.add(name="Y")
    y.parameters["shared_memory_region"].string_param = "out"
    y.parameters["shared_memory_byte_size"].int64_param = 32
    msg.outputs.add(name="Z")
    req = grpc_v2.decode_request(msg, 1 << 20, shm)
    np.testing.assert_array_equal(req.inputs[0].data, DATA)
    np.testing.assert_array_equal(req.inputs[1].data, DATA + 1)
    resp = InferenceResponse(
        "m", "1", [Tensor("Y", "FP32", (2, 4), DATA * 3), Tensor("Z", "FP32", (2, 4), DATA)]
    )
    out = grpc_v2.encode_response(resp, req, shm)
    assert out.raw_output_contents[0] == b"" and out.raw_output_contents[1] == DATA.tobytes()
    assert out.outputs[0].parameters["shared_memory_region"].string_param == "out"
    assert out.outputs[0].parameters["shared_memory_byte_size"].int64_param == 32
    raw = (tmp_path / "seg").read_bytes()[32:64]
    np.testing.assert_array_equal(np.frombuffer(raw, np.float32).reshape(2, 4), DATA * 3)
    # Every output in shared memory: no raw contents at all.
    only = InferenceResponse("m", "1", [Tensor("Y", "FP32", (2, 4), DATA)])
    req.outputs = req.outputs[:1] if req.outputs else None
    assert len(grpc_v2.encode_response(only, req, shm).raw_output_contents) == 0


def test_grpc_raw_count_must_match_the_inputs_not_in_shared_memory(shm: Session) -> None:
    msg = pb.ModelInferRequest(model_name="m")
    a = msg.inputs.add(name="A", datatype="FP32", shape=[2, 4])
    a.parameters["shared_memory_region"].string_param = "in"
    a.parameters["shared_memory_byte_size"].int64_param = 32
    msg.raw_input_contents.append(DATA.tobytes())
    with pytest.raises(InvalidRequest, match="raw_input_contents has 1 entries for 0 inputs"):
        grpc_v2.decode_request(msg, 1 << 20, shm)
