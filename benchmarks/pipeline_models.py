"""The models of pipelines.py: a three-step ensemble of tiny models, and a cascade.

All seeded, written to ``.work/pipelines/repo``:

- ``add1``, ``mul2``, ``add3``: ``x`` FP32 [N, 16] -> ``y`` FP32 [N, 16], one
  ONNX node each (x + 1, x * 2, x + 3);
- ``chain``: an ensemble, add1 -> mul2 -> add3, so ``y = (x + 1) * 2 + 3``;
- ``small``: ``x`` FP32 [N, 16] -> ``probabilities`` FP32 [N, 2], the
  classifier ``p = sigmoid(10 * x[:, 0])``, ``[1 - p, p]``: a few microseconds;
- ``large``: the same classifier with a correction,
  ``p = sigmoid(10 * (x[:, 0] + 0.1 * tanh(g(x))))``, where ``g`` is a
  costly chain of MatMul/Relu (the row expanded to a 128 x 256 matrix,
  LAYERS products with a 256 x 256 weight): tens of milliseconds a row. The
  correction moves ``10 * x[:, 0]`` by at most 1, so the two agree on the
  class of every row with ``|x[:, 0]| > 0.1`` and may disagree below;
- ``triage``: the cascade small -> large, small accepted when its larger
  probability is at least 0.9 (``|x[:, 0]| >= 0.22``), per request.

Easy rows (``|x[:, 0]|`` in [0.5, 2]) are accepted by ``small``; hard rows
(``|x[:, 0]| < 0.1``) go on to ``large``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import models
import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

WIDTH = 16
ROWS, COLS = 128, 256
LAYERS = 72
ACCEPT = 0.9
TINY = ("add1", "mul2", "add3")


def _save(model: onnx.ModelProto, path: Path) -> None:
    model.ir_version = models.IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _tiny(op: str, value: float) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node(op, ["x", "c"], ["y"])],
        f"tiny_{op.lower()}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", WIDTH])],
        [numpy_helper.from_array(np.array([value], np.float32), "c")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", models.OPSET)])


def _classifier(large: bool) -> onnx.ModelProto:
    """small, or large with its costly correction term."""
    rng = np.random.default_rng(models.SEED)
    first = np.zeros((WIDTH, 1), np.float32)
    first[0, 0] = 1.0
    inits = [
        numpy_helper.from_array(first, "e0"),
        numpy_helper.from_array(np.array([10.0], np.float32), "ten"),
        numpy_helper.from_array(np.array([1.0], np.float32), "one"),
    ]
    nodes = [helper.make_node("MatMul", ["x", "e0"], ["x0"])]
    logit_in = "x0"
    if large:
        inits += [
            numpy_helper.from_array(
                (rng.standard_normal((WIDTH, ROWS * COLS)) / np.sqrt(WIDTH)).astype(np.float32),
                "w_in",
            ),
            numpy_helper.from_array(np.array([-1, ROWS, COLS], np.int64), "shape"),
            numpy_helper.from_array(
                (rng.standard_normal((COLS, COLS)) * np.sqrt(2.0 / COLS)).astype(np.float32), "w"
            ),
            numpy_helper.from_array(
                (rng.standard_normal((ROWS, 1)) / np.sqrt(ROWS)).astype(np.float32), "w_out"
            ),
            numpy_helper.from_array(np.array([0.1], np.float32), "eps"),
        ]
        nodes += [
            helper.make_node("MatMul", ["x", "w_in"], ["flat"]),
            helper.make_node("Reshape", ["flat", "shape"], ["h0"]),
        ]
        current = "h0"
        for i in range(LAYERS):
            nodes += [
                helper.make_node("MatMul", [current, "w"], [f"m{i}"]),
                helper.make_node("Relu", [f"m{i}"], [f"h{i + 1}"]),
            ]
            current = f"h{i + 1}"
        nodes += [
            helper.make_node("ReduceMean", [current], ["pooled"], axes=[2], keepdims=0),
            helper.make_node("MatMul", ["pooled", "w_out"], ["g"]),
            helper.make_node("Tanh", ["g"], ["t"]),
            helper.make_node("Mul", ["t", "eps"], ["shift"]),
            helper.make_node("Add", ["x0", "shift"], ["x0c"]),
        ]
        logit_in = "x0c"
    nodes += [
        helper.make_node("Mul", [logit_in, "ten"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["p"]),
        helper.make_node("Sub", ["one", "p"], ["q"]),
        helper.make_node("Concat", ["q", "p"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "large" if large else "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", models.OPSET)])


def _config(path: Path, config: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def build_repo(repo: Path) -> Path:
    """Write every model of the benchmark to ``repo`` (rebuilt each time: a second or two)."""
    for name, (op, value) in zip(TINY, (("Add", 1.0), ("Mul", 2.0), ("Add", 3.0)), strict=True):
        _save(_tiny(op, value), repo / name / "1" / "model.onnx")
        _config(repo / name / "config.yaml", copy.deepcopy(models.BASE_CONFIG))
    for name in ("small", "large"):
        _save(_classifier(name == "large"), repo / name / "1" / "model.onnx")
        _config(repo / name / "config.yaml", copy.deepcopy(models.BASE_CONFIG))
    tensor = {"name": "x", "data_type": "TYPE_FP32", "dims": [WIDTH]}
    (repo / "chain" / "1").mkdir(parents=True, exist_ok=True)
    _config(
        repo / "chain" / "config.yaml",
        {
            "platform": "ensemble",
            "max_batch_size": models.MAX_BATCH_SIZE,
            "input": [tensor],
            "output": [tensor | {"name": "y"}],
            "ensemble_scheduling": {
                "step": [
                    {"model_name": "add1", "model_version": -1,
                     "input_map": {"x": "x"}, "output_map": {"y": "a"}},
                    {"model_name": "mul2", "model_version": -1,
                     "input_map": {"x": "a"}, "output_map": {"y": "b"}},
                    {"model_name": "add3", "model_version": -1,
                     "input_map": {"x": "b"}, "output_map": {"y": "y"}},
                ]
            },
        },
    )  # fmt: skip
    (repo / "triage" / "1").mkdir(parents=True, exist_ok=True)
    _config(
        repo / "triage" / "config.yaml",
        {
            "max_batch_size": models.MAX_BATCH_SIZE,
            "input": [tensor],
            "output": [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [2]}],
            "modelport": {
                "cascade": {
                    "per_row": False,
                    "stages": [
                        {"model": "small",
                         "accept": {"output": "probabilities", "max_at_least": ACCEPT}},
                        {"model": "large"},
                    ],
                }
            },
        },
    )  # fmt: skip
    return repo


def input_rows(count: int, easy_share: float) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """``count`` rows, ``easy_share`` of them easy (shuffled, seeded); and which are."""
    rng = np.random.default_rng(models.SEED + 1)
    rows = rng.standard_normal((count, WIDTH)).astype(np.float32)
    easy = np.zeros(count, bool)
    easy[: round(count * easy_share)] = True
    rng.shuffle(easy)
    sign = rng.choice([-1.0, 1.0], count)
    rows[:, 0] = np.where(
        easy, sign * rng.uniform(0.5, 2.0, count), sign * rng.uniform(0.0, 0.1, count)
    ).astype(np.float32)
    return rows, easy
