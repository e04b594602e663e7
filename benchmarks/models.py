"""Generate the benchmark models into a Triton-layout repository.

Run ``python benchmarks/models.py [--out DIR]`` (default ``benchmarks/.work/repo``).

Three models, every random choice seeded so a rerun gives the same graphs:

- ``mlp``: ``x`` FP32 [N, 64] -> Gemm 64->128, Relu, Gemm 128->128, Relu,
  Gemm 128->10 -> ``y`` FP32 [N, 10]. Built with ``onnx.helper``.
- ``cnn``: ``image`` FP32 [N, 3, 64, 64] -> Conv 3->64 3x3, Relu,
  Conv 64->64 3x3, Relu, MaxPool 2x2, Conv 64->64 3x3, Relu,
  GlobalAveragePool, Flatten, Gemm 64->10 -> ``y`` FP32 [N, 10]; about 400
  MFLOP per image (a few ms on one core), so the model, not the server, is
  the bottleneck: the compute-bound case.
- ``gbt``: scikit-learn's GradientBoostingClassifier on the breast cancer
  data set that ships with scikit-learn, converted by skl2onnx with zipmap
  off: ``input`` FP32 [N, 30] -> ``label`` INT64 [N, 1] and
  ``probabilities`` FP32 [N, 2].

Each model gets ``config.yaml`` with ``max_batch_size: 64``, two CPU
instances (the machine has two cores; the server then gives each ONNX
Runtime session one intra-op thread, the same as the in-process ceiling)
and ``dynamic_batching: {max_queue_delay_microseconds: 0}``.
:func:`write_variant` copies a model under a new name with extra config
merged in (the batching-off and bounded-queue variants).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import shutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import yaml
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
DEFAULT_REPO = HERE / ".work" / "repo"
SEED = 0
OPSET = 17
ML_OPSET = 3
IR_VERSION = 8
BATCH = "N"
MAX_BATCH_SIZE = 64
MODEL_NAMES: tuple[str, ...] = ("mlp", "cnn", "gbt")

#: The config every benchmark model gets (a variant merges its extras in).
BASE_CONFIG: dict[str, Any] = {
    "max_batch_size": MAX_BATCH_SIZE,
    "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
    "dynamic_batching": {"max_queue_delay_microseconds": 0},
}

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ModelSpec:
    """What a load generator needs to know about one benchmark model."""

    name: str
    input_name: str
    sample_shape: tuple[int, ...]
    """Per-sample input shape (without the batch dimension)."""
    outputs: tuple[str, ...]


SPECS: dict[str, ModelSpec] = {
    "mlp": ModelSpec("mlp", "x", (64,), ("y",)),
    "cnn": ModelSpec("cnn", "image", (3, 64, 64), ("y",)),
    "gbt": ModelSpec("gbt", "input", (30,), ("label", "probabilities")),
}


def _weights(rng: np.random.Generator, *shape: int) -> F32:
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def _finish(graph: onnx.GraphProto, *, ml: bool = False) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", OPSET)]
    if ml:
        opsets.append(helper.make_opsetid("ai.onnx.ml", ML_OPSET))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="modelport-bench")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def build_mlp() -> onnx.ModelProto:
    """64 -> 128 -> 128 -> 10 with ReLUs, He-initialised random weights."""
    rng = np.random.default_rng(SEED)
    sizes = [64, 128, 128, 10]
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    current = "x"
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        inits.append(numpy_helper.from_array(_weights(rng, n_out, n_in), f"W{i}"))
        inits.append(numpy_helper.from_array(np.zeros(n_out, np.float32), f"B{i}"))
        last = i == len(sizes) - 2
        gemm_out = "y" if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [current, f"W{i}", f"B{i}"], [gemm_out], transB=1))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [f"r{i}"]))
            current = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, 10])],
        inits,
    )
    return _finish(graph)


def build_cnn() -> onnx.ModelProto:
    """Three 3x3 convolutions at full and half resolution, pooling, a 64->10 Gemm."""
    rng = np.random.default_rng(SEED + 1)
    inits = [
        numpy_helper.from_array(_weights(rng, 64, 3, 3, 3), "C1"),
        numpy_helper.from_array(np.zeros(64, np.float32), "C1b"),
        numpy_helper.from_array(_weights(rng, 64, 64, 3, 3), "C2"),
        numpy_helper.from_array(np.zeros(64, np.float32), "C2b"),
        numpy_helper.from_array(_weights(rng, 64, 64, 3, 3), "C3"),
        numpy_helper.from_array(np.zeros(64, np.float32), "C3b"),
        numpy_helper.from_array(_weights(rng, 10, 64), "W"),
        numpy_helper.from_array(np.zeros(10, np.float32), "Wb"),
    ]
    conv = {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["image", "C1", "C1b"], ["c1"], **conv),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "C2", "C2b"], ["c2"], **conv),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p2", "C3", "C3b"], ["c3"], **conv),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("GlobalAveragePool", ["r3"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W", "Wb"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [BATCH, 3, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, 10])],
        inits,
    )
    return _finish(graph)


def _rename_everywhere(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for value in graph.output:
        if value.name == old:
            value.name = new


def build_gbt() -> onnx.ModelProto:
    """GradientBoostingClassifier (100 trees, depth 3) on breast cancer, via skl2onnx.

    skl2onnx gives ``label`` [N] and ``probabilities`` [N, 2] (names vary
    with its version, so they are taken by position). A batching model's
    outputs need a per-sample shape of at least one dimension, so the label
    is unsqueezed to [N, 1].
    """
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import GradientBoostingClassifier

    data = load_breast_cancer()
    features = data.data.astype(np.float32)
    classifier = GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=SEED)
    classifier.fit(features, data.target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = convert_sklearn(
            classifier,
            initial_types=[("input", FloatTensorType([None, features.shape[1]]))],
            options={id(classifier): {"zipmap": False}},
            target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
        )
    graph = converted.graph
    label_out, proba_out = graph.output[0].name, graph.output[1].name
    _rename_everywhere(graph, label_out, "label_flat")
    _rename_everywhere(graph, proba_out, "probabilities")
    graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "label_axes"))
    graph.node.append(helper.make_node("Unsqueeze", ["label_flat", "label_axes"], ["label"]))
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [BATCH, 1]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [BATCH, 2]),
        ]
    )
    graph.input[0].type.tensor_type.shape.dim[0].dim_param = BATCH
    model = _finish(graph, ml=True)
    # The graph must agree with scikit-learn on every row.
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    labels = session.run(["label"], {"input": features})[0].ravel()
    expected = classifier.predict(features)
    if not np.array_equal(labels, expected):
        raise RuntimeError("gbt: the ONNX graph disagrees with scikit-learn")
    return model


BUILDERS: dict[str, Callable[[], onnx.ModelProto]] = {
    "mlp": build_mlp,
    "cnn": build_cnn,
    "gbt": build_gbt,
}


def sample_input(name: str, batch: int) -> F32:
    """A fixed, realistic input batch for ``name`` (seeded)."""
    spec = SPECS[name]
    rng = np.random.default_rng(SEED + 100)
    if name == "gbt":
        from sklearn.datasets import load_breast_cancer

        rows = load_breast_cancer().data.astype(np.float32)
        return np.ascontiguousarray(rows[np.arange(batch) % len(rows)])
    if name == "cnn":
        # Pixels as an image pipeline gives them: k/255.
        pixels = rng.integers(0, 256, size=(batch, *spec.sample_shape))
        return (pixels / 255.0).astype(np.float32)
    return np.round(rng.standard_normal((batch, *spec.sample_shape)), 4).astype(np.float32)


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def write_model(repo: Path, name: str, model: onnx.ModelProto, config: Mapping[str, Any]) -> Path:
    """Write ``repo/name/1/model.onnx`` and ``repo/name/config.yaml``."""
    folder = repo / name
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.onnx").write_bytes(model.SerializeToString())
    (folder / "config.yaml").write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return folder


def write_variant(repo: Path, base: str, name: str, extra: Mapping[str, Any]) -> Path:
    """Copy model ``base`` to ``name`` with ``extra`` merged (deeply) into its config.

    The caller decides what the extra config is, for example
    ``{"modelport": {"batching": False}}`` or
    ``{"dynamic_batching": {"default_queue_policy": {"max_queue_size": 64}}}``.
    Whether the server accepts it is for the server to say.
    """
    source = repo / base
    config = yaml.safe_load((source / "config.yaml").read_text()) or {}
    folder = repo / name
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(source / "1", folder / "1")
    merged = _merge(config, extra)
    (folder / "config.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    return folder


def nested(dotted_key: str, value: Any) -> dict[str, Any]:
    """``nested("modelport.batching", False)`` -> ``{"modelport": {"batching": False}}``."""
    out: Any = value
    for part in reversed(dotted_key.split(".")):
        out = {part: out}
    result: dict[str, Any] = out
    return result


def generate(repo: Path = DEFAULT_REPO, names: tuple[str, ...] = MODEL_NAMES) -> Path:
    """Build and write every model in ``names``; returns the repository."""
    repo.mkdir(parents=True, exist_ok=True)
    for name in names:
        model = BUILDERS[name]()
        write_model(repo, name, model, BASE_CONFIG)
        # A smoke run: one batch of the sample through ONNX Runtime.
        session = ort.InferenceSession(
            str(repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        session.run(None, {SPECS[name].input_name: sample_input(name, 2)})
    return repo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_REPO)
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    args = parser.parse_args()
    repo = generate(args.out, tuple(args.models))
    print(f"wrote {', '.join(args.models)} to {repo}")


if __name__ == "__main__":
    main()
