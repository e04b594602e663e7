"""MLflow backend (``backend: mlflow``, a version directory holding an ``MLmodel`` file).

The model loads through ``mlflow.pyfunc.load_model`` (mlflow-skinny), so any
flavour with a python_function form serves, provided its framework is
installed here (a missing one fails that model, naming the package).

Tensors come from the model's signature when it has one:

- a tensor-based schema (``TensorSpec``) is served as it is: the same names,
  dtypes and shapes (an unnamed single tensor is called ``input`` or
  ``predictions``);
- a column-based schema (``ColSpec``, a DataFrame of named columns) is served
  as one input per column, as MLServer's pandas codec sends a DataFrame: each
  named after its column, shape [-1, 1], typed from the column (string →
  BYTES, double → FP64, float → FP32, long → INT64, integer → INT32,
  boolean → BOOL); the batch reaches the model as a DataFrame with the
  schema's columns, in its order and dtypes (see runtime/columns.py).
  config.yaml may list every column to serve other wire types (the values
  are cast to the schema's). A schema without column names, or a config.yaml
  that lists a single input that is not one of the columns, serves the
  columns as ONE input tensor ``input`` of shape [-1, n_columns] instead, as
  earlier releases did: FP32 by default, BYTES when every column is a
  string, each row one DataFrame row. Column-based outputs become one tensor
  ``predictions`` of shape [-1, n_columns].

Outputs the model gives as [N] are served as [N, 1]. Names the model does not
name itself (``input``, ``predictions``) and their datatypes may be set in
config.yaml, as may the whole signature of a model logged without one; there
config.yaml must list the input and output. Without a signature a single input
is passed to the model as an array, or as a DataFrame with the parameter
``input_format: dataframe``; several inputs are passed as a dict of arrays.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

with warnings.catch_warnings():
    # mlflow warns about its own type hints while importing; nothing a model owner can act on.
    warnings.simplefilter("ignore")
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model
    from mlflow.types import DataType
    from mlflow.types.schema import ColSpec, Schema
    from mlflow.types.schema import TensorSpec as MlflowTensorSpec

from modelport.config.model import ModelConfig, ModelInput, ModelOutput
from modelport.dataplane.runtime.columns import Column, Columns, column_datatypes, decode_text
from modelport.dataplane.runtime.files import version_file
from modelport.errors import InvalidRequest, ModelLoadError, first_line
from modelport.types import CONFIG_TYPES, DTYPES, Array, ModelSignature, TensorSpec, datatype_of

log = logging.getLogger("modelport.runtime.mlflow")

MLMODEL_FILENAME = "MLmodel"
INPUT_NAME = "input"
OUTPUT_NAME = "predictions"

#: MLflow column types -> OIP datatypes.
COLUMN_TYPES: dict[DataType, str] = {
    DataType.boolean: "BOOL",
    DataType.integer: "INT32",
    DataType.long: "INT64",
    DataType.float: "FP32",
    DataType.double: "FP64",
    DataType.string: "BYTES",
}

#: How inputs are handed to ``PyFuncModel.predict``: one matrix as a DataFrame,
#: one array, a dict of arrays, or one input per DataFrame column.
_FRAME, _ARRAY, _DICT, _COLUMNS = "dataframe", "tensor", "dict", "columns"


@dataclass(frozen=True, slots=True)
class _Tensor:
    """One served tensor and where it sits in what pyfunc takes or gives.

    ``key`` is its name in a dict (or DataFrame column) on the model's side;
    ``flat`` marks a batched rank-1 model tensor served as [N, 1]; ``dtype``
    is what the model's tensor schema demands when config.yaml serves the
    tensor as another datatype (MLflow refuses a tensor of the wrong dtype).
    """

    spec: TensorSpec
    key: str | None = None
    flat: bool = False
    dtype: np.dtype[Any] | None = None


def _oip(path: Path, what: str, dtype: Any) -> str:
    try:
        return datatype_of(np.empty(0, dtype=np.dtype(dtype)))
    except TypeError:
        raise ModelLoadError(f"{path}: {what} has dtype {dtype}, which is not served") from None


def _shaped(
    name: str, datatype: str, shape: tuple[int, ...], key: str | None, dtype: Any
) -> _Tensor:
    flat = len(shape) == 1 and shape[0] == -1
    served = (-1, 1) if flat else shape
    return _Tensor(TensorSpec(name, datatype, served), key, flat, np.dtype(dtype))


def _from_config(config: ModelConfig, tensor: ModelInput | ModelOutput) -> _Tensor:
    batch = (-1,) if config.max_batch_size > 0 else ()
    return _Tensor(
        TensorSpec(tensor.name, CONFIG_TYPES[tensor.data_type], (*batch, *tensor.dims)), tensor.name
    )


def _renamed(
    tensors: list[_Tensor], declared: Sequence[ModelInput | ModelOutput], generated: bool
) -> list[_Tensor]:
    """Take names and datatypes from config.yaml for tensors the model does not name.

    Only when config.yaml lists as many tensors as the model has; named
    tensors keep their names so a typo in config.yaml is reported at load.
    """
    if not generated or len(declared) != len(tensors):
        return tensors
    return [
        _Tensor(TensorSpec(d.name, CONFIG_TYPES[d.data_type], t.spec.shape), t.key, t.flat, t.dtype)
        for t, d in zip(tensors, declared, strict=True)
    ]


def _column_datatype(path: Path, what: str, columns: Sequence[ColSpec]) -> str | None:
    """The one datatype of a set of columns; None when it has no fixed type (Any)."""
    found: set[str] = set()
    for c in columns:
        if not isinstance(c.type, DataType):
            if type(c.type).__name__ == "AnyType":
                continue
            raise ModelLoadError(
                f"{path}: {what} column {c.name!r} has type {c.type}, which is not served; "
                "list the model's input and output in config.yaml"
            )
        datatype = COLUMN_TYPES.get(c.type)
        if datatype is None:
            raise ModelLoadError(
                f"{path}: {what} column {c.name!r} has type {c.type.name}, which is not served"
            )
        found.add(datatype)
    if "BYTES" in found and len(found) > 1:
        raise ModelLoadError(
            f"{path}: {what} mixes string and numeric columns, which one tensor cannot carry; "
            "list the model's input and output in config.yaml"
        )
    if len(found) == 1:
        return found.pop()
    return "FP64" if found else None


class MlflowRuntime:
    """One pyfunc model and how its tensors are served."""

    #: A pyfunc model is user code in whatever flavour: never on the loop, never pinned.
    inline_safe = False
    pin_safe = False

    def __init__(
        self,
        model: Any,
        mode: str,
        inputs: list[_Tensor],
        outputs: list[_Tensor],
        columns: list[Any] | None = None,
        column_dtypes: dict[Any, np.dtype[Any]] | None = None,
        frame: Columns | None = None,
    ) -> None:
        self._model: Any = model
        self._frame = frame
        self._mode = mode
        self._inputs = inputs
        self._outputs = outputs
        self._columns = columns
        self._column_dtypes = column_dtypes or {}
        self._native = ModelSignature(
            inputs=tuple(t.spec for t in inputs), outputs=tuple(t.spec for t in outputs)
        )

    @property
    def native(self) -> ModelSignature:
        return self._native

    @property
    def input_format(self) -> str:
        """What pyfunc receives: ``dataframe`` (from one matrix), ``columns`` (a DataFrame
        from one input per column), ``tensor`` or ``dict`` (of tensors)."""
        return self._mode

    @property
    def columns(self) -> Columns | None:
        """The schema's columns when the model is served one input per column."""
        return self._frame

    def _feed(self, inputs: Mapping[str, Array]) -> Any:
        if self._frame is not None:
            return self._frame.frame(inputs)
        arrays: dict[str, Array] = {}
        for t in self._inputs:
            array = inputs[t.spec.name]
            if t.flat:
                array = array.reshape(-1)
            if t.spec.datatype == "BYTES":
                array = decode_text(t.spec.name, array.reshape(-1)).reshape(array.shape)
            elif t.dtype is not None and t.dtype.kind not in "OUS" and array.dtype != t.dtype:
                array = array.astype(t.dtype)
            arrays[t.spec.name] = array
        if self._mode == _FRAME:
            (array,) = arrays.values()
            if array.ndim == 1:
                array = array.reshape(-1, 1)
            dtypes = set(self._column_dtypes.values())
            if len(dtypes) == 1 and len(self._column_dtypes) == array.shape[1]:
                # One type for every column: cast the block once, not column by column.
                array = array.astype(dtypes.pop(), copy=False)
                return pd.DataFrame(array, columns=self._columns, copy=False)
            frame = pd.DataFrame(array, columns=self._columns, copy=False)
            return frame.astype(self._column_dtypes) if self._column_dtypes else frame
        if self._mode == _ARRAY:
            (array,) = arrays.values()
            return array
        return {t.key or t.spec.name: arrays[t.spec.name] for t in self._inputs}

    def predict(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        model = self._model
        if model is None:
            raise RuntimeError("model is unloaded")
        try:
            result = model.predict(self._feed(inputs))
        except MlflowException as exc:
            # Schema enforcement refusals are the caller's to fix.
            if exc.error_code == "INVALID_PARAMETER_VALUE":
                raise InvalidRequest(f"model rejected the inputs: {first_line(exc)}") from None
            raise
        wanted = set(outputs)
        return {
            t.spec.name: _to_array(t, _pick(result, t, len(self._outputs)))
            for t in self._outputs
            if t.spec.name in wanted
        }

    def unload(self) -> None:
        self._model = None


def _pick(result: Any, tensor: _Tensor, count: int) -> Any:
    """This output's part of what pyfunc returned (the whole of it when there is one output)."""
    if isinstance(result, dict):
        if tensor.key in result:
            return result[tensor.key]
        if count == 1 and len(result) == 1:
            return next(iter(result.values()))
        raise RuntimeError(f"model returned no {tensor.key!r} (got {', '.join(map(str, result))})")
    if count == 1:
        return result
    if isinstance(result, pd.DataFrame) and tensor.key in result.columns:
        return result[tensor.key]
    raise RuntimeError(
        f"model returned {type(result).__name__}, which does not name its {count} outputs"
    )


def _to_array(tensor: _Tensor, value: Any) -> Array:
    if isinstance(value, pd.DataFrame | pd.Series):
        array: Array = value.to_numpy()
    else:
        array = np.asarray(value)
    if array.ndim == 1 and len(tensor.spec.shape) == 2:
        array = array.reshape(-1, 1)
    if tensor.spec.datatype == "BYTES":
        out = np.empty(array.shape, dtype=object)
        out.reshape(-1)[:] = [
            v if isinstance(v, bytes) else str(v).encode("utf-8") for v in array.reshape(-1)
        ]
        return out
    return array.astype(DTYPES[tensor.spec.datatype], copy=False)


def _tensors(path: Path, schema: Schema, kind: str, default: str) -> tuple[bool, list[_Tensor]]:
    """The tensors of a tensor-based schema, and whether the model names them."""
    specs = [s for s in schema.inputs if isinstance(s, MlflowTensorSpec)]
    named = schema.has_input_names()
    tensors = []
    for s in specs:
        name = s.name if named and s.name else default
        datatype = _oip(path, f"{kind} {name!r}", s.type)
        tensors.append(_shaped(name, datatype, tuple(s.shape), name if named else None, s.type))
    return named, tensors


def _tensor_inputs(path: Path, config: ModelConfig, schema: Schema) -> tuple[str, list[_Tensor]]:
    named, tensors = _tensors(path, schema, "input", INPUT_NAME)
    mode = _ARRAY if not named and len(tensors) == 1 else _DICT
    return mode, _renamed(tensors, config.input, generated=not named)


def _column_inputs(
    path: Path, config: ModelConfig, schema: Schema
) -> tuple[list[_Tensor], list[Any], dict[Any, np.dtype[Any]]]:
    columns = [c for c in schema.inputs if isinstance(c, ColSpec)]
    names: list[Any] = (
        schema.input_names() if schema.has_input_names() else list(range(len(columns)))
    )
    datatype = _column_datatype(path, "input", columns)
    dtypes: dict[Any, np.dtype[Any]] = {}
    if datatype != "BYTES":
        datatype = "FP32"
        for name, c in zip(names, columns, strict=True):
            if isinstance(c.type, DataType):
                dtypes[name] = np.dtype(c.type.to_numpy())
    served = _Tensor(TensorSpec(INPUT_NAME, datatype, (-1, len(columns))))
    (tensor,) = _renamed([served], config.input, generated=True)
    if (datatype == "BYTES") != (tensor.spec.datatype == "BYTES"):
        kind = "string" if datatype == "BYTES" else "numeric"
        raise ModelLoadError(
            f"{path}: input {tensor.spec.name!r} cannot be {tensor.spec.datatype}: the model's "
            f"columns are {kind}"
        )
    return [tensor], names, dtypes


def _per_column(config: ModelConfig, schema: Schema) -> bool:
    """Whether a column schema is served one input per column (else as one matrix)."""
    if not schema.has_input_names():
        return False
    names = {str(n) for n in schema.input_names()}
    return all(t.name in names for t in config.input)


def _columns(path: Path, config: ModelConfig, schema: Schema) -> Columns:
    """One served input per schema column, typed from the column or config.yaml."""
    columns = [c for c in schema.inputs if isinstance(c, ColSpec)]
    names = [str(c.name) for c in columns]
    inferred: dict[str, str] = {}
    model_dtypes: dict[str, np.dtype[Any] | None] = {}
    for name, c in zip(names, columns, strict=True):
        model_dtypes[name] = None
        if not isinstance(c.type, DataType):
            if type(c.type).__name__ == "AnyType":
                continue  # no fixed type: served as config.yaml lists it, else the default
            raise ModelLoadError(
                f"{path}: input column {name!r} has type {c.type}, which is not served"
            )
        datatype = COLUMN_TYPES.get(c.type)
        if datatype is None:
            raise ModelLoadError(
                f"{path}: input column {name!r} has type {c.type.name}, which is not served"
            )
        inferred[name] = datatype
        if datatype != "BYTES":
            model_dtypes[name] = np.dtype(c.type.to_numpy())
    types = column_datatypes(names, inferred, config, path, log)
    for name in names:
        if (types[name] == "BYTES") != (inferred.get(name, types[name]) == "BYTES"):
            kind = "string" if inferred[name] == "BYTES" else "numeric"
            raise ModelLoadError(
                f"{path}: input {name!r} cannot be {types[name]}: the model's column is {kind}"
            )
    return Columns(
        [
            Column(name, c.name, types[name], model_dtypes[name])
            for name, c in zip(names, columns, strict=True)
        ]
    )


def _outputs(path: Path, config: ModelConfig, schema: Schema | None) -> list[_Tensor]:
    if schema is None:
        if not config.output:
            raise ModelLoadError(
                f"{path}: the model's signature has no outputs; config.yaml must list its output"
            )
        return [_from_config(config, t) for t in config.output]
    if schema.is_tensor_spec():
        named, tensors = _tensors(path, schema, "output", OUTPUT_NAME)
        return _renamed(tensors, config.output, generated=not named)
    columns = [c for c in schema.inputs if isinstance(c, ColSpec)]
    datatype = _column_datatype(path, "output", columns) or "FP64"
    served = _Tensor(TensorSpec(OUTPUT_NAME, datatype, (-1, len(columns))))
    return _renamed([served], config.output, generated=True)


def _pickled(path: Path) -> str | None:
    """Which part of the model, if any, is a pickle that mlflow would unpickle.

    Covers the formats known to be pickles: a pyfunc ``python_model`` (always
    cloudpickled) and the sklearn flavour saved as pickle or cloudpickle.
    Other flavours load as their own frameworks load them; models from code
    run their code file by design, as ``backend: python`` does.
    """
    try:
        flavors: dict[str, Any] = Model.load(str(path)).flavors
    except Exception as exc:  # YAML and mlflow errors alike
        raise ModelLoadError(f"{path}: not a readable MLmodel file: {first_line(exc)}") from None
    pyfunc = flavors.get("python_function") or {}
    if pyfunc.get("python_model"):
        return f"its python_model ({pyfunc['python_model']}) is a cloudpickle"
    sklearn = flavors.get("sklearn") or {}
    if sklearn and sklearn.get("serialization_format", "cloudpickle") != "skops":
        fmt = sklearn.get("serialization_format", "cloudpickle")
        return f"its scikit-learn model ({sklearn.get('pickled_model')}) is a {fmt} file"
    return None


def load_mlflow(version_dir: Path, config: ModelConfig, instances: int) -> MlflowRuntime:
    """Load the MLflow model in a version directory (or its ``default_model_filename`` folder).

    ``instances`` is unused: pyfunc has no thread pool of its own to size.
    """
    model_dir = (
        version_file(version_dir, config.default_model_filename)
        if config.default_model_filename
        else version_dir
    )
    path = model_dir / MLMODEL_FILENAME
    if not path.is_file():
        raise ModelLoadError(f"{path}: no {MLMODEL_FILENAME} file in {model_dir}")
    input_format = config.parameter("input_format")
    if input_format not in (None, _FRAME, _ARRAY):
        raise ModelLoadError(
            f"parameters.input_format: expected {_FRAME!r} or {_ARRAY!r}, got {input_format!r}"
        )
    pickled = _pickled(path)
    if pickled is not None and not config.modelport.allow_unsafe_pickle:
        raise ModelLoadError(
            f"{path}: {pickled}, and loading a pickle runs code from it, so it is refused unless "
            "the model's config.yaml sets 'modelport: {allow_unsafe_pickle: true}'"
        )
    try:
        model = mlflow.pyfunc.load_model(str(model_dir))
    except ModuleNotFoundError as exc:
        package = (exc.name or str(exc)).split(".")[0]
        raise ModelLoadError(
            f"{path}: the model's flavour needs the {package!r} package, which is not installed"
        ) from None
    except Exception as exc:  # mlflow and the flavours raise many unrelated types
        raise ModelLoadError(f"{path}: not a loadable MLflow model: {first_line(exc)}") from None
    finally:
        if pickled is not None:
            log.warning(
                f"{path}: loading this model ran code from a pickle ({pickled}; "
                "modelport.allow_unsafe_pickle is true); serve only models you trust",
                extra={"model": config.name, "path": str(model_dir)},
            )
    in_schema: Schema | None = model.metadata.get_input_schema()
    out_schema: Schema | None = model.metadata.get_output_schema()
    columns: list[Any] | None = None
    dtypes: dict[Any, np.dtype[Any]] | None = None
    frame: Columns | None = None
    if in_schema is None:
        if not config.input or not config.output:
            raise ModelLoadError(
                f"{path}: the model was logged without a signature; config.yaml must list "
                "its input and output (name, data_type, dims)"
            )
        inputs = [_from_config(config, t) for t in config.input]
        mode = _DICT if len(inputs) > 1 else (input_format or _ARRAY)
    elif in_schema.is_tensor_spec():
        mode, inputs = _tensor_inputs(path, config, in_schema)
    elif _per_column(config, in_schema):
        frame = _columns(path, config, in_schema)
        inputs = [_Tensor(spec, spec.name) for spec in frame.specs]
        mode = _COLUMNS
    else:
        inputs, columns, dtypes = _column_inputs(path, config, in_schema)
        mode = _FRAME
    outputs = _outputs(path, config, out_schema)
    runtime = MlflowRuntime(model, mode, inputs, outputs, columns, dtypes, frame)
    flavors = ", ".join(sorted(k for k in model.metadata.flavors if k != "python_function"))
    log.info(
        "mlflow model ready",
        extra={
            "model": config.name,
            "path": str(model_dir),
            "flavors": flavors,
            "input_format": mode,
        },
    )
    return runtime
