"""A tiny ONNX classifier in a repository, and its rows, for the optimize tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelport.optimize.tune.hardware import Hardware


def tiny_classifier() -> onnx.ModelProto:
    """x FP32 [N, 8] -> Gemm 8->32, Relu, Gemm 32->3 -> y FP32 [N, 3]."""
    rng = np.random.default_rng(7)
    inits = [
        numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32), "W0"),
        numpy_helper.from_array(np.zeros(32, np.float32), "B0"),
        numpy_helper.from_array(rng.standard_normal((3, 32)).astype(np.float32), "W1"),
        numpy_helper.from_array(np.zeros(3, np.float32), "B1"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "W0", "B0"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "W1", "B1"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def write_repo(root: Path, model: onnx.ModelProto, name: str = "tiny") -> Path:
    version = root / name / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(model.SerializeToString())
    (root / name / "config.yaml").write_text("max_batch_size: 64\nversion_policy: {all: {}}\n")
    return version


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """``tmp_path/repo/tiny/1`` holding the tiny classifier; returns the version directory."""
    return write_repo(tmp_path / "repo", tiny_classifier())


@pytest.fixture
def rows(tmp_path: Path) -> Path:
    path = tmp_path / "rows.npy"
    np.save(path, np.random.default_rng(1).standard_normal((96, 8)).astype(np.float32))
    return path


@pytest.fixture
def hardware() -> Hardware:
    """Two cores with VNNI, no GPU: the same choices on every machine running the tests."""
    return Hardware("test CPU", 2, ("AVX2", "AVX-512 VNNI"), ("CPUExecutionProvider",), ())
