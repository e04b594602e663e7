"""The OpenVINO runtime: the same answers as ONNX Runtime, its settings, and concurrent callers.

A small convolutional classifier is built with onnx.helper and loaded by
both backends, so every value check compares OpenVINO with ONNX Runtime on
the same rows. Nothing of OpenVINO is faked.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import openvino as ov
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelport.config.model import ModelConfig, parse_model_config
from modelport.dataplane.runtime import backend_for, runtime_loader
from modelport.dataplane.runtime.onnx import load_onnx
from modelport.dataplane.runtime.openvino import (
    OpenVinoRuntime,
    compile_properties,
    load_openvino,
)
from modelport.errors import InvalidRequest, ModelLoadError
from modelport.examples import repository_path
from modelport.optimize.tune.hardware import CPUINFO, parse_cpuinfo
from modelport.types import TensorSpec

OUTPUTS = ["y", "positive", "label"]


def classifier() -> onnx.ModelProto:
    """image FP32 [N,3,8,8] -> Conv, Relu, pool, Gemm -> y FP32 [N,3]; y > 0 BOOL; argmax INT64."""
    rng = np.random.default_rng(5)
    inits = [
        numpy_helper.from_array(rng.standard_normal((6, 3, 3, 3)).astype(np.float32), "C"),
        numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "Cb"),
        numpy_helper.from_array(rng.standard_normal((3, 6)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "Wb"),
        numpy_helper.from_array(np.zeros((), np.float32), "zero"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "C", "Cb"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "W", "Wb"], ["y"], transB=1),
        helper.make_node("Greater", ["y", "zero"], ["positive"]),
        helper.make_node("ArgMax", ["y"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("positive", TensorProto.BOOL, ["N", 3]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def config(**parameters: str) -> ModelConfig:
    fields: dict[str, Any] = {"name": "m"}
    if parameters:
        fields["parameters"] = {k: {"string_value": v} for k, v in parameters.items()}
    return parse_model_config(fields, "config.yaml")


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, 8, 8)).astype(np.float32)


@pytest.fixture
def version(tmp_path: Path) -> Path:
    path = tmp_path / "m" / "1"
    path.mkdir(parents=True)
    onnx.save(classifier(), str(path / "model.onnx"))
    return path


@pytest.fixture
def expected(version: Path) -> dict[str, np.ndarray]:
    """ONNX Runtime's answers for ``images(16)``: what OpenVINO must reproduce."""
    runtime = load_onnx(version, config(), 1)
    try:
        return runtime.predict({"image": images(16)}, OUTPUTS)
    finally:
        runtime.unload()


def load(version: Path, cfg: ModelConfig | None = None, instances: int = 1) -> OpenVinoRuntime:
    return load_openvino(version, cfg or config(), instances)


def bf16_cpu() -> bool:
    _, features = parse_cpuinfo(CPUINFO.read_text()) if CPUINFO.exists() else ("", ())
    return bool({"AMX-BF16", "AVX-512 BF16"} & set(features))


# ------------------------------------------------------------------ selection


def test_model_xml_picks_openvino_and_model_onnx_stays_with_onnxruntime(tmp_path: Path) -> None:
    (tmp_path / "model.xml").write_text("<net/>")
    assert backend_for(tmp_path) == "openvino"
    (tmp_path / "model.onnx").write_bytes(b"")
    assert backend_for(tmp_path) == "onnxruntime"
    assert runtime_loader("openvino") is load_openvino


def test_model_xml_is_chosen_over_model_onnx(version: Path, expected: dict[str, Any]) -> None:
    """OpenVINO IR beside a broken ONNX file: the IR is what loads."""
    model = ov.Core().read_model(str(version / "model.onnx"))
    # save_model would store the weights as FP16 by default; the test compares FP32 answers.
    ov.save_model(model, str(version / "model.xml"), compress_to_fp16=False)
    assert (version / "model.bin").is_file()
    (version / "model.onnx").write_bytes(b"not onnx")
    runtime = load(version)
    try:
        got = runtime.predict({"image": images(16)}, ["y"])
    finally:
        runtime.unload()
    np.testing.assert_allclose(got["y"], expected["y"], rtol=0, atol=1e-5)


# ------------------------------------------------------------------ signature and values


def test_native_signature_from_the_compiled_model(version: Path) -> None:
    runtime = load(version)
    try:
        assert runtime.native.inputs == (TensorSpec("image", "FP32", (-1, 3, 8, 8)),)
        assert runtime.native.outputs == (
            TensorSpec("y", "FP32", (-1, 3)),
            TensorSpec("positive", "BOOL", (-1, 3)),
            TensorSpec("label", "INT64", (-1,)),
        )
    finally:
        runtime.unload()


def test_f32_answers_equal_onnxruntime(version: Path, expected: dict[str, np.ndarray]) -> None:
    runtime = load(version)
    try:
        # Explicitly f32, even on a CPU where OpenVINO's own default would be bf16.
        assert runtime.precision == "f32"
        got = runtime.predict({"image": images(16)}, OUTPUTS)
    finally:
        runtime.unload()
    assert got["y"].dtype == np.float32 and got["positive"].dtype == np.bool_
    np.testing.assert_allclose(got["y"], expected["y"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(got["label"], expected["label"])
    np.testing.assert_array_equal(got["positive"], expected["positive"])


def test_only_the_requested_outputs_and_unknown_ones_refused(version: Path) -> None:
    runtime = load(version)
    try:
        assert set(runtime.predict({"image": images(2)}, ["label"])) == {"label"}
        with pytest.raises(InvalidRequest, match="'nope'"):
            runtime.predict({"image": images(2)}, ["nope"])
    finally:
        runtime.unload()


def test_hint_bf16_answers_close_and_computes_in_bf16(
    version: Path, expected: dict[str, np.ndarray]
) -> None:
    runtime = load(version, config(HINT_BF16="yes"))
    try:
        got = runtime.predict({"image": images(16)}, ["y"])
        precision = runtime.precision
    finally:
        runtime.unload()
    scale = float(np.abs(expected["y"]).max())
    np.testing.assert_allclose(got["y"], expected["y"], rtol=2e-2, atol=2e-2 * scale)
    if bf16_cpu():
        assert precision == "bf16"


# ------------------------------------------------------------------ settings


def test_parameters_reach_openvino_per_instance(version: Path) -> None:
    """Triton's parameters are per instance; one shared model gets instances x them."""
    cfg = config(INFERENCE_NUM_THREADS="1", NUM_STREAMS="1", PERFORMANCE_HINT="latency")
    assert compile_properties(cfg, 2) == {
        "INFERENCE_NUM_THREADS": 2,
        "NUM_STREAMS": 2,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
    }
    throughput = compile_properties(config(PERFORMANCE_HINT="THROUGHPUT"), 1)
    assert "NUM_STREAMS" not in throughput  # OpenVINO sizes the streams for the hint
    runtime = load(version, cfg, instances=2)
    try:
        assert int(runtime.get_property("NUM_STREAMS")) == 2
        assert int(runtime.get_property("INFERENCE_NUM_THREADS")) == 2
    finally:
        runtime.unload()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("INFERENCE_NUM_THREADS", "0"),
        ("INFERENCE_NUM_THREADS", "many"),
        ("NUM_STREAMS", "-1"),
        ("PERFORMANCE_HINT", "FASTEST"),
        ("HINT_BF16", "maybe"),
    ],
)
def test_bad_parameter_is_refused_with_the_field_named(version: Path, key: str, value: str) -> None:
    with pytest.raises(ModelLoadError, match=rf"parameters\.{key}: .*{value}"):
        load(version, config(**{key: value}))


# ------------------------------------------------------------------ files


def test_missing_model_file_is_refused(tmp_path: Path, version: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"model\.xml or model\.onnx") as info:
        load(tmp_path)
    assert str(tmp_path) in info.value.message
    named = parse_model_config({"name": "m", "default_model_filename": "net.onnx"}, "c")
    with pytest.raises(ModelLoadError, match=r"net\.onnx: no net\.onnx"):
        load(version, named)


def test_broken_model_file_is_refused_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "model.xml").write_text("<net name='broken'><layers>")
    with pytest.raises(ModelLoadError) as info:
        load(tmp_path)
    message = info.value.message
    assert message.startswith(f"{tmp_path / 'model.xml'}: not a model OpenVINO can read: ")
    assert "Exception from" not in message and "\n" not in message


def test_an_unconvertible_graph_is_refused_naming_the_operators(tmp_path: Path) -> None:
    # OpenVINO's own message spans lines; its first one alone says nothing useful.
    source = repository_path() / "breast_cancer" / "1" / "model.onnx"
    (tmp_path / "model.onnx").write_bytes(source.read_bytes())
    with pytest.raises(ModelLoadError) as info:
        load(tmp_path)
    message = info.value.message
    assert "Model wasn't fully converted." in message
    assert "No conversion rule found for operations: ai.onnx.ml.LinearClassifier" in message
    assert "Exception from" not in message and "\n" not in message


# ------------------------------------------------------------------ concurrency


def test_concurrent_callers_each_get_their_own_rows(
    version: Path, expected: dict[str, np.ndarray]
) -> None:
    """Four instance threads on one runtime: every answer belongs to its own request."""
    runtime = load(version, instances=4)
    rows = images(16)
    failures: list[str] = []
    barrier = threading.Barrier(4)

    def caller(index: int) -> None:
        barrier.wait()
        for round_ in range(40):
            # Each caller sends its own slice, of its own size, every round.
            start, size = (index * 4 + round_) % 13, 1 + index
            got = runtime.predict({"image": rows[start : start + size]}, ["y"])["y"]
            want = expected["y"][start : start + size]
            if got.shape != want.shape or not np.allclose(got, want, rtol=0, atol=1e-5):
                failures.append(f"caller {index}, round {round_}")

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        runtime.unload()
    assert failures == []


def test_answers_survive_the_next_call(version: Path, expected: dict[str, np.ndarray]) -> None:
    """Outputs are copied out of the request, so a later call does not overwrite them."""
    runtime = load(version)
    try:
        first = runtime.predict({"image": images(16)}, ["y"])["y"]
        runtime.predict({"image": images(16, seed=9)}, ["y"])
    finally:
        runtime.unload()
    np.testing.assert_allclose(first, expected["y"], rtol=0, atol=1e-5)
