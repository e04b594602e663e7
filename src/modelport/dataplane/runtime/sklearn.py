"""scikit-learn backend (``backend: sklearn``; ``model.skops``, ``model.pkl``, ``model.joblib``).

``model.skops`` is the safe format: skops rebuilds the object without running
code from the file, and this backend trusts only the types scikit-learn,
numpy and scipy define (classes, never functions), so a file cannot smuggle
in an arbitrary callable. Pickle and joblib files run code while loading;
they are served only when the model's config says
``modelport: {allow_unsafe_pickle: true}``, and every load is logged as such.

The signature is read from the fitted estimator: one input matrix
``[-1, n_features_in_]`` (FP32, or the type config.yaml gives it) and, by
default, ``label`` + ``probabilities`` for a classifier, ``predictions`` for
a regressor, ``output`` for a transformer. ``modelport.method`` picks a single
method (predict, predict_proba or transform) instead. A model fitted on a
DataFrame gets its column names back (column transformers select by name);
a ``TYPE_STRING`` input feeds text pipelines one string per row.

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
            return _as_text(self.name, x.reshape(x.shape[0], -1)[:, 0])
        if self._columns is not None:
            import pandas as pd

            # Fitted on a DataFrame: keep its column names, so column
            # transformers select by name and nothing warns per request.
            return pd.DataFrame(x, columns=self._columns, copy=False)
        return x


def _as_text(name: str, column: Array) -> Array:
    out = np.empty(column.shape[0], dtype=object)
    for i, value in enumerate(column):
        try:
            out[i] = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        except UnicodeDecodeError:
            raise InvalidRequest(
                f"input {name!r}: BYTES element {i} is not valid UTF-8 text"
            ) from None
    return out


class SklearnRuntime:
    """A fitted scikit-learn estimator (or pipeline) answering whole batches."""

    #: Estimators run arbitrary Python, and some start thread pools (joblib, OpenMP).
    inline_safe = False
    pin_safe = False

    def __init__(
        self,
        model: Any,
        features: _Features,
        input_width: int,
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
        shape = (-1, 1) if features.text else (-1, input_width)
        self._native = ModelSignature(
            inputs=(TensorSpec(features.name, features.datatype, shape),),
            outputs=tuple(TensorSpec(o.name, o.datatype, (-1, o.width)) for o in outputs),
        )

    @property
    def native(self) -> ModelSignature:
        return self._native

    @property
    def estimator(self) -> Any:
        """The fitted estimator, for tools (conversion) that work on the model itself."""
        return self._model

    def predict(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        x = inputs[self._features.name]
        rows = int(x.shape[0])
        feed = self._features(x)
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


def _build(model: Any, path: Path, config: ModelConfig, instances: int) -> SklearnRuntime:
    try:
        check_is_fitted(model)
    except Exception as exc:  # NotFittedError, or TypeError for a non-estimator
        raise ModelLoadError(
            f"not a fitted scikit-learn estimator: {first_line(exc, limit=300)}"
        ) from None
    if len(config.input) > 1:
        raise ModelLoadError(
            f"config lists {len(config.input)} inputs; a scikit-learn model takes one matrix"
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
    names = getattr(model, "feature_names_in_", None)
    columns = [str(c) for c in names] if names is not None and datatype != "BYTES" else None
    if columns is not None:
        try:
            import pandas  # noqa: F401
        except ImportError:
            columns = None
    features = _Features(name, datatype, columns)
    sample = None
    if features.text:
        sample = features(np.array([[b""]], dtype=object))
    elif width > 0:
        sample = features(np.zeros((1, width), dtype=DTYPES[datatype]))
    outputs = _outputs(model, config, sample)
    threads = _threads(config, instances)
    _cap_jobs(model, threads, override=config.parameter("n_jobs") is not None)
    runtime = SklearnRuntime(model, features, width, outputs, threads)
    log.info(
        "scikit-learn model ready",
        extra={
            "model": config.name,
            "path": str(path),
            "estimator": type(model).__name__,
            "outputs": [o.name for o in outputs],
            "threads": threads,
        },
    )
    return runtime
