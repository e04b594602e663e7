"""XGBoost backend (``backend: xgboost``, files ``model.ubj`` or ``model.json``).

Loads a Booster from XGBoost's own model format (UBJSON or JSON, what
``Booster.save_model`` writes); pickles are never read. The signature comes
from the booster itself: the feature count gives the single input
``[-1, n]``, and the objective in its saved configuration decides the
outputs, named as a classifier or regressor would name them:

- ``binary:logistic``: ``probabilities`` FP32 ``[N, 2]`` (1-p, p) and
  ``label`` INT64 ``[N, 1]`` (1 when p > 0.5, as ``XGBClassifier.predict``);
- ``multi:softprob``: ``probabilities`` FP32 ``[N, k]`` and ``label``;
- ``multi:softmax``: ``label``;
- anything else (regression, ranking, survival, multi-target ...):
  ``predictions`` FP32 ``[N, outputs]``, XGBoost's default prediction
  (the raw margin for ranking and ``binary:logitraw``).

XGBoost predicts in float32; config.yaml may list ``probabilities`` or
``predictions`` as TYPE_FP64 to widen them. A model saved after early
stopping answers with its best iteration, as ``XGBClassifier.predict`` does.

Predictions use ``inplace_predict`` on the request's array, so no DMatrix
is built per request (``gblinear``, which lacks it, is the exception).
Thread count: the ``intra_op_thread_count`` parameter, else the cores less
one split between the instances. A ``KIND_GPU`` instance group runs on CUDA
when this build and machine have it; otherwise the CPU runs it, and the log
says which.

XGBoost trusts the sizes and indices in a model file: a truncated or damaged
one can crash the whole server, not just fail its load. So before XGBoost
parses a file, ``xgboost_scan.py`` checks it, and what fails becomes a load
error naming the file.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from modelport.config.model import ModelConfig
from modelport.dataplane.runtime.features import (
    class_outputs,
    empty_output,
    feature_input_spec,
    feature_matrix,
    float_output_types,
)
from modelport.dataplane.runtime.files import model_file
from modelport.dataplane.runtime.threads import thread_budget
from modelport.dataplane.runtime.xgboost_scan import Malformed, Reach, scan_model
from modelport.errors import ModelLoadError, first_line
from modelport.types import DTYPES, Array, ModelSignature, TensorSpec

log = logging.getLogger("modelport.runtime.xgboost")

#: Looked for in this order when ``default_model_filename`` is not set.
MODEL_FILENAMES = ("model.ubj", "model.json")

#: How the booster's raw prediction becomes outputs.
BINARY, SOFTPROB, SOFTMAX, VALUE = "binary", "softprob", "softmax", "value"

#: XGBoost prefixes its errors with "[hh:mm:ss] /source/file.cc:123: ".
_XGB_PREFIX = re.compile(r"^\[[\d:]+\]\s+\S+:\d+:\s*")
EXPECTED = (
    "expected an XGBoost model saved with Booster.save_model as UBJSON (model.ubj) "
    "or JSON (model.json)"
)


def _xgb_reason(exc: BaseException) -> str:
    """An XGBoost error's first line without the ``[time] file:line:`` prefix XGBoost adds."""
    return _XGB_PREFIX.sub("", first_line(exc)).strip() or type(exc).__name__


# ------------------------------------------------------------------ loading


def _load_booster(path: Path) -> tuple[Any, Reach]:
    """The Booster in ``path`` and how far its trees reach, or a ModelLoadError.

    The error names the file, says why, and says what was expected.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        reach = scan_model(data)
    except Malformed as exc:
        raise ModelLoadError(f"{path}: not a loadable XGBoost model: {exc}; {EXPECTED}") from None
    try:
        return xgb.Booster(model_file=bytearray(data)), reach
    except Exception as exc:  # XGBoostError, or UnicodeDecodeError while formatting one
        raise ModelLoadError(
            f"{path}: not a loadable XGBoost model: {_xgb_reason(exc)}; {EXPECTED}"
        ) from None


def _learner(booster: Any) -> dict[str, Any]:
    config = json.loads(booster.save_config())
    learner: dict[str, Any] = config["learner"]
    return learner


def _output_kind(objective: str, num_class: int, num_target: int) -> str:
    if objective == "binary:logistic" and num_target == 1:
        return BINARY
    if objective == "multi:softprob" and num_class > 1:
        return SOFTPROB
    if objective == "multi:softmax":
        return SOFTMAX
    return VALUE


def _choose_device(config: ModelConfig, booster: Any) -> str:
    """``cuda:<id>`` when a GPU instance group asks and one is usable, else ``cpu``."""
    groups = [g for g in config.instance_group if g.kind == "KIND_GPU"]
    if not groups:
        return "cpu"
    if not xgb.build_info().get("USE_CUDA", False):
        log.warning(
            "KIND_GPU requested but this xgboost build has no CUDA; predicting on the CPU",
            extra={"model": config.name, "device": "cpu"},
        )
        return "cpu"
    ordinal = groups[0].gpus[0] if groups[0].gpus else 0
    # XGBoost falls back to the CPU by itself when no GPU is visible, with a
    # warning of its own; quiet that and read back which device it settled on.
    with xgb.config_context(verbosity=0):
        booster.set_param({"device": f"cuda:{ordinal}"})
        device = str(_learner(booster)["generic_param"].get("device", "cpu"))
    if not device.startswith("cuda"):
        booster.set_param({"device": "cpu"})
        log.warning(
            "KIND_GPU requested but no GPU is visible; predicting on the CPU",
            extra={"model": config.name, "device": "cpu"},
        )
        return "cpu"
    return device


class _Booster:
    """The booster with its prediction settings: rounds, device, how arrays reach it."""

    def __init__(
        self,
        booster: Any,
        iteration_range: tuple[int, int],
        device: str,
        linear: bool,
        threads: int,
    ) -> None:
        self.booster = booster
        self.iteration_range = iteration_range
        self.device = device
        self.linear = linear
        self.threads = threads
        self.to_device: Callable[[Array], Any] | None = None
        self.quiet = False
        if device.startswith("cuda") and not linear:
            try:
                cupy = importlib.import_module("cupy")
            except ImportError:
                # Host arrays then reach the GPU through a DMatrix XGBoost
                # builds itself, with a warning on every call; same result.
                self.quiet = True
                log.info(
                    "cupy is not installed: batches reach the GPU through a DMatrix copy",
                    extra={"device": device},
                )
            else:
                self.to_device = cupy.asarray

    def predict(self, features: Array) -> Array:
        """XGBoost's default prediction for ``features``, as a float32 host array."""
        if self.linear:
            # gblinear has no inplace_predict; a DMatrix is its only way in.
            matrix = xgb.DMatrix(features, nthread=self.threads)
            return np.asarray(self.booster.predict(matrix), dtype=np.float32)
        data: Any = features if self.to_device is None else self.to_device(features)
        if self.quiet:
            with xgb.config_context(verbosity=0):
                out = self.booster.inplace_predict(data, iteration_range=self.iteration_range)
        else:
            out = self.booster.inplace_predict(data, iteration_range=self.iteration_range)
        if not isinstance(out, np.ndarray):
            out = out.get()  # a cupy array
        return np.asarray(out, dtype=np.float32)


class XGBoostRuntime:
    """One XGBoost Booster answering whole batches with ``inplace_predict``."""

    #: XGBoost predicts with a thread pool of its own, started from the caller.
    inline_safe = False
    pin_safe = False

    def __init__(
        self,
        booster: _Booster,
        input_spec: TensorSpec,
        kind: str,
        width: int,
        floats: Mapping[str, str],
    ) -> None:
        self._booster = booster
        self._input = input_spec
        self._kind = kind
        outputs: tuple[TensorSpec, ...]
        if kind == BINARY:
            outputs = class_outputs(floats, 2)
        elif kind == SOFTPROB:
            outputs = class_outputs(floats, width)
        elif kind == SOFTMAX:
            outputs = (TensorSpec("label", "INT64", (-1, 1)),)
        else:
            outputs = (TensorSpec("predictions", floats["predictions"], (-1, width)),)
        self._native = ModelSignature(inputs=(input_spec,), outputs=outputs)
        self._specs = {s.name: s for s in outputs}
        self._dtypes = {s.name: DTYPES[s.datatype] for s in outputs}

    @property
    def native(self) -> ModelSignature:
        return self._native

    @property
    def device(self) -> str:
        return self._booster.device

    def predict(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        x = feature_matrix(self._input, inputs)
        rows = x.shape[0]
        if rows == 0:
            return {n: empty_output(self._specs[n]) for n in outputs}
        raw = self._booster.predict(x)
        result: dict[str, Array] = {}
        if self._kind == BINARY:
            p = raw.reshape(rows)
            if "probabilities" in outputs:
                result["probabilities"] = np.stack([1.0 - p, p], axis=1)
            if "label" in outputs:
                # As XGBClassifier.predict: class 1 when p > 0.5.
                result["label"] = (p > 0.5).astype(np.int64).reshape(rows, 1)
        elif self._kind == SOFTPROB:
            probs = raw.reshape(rows, -1)
            result["probabilities"] = probs
            result["label"] = np.argmax(probs, axis=1).astype(np.int64).reshape(rows, 1)
        elif self._kind == SOFTMAX:
            result["label"] = raw.reshape(rows, 1).astype(np.int64)
        else:
            result["predictions"] = raw.reshape(rows, -1)
        return {name: result[name].astype(self._dtypes[name], copy=False) for name in outputs}

    def unload(self) -> None:
        del self._booster


def load_xgboost(version_dir: Path, config: ModelConfig, instances: int) -> XGBoostRuntime:
    """Load ``model.ubj`` or ``model.json`` (or ``default_model_filename``)."""
    path = model_file(version_dir, config, MODEL_FILENAMES)
    raw, reach = _load_booster(path)
    try:
        learner = _learner(raw)
        objective = str(learner["objective"]["name"])
        params = learner.get("learner_model_param", {})
        num_class = int(params.get("num_class", 0))
        num_target = int(params.get("num_target", 1))
        features = int(raw.num_features())
        rounds = int(raw.num_boosted_rounds())
    except (KeyError, TypeError, ValueError, xgb.core.XGBoostError) as exc:
        raise ModelLoadError(f"{path}: cannot read the booster's configuration: {exc}") from None
    if features < 1:
        raise ModelLoadError(f"{path}: the booster has no features")
    outputs = max(num_class, num_target, 1)
    if reach.group >= outputs or reach.feature >= features:
        what = (
            f"a tree adds to output {reach.group}, the model has outputs 0..{outputs - 1}"
            if reach.group >= outputs
            else f"a tree reads feature {reach.feature}, the model has {features}"
        )
        raise ModelLoadError(f"{path}: not a loadable XGBoost model: {what}; {EXPECTED}")
    input_spec = feature_input_spec(path, config, features, "XGBoost")
    threads = thread_budget(config, instances)
    raw.set_param({"nthread": threads})
    # A model saved after early stopping holds more rounds than its best one;
    # XGBClassifier.predict stops at the best, and so does the server.
    best = raw.attr("best_iteration")
    iteration_range = (0, int(best) + 1) if best is not None and best.isdigit() else (0, 0)
    linear = learner.get("gradient_booster", {}).get("name") == "gblinear"
    booster = _Booster(raw, iteration_range, _choose_device(config, raw), linear, threads)
    try:
        # One row settles the output width (classes, targets) from the model itself.
        probe = booster.predict(np.zeros((1, features), dtype=DTYPES[input_spec.datatype]))
    except Exception as exc:
        raise ModelLoadError(f"{path}: the booster cannot predict: {_xgb_reason(exc)}") from None
    width = max(1, probe.size)
    kind = _output_kind(objective, num_class, num_target)
    if kind in (BINARY, SOFTMAX) and width != 1:
        kind = VALUE
    runtime = XGBoostRuntime(booster, input_spec, kind, width, float_output_types(config, "FP32"))
    log.info(
        "xgboost booster ready",
        extra={
            "model": config.name,
            "path": str(path),
            "objective": objective,
            "features": features,
            "rounds": rounds,
            "iteration_range": list(iteration_range),
            "nthread": threads,
            "device": booster.device,
            "booster": "gblinear" if linear else "trees",
        },
    )
    return runtime
