"""Fitting a converted graph to the source's signature: names, types and shapes as served.

Small graphs are built by hand in the shapes converters give (a label as
[N], float32 probabilities, float features) and run through ONNX Runtime
after fitting, so the tests see what a client would get.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from modelport.optimize.convert.errors import ConversionFailed
from modelport.optimize.convert.graph import fit_signature
from modelport.types import ModelSignature, TensorSpec


def classifier_graph(input_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """features [N, 3] -> probabilities float [N, 2] and label int64 [N], as converters give."""
    weights = helper.make_tensor("w", TensorProto.FLOAT, [3, 2], [1, -1, 2, -2, 0.5, -0.5])
    nodes = [
        helper.make_node("MatMul", ["features", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("features", input_type, [None, 3])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2]),
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
        ],
        initializer=[weights],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def signature(
    input_type: str = "FP32", probabilities: str = "FP32", batch: int = 8
) -> ModelSignature:
    return ModelSignature(
        inputs=(TensorSpec("features", input_type, (-1, 3)),),
        outputs=(
            TensorSpec("label", "INT64", (-1, 1)),
            TensorSpec("probabilities", probabilities, (-1, 2)),
        ),
        max_batch_size=batch,
    )


def run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> tuple[Any, dict[str, np.ndarray]]:
    session = ort.InferenceSession(model.SerializeToString())
    names = [o.name for o in session.get_outputs()]
    return session, dict(zip(names, session.run(names, feed), strict=True))


X = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -3.0, 0.0]], dtype=np.float32)


def test_label_becomes_a_column_and_outputs_follow_the_served_order() -> None:
    fitted = fit_signature(
        classifier_graph(), signature(), {"label": "label", "probabilities": "probabilities"}
    )
    session, out = run(fitted, {"features": X})
    assert [o.name for o in session.get_outputs()] == ["label", "probabilities"]
    assert out["label"].shape == (3, 1)
    assert out["label"].dtype == np.int64
    assert out["label"].reshape(-1).tolist() == np.argmax(out["probabilities"], axis=1).tolist()
    assert session.get_outputs()[0].shape == ["batch", 1]


def test_float_outputs_take_the_served_type() -> None:
    fitted = fit_signature(
        classifier_graph(),
        signature(probabilities="FP64"),
        {"label": "label", "probabilities": "probabilities"},
    )
    _, out = run(fitted, {"features": X})
    assert out["probabilities"].dtype == np.float64
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, rtol=1e-6)


def test_a_served_input_of_another_type_is_cast_inside_the_graph() -> None:
    fitted = fit_signature(
        classifier_graph(),
        signature(input_type="FP64"),
        {"label": "label", "probabilities": "probabilities"},
    )
    session, out = run(fitted, {"features": X.astype(np.float64)})
    assert session.get_inputs()[0].type == "tensor(double)"
    assert session.get_inputs()[0].name == "features"
    _, plain = run(
        fit_signature(
            classifier_graph(), signature(), {"label": "label", "probabilities": "probabilities"}
        ),
        {"features": X},
    )
    np.testing.assert_array_equal(out["label"], plain["label"])


def test_a_served_output_may_come_from_a_differently_named_tensor() -> None:
    spec = ModelSignature(
        inputs=(TensorSpec("features", "FP32", (-1, 3)),),
        outputs=(TensorSpec("scores", "FP32", (-1, 2)),),
        max_batch_size=4,
    )
    fitted = fit_signature(classifier_graph(), spec, {"scores": "probabilities"})
    session, out = run(fitted, {"features": X})
    assert [o.name for o in session.get_outputs()] == ["scores"]
    assert out["scores"].shape == (3, 2)


def test_a_rank_one_model_input_is_served_as_a_column() -> None:
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "x"], ["y"])],
        "square",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    spec = ModelSignature(
        inputs=(TensorSpec("x", "FP32", (-1, 1)),),
        outputs=(TensorSpec("y", "FP32", (-1, 1)),),
        max_batch_size=4,
    )
    session, out = run(
        fit_signature(model, spec, {"y": "y"}), {"x": np.array([[2.0], [3.0]], dtype=np.float32)}
    )
    assert session.get_inputs()[0].shape == ["batch", 1]
    assert out["y"].tolist() == [[4.0], [9.0]]


def test_missing_tensors_are_named() -> None:
    with pytest.raises(ConversionFailed, match=r"no output for 'label'.*probabilities"):
        fit_signature(classifier_graph(), signature(), {"label": "nope"})
    wrong_input = ModelSignature(
        inputs=(TensorSpec("measurements", "FP32", (-1, 3)),),
        outputs=(TensorSpec("label", "INT64", (-1, 1)),),
        max_batch_size=4,
    )
    with pytest.raises(ConversionFailed, match=r"no input 'measurements' \(it has features\)"):
        fit_signature(classifier_graph(), wrong_input, {"label": "label"})


def test_bf16_tensors_are_refused_by_name() -> None:
    spec = ModelSignature(
        inputs=(TensorSpec("features", "BF16", (-1, 3)),),
        outputs=(TensorSpec("label", "INT64", (-1, 1)),),
        max_batch_size=4,
    )
    with pytest.raises(ConversionFailed, match="'features' is BF16"):
        fit_signature(classifier_graph(), spec, {"label": "label"})
