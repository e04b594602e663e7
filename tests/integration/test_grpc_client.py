"""The standard Triton gRPC client (tritonclient.grpc) against a real modelport server.

tritonclient's generated protobuf code and modelport's own define the same
``inference.*`` messages under different file names, so the two cannot be
imported into one process: ``make test`` runs the unit tests (which import
modelport's protos) and these integration tests in separate processes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import Server, start_server, stop_server
from tests.integration.models import ONNX_TYPES, identity_model

pytestmark = pytest.mark.integration


DATATYPES = list(ONNX_TYPES)

NUMPY = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[Any]:
    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


# ------------------------------------------------------------------- helpers


def add_sub_inputs(batch: int = 1, seed: int = 0) -> tuple[list[Any], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.uniform(-100, 100, size=(batch, 16)).astype(np.float32)
    b = rng.uniform(-100, 100, size=(batch, 16)).astype(np.float32)
    inputs = [
        grpcclient.InferInput("INPUT0", [batch, 16], "FP32"),
        grpcclient.InferInput("INPUT1", [batch, 16], "FP32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs, a, b


def assert_add_sub(result: Any, a: np.ndarray, b: np.ndarray) -> None:
    out0 = result.as_numpy("OUTPUT0")
    out1 = result.as_numpy("OUTPUT1")
    assert out0 is not None and out1 is not None
    assert out0.dtype == np.float32 and out1.dtype == np.float32
    assert out0.shape == a.shape and out1.shape == a.shape
    np.testing.assert_array_equal(out0, a + b)
    np.testing.assert_array_equal(out1, a - b)


def identity_values(datatype: str) -> np.ndarray:
    """Eight values of ``datatype`` in shape [2, 4], including its edge cases."""
    if datatype == "BOOL":
        return np.array([[True, False, True, True], [False, False, True, False]])
    if datatype == "BYTES":
        items = [
            b"hello",
            "h\u00e9llo w\u00f6rld \u2713".encode(),
            b"",
            "\u65e5\u672c\u8a9e".encode(),
            b"with space",
            b"a",
            "\U0001f600 emoji".encode(),
            b"0123456789" * 10,
        ]
        return np.array(items, dtype=np.object_).reshape(2, 4)
    dtype = NUMPY[datatype]
    if datatype.startswith("FP"):
        finfo = np.finfo(dtype)
        values: list[Any] = [
            0.1,
            -2.5,
            float(finfo.max),
            float(finfo.tiny),
            float(finfo.smallest_subnormal),
            np.inf,
            -np.inf,
            -0.0,
        ]
        return np.array(values, dtype=dtype).reshape(2, 4)
    info = np.iinfo(dtype)
    lo, hi = int(info.min), int(info.max)
    return np.array([lo, hi, 0, 1, lo + 1, hi - 1, 42, hi // 2], dtype=dtype).reshape(2, 4)


def assert_identical(got: np.ndarray | None, sent: np.ndarray, datatype: str) -> None:
    assert got is not None
    assert got.shape == sent.shape
    if datatype == "BYTES":
        assert got.dtype == np.object_
        assert got.ravel().tolist() == sent.ravel().tolist()
        return
    assert got.dtype == sent.dtype, (got.dtype, sent.dtype)
    if datatype.startswith("FP"):
        bits = {2: np.uint16, 4: np.uint32, 8: np.uint64}[sent.dtype.itemsize]
        np.testing.assert_array_equal(got.view(bits), sent.view(bits))
    else:
        np.testing.assert_array_equal(got, sent)


def grpc_code(exc: InferenceServerException) -> str:
    return str(exc.status())


# -------------------------------------------------------------------- health


def test_server_live_and_ready(client: Any) -> None:
    assert client.is_server_live() is True
    assert client.is_server_ready() is True


def test_server_metadata(client: Any) -> None:
    meta = client.get_server_metadata()
    assert meta.name == "modelport"
    assert meta.version
    for ext in ("binary_tensor_data", "model_repository", "model_configuration", "statistics"):
        assert ext in meta.extensions
    as_json = client.get_server_metadata(as_json=True)
    assert as_json["name"] == "modelport"
    assert "statistics" in as_json["extensions"]


def test_model_ready(client: Any) -> None:
    for name in ("add_sub", "add_sub_pbtxt", "breast_cancer", "digits", "identity_bytes"):
        assert client.is_model_ready(name) is True
    assert client.is_model_ready("add_sub", "1") is True
    assert client.is_model_ready("add_sub", "2") is True
    for broken in ("broken", "bad_config", "two_configs"):
        assert client.is_model_ready(broken) is False


def test_model_ready_unknown_model_is_false(client: Any) -> None:
    """Triton answers ModelReady for a model it does not know with ready=false, no error."""
    assert client.is_model_ready("no_such_model") is False
    assert client.is_model_ready("add_sub", "3") is False


def test_grpc_health_check(server: Server) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


# ------------------------------------------------------------------ metadata


def test_model_metadata_add_sub(client: Any) -> None:
    meta = client.get_model_metadata("add_sub")
    assert meta.name == "add_sub"
    assert list(meta.versions) == ["1", "2"]
    assert meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("INPUT0", "FP32", [-1, 16]),
        ("INPUT1", "FP32", [-1, 16]),
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("OUTPUT0", "FP32", [-1, 16]),
        ("OUTPUT1", "FP32", [-1, 16]),
    ]
    one = client.get_model_metadata("add_sub", model_version="1", as_json=True)
    assert one["versions"] == ["1"]


def test_model_metadata_examples(client: Any) -> None:
    meta = client.get_model_metadata("digits")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("image", "FP32", [-1, 64])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("label", "INT64", [-1, 1]),
        ("probabilities", "FP32", [-1, 10]),
    ]


@pytest.mark.parametrize("datatype", DATATYPES)
def test_model_metadata_identity(client: Any, datatype: str) -> None:
    meta = client.get_model_metadata(f"identity_{datatype.lower()}")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("INPUT0", datatype, [-1, 4])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("OUTPUT0", datatype, [-1, 4])
    ]


def test_model_metadata_unknown_model(client: Any) -> None:
    with pytest.raises(InferenceServerException, match="no_such_model") as info:
        client.get_model_metadata("no_such_model")
    assert grpc_code(info.value) == "StatusCode.NOT_FOUND"


def _dims(tensors: list[dict[str, Any]]) -> list[tuple[str, str, list[int]]]:
    # Proto3 JSON writes int64 as strings; tritonclient says callers convert them.
    return [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in tensors]


def test_model_config_add_sub(client: Any) -> None:
    config = client.get_model_config("add_sub", as_json=True)["config"]
    assert config["name"] == "add_sub"
    assert config["platform"] == "onnxruntime_onnx"
    assert config["backend"] == "onnxruntime"
    assert config["max_batch_size"] == 64
    assert _dims(config["input"]) == [("INPUT0", "TYPE_FP32", [16]), ("INPUT1", "TYPE_FP32", [16])]
    assert _dims(config["output"]) == [
        ("OUTPUT0", "TYPE_FP32", [16]),
        ("OUTPUT1", "TYPE_FP32", [16]),
    ]


def test_model_config_pbtxt(client: Any) -> None:
    config = client.get_model_config("add_sub_pbtxt", as_json=True)["config"]
    assert config["name"] == "add_sub_pbtxt"
    assert config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 8
    assert _dims(config["input"]) == [("INPUT0", "TYPE_FP32", [16]), ("INPUT1", "TYPE_FP32", [16])]
    (group,) = config["instance_group"]
    assert group["count"] == 2
    assert group["kind"] == "KIND_CPU"
    # The protobuf form carries the same values.
    message = client.get_model_config("add_sub_pbtxt").config
    assert message.max_batch_size == 8
    assert message.instance_group[0].count == 2
    assert list(message.input[0].dims) == [16]


def test_model_config_unknown_model(client: Any) -> None:
    with pytest.raises(InferenceServerException, match="no_such_model") as info:
        client.get_model_config("no_such_model")
    assert grpc_code(info.value) == "StatusCode.NOT_FOUND"


# --------------------------------------------------------------------- infer


def test_infer_add_sub(client: Any) -> None:
    inputs, a, b = add_sub_inputs(batch=3)
    result = client.infer("add_sub", inputs)
    response = result.get_response()
    assert response.model_name == "add_sub"
    assert response.model_version == "2"
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("OUTPUT0", "FP32", [3, 16]),
        ("OUTPUT1", "FP32", [3, 16]),
    ]
    assert_add_sub(result, a, b)


def test_infer_pbtxt_model(client: Any) -> None:
    inputs, a, b = add_sub_inputs(batch=8, seed=3)
    result = client.infer("add_sub_pbtxt", inputs)
    assert result.get_response().model_name == "add_sub_pbtxt"
    assert_add_sub(result, a, b)


def test_requested_output_only(client: Any) -> None:
    inputs, a, b = add_sub_inputs(batch=2, seed=4)
    result = client.infer("add_sub", inputs, outputs=[grpcclient.InferRequestedOutput("OUTPUT1")])
    assert [o.name for o in result.get_response().outputs] == ["OUTPUT1"]
    assert result.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_unknown_requested_output(client: Any) -> None:
    inputs, _, _ = add_sub_inputs()
    with pytest.raises(InferenceServerException, match="OUTPUT9") as info:
        client.infer("add_sub", inputs, outputs=[grpcclient.InferRequestedOutput("OUTPUT9")])
    assert grpc_code(info.value) == "StatusCode.INVALID_ARGUMENT"


def test_request_id_echoed(client: Any) -> None:
    inputs, a, b = add_sub_inputs(seed=5)
    result = client.infer("add_sub", inputs, request_id="grpc-req-\u00e9-1")
    assert result.get_response().id == "grpc-req-\u00e9-1"
    assert_add_sub(result, a, b)
    inputs, _, _ = add_sub_inputs()
    assert client.infer("add_sub", inputs).get_response().id == ""


@pytest.mark.parametrize("version", ["1", "2"])
def test_explicit_model_version(client: Any, version: str) -> None:
    inputs, a, b = add_sub_inputs(batch=2, seed=int(version))
    result = client.infer("add_sub", inputs, model_version=version)
    assert result.get_response().model_version == version
    assert_add_sub(result, a, b)


def test_unknown_version_and_model(client: Any) -> None:
    inputs, _, _ = add_sub_inputs()
    with pytest.raises(InferenceServerException) as info:
        client.infer("add_sub", inputs, model_version="7")
    assert grpc_code(info.value) == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException, match="no_such_model") as info:
        client.infer("no_such_model", inputs)
    assert grpc_code(info.value) == "StatusCode.NOT_FOUND"


@pytest.mark.parametrize("broken", ["broken", "bad_config", "two_configs"])
def test_infer_on_unavailable_model(client: Any, broken: str) -> None:
    inputs, _, _ = add_sub_inputs()
    with pytest.raises(InferenceServerException, match=broken) as info:
        client.infer(broken, inputs)
    assert grpc_code(info.value) == "StatusCode.UNAVAILABLE"


def test_priority_and_timeout_accepted(client: Any) -> None:
    inputs, a, b = add_sub_inputs(batch=2, seed=11)
    result = client.infer("add_sub", inputs, priority=1, timeout=1_000_000)
    assert_add_sub(result, a, b)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_grpc_compression(client: Any, algorithm: str) -> None:
    inputs, a, b = add_sub_inputs(batch=6, seed=31)
    result = client.infer("add_sub", inputs, request_id=algorithm, compression_algorithm=algorithm)
    assert result.get_response().id == algorithm
    assert_add_sub(result, a, b)


def test_over_max_batch_size(client: Any) -> None:
    inputs, _, _ = add_sub_inputs(batch=9)
    with pytest.raises(InferenceServerException, match="max_batch_size") as info:
        client.infer("add_sub_pbtxt", inputs)
    assert grpc_code(info.value) == "StatusCode.INVALID_ARGUMENT"


@pytest.mark.parametrize("datatype", DATATYPES)
def test_identity_round_trip(client: Any, datatype: str) -> None:
    sent = identity_values(datatype)
    inp = grpcclient.InferInput("INPUT0", list(sent.shape), datatype)
    inp.set_data_from_numpy(sent)
    result = client.infer(f"identity_{datatype.lower()}", [inp])
    (meta,) = result.get_response().outputs
    assert (meta.name, meta.datatype, list(meta.shape)) == ("OUTPUT0", datatype, [2, 4])
    assert_identical(result.as_numpy("OUTPUT0"), sent, datatype)


def test_identity_bytes_non_utf8_is_never_silently_altered(client: Any) -> None:
    """Raw BYTES come back exactly, or the request is refused; never other bytes."""
    sent = np.array([b"\xff\xfe raw", b"\x80", b"ok", b""] * 2, dtype=np.object_).reshape(2, 4)
    inp = grpcclient.InferInput("INPUT0", [2, 4], "BYTES")
    inp.set_data_from_numpy(sent)
    try:
        result = client.infer("identity_bytes", [inp])
    except InferenceServerException as exc:
        assert grpc_code(exc) == "StatusCode.INVALID_ARGUMENT"
        assert "UTF-8" in str(exc.message())
    else:
        assert_identical(result.as_numpy("OUTPUT0"), sent, "BYTES")


def test_identity_nan_round_trip(client: Any) -> None:
    sent = np.array([[np.nan, 1, 2, 3]], dtype=np.float32)
    inp = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    inp.set_data_from_numpy(sent)
    result = client.infer("identity_fp32", [inp])
    assert_identical(result.as_numpy("OUTPUT0"), sent, "FP32")


def test_breast_cancer_and_digits(client: Any) -> None:
    import json

    from modelport.examples import repository_path

    samples = repository_path().parent / "samples"
    for name, label in (("breast_cancer", 1), ("digits", 5)):
        (spec,) = json.loads((samples / f"{name}.json").read_text())["inputs"]
        inp = grpcclient.InferInput(spec["name"], spec["shape"], spec["datatype"])
        inp.set_data_from_numpy(np.array(spec["data"], dtype=np.float32).reshape(spec["shape"]))
        result = client.infer(name, [inp])
        out = result.as_numpy("label")
        assert out is not None
        assert out.dtype == np.int64
        assert out.tolist() == [[label]]


# ----------------------------------------------------------------- statistics


def test_inference_statistics(client: Any) -> None:
    def stats() -> Any:
        reply = client.get_inference_statistics(model_name="add_sub", model_version="2")
        (entry,) = reply.model_stats
        assert (entry.name, entry.version) == ("add_sub", "2")
        return entry

    before = stats()
    for seed in range(3):
        inputs, a, b = add_sub_inputs(batch=5, seed=seed)
        assert_add_sub(client.infer("add_sub", inputs, model_version="2"), a, b)
    after = stats()
    assert after.inference_stats.success.count == before.inference_stats.success.count + 3
    assert after.inference_stats.success.ns > before.inference_stats.success.ns
    assert after.inference_stats.fail.count == before.inference_stats.fail.count
    assert after.inference_stats.compute_infer.count == (
        before.inference_stats.compute_infer.count + 3
    )
    assert after.inference_count == before.inference_count + 15
    assert after.execution_count == before.execution_count + 3
    assert after.last_inference > 0
    by_size = {b.batch_size: b for b in after.batch_stats}
    assert 5 in by_size
    assert by_size[5].compute_infer.count >= 3

    as_json = client.get_inference_statistics(model_name="add_sub", as_json=True)
    assert [(s["name"], s["version"]) for s in as_json["model_stats"]] == [
        ("add_sub", "1"),
        ("add_sub", "2"),
    ]


def test_statistics_unknown_model(client: Any) -> None:
    with pytest.raises(InferenceServerException, match="no_such_model") as info:
        client.get_inference_statistics(model_name="no_such_model")
    assert grpc_code(info.value) == "StatusCode.NOT_FOUND"


# ------------------------------------------------------------------ streaming


class Collector:
    """Gathers stream callbacks from tritonclient's reader thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.results: list[Any] = []
        self.errors: list[InferenceServerException] = []

    def __call__(self, result: Any, error: InferenceServerException | None) -> None:
        with self.lock:
            if error is not None:
                self.errors.append(error)
            else:
                self.results.append(result)

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.results) + len(self.errors) >= count:
                    return
            time.sleep(0.01)
        raise AssertionError(
            f"got {len(self.results)} results and {len(self.errors)} errors of {count}"
        )


def test_stream_infer(server: Server) -> None:
    collector = Collector()
    expected: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        c.start_stream(callback=collector)
        try:
            for i in range(20):
                inputs, a, b = add_sub_inputs(batch=1 + i % 4, seed=100 + i)
                request_id = f"stream-{i}"
                expected[request_id] = (a, b)
                c.async_stream_infer("add_sub", inputs, request_id=request_id)
            collector.wait_for(20)
        finally:
            c.stop_stream()
    assert collector.errors == []
    seen = set()
    for result in collector.results:
        response = result.get_response()
        assert response.model_name == "add_sub"
        assert response.model_version == "2"
        assert response.id in expected
        seen.add(response.id)
        a, b = expected[response.id]
        assert_add_sub(result, a, b)
    assert seen == set(expected)


def test_stream_error_answers_one_request(server: Server) -> None:
    collector = Collector()
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        c.start_stream(callback=collector)
        try:
            for i in range(5):
                inputs, _, _ = add_sub_inputs(seed=i)
                outputs = [grpcclient.InferRequestedOutput("OUTPUT9")] if i == 2 else None
                c.async_stream_infer("add_sub", inputs, request_id=f"s{i}", outputs=outputs)
            collector.wait_for(5)
        finally:
            c.stop_stream()
    assert len(collector.errors) == 1
    assert "OUTPUT9" in str(collector.errors[0])
    assert sorted(r.get_response().id for r in collector.results) == ["s0", "s1", "s3", "s4"]


# --------------------------------------------------------------- large tensor


@pytest.fixture(scope="module")
def big_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with an FP32 identity model that does not batch: any [n, 4] fits."""
    repo = tmp_path_factory.mktemp("big_repo")
    model_dir = repo / "identity_big"
    (model_dir / "1").mkdir(parents=True)
    onnx.save(identity_model("FP32"), str(model_dir / "1" / "model.onnx"))
    (model_dir / "config.yaml").write_text("max_batch_size: 0\n")
    srv = start_server(repo, tmp_path_factory.mktemp("big_log") / "server.log")
    yield srv
    stop_server(srv)


def test_large_tensor_over_grpc(big_server: Server) -> None:
    rows = 750_000  # 3M FP32 elements: 12 MB each way, over gRPC's 4 MiB default
    sent = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    with grpcclient.InferenceServerClient(big_server.grpc_url) as c:
        inp = grpcclient.InferInput("INPUT0", [rows, 4], "FP32")
        inp.set_data_from_numpy(sent)
        result = c.infer("identity_big", [inp], client_timeout=60)
    got = result.as_numpy("OUTPUT0")
    assert got is not None
    assert got.shape == (rows, 4)
    np.testing.assert_array_equal(got, sent)
