"""scikit-learn backend (``backend: sklearn``; ``model.skops``, ``model.pkl``, ``model.joblib``).

``model.skops`` is the safe format: skops rebuilds the object without running
code from the file, and this backend trusts only the types scikit-learn,
numpy and scipy define (classes, never functions), so a file cannot smuggle
in an arbitrary callable. Pickle and joblib files run code while loading;
they are served only when the model's config says
``modelport: {allow_unsafe_pickle: true}``, and every load is logged as such.

The signature is read from the fitted estimator. Inputs:

- a model fitted on a DataFrame (``feature_names_in_``) takes one input per
  column, ``[-1, 1]`` each, as MLServer's pandas codec sends them; the batch
  reaches it as a DataFrame (runtime/columns.py). Column types come from
  config.yaml when it lists every column, else from the model: the
  transformers of a leading ColumnTransformer (an encoder's categories, a
  vectorizer's text, a scaler's numbers, see :func:`column_types`), FP64
  for an estimator that reads numbers, and FP64 with a logged warning for
  columns nothing tells (passthrough, FunctionTransformer);
- any other model takes one matrix ``[-1, n_features_in_]`` (FP32, or the
  type config.yaml gives it), as does a DataFrame-fitted model whose
  config.yaml lists a single input that is not one of its columns (its rows
  then become DataFrame rows with the fitted column names); a
  ``TYPE_STRING`` input feeds text pipelines one string per row.

Outputs, by default: ``label`` + ``probabilities`` for a classifier,
``predictions`` for a regressor, ``output`` for a transformer.
``modelport.method`` picks a single method (predict, predict_proba or
transform) instead.

Threads: estimators' ``n_jobs`` and scikit-learn's OpenMP loops are held to
this instance's share of the cores (``parameters: {n_jobs: ...}`` overrides),
so instances x threads stays below the core count.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import is_classifier, is_clusterer, is_outlier_detector
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped]

from modelport.config.model import ModelConfig
from modelport.dataplane.runtime.columns import Column, Columns, column_datatypes, decode_text
from modelport.dataplane.runtime.files import model_file
from modelport.dataplane.runtime.threads import default_threads
from modelport.errors import InferenceFailed, InvalidRequest, ModelLoadError, first_line
from modelport.types import CONFIG_TYPES, DTYPES, Array, ModelSignature, TensorSpec

log = logging.getLogger("modelport.runtime.sklearn")

#: Files looked for in a version directory, safest first.
MODEL_FILENAMES = ("model.skops", "model.pkl", "model.joblib")
SKOPS_SUFFIXES = (".skops",)
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")

#: The methods ``modelport.method`` may name.
METHODS = ("predict", "predict_proba", "transform")

#: Output name -> the estimator method that computes it.
OUTPUT_METHODS = {
    "label": "predict",
    "predictions": "predict",
    "probabilities": "predict_proba",
    "output": "transform",
}

#: Float outputs may be declared in any of these types in config.yaml.
FLOAT_TYPES = ("FP16", "FP32", "FP64")

DEFAULT_INPUT = "input"


@dataclass(frozen=True, slots=True)
class _Output:
    """One served output: wire name, what computes it, and its type and width."""

    name: str
    kind: str  # a key of OUTPUT_METHODS
    datatype: str
    width: int  # columns per row, -1 when unknown

    @property
    def method(self) -> str:
        return OUTPUT_METHODS[self.kind]


# ---------------------------------------------------------------- loading


def _resolve(name: str) -> object | None:
    """The object a skops type name denotes, importing only inside its package.

    Callers have already checked that the name lies in scikit-learn, numpy or
    scipy, so the import cannot reach a module from the model file.
    """
    parts = name.split(".")
    if not all(p.isidentifier() for p in parts):
        return None
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def _allowed_type(name: str) -> bool:
    """Whether a type skops does not trust by default may be loaded.

    Allowed: classes defined by scikit-learn, numpy scalar/array/dtype and
    random-generator classes, and scipy sparse matrices. Functions are never
    allowed, even scikit-learn's: an estimator holding one would call it.
    """
    package = name.split(".", 1)[0]
    if package not in ("sklearn", "numpy", "scipy"):
        return False
    obj = _resolve(name)
    if not isinstance(obj, type):
        return False
    if package == "sklearn":
        return True
    if package == "numpy":
        return (
            issubclass(
                obj,
                (np.generic, np.ndarray, np.dtype, np.random.BitGenerator, np.random.Generator),
            )
            or obj is np.random.RandomState
        )
    sparse = importlib.import_module("scipy.sparse")
    return name.startswith("scipy.sparse.") and issubclass(obj, (sparse.spmatrix, sparse.sparray))


def _load_skops(path: Path) -> Any:
    import skops.io as sio

    try:
        untrusted: list[str] = sio.get_untrusted_types(file=path)
    except Exception as exc:  # a corrupt zip, a missing schema: skops' own errors
        raise ModelLoadError(
            f"{path}: not a loadable skops file: {first_line(exc, limit=300)}"
        ) from None
    refused = [t for t in untrusted if not _allowed_type(t)]
    if refused:
        raise ModelLoadError(
            f"{path}: refusing to load types that are not scikit-learn, numpy or scipy "
            f"classes: {', '.join(refused)}"
        )
    try:
        return sio.load(path, trusted=untrusted)
    except Exception as exc:
        raise ModelLoadError(
            f"{path}: not a loadable skops file: {first_line(exc, limit=300)}"
        ) from None


def _load_pickle(path: Path, config: ModelConfig) -> Any:
    if not config.modelport.allow_unsafe_pickle:
        raise ModelLoadError(
            f"{path}: loading a pickle/joblib file runs code from it, so it is refused unless "
            "the model's config.yaml sets 'modelport: {allow_unsafe_pickle: true}'; "
            "model.skops is the safe format"
        )
    import joblib

    try:
        # joblib reads plain pickles too, and the .pkl files joblib.dump writes.
        return joblib.load(path)
    except Exception as exc:
        raise ModelLoadError(
            f"{path}: not a loadable pickle/joblib file: {type(exc).__name__}: "
            f"{first_line(exc, limit=300)}"
        ) from None
    finally:
        log.warning(
            f"{path}: loading this pickle/joblib file ran code from it "
            "(modelport.allow_unsafe_pickle is true); serve only files you trust",
            extra={"model": config.name, "path": str(path)},
        )


def _load_estimator(path: Path, config: ModelConfig) -> Any:
    suffix = path.suffix.lower()
    if suffix in SKOPS_SUFFIXES:
        return _load_skops(path)
    if suffix in PICKLE_SUFFIXES:
        return _load_pickle(path, config)
    raise ModelLoadError(
        f"{path}: unknown scikit-learn file type {suffix!r} (expected .skops, .pkl or .joblib)"
    )


# ---------------------------------------------------------------- signature


def _final(model: Any) -> Any:
    """The last step of (nested) pipelines, where outputs are decided."""
    while hasattr(model, "steps") and isinstance(model.steps, list) and model.steps:
        model = model.steps[-1][1]
    return model


def _label_type(classes: Any) -> str:
    """The OIP type of predicted labels, from ``classes_`` (a list when multi-output)."""
    arrays = classes if isinstance(classes, list) else [classes]
    kinds = {np.asarray(a).dtype.kind for a in arrays}
    values = [v for a in arrays for v in np.asarray(a).reshape(-1)] if kinds == {"O"} else []
    if kinds <= {"i", "u"} or (values and all(isinstance(v, int | np.integer) for v in values)):
        return "INT64"
    if kinds == {"b"}:
        return "BOOL"
    if kinds == {"f"}:
        return "FP64"
    if kinds <= {"U", "S"} or (values and all(isinstance(v, str | bytes) for v in values)):
        return "BYTES"
    raise ModelLoadError(f"class labels of dtype {sorted(kinds)} cannot be served")


def _regression_width(model: Any) -> int | None:
    final = _final(model)
    n = getattr(final, "n_outputs_", None)
    if isinstance(n, int | np.integer):
        return int(n)
    coef = getattr(final, "coef_", None)
    if isinstance(coef, np.ndarray):
        return 1 if coef.ndim == 1 else int(coef.shape[0])
    return None


def _transform_width(model: Any) -> int | None:
    try:
        return len(model.get_feature_names_out())
    except Exception:  # not every transformer names its outputs
        n = getattr(_final(model), "n_components_", None)
        return int(n) if isinstance(n, int | np.integer) else None


def _probe_width(fn: Callable[[Any], Any], sample: Any) -> int:
    """Output columns found by running the model on one row of zeros; -1 if it refuses."""
    if sample is None:
        return -1
    try:
        out = fn(sample)
    except Exception:  # a model may reject zeros (unknown category ...); width stays open
        return -1
    shape: tuple[int, ...] = tuple(getattr(out, "shape", ()))
    return int(shape[1]) if len(shape) == 2 else 1


def _default_kinds(model: Any) -> list[str]:
    if is_classifier(model):
        # Multi-output classifiers give one probability matrix per output: labels only.
        single = not isinstance(getattr(model, "classes_", None), list)
        return (
            ["label", "probabilities"] if single and hasattr(model, "predict_proba") else ["label"]
        )
    if hasattr(model, "predict"):
        return ["label"] if is_clusterer(model) or is_outlier_detector(model) else ["predictions"]
    if hasattr(model, "transform"):
        return ["output"]
    raise ModelLoadError("the estimator has neither predict nor transform")


def _chosen_kinds(model: Any, method: str) -> list[str]:
    if method not in METHODS:
        raise ModelLoadError(
            f"modelport.method: expected one of {', '.join(METHODS)}, got {method!r}"
        )
    if not hasattr(model, method):
        raise ModelLoadError(f"modelport.method: the estimator has no {method} method")
    if method == "predict_proba":
        return ["probabilities"]
    if method == "transform":
        return ["output"]
    if is_classifier(model) or is_clusterer(model) or is_outlier_detector(model):
        return ["label"]
    return ["predictions"]


def _outputs(model: Any, config: ModelConfig, sample: Any) -> tuple[_Output, ...]:
    method = config.modelport.method
    kinds = _default_kinds(model) if method is None else _chosen_kinds(model, method)
    declared = {o.name: CONFIG_TYPES[o.data_type] for o in config.output}
    rename = len(kinds) == 1 and len(config.output) == 1
    outputs = []
    for kind in kinds:
        classes = getattr(model, "classes_", None)
        if kind == "label":
            if classes is not None:
                datatype = _label_type(classes)
                width = len(classes) if isinstance(classes, list) else 1
            else:  # clusters and outliers are numbered
                datatype, width = "INT64", 1
        elif kind == "probabilities":
            if isinstance(classes, list):
                raise ModelLoadError(
                    "probabilities of a multi-output classifier cannot be served as one "
                    "tensor; set modelport: {method: predict}"
                )
            datatype = "FP32"
            width = len(classes) if classes is not None else -1
            if width < 0:
                width = _probe_width(model.predict_proba, sample)
        elif kind == "predictions":
            datatype = "FP32"
            width = _regression_width(model) or _probe_width(model.predict, sample)
        else:
            datatype = "FP32"
            width = _transform_width(model) or _probe_width(model.transform, sample)
        name = config.output[0].name if rename else kind
        if kind != "label" and declared.get(name) in FLOAT_TYPES:
            datatype = declared[name]
        outputs.append(_Output(name, kind, datatype, width))
    return tuple(outputs)


# ---------------------------------------------------------------- columns

#: Encoders whose ``categories_`` tell the type of each column they were fitted on.
_TEXT_TRANSFORMERS = ("CountVectorizer", "TfidfVectorizer", "HashingVectorizer")
#: Steps that hand a column on unchanged, so the next step decides its type.
_PASSING = ("SimpleImputer", "MissingIndicator", "KNNImputer", "IterativeImputer")


def _is_nan(value: Any) -> bool:
    return isinstance(value, float | np.floating) and bool(np.isnan(value))


def _values_type(values: Any) -> str | None:
    """The column type fitted values (categories, imputed statistics) reveal."""
    array = np.asarray(values)
    kind = array.dtype.kind
    if kind == "b":
        return "BOOL"
    if kind in "iu":
        return "INT64"
    if kind == "f":
        return "FP64"
    if kind in "US":
        return "BYTES"
    if kind == "O":
        # Categories may hold None or NaN (a missing value); they tell nothing.
        items = [v for v in array.reshape(-1) if v is not None and not _is_nan(v)]
        if items and all(isinstance(v, str | bytes) for v in items):
            return "BYTES"
        if items and all(isinstance(v, bool | np.bool_) for v in items):
            return "BOOL"
        if items and all(isinstance(v, int | np.integer) for v in items):
            return "INT64"
        if items and all(isinstance(v, float | np.floating) for v in items):
            return "FP64"
    return None


def _step_type(step: Any, position: int) -> str | None:
    """The type of the ``position``-th column a fitted step reads; None when it cannot tell.

    Encoders tell by their categories, vectorizers read text, imputers by
    their statistics (or the step after them), other scikit-learn
    transformers and estimators read numbers. Passthrough, drop and
    FunctionTransformer read anything.
    """
    if isinstance(step, str) or step is None:  # "passthrough", "drop"
        return None
    name = type(step).__name__
    if hasattr(step, "steps") and isinstance(step.steps, list):
        for _, inner in step.steps:
            found = _step_type(inner, position)
            if found is not None or type(inner).__name__ not in _PASSING:
                return found
        return None
    categories = getattr(step, "categories_", None)
    if isinstance(categories, list) and position < len(categories):
        return _values_type(categories[position])
    if name in _TEXT_TRANSFORMERS:
        return "BYTES"
    if name in _PASSING:
        statistics = getattr(step, "statistics_", None)
        if statistics is not None and position < np.asarray(statistics).shape[0]:
            found = _values_type(np.asarray(statistics)[position : position + 1])
            return "BYTES" if found == "BYTES" else None
        return None
    if name == "FunctionTransformer" or not type(step).__module__.startswith("sklearn."):
        return None
    return "FP64"


def _selected(columns: Any, names: list[str]) -> list[str]:
    """The column names a ColumnTransformer entry selects (its fitted selection)."""
    if isinstance(columns, str):
        return [columns]
    if isinstance(columns, int | np.integer):
        return [names[int(columns)]]
    if isinstance(columns, slice):
        if all(isinstance(b, str | None) for b in (columns.start, columns.stop)):
            start = names.index(columns.start) if columns.start is not None else 0
            stop = names.index(columns.stop) + 1 if columns.stop is not None else len(names)
            return names[start:stop]
        return names[columns]
    picked = list(columns)
    if picked and all(isinstance(c, bool | np.bool_) for c in picked):
        return [n for n, keep in zip(names, picked, strict=False) if keep]
    return [names[int(c)] if isinstance(c, int | np.integer) else str(c) for c in picked]


def _frame_readers(model: Any) -> list[Any]:
    """The steps that see the DataFrame's columns: leading imputers (which hand them
    on), then the first other step, through nested pipelines."""
    readers: list[Any] = []
    pending = [model]
    while pending:
        step = pending.pop(0)
        if isinstance(step, str) or step is None:  # "passthrough"
            continue
        if hasattr(step, "steps") and isinstance(step.steps, list):
            pending = [inner for _, inner in step.steps] + pending
            continue
        readers.append(step)
        if type(step).__name__ not in _PASSING:
            break
    return readers


def _read_types(step: Any, names: list[str]) -> dict[str, str]:
    """The column types one frame-reading step tells."""
    transformers = getattr(step, "transformers_", None)
    if transformers is None:
        return {n: t for i, n in enumerate(names) if (t := _step_type(step, i)) is not None}
    found: dict[str, str] = {}
    for _, inner, selection in transformers:
        try:
            selected = _selected(selection, names)
        except (ValueError, IndexError, TypeError):
            continue
        if len(selected) == 1 and type(inner).__name__ in _TEXT_TRANSFORMERS:
            found.setdefault(selected[0], "BYTES")
            continue
        for i, column in enumerate(selected):
            datatype = _step_type(inner, i)
            if datatype is not None:
                found.setdefault(column, datatype)
    return found


def column_types(model: Any, names: list[str]) -> dict[str, str]:
    """The type of each column the fitted model reads, where the model tells.

    From the steps that read the DataFrame: a ColumnTransformer's
    transformers (an encoder over string categories makes a BYTES column,
    a scaler an FP64 one), an encoder's categories, an imputer's string
    statistics, or FP64 for every column of an estimator that reads
    numbers. Columns none of them tells are left out.
    """
    found: dict[str, str] = {}
    for step in _frame_readers(model):
        for column, datatype in _read_types(step, names).items():
            found.setdefault(column, datatype)
    return found


def _categories(step: Any, position: int) -> list[Any] | None:
    """The categories an encoder (alone, or after imputers in a pipeline) was fitted on."""
    if hasattr(step, "steps") and isinstance(step.steps, list):
        for _, inner in step.steps:
            found = _categories(inner, position)
            if found is not None or type(inner).__name__ not in _PASSING:
                return found
        return None
    categories = getattr(step, "categories_", None)
    if isinstance(categories, list) and position < len(categories):
        return [
            v for v in np.asarray(categories[position]).tolist() if v is not None and not _is_nan(v)
        ]
    return None


def column_values(model: Any, names: list[str]) -> dict[str, list[Any]]:
    """The values a categorical column was fitted on, for columns the model encodes.

    Sample rows made from them (``modelport convert`` without ``--data``)
    reach the model's encoders with categories they know.
    """
    entries: list[tuple[Any, list[str]]] = []
    for first in _frame_readers(model):
        transformers = getattr(first, "transformers_", None)
        if transformers is None:
            entries.append((first, names))
            continue
        for _, step, selection in transformers:
            try:
                entries.append((step, _selected(selection, names)))
            except (ValueError, IndexError, TypeError):
                continue
    found: dict[str, list[Any]] = {}
    for step, selected in entries:
        for i, column in enumerate(selected):
            values = _categories(step, i)
            if values:
                found.setdefault(column, values)
    return found


def _column_specs(
    model: Any, names: list[str], config: ModelConfig, path: Path
) -> tuple[Column, ...]:
    """The served columns: declared in config.yaml, else inferred, else FP64 (logged)."""
    inferred = column_types(model, names) if not config.input else {}
    types = column_datatypes(names, inferred, config, path, log)
    return tuple(Column(n, n, types[n]) for n in names)


# ---------------------------------------------------------------- runtime


class _Features:
    """Turns the wire's input matrix into what the estimator was fitted on."""

    def __init__(self, name: str, datatype: str, columns: list[str] | None) -> None:
        self.name = name
        self.datatype = datatype
        self.text = datatype == "BYTES"
        self._columns = columns

    def __call__(self, x: Array) -> Any:
        if self.text:
            return decode_text(self.name, x.reshape(x.shape[0], -1)[:, 0])
        if self._columns is not None:
            import pandas as pd

            # Fitted on a DataFrame: keep its column names, so column
            # transformers select by name and nothing warns per request.
            return pd.DataFrame(x, columns=self._columns, copy=False)
        return x

    def feed(self, inputs: Mapping[str, Array]) -> tuple[Any, int]:
        x = inputs[self.name]
        return self(x), int(x.shape[0])


class _Frame:
    """Builds the DataFrame a model fitted on one takes, from one input per column."""

    def __init__(self, columns: Columns) -> None:
        self.columns = columns

    def feed(self, inputs: Mapping[str, Array]) -> tuple[Any, int]:
        frame = self.columns.frame(inputs)
        return frame, len(frame)


class SklearnRuntime:
    """A fitted scikit-learn estimator (or pipeline) answering whole batches."""

    #: Estimators run arbitrary Python, and some start thread pools (joblib, OpenMP).
    inline_safe = False
    pin_safe = False

    def __init__(
        self,
        model: Any,
        features: _Features | _Frame,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[_Output, ...],
        threads: int,
    ) -> None:
        self._model: Any = model
        self._features = features
        self._outputs = {o.name: o for o in outputs}
        self._threads = threads
        # OpenMP limits are per calling thread, so setting one per batch on
        # the instance's own thread never races with other models.
        self._openmp = ThreadpoolController().select(user_api="openmp")
        self._native = ModelSignature(
            inputs=inputs,
            outputs=tuple(TensorSpec(o.name, o.datatype, (-1, o.width)) for o in outputs),
        )

    @property
    def native(self) -> ModelSignature:
        return self._native

    @property
    def estimator(self) -> Any:
        """The fitted estimator, for tools (conversion) that work on the model itself."""
        return self._model

    @property
    def columns(self) -> Columns | None:
        """The model's DataFrame columns when it is served one input per column."""
        return self._features.columns if isinstance(self._features, _Frame) else None

    def column_values(self) -> dict[str, list[Any]]:
        """Per categorical column, the categories the model was fitted on (see
        :func:`column_values`); empty when the model is not served by column."""
        columns = self.columns
        if columns is None:
            return {}
        return column_values(self._model, columns.names)

    def predict(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        feed, rows = self._features.feed(inputs)
        computed: dict[str, Any] = {}
        result: dict[str, Array] = {}
        with self._openmp.limit(limits=self._threads):
            for name in outputs:
                out = self._outputs.get(name)
                if out is None:
                    raise InvalidRequest(f"unknown output {name!r}")
                if out.method not in computed:
                    computed[out.method] = getattr(self._model, out.method)(feed)
                result[name] = _convert(out, computed[out.method], rows)
        return result

    def unload(self) -> None:
        self._model = None


def _convert(out: _Output, raw: Any, rows: int) -> Array:
    """The estimator's result as ``[rows, width]`` of the output's declared type."""
    if hasattr(raw, "toarray"):  # scipy sparse, from e.g. OneHotEncoder
        raw = raw.toarray()
    array = np.asarray(raw)
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2 or array.shape[0] != rows:
        raise InferenceFailed(
            f"{out.method} returned shape {list(array.shape)} for {rows} rows; "
            f"expected [{rows}, k] for output {out.name!r}"
        )
    if out.datatype == "BYTES":
        if array.dtype.kind == "O":  # str labels, or bytes kept as they are
            flat = [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1)]
            encoded = np.empty(array.shape, dtype=object)
            encoded.reshape(-1)[:] = flat
            return encoded
        if array.dtype.kind != "S":
            array = np.char.encode(array.astype(str), "utf-8")
        return array.astype(object)
    return array.astype(DTYPES[out.datatype], copy=False)


def _threads(config: ModelConfig, instances: int) -> int:
    raw = config.parameter("n_jobs")
    if raw is None:
        # One core stays with the event loop; the rest are split between instances.
        return default_threads(instances)
    try:
        value = int(raw)
    except ValueError:
        raise ModelLoadError(f"parameters.n_jobs: expected an integer, got {raw!r}") from None
    if value == -1:
        return os.cpu_count() or 1
    if value < 1:
        raise ModelLoadError(f"parameters.n_jobs: expected a positive integer or -1, got {value}")
    return value


def _cap_jobs(model: Any, threads: int, override: bool) -> None:
    """Keep estimators' own joblib pools within this instance's share of the cores."""
    get_params = getattr(model, "get_params", None)
    if get_params is None:
        return
    try:
        params: dict[str, Any] = get_params(deep=True)
        changes = {
            key: threads
            for key, value in params.items()
            if key.rsplit("__", 1)[-1] == "n_jobs"
            and (override or (isinstance(value, int) and (value < 0 or value > threads)))
        }
        if changes:
            model.set_params(**changes)
    except Exception as exc:  # a third-party estimator with unusual params: leave it be
        log.warning("could not set n_jobs", extra={"error": first_line(exc, limit=300)})


def load_sklearn(version_dir: Path, config: ModelConfig, instances: int) -> SklearnRuntime:
    """Load ``model.skops`` (or, when allowed, ``model.pkl`` / ``model.joblib``)."""
    path = model_file(version_dir, config, MODEL_FILENAMES)
    model = _load_estimator(path, config)
    try:
        return _build(model, path, config, instances)
    except ModelLoadError as exc:
        if exc.message.startswith(str(path)):
            raise
        raise ModelLoadError(f"{path}: {exc.message}") from None
    except Exception as exc:  # an object that only looks like an estimator
        raise ModelLoadError(
            f"{path}: cannot be served: {type(exc).__name__}: {first_line(exc, limit=300)}"
        ) from None


def _column_names(model: Any) -> list[str] | None:
    """The DataFrame columns the model was fitted on; None when fitted without names."""
    names = getattr(model, "feature_names_in_", None)
    if names is None:
        return None
    try:
        import pandas  # noqa: F401
    except ImportError:
        return None
    return [str(c) for c in names]


def _probe_frame(columns: Columns) -> Any:
    try:
        return columns.zeros()
    except Exception:  # a probe is optional: widths then stay open
        return None


def _matrix(
    model: Any, config: ModelConfig, names: list[str] | None
) -> tuple[_Features, tuple[TensorSpec, ...], Any]:
    """The one input matrix ``[-1, n_features]``: a model fitted without column names,
    or one whose config.yaml lists a single input that is not one of its columns."""
    if len(config.input) > 1:
        raise ModelLoadError(
            f"config lists {len(config.input)} inputs; a scikit-learn model takes one matrix"
            + (
                f", or one input per column of its DataFrame ({', '.join(names)})"
                if names is not None
                else ""
            )
        )
    declared = config.input[0] if config.input else None
    name = declared.name if declared is not None else DEFAULT_INPUT
    datatype = CONFIG_TYPES[declared.data_type] if declared is not None else "FP32"
    if datatype == "BF16":
        raise ModelLoadError("input data_type TYPE_BF16 is not served by scikit-learn models")
    n_features = getattr(model, "n_features_in_", None)
    if isinstance(n_features, int | np.integer):
        width = int(n_features)
    elif declared is not None and declared.dims and declared.dims[-1] > 0:
        width = declared.dims[-1]
    else:
        width = -1
    columns = names if datatype != "BYTES" else None
    features = _Features(name, datatype, columns)
    sample = None
    if features.text:
        sample = features(np.array([[b""]], dtype=object))
    elif width > 0:
        sample = features(np.zeros((1, width), dtype=DTYPES[datatype]))
    shape = (-1, 1) if features.text else (-1, width)
    return features, (TensorSpec(name, datatype, shape),), sample


def _build(model: Any, path: Path, config: ModelConfig, instances: int) -> SklearnRuntime:
    try:
        check_is_fitted(model)
    except Exception as exc:  # NotFittedError, or TypeError for a non-estimator
        raise ModelLoadError(
            f"not a fitted scikit-learn estimator: {first_line(exc, limit=300)}"
        ) from None
    names = _column_names(model)
    if names is not None and all(t.name in names for t in config.input):
        # Fitted on a DataFrame, and config.yaml lists none but its columns:
        # one input per column, as MLServer's pandas codec sends them.
        columns = Columns(_column_specs(model, names, config, path))
        features: _Features | _Frame = _Frame(columns)
        inputs = columns.specs
        sample = _probe_frame(columns)
    else:
        features, inputs, sample = _matrix(model, config, names)
    outputs = _outputs(model, config, sample)
    threads = _threads(config, instances)
    _cap_jobs(model, threads, override=config.parameter("n_jobs") is not None)
    runtime = SklearnRuntime(model, features, inputs, outputs, threads)
    log.info(
        "scikit-learn model ready",
        extra={
            "model": config.name,
            "path": str(path),
            "estimator": type(model).__name__,
            "inputs": [t.name for t in inputs],
            "outputs": [o.name for o in outputs],
            "threads": threads,
        },
    )
    return runtime
