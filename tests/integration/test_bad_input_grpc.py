"""Bad input over gRPC: INVALID_ARGUMENT or NOT_FOUND naming the problem, and the server serves on.

Malformed messages are built with tritonclient's own protobuf classes and
sent through the raw ``GRPCInferenceServiceStub`` so that nothing on the
client side checks them first; tritonclient's high-level client covers what
real users send. modelport's own generated protobuf modules are never
imported here: they define the same symbols as tritonclient's.
"""

from __future__ import annotations

import queue
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tritongrpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import Server

pytestmark = pytest.mark.integration

FAST_S = 2.0
RSS_SLACK_KB = 50 * 1024
MAX_ELEMENTS = 1 << 28

A = (np.arange(16, dtype=np.float32) * 0.5).reshape(1, 16)
B = np.arange(15, -1, -1, dtype=np.float32).reshape(1, 16)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


# ------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def channel(server: Server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_url) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> Any:
    return service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def triton(server: Server) -> Iterator[Any]:
    client = tritongrpc.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


def request(model: str = "add_sub", version: str = "") -> Any:
    return service_pb2.ModelInferRequest(model_name=model, model_version=version)


def add_input(
    req: Any, name: str, datatype: str, shape: list[int], raw: bytes | None = None
) -> Any:
    tensor = req.inputs.add(name=name, datatype=datatype, shape=shape)
    if raw is not None:
        req.raw_input_contents.append(raw)
    return tensor


def good_request() -> Any:
    req = request()
    add_input(req, "INPUT0", "FP32", [1, 16], A.tobytes())
    add_input(req, "INPUT1", "FP32", [1, 16], B.tobytes())
    return req


def refused(stub: Any, req: Any) -> Any:
    """Send ``req``; it must fail. Returns the grpc.RpcError (a grpc.Call)."""
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(req, timeout=10)
    return info.value


def assert_status(err: Any, code: grpc.StatusCode, *fragments: str) -> str:
    assert err.code() == code, (err.code(), err.details())
    message = err.details() or ""
    assert message.strip(), err
    for fragment in fragments:
        assert fragment.lower() in message.lower(), (fragment, message)
    return str(message)


def assert_serving(server: Server, stub: Any) -> None:
    """The process is alive and add_sub still computes correct values over gRPC."""
    assert server.alive(), server.log()[-4000:]
    resp = stub.ModelInfer(good_request(), timeout=10)
    outputs = {
        o.name: np.frombuffer(raw, dtype=np.float32).reshape(list(o.shape))
        for o, raw in zip(resp.outputs, resp.raw_output_contents, strict=True)
    }
    np.testing.assert_array_equal(outputs["OUTPUT0"], A + B)
    np.testing.assert_array_equal(outputs["OUTPUT1"], A - B)


def rss_kb(server: Server) -> int:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc status")


def bytes_elements(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def triton_inputs(datatype0: str = "FP32") -> list[Any]:
    i0 = tritongrpc.InferInput("INPUT0", [1, 16], datatype0)
    i0.set_data_from_numpy(A.astype(np.int32) if datatype0 == "INT32" else A)
    i1 = tritongrpc.InferInput("INPUT1", [1, 16], "FP32")
    i1.set_data_from_numpy(B)
    return [i0, i1]


# ------------------------------------------------------ models and versions


@pytest.mark.parametrize(
    ("model", "version", "fragment"),
    [
        ("no_such_model", "", "no_such_model"),
        ("no_such_model", "1", "no_such_model"),
        ("", "", "model"),
        ("..", "", ".."),
        ("../add_sub", "", "../add_sub"),
        ("add_sub", "3", "3"),
        ("add_sub", "0", "0"),
        ("add_sub", "abc", "abc"),
        ("add_sub", "-1", "-1"),
    ],
)
def test_unknown_model_or_version_is_not_found(
    server: Server, stub: Any, model: str, version: str, fragment: str
) -> None:
    req = good_request()
    req.model_name, req.model_version = model, version
    assert_status(refused(stub, req), NOT_FOUND, fragment)
    assert_serving(server, stub)


# ModelReady is the exception: an unknown model is simply not ready (ready=false),
# which is what tritonclient's is_model_ready expects; test_grpc_client covers it.
@pytest.mark.parametrize("rpc", ["ModelMetadata", "ModelConfig"])
def test_unknown_model_metadata_is_not_found(server: Server, stub: Any, rpc: str) -> None:
    message_class = getattr(service_pb2, f"{rpc}Request")
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, rpc)(message_class(name="no_such_model"), timeout=10)
    assert_status(info.value, NOT_FOUND, "no_such_model")
    assert_serving(server, stub)


def test_unknown_model_via_tritonclient(server: Server, stub: Any, triton: Any) -> None:
    with pytest.raises(InferenceServerException) as info:
        triton.infer("no_such_model", triton_inputs())
    assert info.value.status() == str(NOT_FOUND)
    assert "no_such_model" in (info.value.message() or "")
    assert_serving(server, stub)


@pytest.mark.parametrize(
    ("model", "reason"), [("broken", "onnx"), ("bad_config", "batch_key"), ("two_configs", "pbtxt")]
)
def test_model_that_failed_to_load_says_why(
    server: Server, stub: Any, model: str, reason: str
) -> None:
    for version in ("", "1"):
        err = refused(stub, request(model, version))
        assert err.code() not in (
            grpc.StatusCode.OK,
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.UNKNOWN,
            grpc.StatusCode.INTERNAL,
        ), (err.code(), err.details())
        assert model in err.details(), err.details()
        assert reason in err.details().lower(), err.details()
    assert_serving(server, stub)


# -------------------------------------------- inputs against the signature


def _missing_input() -> Any:
    req = request()
    add_input(req, "INPUT0", "FP32", [1, 16], A.tobytes())
    return req


def _unknown_input() -> Any:
    req = good_request()
    add_input(req, "INPUT9", "FP32", [1, 16], A.tobytes())
    return req


def _duplicate_input() -> Any:
    req = good_request()
    add_input(req, "INPUT0", "FP32", [1, 16], A.tobytes())
    return req


def _wrong_datatype() -> Any:
    req = request()
    add_input(req, "INPUT0", "INT32", [1, 16], A.astype(np.int32).tobytes())
    add_input(req, "INPUT1", "FP32", [1, 16], B.tobytes())
    return req


def _unknown_datatype() -> Any:
    req = good_request()
    req.inputs[0].datatype = "FP128"
    return req


def _unknown_output() -> Any:
    req = good_request()
    req.outputs.add(name="OUTPUT9")
    return req


def _duplicate_output() -> Any:
    req = good_request()
    req.outputs.add(name="OUTPUT0")
    req.outputs.add(name="OUTPUT0")
    return req


def _batch_disagreement() -> Any:
    req = request()
    add_input(req, "INPUT0", "FP32", [1, 16], A.tobytes())
    add_input(req, "INPUT1", "FP32", [2, 16], B.tobytes() * 2)
    return req


def _batch_over_max() -> Any:
    req = request()
    add_input(req, "INPUT0", "FP32", [65, 16], A.tobytes() * 65)
    add_input(req, "INPUT1", "FP32", [65, 16], B.tobytes() * 65)
    return req


def _wrong_rank() -> Any:
    req = request()
    add_input(req, "INPUT0", "FP32", [16], A.tobytes())
    add_input(req, "INPUT1", "FP32", [16], B.tobytes())
    return req


@pytest.mark.parametrize(
    ("build", "code", "fragments"),
    [
        pytest.param(_missing_input, INVALID, ("missing", "INPUT1"), id="missing-input"),
        pytest.param(_unknown_input, INVALID, ("unknown input", "INPUT9"), id="unknown-input"),
        pytest.param(_duplicate_input, INVALID, ("INPUT0", "more than once"), id="duplicate"),
        pytest.param(_wrong_datatype, INVALID, ("INPUT0", "INT32", "FP32"), id="wrong-datatype"),
        pytest.param(_unknown_datatype, INVALID, ("FP128",), id="unknown-datatype"),
        pytest.param(_unknown_output, INVALID, ("OUTPUT9",), id="unknown-output"),
        pytest.param(_duplicate_output, INVALID, ("OUTPUT0", "more than once"), id="dup-output"),
        pytest.param(_batch_disagreement, INVALID, ("batch size",), id="batch-disagreement"),
        pytest.param(_batch_over_max, INVALID, ("65", "max_batch_size"), id="batch-over-max"),
        pytest.param(_wrong_rank, INVALID, ("INPUT0", "shape"), id="wrong-rank"),
    ],
)
def test_inputs_that_disagree_with_the_signature(
    server: Server,
    stub: Any,
    build: Callable[[], Any],
    code: grpc.StatusCode,
    fragments: tuple[str, ...],
) -> None:
    assert_status(refused(stub, build()), code, *fragments)
    assert_serving(server, stub)


def test_wrong_datatype_via_tritonclient(server: Server, stub: Any, triton: Any) -> None:
    with pytest.raises(InferenceServerException) as info:
        triton.infer("add_sub", triton_inputs("INT32"))
    assert info.value.status() == str(INVALID)
    message = info.value.message() or ""
    assert "INPUT0" in message
    assert "INT32" in message
    assert_serving(server, stub)


# ------------------------------------------------- raw and typed contents


def _raw_short() -> Any:
    req = good_request()
    req.raw_input_contents[1] = B.tobytes()[:60]
    return req


def _raw_long() -> Any:
    req = good_request()
    req.raw_input_contents[1] = B.tobytes() + b"\0" * 4
    return req


def _raw_empty() -> Any:
    req = good_request()
    req.raw_input_contents[0] = b""
    return req


def _raw_too_few() -> Any:
    req = good_request()
    del req.raw_input_contents[1]
    return req


def _raw_too_many() -> Any:
    req = good_request()
    req.raw_input_contents.append(A.tobytes())
    return req


def _raw_without_inputs() -> Any:
    req = request()
    req.raw_input_contents.append(A.tobytes())
    return req


def _raw_and_typed() -> Any:
    req = good_request()
    req.inputs[0].contents.fp32_contents.extend(A.ravel().tolist())
    return req


def _typed(values0: list[float], values1: list[float] | None = None) -> Any:
    req = request()
    add_input(req, "INPUT0", "FP32", [1, 16]).contents.fp32_contents.extend(values0)
    in1 = add_input(req, "INPUT1", "FP32", [1, 16])
    if values1 is not None:
        in1.contents.fp32_contents.extend(values1)
    return req


def _typed_wrong_field() -> Any:
    req = request()
    add_input(req, "INPUT0", "FP32", [1, 16]).contents.fp32_contents.extend([1.0] * 16)
    add_input(req, "INPUT1", "FP32", [1, 16]).contents.int_contents.extend([1] * 16)
    return req


def _one_typed(model: str, datatype: str, field: str, values: list[Any]) -> Callable[[], Any]:
    def build() -> Any:
        req = request(model)
        tensor = add_input(req, "INPUT0", datatype, [1, len(values)])
        getattr(tensor.contents, field).extend(values)
        return req

    return build


def _one_raw(model: str, datatype: str, raw: bytes, shape: list[int]) -> Callable[[], Any]:
    def build() -> Any:
        req = request(model)
        add_input(req, "INPUT0", datatype, shape, raw)
        return req

    return build


@pytest.mark.parametrize(
    ("build", "fragments"),
    [
        pytest.param(_raw_short, ("INPUT1", "64", "60"), id="raw-too-short"),
        pytest.param(_raw_long, ("INPUT1", "64", "68"), id="raw-too-long"),
        pytest.param(_raw_empty, ("INPUT0", "64", "0"), id="raw-empty"),
        pytest.param(_raw_too_few, ("raw_input_contents", "1", "2"), id="raw-count-too-few"),
        pytest.param(_raw_too_many, ("raw_input_contents", "3", "2"), id="raw-count-too-many"),
        pytest.param(_raw_without_inputs, ("raw_input_contents",), id="raw-without-inputs"),
        pytest.param(_raw_and_typed, ("INPUT0", "raw_input_contents"), id="raw-and-typed"),
        pytest.param(lambda: _typed([1.0] * 16, [1.0] * 15), ("INPUT1", "16", "15"), id="typed-15"),
        pytest.param(lambda: _typed([1.0] * 16, [1.0] * 17), ("INPUT1", "16", "17"), id="typed-17"),
        pytest.param(lambda: _typed([1.0] * 16), ("INPUT1", "no data"), id="typed-missing"),
        pytest.param(_typed_wrong_field, ("INPUT1", "fp32_contents"), id="typed-wrong-field"),
        pytest.param(
            _one_typed("identity_uint8", "UINT8", "uint_contents", [1, 2, 3, 300]),
            ("INPUT0", "UINT8", "range"),
            id="300-for-uint8",
        ),
        pytest.param(
            _one_typed("identity_int8", "INT8", "int_contents", [1, 2, 3, -200]),
            ("INPUT0", "INT8", "range"),
            id="-200-for-int8",
        ),
        pytest.param(
            _one_typed("identity_int16", "INT16", "int_contents", [1, 2, 3, 40000]),
            ("INPUT0", "INT16", "range"),
            id="40000-for-int16",
        ),
        pytest.param(
            _one_typed("identity_fp16", "FP16", "fp32_contents", [1.0, 2.0, 3.0, 4.0]),
            ("INPUT0", "FP16", "raw_input_contents"),
            id="fp16-typed",
        ),
        pytest.param(
            _one_raw(
                "identity_bytes",
                "BYTES",
                bytes_elements(b"a", b"b", b"c") + struct.pack("<I", 1000) + b"d",
                [1, 4],
            ),
            ("INPUT0", "1000"),
            id="bytes-prefix-past-end",
        ),
        pytest.param(
            _one_raw("identity_bytes", "BYTES", bytes_elements(b"a", b"b", b"c"), [1, 4]),
            ("INPUT0",),
            id="bytes-one-short",
        ),
        pytest.param(
            _one_raw(
                "identity_bytes", "BYTES", bytes_elements(b"a", b"b", b"c", b"d") + b"zz", [1, 4]
            ),
            ("INPUT0", "2"),
            id="bytes-left-over",
        ),
        pytest.param(
            _one_raw("identity_bytes", "BYTES", struct.pack("<I", 0xFFFFFFFF) * 4, [1, 4]),
            ("INPUT0",),
            id="bytes-prefix-4GiB",
        ),
    ],
)
def test_bad_tensor_contents(
    server: Server, stub: Any, build: Callable[[], Any], fragments: tuple[str, ...]
) -> None:
    assert_status(refused(stub, build()), INVALID, *fragments)
    assert_serving(server, stub)


# ------------------------------------------------------------- absurd shapes


def _absurd_requests(shape: list[int]) -> list[tuple[str, Any]]:
    raw = request()
    add_input(raw, "INPUT0", "FP32", shape, b"\0" * 4)
    add_input(raw, "INPUT1", "FP32", [1, 16], B.tobytes())
    typed = request()
    add_input(typed, "INPUT0", "FP32", shape).contents.fp32_contents.append(1.0)
    add_input(typed, "INPUT1", "FP32", [1, 16]).contents.fp32_contents.extend([1.0] * 16)
    raw_bytes = request("identity_bytes")
    add_input(raw_bytes, "INPUT0", "BYTES", shape, bytes_elements(b"a"))
    typed_bytes = request("identity_bytes")
    add_input(typed_bytes, "INPUT0", "BYTES", shape).contents.bytes_contents.append(b"a")
    return [("raw", raw), ("typed", typed), ("raw-bytes", raw_bytes), ("typed-bytes", typed_bytes)]


@pytest.mark.parametrize(
    "shape",
    [[1_000_000_000_000], [100_000, 100_000, 100_000], [2**62, 2**62], [2**63 - 1]],
    ids=lambda s: "x".join(map(str, s)),
)
def test_absurd_shape_is_refused_fast_without_allocating(
    server: Server, stub: Any, shape: list[int]
) -> None:
    before = rss_kb(server)
    for kind, req in _absurd_requests(shape):
        start = time.monotonic()
        err = refused(stub, req)
        elapsed = time.monotonic() - start
        assert_status(err, INVALID, "INPUT0", "shape")
        assert elapsed < FAST_S, (kind, elapsed)
    after = rss_kb(server)
    assert after - before < RSS_SLACK_KB, (before, after)
    assert_serving(server, stub)


def test_largest_allowed_element_count_with_no_data_is_refused_without_allocating(
    server: Server, stub: Any
) -> None:
    before = rss_kb(server)
    for kind, req in _absurd_requests([MAX_ELEMENTS // 4, 4]):
        start = time.monotonic()
        err = refused(stub, req)
        elapsed = time.monotonic() - start
        assert_status(err, INVALID, "INPUT0")
        assert elapsed < FAST_S, (kind, elapsed)
    assert rss_kb(server) - before < RSS_SLACK_KB
    assert_serving(server, stub)


@pytest.mark.parametrize(
    "shape", [[2**62, 2**62, 0], [0, 2**62], [0, 2**63 - 1]], ids=lambda s: "x".join(map(str, s))
)
def test_zero_element_shape_with_absurd_dims_is_invalid_argument(
    server: Server, stub: Any, shape: list[int]
) -> None:
    """No elements, so no element limit trips, but such a shape is still nonsense."""
    raw = request("identity_fp32")
    add_input(raw, "INPUT0", "FP32", shape, b"")
    typed = request("identity_fp32")
    add_input(typed, "INPUT0", "FP32", shape)
    raw_bytes = request("identity_bytes")
    add_input(raw_bytes, "INPUT0", "BYTES", shape, b"")
    for req in (raw, typed, raw_bytes):
        assert_status(refused(stub, req), INVALID, "INPUT0", "shape")
    assert_serving(server, stub)


@pytest.mark.parametrize("shape", [[-1, 16], [1, -16], [-(2**63), 1]], ids=str)
def test_negative_dimension_is_invalid_argument(
    server: Server, stub: Any, shape: list[int]
) -> None:
    req = request()
    add_input(req, "INPUT0", "FP32", shape, A.tobytes())
    add_input(req, "INPUT1", "FP32", [1, 16], B.tobytes())
    assert_status(refused(stub, req), INVALID, "INPUT0", "shape")
    assert_serving(server, stub)


# ---------------------------------------------------- request parameters


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sequence_id": 7},
        {"sequence_id": "session-1"},
        {"sequence_id": 7, "sequence_start": True},
        {"sequence_id": 7, "sequence_end": True},
    ],
    ids=str,
)
def test_sequence_parameters_are_refused_via_tritonclient(
    server: Server, stub: Any, triton: Any, kwargs: dict[str, Any]
) -> None:
    with pytest.raises(InferenceServerException) as info:
        triton.infer("add_sub", triton_inputs(), **kwargs)
    assert info.value.status() == str(INVALID)
    assert "sequence" in (info.value.message() or "")
    assert_serving(server, stub)


@pytest.mark.parametrize(
    ("key", "kind", "value", "fragment"),
    [
        ("sequence_start", "bool_param", True, "sequence"),
        ("sequence_end", "bool_param", True, "sequence"),
        ("sequence_id", "uint64_param", 9, "sequence"),
        ("priority", "int64_param", -1, "priority"),
        ("priority", "string_param", "high", "priority"),
        ("timeout", "double_param", 1.5, "timeout"),
    ],
)
def test_bad_request_parameters(
    server: Server, stub: Any, key: str, kind: str, value: Any, fragment: str
) -> None:
    req = good_request()
    setattr(req.parameters[key], kind, value)
    assert_status(refused(stub, req), INVALID, fragment)
    assert_serving(server, stub)


# ---------------------------------------------------------------- streams


def test_stream_answers_errors_inline_and_carries_on(
    server: Server, stub: Any, triton: Any
) -> None:
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    triton.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        triton.async_stream_infer("no_such_model", triton_inputs(), request_id="a")
        triton.async_stream_infer("add_sub", triton_inputs("INT32"), request_id="b")
        triton.async_stream_infer("add_sub", triton_inputs(), request_id="c")
        got = [results.get(timeout=10) for _ in range(3)]
    finally:
        triton.stop_stream()
    errors = sorted(str(e.message()) for _, e in got if e is not None)
    assert len(errors) == 2, got
    assert any("no_such_model" in e for e in errors), errors
    assert any("INPUT0" in e and "INT32" in e for e in errors), errors
    (ok,) = [r for r, e in got if e is None]
    np.testing.assert_array_equal(ok.as_numpy("OUTPUT0"), A + B)
    assert_serving(server, stub)


# ------------------------------------------------ messages that do not parse


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\x0a\x02\xff\xfe", id="model-name-not-utf8"),
        pytest.param(b"\xff\xff\xff\xff\xff", id="garbage"),
        pytest.param(b"\x0a\x10add", id="truncated-string"),
    ],
)
def test_undecodable_message_is_invalid_argument(
    server: Server, stub: Any, channel: grpc.Channel, payload: bytes
) -> None:
    def identity(b: bytes) -> bytes:
        return b

    infer = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=identity,
        response_deserializer=identity,
    )
    with pytest.raises(grpc.RpcError) as info:
        infer(payload, timeout=10)
    assert_status(info.value, INVALID)
    assert_serving(server, stub)
