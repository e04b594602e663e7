"""What the tree-ensemble backends (XGBoost, LightGBM) share.

Both take one matrix of numeric features and answer ``probabilities`` /
``label`` or ``predictions``.
Kept here once so the two backends agree on names, types and errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from modelport.config.model import ModelConfig
from modelport.errors import InvalidRequest, ModelLoadError
from modelport.types import CONFIG_TYPES, DTYPES, Array, TensorSpec

DEFAULT_INPUT = "input"
#: Input datatypes whose numpy arrays hold feature values. BF16 is held as
#: raw uint16 bit patterns and BYTES as objects, so neither qualifies.
FEATURE_TYPES = frozenset(
    {"BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
    | {"FP16", "FP32", "FP64"}
)


def feature_input_spec(
    path: Path, config: ModelConfig, features: int, framework: str
) -> TensorSpec:
    """The one input: named and typed by config.yaml when it lists it, else ``input`` FP32."""
    if len(config.input) > 1:
        names = ", ".join(i.name for i in config.input)
        raise ModelLoadError(
            f"{path}: config lists {len(config.input)} inputs ({names}), but a booster takes "
            "one feature matrix"
        )
    if not config.input:
        return TensorSpec(DEFAULT_INPUT, "FP32", (-1, features))
    declared = config.input[0]
    datatype = CONFIG_TYPES[declared.data_type]
    if datatype not in FEATURE_TYPES:
        raise ModelLoadError(
            f"{path}: input {declared.name!r} is {declared.data_type}, but {framework} takes "
            "numeric features (TYPE_FP32, TYPE_FP64, integer or boolean types)"
        )
    return TensorSpec(declared.name, datatype, (-1, features))


def float_output_types(config: ModelConfig, default: str) -> dict[str, str]:
    """Types of ``probabilities`` and ``predictions``: ``default``, or as config.yaml lists them."""
    chosen = {"probabilities": default, "predictions": default}
    for out in config.output:
        datatype = CONFIG_TYPES[out.data_type]
        if out.name in chosen and datatype in ("FP32", "FP64"):
            chosen[out.name] = datatype
    return chosen


def empty_output(spec: TensorSpec) -> Array:
    """A zero-row array of an output's shape, for an empty batch."""
    return np.zeros((0, *spec.shape[1:]), dtype=DTYPES[spec.datatype])


def feature_matrix(spec: TensorSpec, inputs: Mapping[str, Array]) -> Array:
    """The batch's feature matrix, refused unless it has the model's feature count."""
    features = spec.shape[1]
    x = inputs.get(spec.name)
    if x is None:
        raise InvalidRequest(f"missing input {spec.name!r}")
    if x.ndim != 2 or x.shape[1] != features:
        got = f"{x.shape[1]} features per row" if x.ndim == 2 else f"shape {list(x.shape)}"
        raise InvalidRequest(
            f"input {spec.name!r} has {got}; the model expects {features} features "
            f"(shape [rows, {features}])"
        )
    return x


def class_outputs(floats: Mapping[str, str], classes: int) -> tuple[TensorSpec, TensorSpec]:
    """``probabilities`` [N, classes] and ``label`` [N, 1] of a classifier."""
    return (
        TensorSpec("probabilities", floats["probabilities"], (-1, classes)),
        TensorSpec("label", "INT64", (-1, 1)),
    )
