"""Rebuild the bundled example models, their configs and sample requests.

Run ``python -m modelport.examples.build_models [OUTPUT] [--samples DIR]``.
OUTPUT defaults to this package's ``models/`` folder and ``--samples`` to the
``samples`` folder next to OUTPUT. Needs the ``sklearn`` extra (scikit-learn,
skl2onnx) and onnxruntime; serving the result needs neither of the first two.

Both datasets ship inside scikit-learn, so nothing is downloaded, and every
random choice is seeded, so a rerun with the same library versions gives the
same models. Each model is checked before it is written: its ONNX graph
must predict the same label as scikit-learn on every dataset row and must
keep the interface the configs promise.

Interface of the graphs (the batch dimension ``N`` is dynamic, Triton's
``max_batch_size`` caps it at 64):

- ``breast_cancer``: ``input`` float32 [N, 30] (the dataset's 30 features,
  unscaled; the scaler is in the graph) -> ``label`` int64 [N, 1]
  (0 malignant, 1 benign) and ``probabilities`` float32 [N, 2].
- ``digits``: ``image`` float32 [N, 64], an 8x8 image flattened row-major
  with raw intensities 0..16 as the dataset gives them (the graph multiplies
  by 1/16, which the network was trained on) -> ``label`` int64 [N, 1]
  (the digit) and ``probabilities`` float32 [N, 10].

``label`` is [N, 1] rather than skl2onnx's [N] because Triton describes
outputs per sample when batching, and a per-sample shape of ``[]`` is
rejected; an Unsqueeze at the end of the graph gives it dims ``[1]``.
"""

from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import yaml
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

#: ONNX opsets onnxruntime has run for years; newer ones buy nothing here.
TARGET_OPSET: dict[str, int] = {"": 17, "ai.onnx.ml": 3}
#: Seed of every random choice (MLP initial weights, batch shuffling).
SEED = 0
#: Dataset row used for each sample request: the first benign tumour, and a
#: "5" the network also finds a little like a "9", so that the README shows
#: probabilities that are not all 0 and 1.
SAMPLE_ROWS: dict[str, int] = {"breast_cancer": 19, "digits": 5}
#: Decimals kept in the sample requests: short enough to read in a README.
SAMPLE_DECIMALS = 4
#: Name of the dynamic batch dimension in every graph input and output.
BATCH_DIM = "N"
#: Digits pixels range over 0..16; the network sees them divided by this.
DIGITS_PIXEL_MAX = 16.0

Float32Array = npt.NDArray[np.float32]
Int64Array = npt.NDArray[np.int64]


@dataclass(frozen=True)
class BuiltModel:
    """One trained, converted and checked example, ready to be written."""

    name: str
    """Folder name in the repository, and the model's name when served."""
    onnx_model: onnx.ModelProto
    """The graph, with its final input and output names and shapes."""
    input_name: str
    """Name of the single float32 input."""
    num_features: int
    """Per-sample width of the input."""
    num_classes: int
    """Per-sample width of ``probabilities``."""
    features: Float32Array
    """The whole dataset as the ONNX input expects it (float32, unscaled)."""
    targets: Int64Array
    """The dataset's true labels."""
    sklearn_labels: Int64Array
    """scikit-learn's predictions on ``features``, the reference for ONNX."""


def train_breast_cancer() -> BuiltModel:
    """Train and convert the tumour classifier (scaler + logistic regression)."""
    data = load_breast_cancer()
    features = data.data.astype(np.float32)
    targets = data.target.astype(np.int64)
    classifier = LogisticRegression(max_iter=1000, random_state=SEED)
    pipeline = Pipeline([("scale", StandardScaler()), ("classify", classifier)])
    # Train on the float32 values the served model receives, so that the ONNX
    # graph and scikit-learn see the very same numbers.
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        pipeline.fit(features, targets)
    converted = convert_sklearn(
        pipeline,
        initial_types=[("input", FloatTensorType([None, features.shape[1]]))],
        options={id(classifier): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    onnx_model = finish_graph(converted, name="breast_cancer")
    return BuiltModel(
        name="breast_cancer",
        onnx_model=onnx_model,
        input_name="input",
        num_features=features.shape[1],
        num_classes=len(classifier.classes_),
        features=features,
        targets=targets,
        sklearn_labels=pipeline.predict(features).astype(np.int64),
    )


def train_digits() -> BuiltModel:
    """Train and convert the 8x8 digit classifier (one hidden layer of 64)."""
    data = load_digits()
    features = data.data.astype(np.float32)
    targets = data.target.astype(np.int64)
    # 1/16 is exact in binary floating point, so dividing here and multiplying
    # by 0.0625 in the graph give bit-identical network inputs.
    scaled = features / np.float32(DIGITS_PIXEL_MAX)
    classifier = MLPClassifier(hidden_layer_sizes=(64,), max_iter=2000, random_state=SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        classifier.fit(scaled, targets)
    converted = convert_sklearn(
        classifier,
        initial_types=[("pixels", FloatTensorType([None, features.shape[1]]))],
        options={id(classifier): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    onnx_model = finish_graph(
        converted,
        name="digits",
        scale_input=("image", 1.0 / DIGITS_PIXEL_MAX),
    )
    return BuiltModel(
        name="digits",
        onnx_model=onnx_model,
        input_name="image",
        num_features=features.shape[1],
        num_classes=len(classifier.classes_),
        features=features,
        targets=targets,
        sklearn_labels=classifier.predict(scaled).astype(np.int64),
    )


def finish_graph(
    model: onnx.ModelProto,
    *,
    name: str,
    scale_input: tuple[str, float] | None = None,
) -> onnx.ModelProto:
    """Give a skl2onnx classifier graph the served interface.

    skl2onnx emits two outputs, label [N] then probabilities [N, C], whose
    names depend on its version (``output_label`` / ``output_probability``
    in older ones, ``label`` / ``probabilities`` in newer). They are taken by
    position and renamed, everywhere they occur, to an internal name for the
    flat label and to ``probabilities``; an Unsqueeze then makes ``label``
    [N, 1]. With ``scale_input=(new_name, factor)`` a Mul by ``factor`` is put
    in front, and the graph's input becomes ``new_name``.
    """
    graph = model.graph
    label_out, proba_out = graph.output
    renames = {label_out.name: "label_flat", proba_out.name: "probabilities"}
    _rename_values(graph, renames)

    num_classes = proba_out.type.tensor_type.shape.dim[1].dim_value
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [BATCH_DIM, 1]),
            helper.make_tensor_value_info(
                "probabilities", TensorProto.FLOAT, [BATCH_DIM, num_classes]
            ),
        ]
    )
    graph.initializer.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "label_axes"))
    graph.node.append(
        helper.make_node("Unsqueeze", ["label_flat", "label_axes"], ["label"], name="LabelColumn")
    )

    (graph_input,) = graph.input
    width = graph_input.type.tensor_type.shape.dim[1].dim_value
    if scale_input is not None:
        new_name, factor = scale_input
        graph.initializer.append(
            numpy_helper.from_array(np.array(factor, dtype=np.float32), "input_scale")
        )
        # Prepended so the node list stays in topological order.
        graph.node.insert(
            0,
            helper.make_node(
                "Mul", [new_name, "input_scale"], [graph_input.name], name="ScaleInput"
            ),
        )
        input_name = new_name
    else:
        input_name = graph_input.name
    del graph.input[:]
    graph.input.append(
        helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [BATCH_DIM, width])
    )

    graph.name = name
    graph.doc_string = ""
    model.doc_string = (
        f"modelport bundled example {name!r}; rebuilt by python -m modelport.examples.build_models"
    )
    # skl2onnx can list the default domain twice; keep one entry per domain,
    # at its highest version, so every checker sees a well-formed model.
    opsets: dict[str, int] = {}
    for entry in model.opset_import:
        opsets[entry.domain] = max(opsets.get(entry.domain, 0), entry.version)
    del model.opset_import[:]
    model.opset_import.extend(
        helper.make_opsetid(domain, version) for domain, version in sorted(opsets.items())
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def _rename_values(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """Rename values in every node and value_info, so no reference dangles."""
    for node in graph.node:
        node.input[:] = [renames.get(value, value) for value in node.input]
        node.output[:] = [renames.get(value, value) for value in node.output]
    for info in graph.value_info:
        info.name = renames.get(info.name, info.name)


def verify_model(built: BuiltModel) -> tuple[Int64Array, Float32Array]:
    """Run the graph on the whole dataset; fail unless it matches scikit-learn.

    Returns the labels (flattened) and probabilities ONNX gives, for the report.
    """
    session = ort.InferenceSession(
        built.onnx_model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    inputs = session.get_inputs()
    outputs = session.get_outputs()
    if [i.name for i in inputs] != [built.input_name]:
        raise AssertionError(f"{built.name}: inputs {[i.name for i in inputs]}")
    if [o.name for o in outputs] != ["label", "probabilities"]:
        raise AssertionError(f"{built.name}: outputs {[o.name for o in outputs]}")
    label, probabilities = session.run(
        ["label", "probabilities"], {built.input_name: built.features}
    )
    rows = len(built.features)
    if label.shape != (rows, 1) or label.dtype != np.int64:
        raise AssertionError(f"{built.name}: label {label.dtype} {label.shape}")
    if probabilities.shape != (rows, built.num_classes):
        raise AssertionError(f"{built.name}: probabilities {probabilities.shape}")
    flat = label[:, 0]
    mismatches = int(np.count_nonzero(flat != built.sklearn_labels))
    if mismatches:
        raise AssertionError(f"{built.name}: {mismatches} labels differ from sklearn")
    if not np.array_equal(flat, probabilities.argmax(axis=1)):
        raise AssertionError(f"{built.name}: label is not the most probable class")
    return flat, probabilities


def config_for(built: BuiltModel) -> dict[str, Any]:
    """Return the Triton model configuration, with Triton's own field names.

    With ``max_batch_size`` > 0, Triton's dims leave out the batch dimension.
    """
    return {
        "backend": "onnxruntime",
        "max_batch_size": 64,
        "input": [
            {
                "name": built.input_name,
                "data_type": "TYPE_FP32",
                "dims": [built.num_features],
            }
        ],
        "output": [
            {"name": "label", "data_type": "TYPE_INT64", "dims": [1]},
            {
                "name": "probabilities",
                "data_type": "TYPE_FP32",
                "dims": [built.num_classes],
            },
        ],
        "version_policy": {"latest": {"num_versions": 1}},
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
    }


def sample_for(built: BuiltModel) -> dict[str, Any]:
    """Return an OIP v2 request body carrying one real dataset row, rounded.

    Rounding keeps the README readable; :func:`main` checks that the model
    still gives the row's true label on the rounded values.
    """
    row = built.features[SAMPLE_ROWS[built.name]]
    data = [round(float(value), SAMPLE_DECIMALS) for value in row]
    return {
        "inputs": [
            {
                "name": built.input_name,
                "shape": [1, built.num_features],
                "datatype": "FP32",
                "data": data,
            }
        ]
    }


def predict_sample(built: BuiltModel, sample: dict[str, Any]) -> tuple[int, list[float]]:
    """Return the label and probabilities onnxruntime gives for a sample body."""
    session = ort.InferenceSession(
        built.onnx_model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    (tensor,) = sample["inputs"]
    batch = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    label, probabilities = session.run(["label", "probabilities"], {tensor["name"]: batch})
    # Four significant digits: enough to read, and stable across BLAS builds.
    return int(label[0, 0]), [float(f"{p:.4g}") for p in probabilities[0]]


def write_model(built: BuiltModel, repository: Path) -> Path:
    """Write ``<name>/config.yaml`` and ``<name>/1/model.onnx``; return the ONNX path."""
    model_dir = repository / built.name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    onnx_path = model_dir / "1" / "model.onnx"
    onnx_path.write_bytes(built.onnx_model.SerializeToString())
    header = (
        "# Triton model configuration, Triton's field names.\n"
        "# Generated by python -m modelport.examples.build_models; do not edit.\n"
    )
    body = yaml.safe_dump(config_for(built), sort_keys=False, default_flow_style=None)
    (model_dir / "config.yaml").write_text(header + body, encoding="utf-8")
    return onnx_path


def write_sample(built: BuiltModel, sample: dict[str, Any], samples: Path) -> Path:
    """Write ``<name>.json``, the sample request body; return its path."""
    samples.mkdir(parents=True, exist_ok=True)
    path = samples / f"{built.name}.json"
    path.write_text(json.dumps(sample) + "\n", encoding="utf-8")
    return path


def build(repository: Path, samples: Path) -> None:
    """Train, check and write every example, printing what the README shows."""
    for built in (train_breast_cancer(), train_digits()):
        labels, _ = verify_model(built)
        accuracy = float(np.mean(labels == built.targets))
        sample = sample_for(built)
        label, probabilities = predict_sample(built, sample)
        true_label = int(built.targets[SAMPLE_ROWS[built.name]])
        if label != true_label:
            raise AssertionError(
                f"{built.name}: rounded sample predicts {label}, row says {true_label}"
            )
        onnx_path = write_model(built, repository)
        sample_path = write_sample(built, sample, samples)
        print(f"{built.name}:")
        print(f"  model     {onnx_path} ({onnx_path.stat().st_size} bytes)")
        print(f"  sample    {sample_path} (dataset row {SAMPLE_ROWS[built.name]})")
        print(f"  training accuracy {accuracy:.4f} on {len(labels)} rows")
        print(f"  sample -> label {label} (true {true_label})")
        print(f"  sample -> probabilities {probabilities}")


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and rebuild the examples."""
    default_repository = Path(__file__).resolve().parent / "models"
    parser = argparse.ArgumentParser(
        prog="python -m modelport.examples.build_models",
        description="Rebuild modelport's bundled example models.",
    )
    parser.add_argument(
        "output",
        nargs="?",
        type=Path,
        default=default_repository,
        help="model repository to write (default: the package's models/ folder)",
    )
    parser.add_argument(
        "--samples",
        type=Path,
        default=None,
        help="folder for the sample requests (default: 'samples' next to OUTPUT)",
    )
    args = parser.parse_args(argv)
    repository: Path = args.output
    samples: Path = args.samples or repository.parent / "samples"
    build(repository, samples)


if __name__ == "__main__":
    main()
