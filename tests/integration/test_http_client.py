"""The standard Triton HTTP client (tritonclient.http) against a real modelport server."""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from modelport.examples import repository_path
from tests.integration.conftest import Server
from tests.integration.models import ONNX_TYPES

pytestmark = pytest.mark.integration

SAMPLES = repository_path().parent / "samples"

DATATYPES = list(ONNX_TYPES)

FLOATS: dict[str, type[np.floating[Any]]] = {
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
INTEGERS: dict[str, type[np.integer[Any]]] = {
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
}


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(server.http_url, network_timeout=30.0)
    yield c
    c.close()


# ------------------------------------------------------------------- helpers


def add_sub_inputs(
    batch: int = 1, binary: bool = True, seed: int = 0
) -> tuple[list[httpclient.InferInput], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.uniform(-100, 100, size=(batch, 16)).astype(np.float32)
    b = rng.uniform(-100, 100, size=(batch, 16)).astype(np.float32)
    inputs = [
        httpclient.InferInput("INPUT0", [batch, 16], "FP32"),
        httpclient.InferInput("INPUT1", [batch, 16], "FP32"),
    ]
    inputs[0].set_data_from_numpy(a, binary_data=binary)
    inputs[1].set_data_from_numpy(b, binary_data=binary)
    return inputs, a, b


def assert_add_sub(result: httpclient.InferResult, a: np.ndarray, b: np.ndarray) -> None:
    out0 = result.as_numpy("OUTPUT0")
    out1 = result.as_numpy("OUTPUT1")
    assert out0 is not None and out1 is not None
    assert out0.dtype == np.float32 and out1.dtype == np.float32
    assert out0.shape == a.shape and out1.shape == a.shape
    np.testing.assert_array_equal(out0, a + b)
    np.testing.assert_array_equal(out1, a - b)


def identity_values(datatype: str, binary: bool) -> np.ndarray:
    """Eight values of ``datatype`` in shape [2, 4], including its edge cases."""
    if datatype == "BOOL":
        return np.array([[True, False, True, True], [False, False, True, False]])
    if datatype == "BYTES":
        if binary:
            items: list[Any] = [
                b"hello",
                "h\u00e9llo w\u00f6rld \u2713".encode(),
                b"",
                "\u65e5\u672c\u8a9e".encode(),
                b"with space",
                b"a",
                "\U0001f600 emoji".encode(),
                b"0123456789" * 10,
            ]
        else:
            items = ["hello", "h\u00e9llo w\u00f6rld", "", "\u65e5\u672c", "x y", "a", "b", "z"]
        return np.array(items, dtype=np.object_).reshape(2, 4)
    if datatype in ("FP16", "FP32", "FP64"):
        floating: type[np.floating[Any]] = FLOATS[datatype]
        finfo = np.finfo(floating)
        values = [
            0.1,
            -2.5,
            float(finfo.max),
            -float(finfo.max),
            float(finfo.tiny),
            float(finfo.smallest_subnormal),
            1.0 / 3.0,
            0.0,
        ]
        return np.array(values, dtype=floating).reshape(2, 4)
    integer = INTEGERS[datatype]
    info = np.iinfo(integer)
    lo, hi = int(info.min), int(info.max)
    return np.array([lo, hi, 0, 1, lo + 1, hi - 1, 42, hi // 2], dtype=integer).reshape(2, 4)


def assert_identical(got: np.ndarray | None, sent: np.ndarray, datatype: str) -> None:
    assert got is not None
    assert got.shape == sent.shape
    if datatype == "BYTES":
        assert got.dtype == np.object_
        assert got.ravel().tolist() == sent.ravel().tolist()
        return
    assert got.dtype == sent.dtype, (got.dtype, sent.dtype)
    if datatype in ("FP16", "FP32", "FP64"):
        # Bit-exact, so -0.0, subnormals and NaN payloads all count.
        bits = {2: np.uint16, 4: np.uint32, 8: np.uint64}[sent.dtype.itemsize]
        np.testing.assert_array_equal(got.view(bits), sent.view(bits))
    else:
        np.testing.assert_array_equal(got, sent)


def sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SAMPLES / f"{name}.json").read_text())
    return data


def sample_input(name: str) -> httpclient.InferInput:
    (spec,) = sample(name)["inputs"]
    array = np.array(spec["data"], dtype=np.float32).reshape(spec["shape"])
    inp = httpclient.InferInput(spec["name"], spec["shape"], spec["datatype"])
    inp.set_data_from_numpy(array)
    return inp


def model_stats(
    client: httpclient.InferenceServerClient, name: str, version: str
) -> dict[str, Any]:
    stats = client.get_inference_statistics(model_name=name, model_version=version)
    (entry,) = stats["model_stats"]
    assert entry["name"] == name
    assert entry["version"] == version
    result: dict[str, Any] = entry
    return result


# -------------------------------------------------------------------- health


def test_server_live_and_ready(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() is True
    assert client.is_server_ready() is True


def test_server_metadata(client: httpclient.InferenceServerClient) -> None:
    meta = client.get_server_metadata()
    assert meta["name"] == "modelport"
    assert isinstance(meta["version"], str) and meta["version"]
    for ext in (
        "binary_tensor_data",
        "model_repository",
        "model_configuration",
        "statistics",
        "system_shared_memory",
        "sequence",
        "logging",
    ):
        assert ext in meta["extensions"]
    assert "cuda_shared_memory" not in meta["extensions"]


def test_model_ready(client: httpclient.InferenceServerClient) -> None:
    for name in ("add_sub", "add_sub_pbtxt", "breast_cancer", "digits", "identity_fp32"):
        assert client.is_model_ready(name) is True
    assert client.is_model_ready("add_sub", "1") is True
    assert client.is_model_ready("add_sub", "2") is True
    assert client.is_model_ready("add_sub", "3") is False
    assert client.is_model_ready("no_such_model") is False
    for broken in ("broken", "bad_config", "two_configs"):
        assert client.is_model_ready(broken) is False


# ------------------------------------------------------------------ metadata


def test_model_metadata_add_sub(client: httpclient.InferenceServerClient) -> None:
    meta = client.get_model_metadata("add_sub")
    assert meta["name"] == "add_sub"
    assert meta["versions"] == ["1", "2"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [
        {"name": "INPUT0", "datatype": "FP32", "shape": [-1, 16]},
        {"name": "INPUT1", "datatype": "FP32", "shape": [-1, 16]},
    ]
    assert meta["outputs"] == [
        {"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, 16]},
        {"name": "OUTPUT1", "datatype": "FP32", "shape": [-1, 16]},
    ]


def test_model_metadata_of_one_version(client: httpclient.InferenceServerClient) -> None:
    meta = client.get_model_metadata("add_sub", model_version="1")
    assert meta["name"] == "add_sub"
    assert meta["versions"] == ["1"]


def test_model_metadata_examples(client: httpclient.InferenceServerClient) -> None:
    meta = client.get_model_metadata("breast_cancer")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}]
    assert meta["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [-1, 1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
    ]
    meta = client.get_model_metadata("digits")
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 64]}]
    assert meta["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [-1, 1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
    ]


@pytest.mark.parametrize("datatype", DATATYPES)
def test_model_metadata_identity(client: httpclient.InferenceServerClient, datatype: str) -> None:
    meta = client.get_model_metadata(f"identity_{datatype.lower()}")
    assert meta["inputs"] == [{"name": "INPUT0", "datatype": datatype, "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "OUTPUT0", "datatype": datatype, "shape": [-1, 4]}]


def test_model_metadata_unknown_model(client: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="no_such_model"):
        client.get_model_metadata("no_such_model")


def test_model_config_add_sub(client: httpclient.InferenceServerClient) -> None:
    config = client.get_model_config("add_sub")
    assert config["name"] == "add_sub"
    assert config["platform"] == "onnxruntime_onnx"
    assert config["backend"] == "onnxruntime"
    assert config["max_batch_size"] == 64
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
        ("INPUT0", "TYPE_FP32", [16]),
        ("INPUT1", "TYPE_FP32", [16]),
    ]
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [
        ("OUTPUT0", "TYPE_FP32", [16]),
        ("OUTPUT1", "TYPE_FP32", [16]),
    ]


def test_model_config_pbtxt(client: httpclient.InferenceServerClient) -> None:
    config = client.get_model_config("add_sub_pbtxt")
    assert config["name"] == "add_sub_pbtxt"
    assert config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 8
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
        ("INPUT0", "TYPE_FP32", [16]),
        ("INPUT1", "TYPE_FP32", [16]),
    ]
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [
        ("OUTPUT0", "TYPE_FP32", [16]),
        ("OUTPUT1", "TYPE_FP32", [16]),
    ]
    assert len(config["instance_group"]) == 1
    assert config["instance_group"][0]["count"] == 2
    assert config["instance_group"][0]["kind"] == "KIND_CPU"


def test_model_config_examples(client: httpclient.InferenceServerClient) -> None:
    config = client.get_model_config("breast_cancer")
    assert config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 64
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
        ("input", "TYPE_FP32", [30])
    ]
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [
        ("label", "TYPE_INT64", [1]),
        ("probabilities", "TYPE_FP32", [2]),
    ]


def test_model_config_unknown_model(client: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="no_such_model"):
        client.get_model_config("no_such_model")


# --------------------------------------------------------------------- infer


def test_infer_add_sub_json(client: httpclient.InferenceServerClient) -> None:
    inputs, a, b = add_sub_inputs(batch=3, binary=False)
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=False),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=False),
    ]
    result = client.infer("add_sub", inputs, outputs=outputs)
    response = result.get_response()
    assert response["model_name"] == "add_sub"
    assert response["model_version"] == "2"
    # JSON outputs: the data is inline, nothing binary follows.
    for out in response["outputs"]:
        assert "data" in out
        assert "binary_data_size" not in (out.get("parameters") or {})
        assert out["datatype"] == "FP32"
        assert out["shape"] == [3, 16]
    assert_add_sub(result, a, b)


def test_infer_add_sub_binary(client: httpclient.InferenceServerClient) -> None:
    inputs, a, b = add_sub_inputs(batch=5, binary=True, seed=1)
    result = client.infer("add_sub", inputs)
    response = result.get_response()
    assert response["model_name"] == "add_sub"
    assert {o["name"] for o in response["outputs"]} == {"OUTPUT0", "OUTPUT1"}
    for out in response["outputs"]:
        assert out["parameters"]["binary_data_size"] == 5 * 16 * 4
        assert "data" not in out
    assert_add_sub(result, a, b)


def test_infer_add_sub_mixed_binary_and_json(client: httpclient.InferenceServerClient) -> None:
    rng = np.random.default_rng(7)
    a = rng.uniform(-1, 1, size=(2, 16)).astype(np.float32)
    b = rng.uniform(-1, 1, size=(2, 16)).astype(np.float32)
    inputs = [
        httpclient.InferInput("INPUT0", [2, 16], "FP32"),
        httpclient.InferInput("INPUT1", [2, 16], "FP32"),
    ]
    inputs[0].set_data_from_numpy(a, binary_data=True)
    inputs[1].set_data_from_numpy(b, binary_data=False)
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=True),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=False),
    ]
    result = client.infer("add_sub", inputs, outputs=outputs)
    assert_add_sub(result, a, b)


def test_infer_pbtxt_model(client: httpclient.InferenceServerClient) -> None:
    inputs, a, b = add_sub_inputs(batch=8, seed=3)
    result = client.infer("add_sub_pbtxt", inputs)
    assert result.get_response()["model_name"] == "add_sub_pbtxt"
    assert_add_sub(result, a, b)


def test_infer_pbtxt_model_over_max_batch_size(client: httpclient.InferenceServerClient) -> None:
    inputs, _, _ = add_sub_inputs(batch=9)
    with pytest.raises(InferenceServerException, match="max_batch_size") as info:
        client.infer("add_sub_pbtxt", inputs)
    assert info.value.status() == "400"


def test_requested_output_only(client: httpclient.InferenceServerClient) -> None:
    for binary in (True, False):
        inputs, a, b = add_sub_inputs(batch=2, binary=binary, seed=4)
        outputs = [httpclient.InferRequestedOutput("OUTPUT1", binary_data=binary)]
        result = client.infer("add_sub", inputs, outputs=outputs)
        names = [o["name"] for o in result.get_response()["outputs"]]
        assert names == ["OUTPUT1"]
        assert result.as_numpy("OUTPUT0") is None
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_unknown_requested_output(client: httpclient.InferenceServerClient) -> None:
    inputs, _, _ = add_sub_inputs()
    outputs = [httpclient.InferRequestedOutput("OUTPUT9")]
    with pytest.raises(InferenceServerException, match="OUTPUT9") as info:
        client.infer("add_sub", inputs, outputs=outputs)
    assert info.value.status() == "400"


def test_request_id_echoed(client: httpclient.InferenceServerClient) -> None:
    inputs, a, b = add_sub_inputs()
    result = client.infer("add_sub", inputs, request_id="req-\u00e9-42")
    assert result.get_response()["id"] == "req-\u00e9-42"
    assert_add_sub(result, a, b)
    # Without an id the response has none (or an empty one).
    inputs, _, _ = add_sub_inputs()
    assert not client.infer("add_sub", inputs).get_response().get("id")


@pytest.mark.parametrize("version", ["1", "2"])
def test_explicit_model_version(client: httpclient.InferenceServerClient, version: str) -> None:
    inputs, a, b = add_sub_inputs(batch=2, seed=int(version))
    result = client.infer("add_sub", inputs, model_version=version)
    response = result.get_response()
    assert response["model_name"] == "add_sub"
    assert response["model_version"] == version
    assert_add_sub(result, a, b)


def test_default_version_is_highest(client: httpclient.InferenceServerClient) -> None:
    inputs, _, _ = add_sub_inputs()
    assert client.infer("add_sub", inputs).get_response()["model_version"] == "2"


def test_unknown_version(client: httpclient.InferenceServerClient) -> None:
    inputs, _, _ = add_sub_inputs()
    with pytest.raises(InferenceServerException) as info:
        client.infer("add_sub", inputs, model_version="7")
    assert info.value.status() == "404"
    assert "7" in str(info.value.message())


def test_unknown_model(client: httpclient.InferenceServerClient) -> None:
    inputs, _, _ = add_sub_inputs()
    with pytest.raises(InferenceServerException, match="no_such_model") as info:
        client.infer("no_such_model", inputs)
    assert info.value.status() == "404"


@pytest.mark.parametrize("broken", ["broken", "bad_config", "two_configs"])
def test_infer_on_unavailable_model(client: httpclient.InferenceServerClient, broken: str) -> None:
    inputs, _, _ = add_sub_inputs()
    with pytest.raises(InferenceServerException, match=broken) as info:
        client.infer(broken, inputs)
    assert info.value.status() == "503"


def test_priority_and_timeout_accepted(client: httpclient.InferenceServerClient) -> None:
    inputs, a, b = add_sub_inputs(batch=2, seed=11)
    result = client.infer("add_sub", inputs, priority=1, timeout=1_000_000)
    assert_add_sub(result, a, b)


def test_wrong_datatype_is_refused(client: httpclient.InferenceServerClient) -> None:
    inp0 = httpclient.InferInput("INPUT0", [1, 16], "FP64")
    inp0.set_data_from_numpy(np.zeros((1, 16), dtype=np.float64))
    inp1 = httpclient.InferInput("INPUT1", [1, 16], "FP32")
    inp1.set_data_from_numpy(np.zeros((1, 16), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="INPUT0") as info:
        client.infer("add_sub", [inp0, inp1])
    assert info.value.status() == "400"


# ------------------------------------------------------------------ datatypes


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", DATATYPES)
def test_identity_round_trip(
    client: httpclient.InferenceServerClient, datatype: str, binary: bool
) -> None:
    sent = identity_values(datatype, binary)
    inp = httpclient.InferInput("INPUT0", list(sent.shape), datatype)
    inp.set_data_from_numpy(sent, binary_data=binary)
    out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)
    result = client.infer(f"identity_{datatype.lower()}", [inp], outputs=[out])
    (meta,) = result.get_response()["outputs"]
    assert meta["name"] == "OUTPUT0"
    assert meta["datatype"] == datatype
    assert meta["shape"] == [2, 4]
    got = result.as_numpy("OUTPUT0")
    if datatype == "BYTES" and not binary:
        # JSON carries strings; the client hands them back as str objects.
        assert got is not None
        assert got.ravel().tolist() == sent.ravel().tolist()
        assert got.shape == sent.shape
    else:
        assert_identical(got, sent, datatype)


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
def test_identity_non_finite_binary(
    client: httpclient.InferenceServerClient, datatype: str
) -> None:
    sent = np.array([[np.inf, -np.inf, np.nan, -0.0], [1, 2, 3, 4]], dtype=FLOATS[datatype])
    inp = httpclient.InferInput("INPUT0", [2, 4], datatype)
    inp.set_data_from_numpy(sent)
    result = client.infer(f"identity_{datatype.lower()}", [inp])
    assert_identical(result.as_numpy("OUTPUT0"), sent, datatype)


def test_identity_bytes_non_utf8_is_never_silently_altered(
    client: httpclient.InferenceServerClient,
) -> None:
    """BYTES are raw bytes: they come back exactly, or the request is refused.

    (ONNX Runtime's string tensors hold UTF-8 text, so refusing is acceptable;
    answering with different bytes is not.)
    """
    sent = np.array([b"\xff\xfe raw", b"\x80", b"ok", b""] * 2, dtype=np.object_).reshape(2, 4)
    inp = httpclient.InferInput("INPUT0", [2, 4], "BYTES")
    inp.set_data_from_numpy(sent)
    try:
        result = client.infer("identity_bytes", [inp])
    except InferenceServerException as exc:
        assert exc.status() == "400"
        assert "UTF-8" in str(exc.message())
    else:
        assert_identical(result.as_numpy("OUTPUT0"), sent, "BYTES")


def test_identity_empty_batch(client: httpclient.InferenceServerClient) -> None:
    sent = np.zeros((0, 4), dtype=np.int32)
    inp = httpclient.InferInput("INPUT0", [0, 4], "INT32")
    inp.set_data_from_numpy(sent)
    result = client.infer("identity_int32", [inp])
    (meta,) = result.get_response()["outputs"]
    assert meta["datatype"] == "INT32"
    assert meta["shape"] == [0, 4]
    # tritonclient itself builds an empty float64 array for a zero-size binary
    # output, so only the shape of the array says anything about the server.
    got = result.as_numpy("OUTPUT0")
    assert got is not None
    assert got.shape == (0, 4)


# ------------------------------------------------------------------- examples


def test_breast_cancer_sample(client: httpclient.InferenceServerClient) -> None:
    result = client.infer("breast_cancer", [sample_input("breast_cancer")])
    label = result.as_numpy("label")
    probabilities = result.as_numpy("probabilities")
    assert label is not None and probabilities is not None
    assert label.dtype == np.int64
    assert label.tolist() == [[1]]
    assert probabilities.shape == (1, 2)
    assert probabilities.dtype == np.float32
    assert math.isclose(float(probabilities.sum()), 1.0, abs_tol=1e-5)
    assert int(np.argmax(probabilities[0])) == 1


def test_digits_sample(client: httpclient.InferenceServerClient) -> None:
    result = client.infer("digits", [sample_input("digits")])
    label = result.as_numpy("label")
    probabilities = result.as_numpy("probabilities")
    assert label is not None and probabilities is not None
    assert label.tolist() == [[5]]
    assert probabilities.shape == (1, 10)
    assert math.isclose(float(probabilities.sum()), 1.0, abs_tol=1e-5)
    assert int(np.argmax(probabilities[0])) == 5


@pytest.mark.parametrize(("name", "label"), [("breast_cancer", 1), ("digits", 5)])
def test_sample_files_are_valid_requests(server: Server, name: str, label: int) -> None:
    """The bundled sample files, posted as they are, are valid OIP requests."""
    body = (SAMPLES / f"{name}.json").read_bytes()
    r = httpx.post(f"{server.base}/v2/models/{name}/infer", content=body, timeout=30)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert outputs["label"]["datatype"] == "INT64"
    assert outputs["label"]["shape"] == [1, 1]
    assert outputs["label"]["data"] == [label]


# ----------------------------------------------------------------- statistics


def test_inference_statistics(client: httpclient.InferenceServerClient) -> None:
    before = model_stats(client, "add_sub", "1")
    for seed in range(3):
        inputs, a, b = add_sub_inputs(batch=4, seed=seed)
        assert_add_sub(client.infer("add_sub", inputs, model_version="1"), a, b)
    after = model_stats(client, "add_sub", "1")

    success = after["inference_stats"]["success"]
    assert success["count"] == before["inference_stats"]["success"]["count"] + 3
    assert success["ns"] > before["inference_stats"]["success"]["ns"]
    assert after["inference_stats"]["fail"]["count"] == before["inference_stats"]["fail"]["count"]
    for key in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert after["inference_stats"][key]["count"] == before["inference_stats"][key]["count"] + 3
    # inference_count counts samples (4 per request), execution_count model runs.
    assert after["inference_count"] == before["inference_count"] + 12
    assert after["execution_count"] == before["execution_count"] + 3
    assert after["last_inference"] > 0
    by_size = {b["batch_size"]: b for b in after["batch_stats"]}
    assert 4 in by_size
    assert by_size[4]["compute_infer"]["count"] >= 3
    assert by_size[4]["compute_infer"]["ns"] > 0


def test_statistics_of_all_versions_and_models(client: httpclient.InferenceServerClient) -> None:
    stats = client.get_inference_statistics(model_name="add_sub")
    assert [(s["name"], s["version"]) for s in stats["model_stats"]] == [
        ("add_sub", "1"),
        ("add_sub", "2"),
    ]
    everything = client.get_inference_statistics()
    names = {s["name"] for s in everything["model_stats"]}
    assert {"add_sub", "add_sub_pbtxt", "breast_cancer", "digits", "identity_bytes"} <= names
    assert not names & {"broken", "bad_config", "two_configs"}


def test_statistics_unknown_model(client: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="no_such_model"):
        client.get_inference_statistics(model_name="no_such_model")


# ---------------------------------------------------------------- compression


@pytest.mark.parametrize(
    ("request_alg", "response_alg"),
    [("gzip", None), ("deflate", None), (None, "gzip"), ("gzip", "gzip"), ("deflate", "deflate")],
)
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_compression(
    client: httpclient.InferenceServerClient,
    request_alg: str | None,
    response_alg: str | None,
    binary: bool,
) -> None:
    inputs, a, b = add_sub_inputs(batch=6, binary=binary, seed=21)
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=binary),
    ]
    result = client.infer(
        "add_sub",
        inputs,
        outputs=outputs,
        request_id="compressed",
        request_compression_algorithm=request_alg,
        response_compression_algorithm=response_alg,
    )
    assert result.get_response()["id"] == "compressed"
    assert_add_sub(result, a, b)


def test_response_is_gzip_encoded_when_asked(server: Server) -> None:
    body = (SAMPLES / "digits.json").read_bytes()
    url = f"{server.base}/v2/models/digits/infer"
    with httpx.Client(timeout=30) as http:
        plain = http.post(url, content=body, headers={"Accept-Encoding": "identity"})
        assert plain.status_code == 200
        assert "content-encoding" not in plain.headers
        # Read the raw bytes to see what was on the wire.
        with http.stream(
            "POST",
            url,
            content=gzip.compress(body),
            headers={
                "Accept-Encoding": "gzip",
                "Content-Encoding": "gzip",
            },
        ) as r:
            raw = b"".join(r.iter_raw())
            assert r.status_code == 200
            assert r.headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(raw)) == plain.json()


def test_corrupt_compressed_body_is_refused(server: Server) -> None:
    r = httpx.post(
        f"{server.base}/v2/models/digits/infer",
        content=b"definitely not gzip",
        headers={"Content-Encoding": "gzip"},
        timeout=30,
    )
    assert r.status_code == 400
    assert "gzip" in r.json()["error"]
