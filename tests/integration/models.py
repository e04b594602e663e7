"""Small ONNX models built on the fly for integration tests (no downloads)."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from modelport.examples import repository_path

#: OIP datatype -> ONNX element type, for the identity models.
ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _save(model: onnx.ModelProto, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def identity_model(datatype: str) -> onnx.ModelProto:
    """INPUT0 [batch, 4] -> OUTPUT0, the same values."""
    t = ONNX_TYPES[datatype]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        f"identity_{datatype.lower()}",
        [helper.make_tensor_value_info("INPUT0", t, ["batch", 4])],
        [helper.make_tensor_value_info("OUTPUT0", t, ["batch", 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def add_sub_model() -> onnx.ModelProto:
    """Triton's classic example: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1."""
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "add_sub",
        [
            helper.make_tensor_value_info("INPUT0", f, ["batch", 16]),
            helper.make_tensor_value_info("INPUT1", f, ["batch", 16]),
        ],
        [
            helper.make_tensor_value_info("OUTPUT0", f, ["batch", 16]),
            helper.make_tensor_value_info("OUTPUT1", f, ["batch", 16]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


ADD_SUB_PBTXT = """
name: "add_sub_pbtxt"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
instance_group [ { count: 2 kind: KIND_CPU } ]
"""


def build_repository(root: Path) -> Path:
    """A repository exercising every path: examples, datatypes, pbtxt, broken models."""
    shutil.copytree(repository_path(), root, dirs_exist_ok=True)
    for datatype in ONNX_TYPES:
        _save(identity_model(datatype), root / f"identity_{datatype.lower()}" / "1" / "model.onnx")
    _save(add_sub_model(), root / "add_sub" / "1" / "model.onnx")
    _save(add_sub_model(), root / "add_sub" / "2" / "model.onnx")
    (root / "add_sub" / "config.yaml").write_text("version_policy: {all: {}}\n")
    _save(add_sub_model(), root / "add_sub_pbtxt" / "1" / "model.onnx")
    (root / "add_sub_pbtxt" / "config.pbtxt").write_text(ADD_SUB_PBTXT)
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"this is not an onnx model")
    _save(add_sub_model(), root / "bad_config" / "1" / "model.onnx")
    (root / "bad_config" / "config.yaml").write_text("max_batch_size: 4\nbatch_key: x\n")
    _save(add_sub_model(), root / "two_configs" / "1" / "model.onnx")
    (root / "two_configs" / "config.yaml").write_text("max_batch_size: 4\n")
    (root / "two_configs" / "config.pbtxt").write_text("max_batch_size: 4\n")
    return root
